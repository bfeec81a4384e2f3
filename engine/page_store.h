#pragma once

// PageStore: where the engine keeps each sequence's KV, as pages of DESIGN §4 (page_tokens
// tokens of K then V, each [page_tokens][kv_heads][head_dim] in the storage dtype). The engine
// reads and appends KV only through this interface, so the same engine runs over the in-process
// store (tests, demo) and over ihip-kvstore's shared-memory pool (the service).
//
// Protocol for one (sequence, layer): Pin the pages it reads (addresses stay valid until
// Unpin), Allocate new pages for an append, write the new tokens, then Commit the new length (or
// Abort, which frees what Allocate added). Implementations are thread-safe; the engine never
// issues two appends to the same (sequence, layer) at once.

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/types.h"

namespace ihip::engine {

class PageStore {
 public:
  virtual ~PageStore() = default;

  // Registers a sequence with `num_layers` layers of pages of geometry `g`, keeping `metadata`
  // (opaque, up to 64 KiB) with it. ALREADY_EXISTS if it is known.
  virtual absl::Status CreateSequence(const SequenceId& id, int num_layers, const PageGeometry& g,
                                      const std::string& metadata = "") = 0;
  // A sequence the store holds (e.g. created before this process started). NOT_FOUND if unknown.
  struct StoredSequence {
    int num_layers = 0;
    PageGeometry geometry;
    std::vector<int64_t> lengths;  // committed tokens per layer
    std::string metadata;
  };
  virtual absl::StatusOr<StoredSequence> OpenSequence(const SequenceId& id) = 0;
  // Lets the sequence's unpinned pages leave the host tier (a no-op where there is none).
  virtual absl::Status SuspendSequence(const SequenceId& id) = 0;
  // Frees every page of the sequence. NOT_FOUND if unknown.
  virtual absl::Status DropSequence(const SequenceId& id) = 0;

  // Appends `count` fresh pages after the layer's last page and returns their writable
  // addresses. All or nothing: RESOURCE_EXHAUSTED leaves the layer as it was.
  // `first` >= 0 is the page index the caller expects the new pages to start at (its count of
  // the layer's pages): FAILED_PRECONDITION if the store's differs (e.g. another client's
  // uncommitted pages are still there), so the caller never writes into the wrong pages.
  virtual absl::Status Allocate(const SequenceId& id, int layer, int64_t count,
                                std::vector<std::byte*>* pages, int64_t first = -1) = 0;
  // Makes `length` tokens of the layer committed (visible, and durable where the store is).
  // Pages beyond ceil(length / page_tokens) that Allocate added stay allocated for reuse.
  virtual absl::Status Commit(const SequenceId& id, int layer, int64_t length) = 0;
  // Frees pages past the committed length (a rejected or cancelled append).
  virtual absl::Status Abort(const SequenceId& id, int layer) = 0;
  // Shrinks the committed length (undoing a committed append) and frees the pages past it.
  virtual absl::Status Truncate(const SequenceId& id, int layer, int64_t length) = 0;
  // Returns the committed length of a layer.
  virtual absl::StatusOr<int64_t> Length(const SequenceId& id, int layer) = 0;

  // Pins pages [first, first + count) of the layer (resident until Unpin) and returns their
  // addresses (writable: the engine appends into the last, partly filled page).
  virtual absl::Status Pin(const SequenceId& id, int layer, int64_t first, int64_t count,
                           std::vector<std::byte*>* pages) = 0;
  virtual absl::Status Unpin(const SequenceId& id, int layer, int64_t first, int64_t count) = 0;

  // Bytes of KV held for all sequences.
  virtual int64_t BytesUsed() const = 0;
};

}  // namespace ihip::engine
