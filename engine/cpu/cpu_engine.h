#pragma once

// CpuEngine: the multithreaded CPU backend, the readable reference of DESIGN §3 (every CUDA
// kernel is tested against it). The bookkeeping is PagedEngine's; this class computes the steps.
// Thread-safe (see engine.h).

#include "engine/cpu/thread_pool.h"
#include "engine/paged_engine.h"

namespace ihip::engine::cpu {

struct CpuEngineOptions {
  int num_threads = 0;              // worker threads; 0 = one per hardware thread
  int max_tokens_per_item = 65536;  // T above this is INVALID_ARGUMENT (bounds one call's memory)
  int page_tokens = 64;             // tokens per KV page (DESIGN §4)
  absl::Status Validate() const;
  PagedEngineOptions paged() const { return {max_tokens_per_item, page_tokens}; }
};

class CpuEngine final : public PagedEngine {
 public:
  // `store` must outlive the engine.
  CpuEngine(const CpuEngineOptions& options, PageStore* store);

  const char* backend_name() const override { return "cpu"; }
  ThreadPool* pool() { return &pool_; }

 protected:
  absl::Status Compute(const Sequence& seq, LayerState& state, const LayerConfig& cfg, Step& step,
                       AttendResult* result) override;

 private:
  absl::Status Decode(const Sequence& seq, const LayerConfig& cfg, Step& step,
                      AttendResult* result);
  absl::Status Prefill(const Sequence& seq, const LayerConfig& cfg, Step& step,
                       AttendResult* result);
  absl::Status Dense(const Sequence& seq, Step& step, AttendResult* result);

  ThreadPool pool_;
};

}  // namespace ihip::engine::cpu
