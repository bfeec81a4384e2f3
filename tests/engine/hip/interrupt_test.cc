// engine/hip/interrupt.h: cancellation and deadlines map to CANCELLED and DEADLINE_EXCEEDED.

#include "engine/hip/interrupt.h"

#include <atomic>

#include "gtest/gtest.h"

namespace ihip::engine {
namespace {

TEST(InterruptTest, DefaultNeverInterrupts) { EXPECT_TRUE(Interrupt{}.Check().ok()); }

TEST(InterruptTest, Cancellation) {
  std::atomic<bool> cancelled{false};
  Interrupt in{absl::InfiniteFuture(), &cancelled};
  EXPECT_TRUE(in.Check().ok());
  cancelled = true;
  EXPECT_EQ(in.Check().code(), absl::StatusCode::kCancelled);
}

TEST(InterruptTest, Deadline) {
  Interrupt past{absl::Now() - absl::Seconds(1), nullptr};
  EXPECT_EQ(past.Check().code(), absl::StatusCode::kDeadlineExceeded);
  Interrupt future{absl::Now() + absl::Hours(1), nullptr};
  EXPECT_TRUE(future.Check().ok());
  // Cancellation wins over an expired deadline; both are errors.
  std::atomic<bool> cancelled{true};
  Interrupt both{absl::Now() - absl::Seconds(1), &cancelled};
  EXPECT_EQ(both.Check().code(), absl::StatusCode::kCancelled);
}

}  // namespace
}  // namespace ihip::engine
