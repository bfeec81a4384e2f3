#pragma once

// InMemoryPageStore: PageStore over heap pages in this process (tests, the demo, benchmarks,
// single-process use). Pages never move, so pinning only checks the range. Thread-safe.

#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/page_store.h"

namespace ihip::engine {

class InMemoryPageStore final : public PageStore {
 public:
  // `capacity_bytes` bounds the pages held (0 = unbounded); Allocate past it is
  // RESOURCE_EXHAUSTED.
  explicit InMemoryPageStore(int64_t capacity_bytes = 0) : capacity_bytes_(capacity_bytes) {}

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

 private:
  struct Page {
    std::unique_ptr<std::byte[]> bytes;
  };
  struct Layer {
    std::vector<Page> pages;
    int64_t length = 0;
  };
  struct Sequence {
    PageGeometry geometry;
    std::vector<Layer> layers;
    std::string metadata;
  };

  absl::StatusOr<Layer*> FindLayer(const SequenceId& id, int layer);

  const int64_t capacity_bytes_;
  mutable std::mutex mu_;
  std::unordered_map<std::string, Sequence> sequences_;
  int64_t bytes_used_ = 0;
};

}  // namespace ihip::engine
