#pragma once

// A one-line progress bar on stderr (redrawn in place on a terminal, a line per 10% otherwise).

#include <string>

#include "absl/time/clock.h"

namespace ihip::cli {

class ProgressBar {
 public:
  explicit ProgressBar(std::string label);
  // `fraction` in [0, 1]; cheap to call often.
  void Update(double fraction);
  void Done();

 private:
  std::string label_;
  bool tty_;
  int last_percent_ = -1;
  absl::Time start_;
};

}  // namespace ihip::cli
