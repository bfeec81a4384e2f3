#pragma once

// The mask refresh schedule of DESIGN §3.3.

#include <vector>

#include "engine/hip_config.h"

namespace ihip::engine {

// At decode step `step` (0 = first step after prefill), the 1-based stage to re-run from: the
// smallest i with step % refresh_interval(i) == 0, or 0 when the cached mask is reused.
inline int StageToRefresh(const std::vector<StageSpec>& stages, int64_t step) {
  for (size_t i = 0; i < stages.size(); ++i) {
    if (step % stages[i].refresh_interval == 0) return int(i) + 1;
  }
  return 0;
}

}  // namespace ihip::engine
