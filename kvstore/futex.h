#pragma once

// Futex wait/wake on 32-bit words in shared memory (process-shared, so not FUTEX_PRIVATE), and a
// doorbell protocol over them: a producer rings after publishing work; a consumer spins briefly,
// then sleeps on the doorbell. Never a sleep loop.

#include <atomic>
#include <cstdint>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace ihip::kvstore {

// Sleeps while *word == expected, at most `timeout` (absl::InfiniteDuration() = no limit).
// Returns early on a wake, a signal, or when the word differs.
void FutexWait(std::atomic<uint32_t>* word, uint32_t expected, absl::Duration timeout);
void FutexWakeAll(std::atomic<uint32_t>* word);

// After publishing work: bump the doorbell, wake the consumer if it sleeps.
inline void RingDoorbell(std::atomic<uint32_t>* doorbell, std::atomic<uint32_t>* sleeping) {
  doorbell->fetch_add(1, std::memory_order_seq_cst);
  if (sleeping->load(std::memory_order_seq_cst) != 0) FutexWakeAll(doorbell);
}

// Waits until `ready()` holds: spins `spin` times, then sleeps on the doorbell (re-checking
// after announcing the sleep, so no wake is lost). Returns false if `timeout` passed first.
template <class Ready>
bool WaitForDoorbell(std::atomic<uint32_t>* doorbell, std::atomic<uint32_t>* sleeping,
                     Ready&& ready, int spin, absl::Duration timeout) {
  for (int i = 0; i < spin; ++i) {
    if (ready()) return true;
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
  }
  const absl::Time deadline =
      timeout == absl::InfiniteDuration() ? absl::InfiniteFuture() : absl::Now() + timeout;
  for (;;) {
    sleeping->store(1, std::memory_order_seq_cst);
    const uint32_t seen = doorbell->load(std::memory_order_seq_cst);
    if (ready()) {
      sleeping->store(0, std::memory_order_relaxed);
      return true;
    }
    const absl::Duration left =
        deadline == absl::InfiniteFuture() ? absl::InfiniteDuration() : deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      sleeping->store(0, std::memory_order_relaxed);
      return false;
    }
    FutexWait(doorbell, seen, left);
    sleeping->store(0, std::memory_order_relaxed);
  }
}

}  // namespace ihip::kvstore
