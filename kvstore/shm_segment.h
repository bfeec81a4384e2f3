#pragma once

// ShmSegment: the kvstore's POSIX shared-memory segment (SHM_FORMAT.md): created and populated by
// ihip-kvstore, attached by its clients. Gives typed access to the header, client table, rings,
// mailboxes, slot table and page pool. The mapping is fixed for the object's life; access to
// the shared fields follows the protocol of SHM_FORMAT.md.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kvstore/ring.h"
#include "kvstore/shm_format.h"

namespace ihip::kvstore {

// CLOCK_MONOTONIC in nanoseconds: one clock for every process of the host (leases compare it).
uint64_t MonotonicNanos();
// Inode of this process's PID namespace (0 if unknown). Processes of one Kubernetes pod are in
// different PID namespaces unless the pod shares its process namespace.
uint64_t PidNamespace();
// Whether `pid`, seen from a process of namespace `pid_ns`, is known to be gone. False when the
// namespaces differ (the pid means nothing here): leases decide then.
bool ProcessGone(uint32_t pid, uint64_t pid_ns);

struct SegmentOptions {
  std::string name = "/ihip-kvstore";        // POSIX shm name (leading '/', no other '/')
  uint64_t pool_bytes = 4ull << 30;          // host tier: page slots in all
  uint64_t slot_bytes = 256ull << 10;        // one page slot (Llama-3-8B bf16, 64 tokens: 256 KiB)
  uint32_t max_clients = 16;                 // attached processes at once
  uint32_t ring_entries = 1024;              // per ring; power of two
  uint64_t mailbox_bytes = 1ull << 20;       // per client: slot lists of up to 128K pages
  absl::Duration lease = absl::Seconds(10);  // silent client loses pins after this
  int populate_threads = 2;                  // threads that touch the pool at creation (0 = don't)
  absl::Status Validate() const;
};

class ShmSegment {
 public:
  // Creates the segment (replacing a stale one of the same name), lays out and populates it.
  // The segment is unlinked when the returned object is destroyed.
  static absl::StatusOr<std::unique_ptr<ShmSegment>> Create(const SegmentOptions& options);
  // Maps an existing segment; FAILED_PRECONDITION on a wrong magic or layout version.
  static absl::StatusOr<std::unique_ptr<ShmSegment>> Attach(const std::string& name);
  ~ShmSegment();
  ShmSegment(const ShmSegment&) = delete;
  ShmSegment& operator=(const ShmSegment&) = delete;

  const std::string& name() const { return name_; }
  std::byte* base() const { return base_; }
  size_t size() const { return size_; }
  double populate_seconds() const { return populate_seconds_; }

  SegmentHeader* header() const { return reinterpret_cast<SegmentHeader*>(base_); }
  ClientEntry* client(uint32_t i) const {
    return reinterpret_cast<ClientEntry*>(base_ + header()->clients_offset) + i;
  }
  Ring request_ring(uint32_t client) const { return RingAt(client, 0); }
  Ring completion_ring(uint32_t client) const { return RingAt(client, 1); }
  std::byte* mailbox(uint32_t client) const {
    return base_ + header()->mailboxes_offset + size_t(client) * header()->mailbox_bytes;
  }
  SlotEntry* slot_entry(uint64_t slot) const {
    return reinterpret_cast<SlotEntry*>(base_ + header()->slot_table_offset) + slot;
  }
  std::byte* slot_data(uint64_t slot) const {
    return base_ + header()->pool_offset + slot * header()->slot_bytes;
  }

 private:
  ShmSegment(std::string name, std::byte* base, size_t size, bool owner)
      : name_(std::move(name)), base_(base), size_(size), owner_(owner) {}
  Ring RingAt(uint32_t client, int which) const;

  std::string name_;
  std::byte* base_;
  size_t size_;
  bool owner_;
  double populate_seconds_ = 0;
};

}  // namespace ihip::kvstore
