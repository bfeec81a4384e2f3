#pragma once

// Ring: a single-producer single-consumer queue of fixed 64-byte Messages in shared memory
// (format in SHM_FORMAT.md). One process pushes, one pops; neither ever blocks inside the ring
// (waiting is the doorbell's job, futex.h). Not thread-safe on either side.

#include <atomic>
#include <cstdint>

#include "kvstore/shm_format.h"

namespace ihip::kvstore {

class Ring {
 public:
  Ring() = default;
  Ring(RingHeader* header, Message* entries, uint32_t capacity)
      : h_(header), entries_(entries), mask_(capacity - 1) {}

  uint32_t capacity() const { return mask_ + 1; }
  uint32_t size() const {
    return h_->head.load(std::memory_order_acquire) - h_->tail.load(std::memory_order_acquire);
  }
  bool empty() const { return size() == 0; }

  // Producer side: false when full.
  bool TryPush(const Message& m) {
    const uint32_t head = h_->head.load(std::memory_order_relaxed);
    if (head - h_->tail.load(std::memory_order_acquire) > mask_) return false;
    entries_[head & mask_] = m;
    h_->head.store(head + 1, std::memory_order_seq_cst);
    return true;
  }
  // Consumer side: false when empty.
  bool TryPop(Message* m) {
    const uint32_t tail = h_->tail.load(std::memory_order_relaxed);
    if (h_->head.load(std::memory_order_seq_cst) == tail) return false;
    *m = entries_[tail & mask_];
    h_->tail.store(tail + 1, std::memory_order_release);
    return true;
  }

 private:
  RingHeader* h_ = nullptr;
  Message* entries_ = nullptr;
  uint32_t mask_ = 0;
};

}  // namespace ihip::kvstore
