#pragma once

// CpuEngine: the multithreaded CPU backend, the readable reference of DESIGN §3. Every CUDA
// kernel is tested against it. Thread-safe (see engine.h).

#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "engine/cpu/thread_pool.h"
#include "engine/engine.h"
#include "engine/hip/mask.h"
#include "engine/hip/rope.h"
#include "engine/page_store.h"

namespace ihip::engine::cpu {

struct CpuEngineOptions {
  int num_threads = 0;              // worker threads; 0 = one per hardware thread
  int max_tokens_per_item = 65536;  // T above this is INVALID_ARGUMENT (bounds one call's memory)
  int page_tokens = 64;             // tokens per KV page (DESIGN §4)
  absl::Status Validate() const;
};

class CpuEngine final : public Engine {
 public:
  // `store` must outlive the engine.
  CpuEngine(const CpuEngineOptions& options, PageStore* store);
  ~CpuEngine() override;

  absl::Status CreateSequence(const SequenceId& id, const ModelSpec& model, const HipConfig& config,
                              const std::string& metadata = "") override;
  absl::Status RecoverSequence(const SequenceId& id, const ModelSpec& model,
                               const HipConfig& config) override;
  absl::Status SuspendSequence(const SequenceId& id) override;
  int UnpinIdle(absl::Duration idle) override;
  std::vector<SequenceId> Resync() override;
  EngineStats Stats() const override;
  absl::Status ReleaseSequence(const SequenceId& id) override;
  absl::StatusOr<SequenceInfo> GetSequence(const SequenceId& id) const override;
  std::vector<SequenceId> ListSequences() const override;
  absl::Status Attend(const AttendItem& item, AttendResult* result) override;
  absl::Status Truncate(const SequenceId& id, int layer, int64_t length) override;
  absl::Status AppendKv(const SequenceId& id, int layer, int64_t position, int num_tokens,
                        const void* k, const void* v) override;
  const char* backend_name() const override { return "cpu"; }

  ThreadPool* pool() { return &pool_; }

 private:
  struct LayerState {
    std::mutex mu;
    // Written under `mu`; atomic so that Stats() reads them without waiting for work in flight.
    std::atomic<int64_t> length{0};  // committed tokens
    std::atomic<bool> pinned{true};  // false: `pages` is empty until the next use pins them
    std::vector<std::byte*> pages;   // block table of the pages this engine holds pinned
    absl::Time last_used = absl::Now();
    MaskCache cache;
  };
  struct Sequence {
    SequenceId id;
    ModelSpec model;
    HipConfig config;
    PageGeometry geometry;
    std::unique_ptr<Rope> rope;  // null in RoPE `none` mode
    std::vector<std::unique_ptr<LayerState>> layers;
    // Set by ReleaseSequence while it holds every layer's lock: a request that found the
    // sequence before it was released sees this under its layer lock and touches nothing.
    bool released = false;
  };
  // The work of one Attend, once the item is validated and its KV written.
  struct Step;

  absl::StatusOr<std::shared_ptr<Sequence>> Find(const SequenceId& id) const;
  absl::StatusOr<std::shared_ptr<Sequence>> NewSequence(const SequenceId& id,
                                                        const ModelSpec& model,
                                                        const HipConfig& config) const;
  // Pins the layer's committed pages if they are not (state.mu held).
  absl::Status EnsurePinned(const Sequence& seq, int layer, LayerState& state);
  absl::Status UnpinLayer(const Sequence& seq, int layer, LayerState& state);
  absl::Status CheckShape(const Sequence& seq, int layer, int num_tokens, int64_t position) const;
  // Writes k, v of tokens [position, position + T) after the committed length (uncommitted).
  absl::Status WriteKv(const Sequence& seq, int layer, LayerState& state, int64_t position, int T,
                       const void* k, const void* v);
  absl::Status CommitOrAbort(const Sequence& seq, int layer, LayerState& state, int64_t length,
                             absl::Status status);
  absl::Status Decode(const Sequence& seq, const LayerConfig& cfg, Step& step,
                      AttendResult* result);
  absl::Status Prefill(const Sequence& seq, const LayerConfig& cfg, Step& step,
                       AttendResult* result);
  absl::Status Dense(const Sequence& seq, Step& step, AttendResult* result);

  const CpuEngineOptions options_;
  PageStore* const store_;
  ThreadPool pool_;
  mutable std::mutex mu_;
  std::unordered_map<std::string, std::shared_ptr<Sequence>> sequences_;
  std::unordered_set<std::string> creating_;  // ids whose CreateSequence is in the store
};

}  // namespace ihip::engine::cpu
