#pragma once

// KvStorePageStore: the engine's PageStore over ihip-kvstore (DESIGN §4). Pages live in the
// kvstore's shared-memory pool, mapped into this process; requests travel over the client's
// ring. Sequence ids map to kvstore handles (looked up with OpenSequence when a sequence created
// by an earlier process is used again). Thread-safe.

#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/page_store.h"
#include "kvstore/kv_store_client.h"

namespace ihip::engine {

class KvStorePageStore final : public PageStore {
 public:
  // `client` must outlive the store.
  explicit KvStorePageStore(kvstore::KvStoreClient* client) : client_(client) {}

  // Switches to a new client (the kvstore restarted); forgets every handle (the new kvstore
  // numbers its sequences anew) — they are looked up again on next use. The old client may be
  // destroyed once this returns.
  void Reattach(kvstore::KvStoreClient* client);

  absl::Status CreateSequence(const SequenceId& id, int num_layers, const PageGeometry& g,
                              const std::string& metadata = "") override;
  absl::StatusOr<StoredSequence> OpenSequence(const SequenceId& id) override;
  absl::Status SuspendSequence(const SequenceId& id) override;
  absl::Status DropSequence(const SequenceId& id) override;
  absl::Status Allocate(const SequenceId& id, int layer, int64_t count,
                        std::vector<std::byte*>* pages, int64_t first = -1) override;
  absl::Status Commit(const SequenceId& id, int layer, int64_t length) override;
  absl::Status Abort(const SequenceId& id, int layer) override;
  absl::Status Truncate(const SequenceId& id, int layer, int64_t length) override;
  absl::StatusOr<int64_t> Length(const SequenceId& id, int layer) override;
  absl::Status Pin(const SequenceId& id, int layer, int64_t first, int64_t count,
                   std::vector<std::byte*>* pages) override;
  absl::Status Unpin(const SequenceId& id, int layer, int64_t first, int64_t count) override;
  int64_t BytesUsed() const override;

  // The geometry a sequence was created with, as stored in the kvstore's manifest.
  static std::string EncodeGeometry(const PageGeometry& g);
  static absl::StatusOr<PageGeometry> DecodeGeometry(const std::string& bytes);

 private:
  struct Entry {
    uint64_t handle = 0;
    PageGeometry geometry;
    std::vector<int64_t> lengths;  // committed, per layer
    std::string metadata;
    int64_t pages = 0;  // pages allocated through this store, all layers
  };
  absl::StatusOr<Entry*> Find(const SequenceId& id);  // requires mu_

  kvstore::KvStoreClient* client_;  // guarded by mu_
  mutable std::mutex mu_;
  std::unordered_map<std::string, Entry> entries_;
};

}  // namespace ihip::engine
