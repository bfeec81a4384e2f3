// Launchers of GPU pruning (pruning.h): plan sizes every buffer and grid for a maximum KV length;
// a run is one memset of the score keys plus, per stage, a score kernel (persistent grid) and
// the select kernel (one CTA). Score kernels: the tensor-core one (kernels/score_mma.cuh, 16-bit
// and fp8 keys, RoPE none or relative) where it applies, else the CUDA-core one
// (kernels/score_chunks.cuh). The runtime -> compile-time dispatch picks the CUDA-core kernel for
// (storage dtype, head dim) here and the tensor-core one in pruning_mma.cu.

#include <algorithm>

#include "engine/cuda/kernels/score_chunks.cuh"
#include "engine/cuda/kernels/score_mma.cuh"
#include "engine/cuda/kernels/select_chunks.cuh"
#include "engine/cuda/pruning.h"

namespace ihip::engine::cuda {
namespace {

using kernels::kChunksPerScoreCta;
using kernels::kScoreChains;
using kernels::kScoreThreads;
using kernels::kScoreWarps;
using kernels::kSelectThreads;
using ScoreKernel = void (*)(kernels::ScoreParams);

constexpr size_t kAlign = 256;
constexpr int kDefaultSmemLimit = 48 * 1024;

size_t AlignUp(size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

template <int kHeadDim>
ScoreKernel ScoreKernelForType(ElemType t) {
  switch (t) {
    case ElemType::kF32:
      return kernels::ScoreChunksKernel<ElemType::kF32, kHeadDim>;
    case ElemType::kF16:
      return kernels::ScoreChunksKernel<ElemType::kF16, kHeadDim>;
    case ElemType::kBF16:
      return kernels::ScoreChunksKernel<ElemType::kBF16, kHeadDim>;
    case ElemType::kF8E4M3:
      return kernels::ScoreChunksKernel<ElemType::kF8E4M3, kHeadDim>;
    case ElemType::kF8E5M2:
      return kernels::ScoreChunksKernel<ElemType::kF8E5M2, kHeadDim>;
  }
  return nullptr;
}

// The one runtime -> compile-time dispatch: (dtype, head dim) -> score kernel; null if unsupported.
ScoreKernel PickScoreKernel(ElemType t, int head_dim) {
  switch (head_dim) {
    case 64:
      return ScoreKernelForType<64>(t);
    case 128:
      return ScoreKernelForType<128>(t);
    case 256:
      return ScoreKernelForType<256>(t);
  }
  return nullptr;
}

bool ValidConfig(const PruneConfig& c) {
  if (c.num_stages < 1 || c.num_stages > DeviceMask::kMaxStages) return false;
  if (c.sink_tokens < 0 || c.sink_tokens % 8 != 0 || c.pooled_stages < 0) return false;
  for (int s = 0; s < c.num_stages; ++s) {
    const int L = c.stages[s].chunk_size;
    if (L < 8 || (L & (L - 1)) != 0 || c.stages[s].kept_chunks < 1) return false;
    if (s > 0 && L > c.stages[s - 1].chunk_size) return false;
  }
  return c.window_tokens > c.stages[0].chunk_size;
}

int QueriesOfStage(const PrunePlan& plan, int s) {
  return s < plan.cfg.pooled_stages ? plan.num_pooled : plan.num_full;
}

// Shared memory of the score kernel, enough for every RoPE style.
int ScoreSmemBytes(int num_q, int head_dim) {
  const int queries = num_q * head_dim * int(sizeof(float));
  const int angles = kScoreWarps * kScoreChains * head_dim * int(sizeof(float));
  return std::max(2 * queries, queries + angles);
}

// Candidate and output capacities per stage, in int64 to catch overflow.
bool SizeStages(PrunePlan* plan) {
  const PruneConfig& c = plan->cfg;
  const int64_t last_left = plan->max_kv_length - 1 - c.window_tokens;
  int64_t cap =
      last_left >= c.sink_tokens ? (last_left - c.sink_tokens) / c.stages[0].chunk_size + 1 : 1;
  for (int s = 0; s < c.num_stages; ++s) {
    if (s > 0)
      cap = int64_t(plan->kept_capacity[s - 1]) *
            (c.stages[s - 1].chunk_size / c.stages[s].chunk_size);
    if (cap > (int64_t{1} << 28)) return false;
    plan->max_candidates[s] = int(std::max<int64_t>(cap, 1));
    plan->kept_capacity[s] = std::min(plan->max_candidates[s], c.stages[s].kept_chunks);
  }
  const int last = c.num_stages - 1;
  plan->block_capacity = plan->kept_capacity[last] * (c.stages[last].chunk_size / 8);
  return true;
}

void LayOutWorkspace(PrunePlan* plan) {
  size_t off = 0;
  for (int s = 0; s < plan->cfg.num_stages; ++s) {  // keys first: one memset clears a suffix
    plan->keys_offset[s] = off;
    off = AlignUp(off + size_t(plan->max_candidates[s]) * sizeof(uint32_t));
  }
  for (int s = 0; s < plan->cfg.num_stages; ++s) {
    plan->kept_offset[s] = off;
    off = AlignUp(off + size_t(plan->kept_capacity[s]) * sizeof(int64_t));
  }
  plan->workspace_bytes = off;
}

// The tensor-core score kernel's shared memory and grid per stage (0: the stage does not use it):
// CTAs per head fill the device once, at most one warp tile per warp.
cudaError_t SizeMmaGrids(PrunePlan* plan, int sms, int optin) {
  const kernels::ScoreKernelFn kernel = kernels::PickScoreMmaKernel(plan->dtype, plan->head_dim);
  if (kernel == nullptr) return cudaSuccess;
  const int tile = kernels::MmaSlots(plan->dtype, plan->head_dim) * kernels::kMmaChainsPerSlot;
  int max_smem = 0;
  for (int s = 0; s < plan->cfg.num_stages; ++s) {
    const int smem = kernels::MmaSmemBytes(QueriesOfStage(*plan, s), plan->head_dim);
    if (smem <= optin) max_smem = std::max(max_smem, smem);
  }
  if (max_smem > kDefaultSmemLimit) {
    const cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, max_smem);
    if (err != cudaSuccess) return err;
  }
  for (int s = 0; s < plan->cfg.num_stages; ++s) {
    const int smem = kernels::MmaSmemBytes(QueriesOfStage(*plan, s), plan->head_dim);
    if (smem > optin) continue;
    int per_sm = 0;
    const cudaError_t err =
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kernels::kMmaThreads, smem);
    if (err != cudaSuccess) return err;
    if (per_sm < 1) continue;
    const int64_t warp_tiles = (int64_t(plan->max_candidates[s]) + tile - 1) / tile;
    const int64_t per_head = std::clamp<int64_t>(int64_t(per_sm) * sms / plan->num_q_heads, 1,
                                                 (warp_tiles + kernels::kMmaWarps - 1) /
                                                     kernels::kMmaWarps);
    plan->mma_grid[s] = int(per_head * plan->num_q_heads);
    plan->mma_smem[s] = smem;
  }
  return cudaSuccess;
}

// Shared-memory limits and persistent grid sizes of the score kernels on the current device.
cudaError_t SizeScoreGrids(PrunePlan* plan) {
  const ScoreKernel kernel = PickScoreKernel(plan->dtype, plan->head_dim);
  int device = 0, sms = 0, optin = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess)
    err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err == cudaSuccess) {
    err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  }
  if (err != cudaSuccess) return err;
  int max_smem = 0;
  for (int s = 0; s < plan->cfg.num_stages; ++s) {
    plan->score_smem[s] = ScoreSmemBytes(QueriesOfStage(*plan, s), plan->head_dim);
    max_smem = std::max(max_smem, plan->score_smem[s]);
  }
  if (max_smem > optin) return cudaErrorInvalidValue;
  if (max_smem > kDefaultSmemLimit) {
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, max_smem);
    if (err != cudaSuccess) return err;
  }
  for (int s = 0; s < plan->cfg.num_stages; ++s) {
    int per_sm = 0;
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kScoreThreads,
                                                        plan->score_smem[s]);
    if (err != cudaSuccess) return err;
    const int64_t items = int64_t(plan->max_candidates[s] + kChunksPerScoreCta - 1) /
                          kChunksPerScoreCta * plan->num_q_heads;
    plan->score_grid[s] = int(std::clamp<int64_t>(items, 1, int64_t(std::max(per_sm, 1)) * sms));
  }
  return SizeMmaGrids(plan, sms, optin);
}

kernels::StageCandidates CandidatesOf(const PrunePlan& plan, const PruneParams& params, int s) {
  kernels::StageCandidates c;
  c.capacity = plan.max_candidates[s];
  c.grid_first = plan.cfg.sink_tokens;
  c.grid_step = plan.cfg.stages[0].chunk_size;
  c.window = plan.cfg.window_tokens;
  if (s > 0) {
    c.lefts = params.mask.stage_inputs[s];
    c.count = params.mask.stage_input_counts + s;
  }
  return c;
}

kernels::ScoreParams MakeScoreParams(const PrunePlan& plan, const PruneParams& params, int s,
                                     const kernels::StageCandidates& cand, uint32_t* keys) {
  const bool pooled = s < plan.cfg.pooled_stages;
  kernels::ScoreParams p;
  p.kv = params.kv;
  p.step = params.step;
  p.cand = cand;
  p.q = pooled ? params.pooled_q : params.full_q;
  p.positions = pooled ? params.pooled_positions : params.full_positions;
  p.num_q = QueriesOfStage(plan, s);
  p.num_q_heads = plan.num_q_heads;
  p.group = plan.num_q_heads / plan.kv_heads;
  p.chunk_size = plan.cfg.stages[s].chunk_size;
  p.masking_window = plan.cfg.masking_window();
  p.inv_freq = params.rope.inv_freq;
  p.rope_style = plan.cfg.rope_style;
  p.keys = keys;
  return p;
}

cudaError_t LaunchScore(const PrunePlan& plan, const kernels::ScoreParams& p, int s,
                        cudaStream_t stream) {
  const bool chunk_indexed = p.inv_freq != nullptr && p.rope_style != kPruneRopeRelative;
  if (plan.mma_grid[s] > 0 && !chunk_indexed) {
    const kernels::ScoreKernelFn mma = kernels::PickScoreMmaKernel(plan.dtype, plan.head_dim);
    if (plan.mma_smem[s] > kDefaultSmemLimit) {
      const cudaError_t err = cudaFuncSetAttribute(
          mma, cudaFuncAttributeMaxDynamicSharedMemorySize, plan.mma_smem[s]);
      if (err != cudaSuccess) return err;
    }
    mma<<<plan.mma_grid[s], kernels::kMmaThreads, plan.mma_smem[s], stream>>>(p);
    return cudaGetLastError();
  }
  const ScoreKernel kernel = PickScoreKernel(plan.dtype, plan.head_dim);
  if (plan.score_smem[s] > kDefaultSmemLimit) {
    const cudaError_t err = cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, plan.score_smem[s]);
    if (err != cudaSuccess) return err;
  }
  kernel<<<plan.score_grid[s], kScoreThreads, plan.score_smem[s], stream>>>(p);
  return cudaGetLastError();
}

// Host checks of what a launch reads by value.
cudaError_t CheckParams(const PrunePlan& plan, const PruneParams& params, int stage) {
  if (stage < 0 || stage >= plan.cfg.num_stages || params.step == nullptr) {
    return cudaErrorInvalidValue;
  }
  if (params.kv.pages == nullptr || params.kv.kv_heads != plan.kv_heads ||
      params.kv.head_dim != plan.head_dim || params.kv.dtype != plan.dtype ||
      params.kv.page_tokens < 8 || params.kv.page_tokens % 8 != 0) {
    return cudaErrorInvalidValue;
  }
  const bool pooled = stage < plan.cfg.pooled_stages;
  const int64_t* positions = pooled ? params.pooled_positions : params.full_positions;
  if ((pooled ? params.pooled_q : params.full_q) == nullptr) return cudaErrorInvalidValue;
  if (params.rope.inv_freq != nullptr && plan.cfg.rope_style != kPruneRopeRelative &&
      positions == nullptr) {
    return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}

cudaError_t CheckMask(const PrunePlan& plan, const DeviceMask& m) {
  if (m.stage_input_counts == nullptr || m.blocks == nullptr || m.num_blocks == nullptr ||
      m.block_capacity < plan.block_capacity) {
    return cudaErrorInvalidValue;
  }
  for (int s = 1; s < plan.cfg.num_stages; ++s) {
    if (m.stage_inputs[s] == nullptr || m.stage_capacity[s] < plan.max_candidates[s]) {
      return cudaErrorInvalidValue;
    }
  }
  return cudaSuccess;
}

kernels::SelectParams MakeSelectParams(const PrunePlan& plan, const PruneParams& params, int s) {
  auto* ws = static_cast<uint8_t*>(params.workspace);
  const PruneConfig& c = plan.cfg;
  const bool last = s + 1 == c.num_stages;
  kernels::SelectParams p;
  p.step = params.step;
  p.cand = CandidatesOf(plan, params, s);
  p.keys = reinterpret_cast<const uint32_t*>(ws + plan.keys_offset[s]);
  p.kept_chunks = c.stages[s].kept_chunks;
  p.chunk_size = c.stages[s].chunk_size;
  p.next_chunk_size = last ? 0 : c.stages[s + 1].chunk_size;
  p.sink = c.sink_tokens;
  p.kept = reinterpret_cast<int64_t*>(ws + plan.kept_offset[s]);
  p.kept_capacity = plan.kept_capacity[s];
  p.out = last ? params.mask.blocks : params.mask.stage_inputs[s + 1];
  p.out_count = last ? params.mask.num_blocks : params.mask.stage_input_counts + s + 1;
  p.out_capacity = last ? plan.block_capacity : plan.max_candidates[s + 1];
  return p;
}

}  // namespace

cudaError_t PlanPrune(const PruneConfig& cfg, int num_q_heads, int kv_heads, int head_dim,
                      ElemType dtype, int num_pooled, int num_full, int64_t max_kv_length,
                      PrunePlan* plan) {
  if (plan == nullptr || !ValidConfig(cfg) || PickScoreKernel(dtype, head_dim) == nullptr ||
      kv_heads < 1 || num_q_heads < kv_heads || num_q_heads % kv_heads != 0 || max_kv_length < 1 ||
      max_kv_length >= (int64_t{1} << 30) || num_full < 1 ||
      (cfg.pooled_stages > 0 && num_pooled < 1)) {
    return cudaErrorInvalidValue;
  }
  *plan = PrunePlan{};
  plan->cfg = cfg;
  plan->num_q_heads = num_q_heads;
  plan->kv_heads = kv_heads;
  plan->head_dim = head_dim;
  plan->dtype = dtype;
  plan->num_pooled = num_pooled;
  plan->num_full = num_full;
  plan->max_kv_length = max_kv_length;
  if (!SizeStages(plan)) return cudaErrorInvalidValue;
  LayOutWorkspace(plan);
  return SizeScoreGrids(plan);
}

cudaError_t LaunchRunStages(const PrunePlan& plan, const PruneParams& params, int from_stage,
                            cudaStream_t stream) {
  const int n = plan.cfg.num_stages;
  for (int s = from_stage; s < n && s >= 0; ++s) {
    const cudaError_t err = CheckParams(plan, params, s);
    if (err != cudaSuccess) return err;
  }
  if (from_stage < 0 || from_stage >= n || params.workspace == nullptr) {
    return cudaErrorInvalidValue;
  }
  cudaError_t err = CheckMask(plan, params.mask);
  if (err != cudaSuccess) return err;
  auto* ws = static_cast<uint8_t*>(params.workspace);
  const size_t keys_begin = plan.keys_offset[from_stage];
  const size_t keys_end = plan.keys_offset[n - 1] + size_t(plan.max_candidates[n - 1]) * 4;
  err = cudaMemsetAsync(ws + keys_begin, 0, keys_end - keys_begin, stream);
  if (err != cudaSuccess) return err;
  for (int s = from_stage; s < n; ++s) {
    auto* keys = reinterpret_cast<uint32_t*>(ws + plan.keys_offset[s]);
    err = LaunchScore(plan, MakeScoreParams(plan, params, s, CandidatesOf(plan, params, s), keys),
                      s, stream);
    if (err != cudaSuccess) return err;
    kernels::SelectChunksKernel<<<1, kSelectThreads, 0, stream>>>(
        MakeSelectParams(plan, params, s));
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

cudaError_t LaunchScoreChunks(const PrunePlan& plan, const PruneParams& params, int stage,
                              const int64_t* lefts, const int* count, uint32_t* keys,
                              cudaStream_t stream) {
  cudaError_t err = CheckParams(plan, params, stage);
  if (err != cudaSuccess) return err;
  if (keys == nullptr || (lefts == nullptr) != (count == nullptr)) return cudaErrorInvalidValue;
  err = cudaMemsetAsync(keys, 0, size_t(plan.max_candidates[stage]) * sizeof(uint32_t), stream);
  if (err != cudaSuccess) return err;
  kernels::StageCandidates cand = CandidatesOf(plan, params, 0);
  cand.capacity = plan.max_candidates[stage];
  cand.lefts = lefts;
  cand.count = count;
  return LaunchScore(plan, MakeScoreParams(plan, params, stage, cand, keys), stage, stream);
}

}  // namespace ihip::engine::cuda
