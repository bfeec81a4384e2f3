#pragma once

// Engine: the attention computation behind ihip-server (DESIGN §3). For each sequence it keeps,
// per layer, the KV length, the mask cache and the decode-step counter; the KV bytes live in a
// PageStore. CUDA-free and protobuf-free; backends (CPU reference, CUDA) implement it.
//
// Thread-safety: every method may be called concurrently. Calls on the same (sequence, layer)
// are serialised; calls on different layers or sequences run in parallel.

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/hip_config.h"
#include "engine/types.h"

namespace ihip::engine {

enum class AttentionMode { kSparse, kDense };

// Refresh override for a decode step (benchmarks and tests): by default the refresh schedule
// decides (DESIGN §3.3).
constexpr int kRefreshBySchedule = -1;
constexpr int kRefreshReuseMask = 0;  // 1..N: re-run stages i..N from the cached input of i

struct AttendOptions {
  AttentionMode mode = AttentionMode::kSparse;
  // false: evaluate only. The queries sit at positions [position, position + T) whose KV is
  // already stored; k and v are ignored; nothing is appended, the mask cache and the decode-step
  // counter are read but not changed.
  bool append = true;
  int refresh = kRefreshBySchedule;
  bool return_selected = false;                  // fill AttendResult::masks
  bool return_stage_chunks = false;              // fill MaskInfo::stage_chunks too (debugging)
  absl::Time deadline = absl::InfiniteFuture();  // DEADLINE_EXCEEDED past it, nothing appended
  const std::atomic<bool>* cancelled = nullptr;  // CANCELLED when set, nothing appended
};

// One (sequence, layer) step: append `num_tokens` tokens' k and v at `position`, then attend
// with their queries. Tensors are row-major in the sequence's wire dtype.
struct AttendItem {
  SequenceId sequence;
  int layer = 0;
  int64_t position = 0;     // first new token; must equal the layer's length
  int num_tokens = 1;       // T; 1 = decode step, > 1 = prefill chunk
  const void* q = nullptr;  // [T, Hq, D]
  const void* k = nullptr;  // [T, Hkv, D]
  const void* v = nullptr;  // [T, Hkv, D]
  void* out = nullptr;      // [T, Hq, D], written
  AttendOptions options;
};

// The mask shared by a block of queries.
struct MaskInfo {
  int query_offset = 0;  // first query of the item served by this mask
  int num_queries = 0;
  std::vector<int64_t> blocks;  // selected 8-token blocks (block b = tokens [8b, 8b+8)), ascending
  // Per stage, the left token of every chunk kept by that stage (ascending); with
  // return_stage_chunks only.
  std::vector<std::vector<int64_t>> stage_chunks;
};

struct AttendResult {
  int refreshed_from_stage = 0;  // decode: 1..N = stage re-run from; 0 = cached mask reused
  int64_t attended_keys = 0;     // keys attended, summed over the item's queries
  std::vector<MaskInfo> masks;   // with return_selected
};

struct EngineStats {
  int64_t sequences = 0;
  int64_t pinned_layers = 0;  // (sequence, layer) pairs whose pages are pinned
  int64_t layers = 0;
  int64_t tokens = 0;  // KV tokens stored, all sequences and layers
};

struct SequenceInfo {
  SequenceId id;
  ModelSpec model;
  HipConfig config;
  std::vector<int64_t> layer_lengths;
};

class Engine {
 public:
  virtual ~Engine() = default;

  // `metadata` (opaque, up to 64 KiB) is stored with the sequence's KV; services keep what they
  // need to recover the sequence after a restart there.
  virtual absl::Status CreateSequence(const SequenceId& id, const ModelSpec& model,
                                      const HipConfig& config,
                                      const std::string& metadata = "") = 0;
  // Registers a sequence that the page store already holds (created by an earlier process) with
  // the model and config it was created with. Its pages are pinned on first use.
  virtual absl::Status RecoverSequence(const SequenceId& id, const ModelSpec& model,
                                       const HipConfig& config) = 0;
  // Unpins the sequence's pages and lets them leave the host tier; the next use brings them back.
  virtual absl::Status SuspendSequence(const SequenceId& id) = 0;
  // Unpins the pages of every layer unused for at least `idle` (so the page store may spill
  // them); returns how many layers it unpinned.
  virtual int UnpinIdle(absl::Duration idle) = 0;
  // After the page store was re-attached (its kvstore restarted): forgets every pin without
  // unpinning (they died with the old store), re-reads every layer's committed length from the
  // store (the source of truth), and returns the sequences the store no longer holds (the engine
  // still has them: release them). Pages are pinned again on next use.
  virtual std::vector<SequenceId> Resync() = 0;
  virtual EngineStats Stats() const = 0;
  virtual absl::Status ReleaseSequence(const SequenceId& id) = 0;
  virtual absl::StatusOr<SequenceInfo> GetSequence(const SequenceId& id) const = 0;
  virtual std::vector<SequenceId> ListSequences() const = 0;

  // Validates the item against the sequence's ModelSpec (INVALID_ARGUMENT naming the field,
  // NOT_FOUND for an unknown sequence), appends k and v, and writes the attention output. A
  // rejected, cancelled or expired item appends nothing.
  virtual absl::Status Attend(const AttendItem& item, AttendResult* result) = 0;

  // Undoes appends: shrinks a layer to `length` tokens (<= its length) and resets its mask cache.
  // For a service whose multi-item request failed after earlier items were applied.
  virtual absl::Status Truncate(const SequenceId& id, int layer, int64_t length) = 0;

  // Appends KV without queries (bulk import). Same validation; invalidates the layer's mask
  // cache (the next decode step runs every stage).
  virtual absl::Status AppendKv(const SequenceId& id, int layer, int64_t position, int num_tokens,
                                const void* k, const void* v) = 0;

  virtual const char* backend_name() const = 0;

  // OK while the engine can compute. A backend whose device failed for good (a sticky CUDA
  // error: the context is unusable) returns that error from then on; the process must exit so
  // that its orchestrator restarts it.
  virtual absl::Status Health() const { return absl::OkStatus(); }
};

}  // namespace ihip::engine
