#pragma once

// Interrupt: a deadline and a cancellation flag that long computations poll between pieces of
// work, so an expired or cancelled request stops early.

#include <atomic>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace ihip::engine {

struct Interrupt {
  absl::Time deadline = absl::InfiniteFuture();
  const std::atomic<bool>* cancelled = nullptr;

  absl::Status Check() const {
    if (cancelled != nullptr && cancelled->load(std::memory_order_relaxed)) {
      return absl::CancelledError("request cancelled; nothing was appended");
    }
    if (deadline != absl::InfiniteFuture() && absl::Now() > deadline) {
      return absl::DeadlineExceededError("deadline exceeded; nothing was appended");
    }
    return absl::OkStatus();
  }
};

}  // namespace ihip::engine
