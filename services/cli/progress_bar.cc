#include "services/cli/progress_bar.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>

namespace ihip::cli {

ProgressBar::ProgressBar(std::string label)
    : label_(std::move(label)), tty_(isatty(STDERR_FILENO)), start_(absl::Now()) {}

void ProgressBar::Update(double fraction) {
  const int percent = std::clamp(int(fraction * 100.0), 0, 100);
  if (percent == last_percent_) return;
  if (!tty_ && percent / 10 == last_percent_ / 10 && percent != 100) return;
  last_percent_ = percent;
  constexpr int kWidth = 30;
  const int filled = percent * kWidth / 100;
  const double secs = absl::ToDoubleSeconds(absl::Now() - start_);
  std::fprintf(stderr, "%s%-24s [%.*s%*s] %3d%%  %5.1fs%s", tty_ ? "\r" : "", label_.c_str(),
               filled, "##############################", kWidth - filled, "", percent, secs,
               tty_ ? "" : "\n");
  std::fflush(stderr);
}

void ProgressBar::Done() {
  Update(1.0);
  if (tty_) std::fprintf(stderr, "\n");
}

}  // namespace ihip::cli
