#pragma once

// KvStoreClient: what the engine uses to keep KV in ihip-kvstore (DESIGN §4). Attaches to the
// kvstore's shared-memory segment, claims a client slot (with a heartbeat lease), and sends block
// requests over its ring; page bytes are read and written in place in the mapped pool. No gRPC,
// no RocksDB. Every call returns a Status: UNAVAILABLE when the kvstore stopped or did not answer
// in time (re-attach to recover), RESOURCE_EXHAUSTED when the pool is full after spilling.
// Thread-safe: calls are serialised (one request in flight per client).

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kvstore/shm_segment.h"

namespace ihip::kvstore {

struct KvStoreClientOptions {
  std::string segment_name = "/ihip-kvstore";
  std::string client_name = "client";          // shown in kvstore logs (first 23 bytes)
  absl::Duration timeout = absl::Seconds(30);  // per request (a fetch-back may read from disk)
  int spin = 4000;                             // completion checks before sleeping on the doorbell
  absl::Status Validate() const;
};

struct KvSequenceInfo {
  uint64_t handle = 0;
  uint32_t num_layers = 0;
  uint32_t page_bytes = 0;
  uint32_t page_tokens = 0;
  std::string geometry;  // the 32 opaque bytes given at creation
  std::string metadata;  // the metadata given at creation
  std::vector<uint64_t> layer_lengths;
};

class KvStoreClient {
 public:
  static absl::StatusOr<std::unique_ptr<KvStoreClient>> Attach(const KvStoreClientOptions& o);
  ~KvStoreClient();  // detaches: the kvstore releases this client's pins

  // `metadata` (up to 64 KiB) is kept in the sequence's manifest and returned by OpenSequence.
  absl::StatusOr<uint64_t> CreateSequence(const std::string& id, uint32_t num_layers,
                                          uint32_t page_bytes, uint32_t page_tokens,
                                          const std::string& geometry,
                                          const std::string& metadata = "");
  absl::StatusOr<KvSequenceInfo> OpenSequence(const std::string& id);
  absl::Status DropSequence(uint64_t handle);
  absl::Status SuspendSequence(uint64_t handle);
  // Appends `count` pages to the layer, pinned by this client; `pages` gets their addresses.
  // `expected_first` (kAnyPage: no check): FAILED_PRECONDITION unless the new pages start there.
  absl::Status Allocate(uint64_t handle, uint32_t layer, uint32_t count, uint64_t* first_page,
                        std::vector<std::byte*>* pages, uint64_t expected_first = kAnyPage);
  absl::Status Commit(uint64_t handle, uint32_t layer, uint64_t length);
  absl::Status Abort(uint64_t handle, uint32_t layer);
  absl::Status Truncate(uint64_t handle, uint32_t layer, uint64_t length);
  absl::Status Pin(uint64_t handle, uint32_t layer, uint64_t first, uint32_t count,
                   std::vector<std::byte*>* pages);
  absl::Status Unpin(uint64_t handle, uint32_t layer, uint64_t first, uint32_t count);

  // Sends one raw request (payload copied into the mailbox first) and returns the completion;
  // the status of the completion is returned as the Status. For tests and benchmarks.
  absl::Status Call(Message* m, const void* payload = nullptr, uint32_t payload_bytes = 0,
                    std::string* reply_payload = nullptr);

  // False once the kvstore stopped, restarted, died or reclaimed this client: re-attach then.
  bool connected() const;
  uint32_t client_index() const { return index_; }
  ShmSegment* segment() const { return segment_.get(); }
  std::byte* slot_address(uint64_t slot) const { return segment_->slot_data(slot); }

 private:
  KvStoreClient(const KvStoreClientOptions& o, std::unique_ptr<ShmSegment> seg, uint32_t index,
                uint64_t generation);
  // Whether the client slot is still ours (not reclaimed and handed to another client).
  bool OwnsSlot() const;
  absl::Status SlotsToAddresses(const Message& reply, const std::string& payload, uint32_t expected,
                                std::vector<std::byte*>* pages) const;
  void Heartbeat();

  const KvStoreClientOptions options_;
  std::unique_ptr<ShmSegment> segment_;
  const uint32_t index_;
  const uint64_t epoch_;
  const uint64_t generation_;  // of our claim of the client slot
  std::mutex mu_;
  uint64_t next_request_ = 1;
  std::atomic<bool> broken_{false};  // a call failed: never used again (re-attach)
  std::mutex beat_mu_;
  std::condition_variable beat_cv_;
  bool stopping_ = false;
  std::thread heartbeat_;
};

}  // namespace ihip::kvstore
