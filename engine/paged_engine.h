#pragma once

// PagedEngine: the backend-independent part of an Engine over a PageStore — the sequence
// registry, validation, pinning, appends with commit/abort, truncation, suspension, recovery and
// the mask-cache bookkeeping. A backend (CPU reference, CUDA) derives from it and computes one
// validated step (Compute), and may keep per-layer state of its own (e.g. a GPU copy of the KV)
// through the layer hooks. Thread-safe (see engine.h): the hooks and Compute run with the
// layer's lock held.

#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "engine/engine.h"
#include "engine/hip/interrupt.h"
#include "engine/hip/kv_view.h"
#include "engine/hip/mask.h"
#include "engine/hip/rope.h"
#include "engine/page_store.h"

namespace ihip::engine {

// A backend's own state of one (sequence, layer) (PagedEngine::LayerState::backend), destroyed
// with the layer.
struct LayerBackendState {
  virtual ~LayerBackendState() = default;
};

struct PagedEngineOptions {
  int max_tokens_per_item = 65536;  // T above this is INVALID_ARGUMENT (bounds one call's memory)
  int page_tokens = 64;             // tokens per KV page (DESIGN §4)
  absl::Status Validate() const;
};

class PagedEngine : public Engine {
 public:
  // `store` must outlive the engine.
  PagedEngine(const PagedEngineOptions& options, PageStore* store);
  ~PagedEngine() override;

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

 protected:
  struct LayerState {
    std::mutex mu;
    // Written under `mu`; atomic so that Stats() reads them without waiting for work in flight.
    std::atomic<int64_t> length{0};  // committed tokens
    std::atomic<bool> pinned{true};  // false: `pages` is empty until the next use pins them
    std::vector<std::byte*> pages;   // block table of the pages this engine holds pinned
    absl::Time last_used = absl::Now();
    MaskCache cache;
    std::unique_ptr<LayerBackendState> backend;  // owned by the backend; may be null
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
  struct Step {
    int layer = 0;
    int64_t position = 0;
    int num_tokens = 0;
    KvView kv;             // every key the step may read (its own tokens included)
    std::vector<float> q;  // [T][Hq][D], softmax scale folded in
    std::vector<float> o;  // [T][Hq][D], written by Compute
    MaskCache cache;       // the layer's cache; a sparse decode updates it
    AttendOptions options;
    Interrupt interrupt;
  };

  // The stage a sparse decode step re-runs from (1..N; 0 = the cached mask): the option's
  // override, else the refresh schedule (DESIGN §3.3); every stage when nothing is cached.
  static int RefreshFrom(const LayerConfig& cfg, const Step& step);

  // Computes step.o (and the mask cache of a sparse decode, result's fields) for a validated
  // step: dense (options.mode), decode (T = 1) or prefill.
  virtual absl::Status Compute(const Sequence& seq, LayerState& state, const LayerConfig& cfg,
                               Step& step, AttendResult* result) = 0;
  // Layer hooks, called with the layer's lock held. After the layer's committed pages were
  // pinned (state.pages, state.length):
  virtual absl::Status OnPinned(const Sequence& seq, int layer, LayerState& state) {
    return absl::OkStatus();
  }
  // After tokens [position, position + T) were written into state.pages (not yet committed):
  virtual absl::Status OnWritten(const Sequence& seq, int layer, LayerState& state,
                                 int64_t position, int num_tokens) {
    return absl::OkStatus();
  }
  // After the layer's pages were unpinned (or forgotten by Resync):
  virtual void OnUnpinned(const Sequence& seq, int layer, LayerState& state) {}

  const PagedEngineOptions& options() const { return options_; }
  // Destroys every layer's backend state (a backend's destructor calls it while the resources
  // that state points into are still alive).
  void ReleaseBackendStates();

 private:
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

  const PagedEngineOptions options_;
  PageStore* const store_;
  mutable std::mutex mu_;
  std::unordered_map<std::string, std::shared_ptr<Sequence>> sequences_;
  std::unordered_set<std::string> creating_;  // ids whose CreateSequence is in the store
};

}  // namespace ihip::engine
