#pragma once

// CudaLayer: the CUDA backend's state of one (sequence, layer) — the GPU copy of its KV pages and
// the device block table over them, the device mask cache, plans and workspaces, pinned staging
// buffers and the captured decode-step graphs — and the steps computed with it. Internal to
// engine/cuda. Not thread-safe: the engine calls it with the layer's lock held.

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/cuda/decode_attention.h"
#include "engine/cuda/device_kv.h"
#include "engine/cuda/device_memory.h"
#include "engine/cuda/pruning.h"
#include "engine/engine.h"
#include "engine/hip/interrupt.h"
#include "engine/hip/mask.h"
#include "engine/paged_engine.h"
#include "engine/types.h"

namespace ihip::engine::cuda {

// What a layer needs from its engine.
class LayerContext {
 public:
  virtual int device() const = 0;
  virtual int num_sms() const = 0;
  virtual bool use_graphs() const = 0;
  virtual absl::StatusOr<DevicePagePool*> PagePool(size_t page_bytes) = 0;

 protected:
  ~LayerContext() = default;
};

// One validated step, as the engine hands it over (host fp32 q, scale folded in; o written).
struct LayerStep {
  const LayerConfig* cfg = nullptr;
  int64_t position = 0;
  int num_tokens = 1;
  int64_t kv_length = 0;  // keys stored, the step's own included
  const float* q = nullptr;
  float* o = nullptr;
  bool return_selected = false;
  const Interrupt* interrupt = nullptr;
};

// The pruning part of a LayerConfig.
PruneConfig ToPruneConfig(const LayerConfig& cfg);

class CudaLayer final : public LayerBackendState {
 public:
  CudaLayer(LayerContext* ctx, const ModelSpec& model, const PageGeometry& geometry);
  ~CudaLayer() override;

  // Allocates the block table (max_context pages), the RoPE table and the staging buffers.
  absl::Status Init();
  // Copies tokens [begin, end) of the host pages into the GPU copy (allocating GPU pages).
  absl::Status Upload(std::byte* const* host_pages, int64_t begin, int64_t end);
  // Gives the GPU pages back (the layer was unpinned); the next Upload starts from scratch.
  void DropPages();
  // INTERNAL when the GPU copy does not cover `kv_length` tokens.
  absl::Status SyncLength(int64_t kv_length) const;

  // A sparse decode step re-running stages from..N (1-based; 0 = cached mask). Updates `cache`
  // (valid, anchor, final blocks on the host) and the result's keys and masks.
  absl::Status SparseDecode(const LayerStep& step, int from, MaskCache* cache,
                            cudaStream_t stream, AttendResult* result);
  absl::Status DenseDecode(const LayerStep& step, cudaStream_t stream, AttendResult* result);
  // A prefill chunk (T > 1; or any T when dense): every query block pruned with pooled queries,
  // then block-sparse (or dense) attention on tensor cores.
  absl::Status Prefill(const LayerStep& step, bool dense, cudaStream_t stream,
                       AttendResult* result);

  int64_t device_pages() const { return int64_t(pages_.size()); }

 private:
  DeviceKv Kv() const;
  DeviceRope Rope() const;
  // The decode attention's parameters over this layer's step buffers (q in, fp32 o out).
  DecodeAttentionParams AttentionParams(bool dense, void* workspace, int splits) const;
  absl::StatusOr<const PrunePlan*> PlanFor(const LayerConfig& cfg, int num_pooled, int num_full,
                                           int64_t kv_length);
  absl::Status EnsureMask(const PrunePlan& plan);
  absl::Status EnsureDecode(const LayerConfig& cfg, int64_t kv_length);
  // Enqueues one decode step (copies in, pruning from `from`, attention, copies out).
  absl::Status RecordDecode(int from, cudaStream_t stream);
  absl::Status RunDecode(int from, cudaStream_t stream);
  void DropGraphs();
  absl::Status Finish(cudaStream_t stream);

  LayerContext* const ctx_;
  const ModelSpec model_;
  const PageGeometry geometry_;
  DevicePagePool* pool_ = nullptr;
  std::vector<uint8_t*> pages_;  // GPU pages, page i = tokens [i P, (i + 1) P)
  DeviceBuffer table_;           // device uint8_t*[table_capacity_]
  int64_t table_capacity_ = 0;
  DeviceBuffer inv_freq_;  // device double[D / 2] (extend mode)

  // Plans keyed by (num_pooled, num_full); all sized for plan_capacity_ tokens.
  std::map<std::pair<int, int>, PrunePlan> plans_;
  int64_t plan_capacity_ = 0;
  DeviceBuffer prune_ws_;
  DeviceBuffer mask_stage_[DeviceMask::kMaxStages];
  DeviceBuffer mask_counts_, mask_blocks_, mask_num_blocks_;
  DeviceMask mask_;
  bool mask_valid_ = false;  // the device mask matches the host cache

  // Decode step buffers (device and pinned host) and graphs, one per `from` (0..N).
  const PrunePlan* decode_plan_ = nullptr;
  DecodeAttentionPlan attn_plan_;
  DeviceBuffer attn_ws_, d_q_, d_o_, d_step_, d_pos_;
  PinnedBuffer h_q_, h_o_, h_step_, h_pos_, h_blocks_, h_num_blocks_;
  cudaGraphExec_t graphs_[DeviceMask::kMaxStages + 1] = {};

  // Dense decode and prefill scratch.
  DeviceBuffer dense_ws_;
  DeviceBuffer pf_q_, pf_o_, pf_pooled_, pf_pos_, pf_step_, pf_blocks_, pf_counts_, pf_ws_;
};

}  // namespace ihip::engine::cuda
