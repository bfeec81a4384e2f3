// Launchers of GPU pruning (pruning.h): plan sizes every buffer and grid for a maximum KV length;
// a run is one memset of the score keys plus, per stage, a score kernel (persistent grid) and the
// select kernel (one CTA per query block, kernels/select_chunks.cuh). Score kernels: the
// tensor-core one (kernels/score_mma.cuh, 16-bit and fp8 keys, RoPE none or relative) where it
// applies, else the CUDA-core one (kernels/score_chunks.cuh). The runtime -> compile-time
// dispatch picks the CUDA-core kernel for (storage dtype, head dim) here and the tensor-core one
// in pruning_mma.cu. A batched run (prefill) is the same launches with grid y = query block.

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
  for (int s = 1; s < plan->cfg.num_stages; ++s) {
    plan->batch_inputs_offset[s] = off;
    off = AlignUp(off + size_t(plan->max_candidates[s]) * sizeof(int64_t));
  }
  plan->batch_counts_offset = off;
  plan->batch_block_bytes = AlignUp(off + DeviceMask::kMaxStages * sizeof(int));
}

// Shared memory of the select after stage s: its keys in smem up to kSelectCachedKeys.
int SelectSmem(PrunePlan* plan, int s) {
  plan->cached_keys[s] = std::min(plan->max_candidates[s], kernels::kSelectCachedKeys);
  return kernels::SelectSmemBytes(plan->cached_keys[s]);
}

// The tensor-core score kernel's shared memory and grid per stage (0: the stage does not use it):
// CTAs per head fill the device once, at most one warp tile per warp.
cudaError_t SizeMmaGrids(PrunePlan* plan, int sms, int optin) {
  const kernels::ScoreKernelFn kernel = kernels::PickScoreMmaKernel(plan->dtype, plan->head_dim);
  if (kernel == nullptr) return cudaSuccess;
  const int tile = kernels::MmaSlots(plan->dtype, plan->head_dim) * kernels::kMmaChainsPerSlot;
  int max_smem = 0;
  int smem_of[DeviceMask::kMaxStages] = {};
  for (int s = 0; s < plan->cfg.num_stages; ++s) {
    smem_of[s] = kernels::MmaSmemBytes(QueriesOfStage(*plan, s), plan->head_dim);
    if (smem_of[s] <= optin) max_smem = std::max(max_smem, smem_of[s]);
  }
  if (max_smem > kDefaultSmemLimit) {
    const cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, max_smem);
    if (err != cudaSuccess) return err;
  }
  for (int s = 0; s < plan->cfg.num_stages; ++s) {
    const int smem = smem_of[s];
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
    plan->mma_resident[s] = per_sm * sms;
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
    plan->select_smem[s] = SelectSmem(plan, s);
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
    plan->score_resident[s] = std::max(per_sm, 1) * sms;
    plan->score_grid[s] = int(std::clamp<int64_t>(items, 1, plan->score_resident[s]));
  }
  return SizeMmaGrids(plan, sms, optin);
}

// Where one launch finds every query block's inputs and outputs: pointers of block 0 and the
// strides (elements) to the next block; a single run is one block with zero strides.
struct RunArgs {
  DeviceKv kv;
  DeviceRope rope;
  const StepScalars* step = nullptr;
  const float* pooled_q = nullptr;
  const int64_t* pooled_pos = nullptr;
  const float* full_q = nullptr;
  const int64_t* full_pos = nullptr;
  int64_t* inputs[DeviceMask::kMaxStages] = {};  // stage s's candidates (s >= 1)
  int* counts = nullptr;                         // [kMaxStages] candidate counts
  int64_t* blocks = nullptr;                     // final 8-token blocks
  int* num_blocks = nullptr;
  uint8_t* ws = nullptr;                         // null only for LaunchScoreChunks
  int num_query_blocks = 1;
  int64_t step_stride = 0, pooled_q_stride = 0, pooled_pos_stride = 0, full_q_stride = 0;
  int64_t full_pos_stride = 0, ws_stride = 0;  // ws_stride in bytes
  int64_t inputs_stride = 0, counts_stride = 0, blocks_stride = 0, num_blocks_stride = 0;
};

template <class T>
T* WsAt(const RunArgs& a, size_t offset) {
  return a.ws != nullptr ? reinterpret_cast<T*>(a.ws + offset) : nullptr;
}

// The fields PruneParams and PruneBatchParams share.
template <class Params>
RunArgs CommonArgs(const Params& params) {
  RunArgs a;
  a.kv = params.kv;
  a.rope = params.rope;
  a.step = params.step;
  a.pooled_q = params.pooled_q;
  a.pooled_pos = params.pooled_positions;
  a.full_q = params.full_q;
  a.full_pos = params.full_positions;
  a.ws = static_cast<uint8_t*>(params.workspace);
  return a;
}

RunArgs SingleRun(const PruneParams& params) {
  RunArgs a = CommonArgs(params);
  for (int s = 1; s < DeviceMask::kMaxStages; ++s) a.inputs[s] = params.mask.stage_inputs[s];
  a.counts = params.mask.stage_input_counts;
  a.blocks = params.mask.blocks;
  a.num_blocks = params.mask.num_blocks;
  return a;
}

RunArgs BatchRun(const PrunePlan& plan, const PruneBatchParams& params) {
  RunArgs a = CommonArgs(params);
  for (int s = 1; s < plan.cfg.num_stages; ++s) {
    a.inputs[s] = WsAt<int64_t>(a, plan.batch_inputs_offset[s]);
  }
  a.counts = WsAt<int>(a, plan.batch_counts_offset);
  a.blocks = params.blocks;
  a.num_blocks = params.block_counts;
  a.num_query_blocks = params.num_query_blocks;
  a.step_stride = 1;
  a.pooled_q_stride = params.pooled_q_stride;
  a.pooled_pos_stride = params.pooled_positions_stride;
  a.full_q_stride = params.full_q_stride;
  a.full_pos_stride = params.full_positions_stride;
  a.ws_stride = int64_t(plan.batch_block_bytes);
  a.inputs_stride = a.ws_stride / int64_t(sizeof(int64_t));
  a.counts_stride = a.ws_stride / int64_t(sizeof(int));
  a.blocks_stride = params.blocks_stride;
  a.num_blocks_stride = 1;
  return a;
}

kernels::StageCandidates CandidatesOf(const PrunePlan& plan, const RunArgs& a, int s) {
  kernels::StageCandidates c;
  c.capacity = plan.max_candidates[s];
  c.grid_first = plan.cfg.sink_tokens;
  c.grid_step = plan.cfg.stages[0].chunk_size;
  c.window = plan.cfg.window_tokens;
  if (s > 0) {
    c.lefts = a.inputs[s];
    c.count = a.counts + s;
  }
  c.block_bytes = int(a.ws_stride);
  return c;
}

kernels::SelectParams MakeSelectParams(const PrunePlan& plan, const RunArgs& a, int s) {
  const PruneConfig& c = plan.cfg;
  const bool last = s + 1 == c.num_stages;
  kernels::SelectParams p;
  p.kept_chunks = c.stages[s].kept_chunks;
  p.chunk_size = c.stages[s].chunk_size;
  p.next_chunk_size = last ? 0 : c.stages[s + 1].chunk_size;
  p.sink = c.sink_tokens;
  p.kept = WsAt<int64_t>(a, plan.kept_offset[s]);
  p.kept_capacity = plan.kept_capacity[s];
  p.out = last ? a.blocks : a.inputs[s + 1];
  p.out_count = last ? a.num_blocks : a.counts + s + 1;
  p.out_capacity = last ? plan.block_capacity : plan.max_candidates[s + 1];
  p.cached_keys = plan.cached_keys[s];
  p.out_stride = int(last ? a.blocks_stride : a.inputs_stride);
  p.out_count_stride = int(last ? a.num_blocks_stride : a.counts_stride);
  return p;
}

// Score and select parameters of stage s.
kernels::ScoreParams MakeScoreParams(const PrunePlan& plan, const RunArgs& a, int s) {
  const bool pooled = s < plan.cfg.pooled_stages;
  kernels::ScoreParams p;
  p.kv = a.kv;
  p.step = a.step;
  p.cand = CandidatesOf(plan, a, s);
  p.q = pooled ? a.pooled_q : a.full_q;
  p.positions = pooled ? a.pooled_pos : a.full_pos;
  p.num_q = QueriesOfStage(plan, s);
  p.num_q_heads = plan.num_q_heads;
  p.group = plan.num_q_heads / plan.kv_heads;
  p.chunk_size = plan.cfg.stages[s].chunk_size;
  p.masking_window = plan.cfg.masking_window();
  p.inv_freq = a.rope.inv_freq;
  p.rope_style = plan.cfg.rope_style;
  p.keys = WsAt<uint32_t>(a, plan.keys_offset[s]);
  p.select = MakeSelectParams(plan, a, s);
  p.step_stride = int(a.step_stride);
  p.q_stride = int(pooled ? a.pooled_q_stride : a.full_q_stride);
  p.positions_stride = int(pooled ? a.pooled_pos_stride : a.full_pos_stride);
  return p;
}

// CTAs per query block: the plan's grid for one block; a batch shares out the resident CTAs
// (at least one per head or item; the items of a block bound it from above).
int64_t BatchedGrid(int single, int resident, int unit, int num_query_blocks) {
  if (num_query_blocks == 1) return single;
  const int64_t units = std::max<int64_t>(1, single / unit);
  const int64_t share = (int64_t(resident) / unit + num_query_blocks - 1) / num_query_blocks;
  return std::clamp<int64_t>(share, 1, units) * unit;
}

cudaError_t LaunchScore(const PrunePlan& plan, const kernels::ScoreParams& p, int s, int nqb,
                        cudaStream_t stream) {
  const bool chunk_indexed = p.inv_freq != nullptr && p.rope_style != kPruneRopeRelative;
  if (plan.mma_grid[s] > 0 && !chunk_indexed) {
    const kernels::ScoreKernelFn mma = kernels::PickScoreMmaKernel(plan.dtype, plan.head_dim);
    if (plan.mma_smem[s] > kDefaultSmemLimit) {
      const cudaError_t err = cudaFuncSetAttribute(
          mma, cudaFuncAttributeMaxDynamicSharedMemorySize, plan.mma_smem[s]);
      if (err != cudaSuccess) return err;
    }
    const dim3 grid(unsigned(BatchedGrid(plan.mma_grid[s], plan.mma_resident[s],
                                         plan.num_q_heads, nqb)),
                    unsigned(nqb));
    mma<<<grid, kernels::kMmaThreads, plan.mma_smem[s], stream>>>(p);
    return cudaGetLastError();
  }
  const ScoreKernel kernel = PickScoreKernel(plan.dtype, plan.head_dim);
  if (plan.score_smem[s] > kDefaultSmemLimit) {
    const cudaError_t err = cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, plan.score_smem[s]);
    if (err != cudaSuccess) return err;
  }
  const dim3 grid(unsigned(BatchedGrid(plan.score_grid[s], plan.score_resident[s], 1, nqb)),
                  unsigned(nqb));
  kernel<<<grid, kScoreThreads, plan.score_smem[s], stream>>>(p);
  return cudaGetLastError();
}

// Host checks of what a launch reads by value.
cudaError_t CheckArgs(const PrunePlan& plan, const RunArgs& a, int stage) {
  if (stage < 0 || stage >= plan.cfg.num_stages || a.step == nullptr) {
    return cudaErrorInvalidValue;
  }
  if (a.kv.pages == nullptr || a.kv.kv_heads != plan.kv_heads ||
      a.kv.head_dim != plan.head_dim || a.kv.dtype != plan.dtype || a.kv.page_tokens < 8 ||
      a.kv.page_tokens % 8 != 0) {
    return cudaErrorInvalidValue;
  }
  const bool pooled = stage < plan.cfg.pooled_stages;
  const int64_t* positions = pooled ? a.pooled_pos : a.full_pos;
  if ((pooled ? a.pooled_q : a.full_q) == nullptr) return cudaErrorInvalidValue;
  if (a.rope.inv_freq != nullptr && plan.cfg.rope_style != kPruneRopeRelative &&
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

// Stages from_stage.. of every query block of `a`, after the caller cleared their score keys.
cudaError_t LaunchStages(const PrunePlan& plan, const RunArgs& a, int from_stage,
                         cudaStream_t stream) {
  const int nqb = a.num_query_blocks;
  for (int s = from_stage; s < plan.cfg.num_stages; ++s) {
    const kernels::ScoreParams p = MakeScoreParams(plan, a, s);
    cudaError_t err = LaunchScore(plan, p, s, nqb, stream);
    if (err != cudaSuccess) return err;
    kernels::SelectChunksKernel<kernels::kSelectThreads>
        <<<dim3(1, unsigned(nqb)), kernels::kSelectThreads, plan.select_smem[s], stream>>>(p);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

// End of the score keys in a workspace (slice).
size_t KeysEnd(const PrunePlan& plan) {
  const int last = plan.cfg.num_stages - 1;
  return plan.keys_offset[last] + size_t(plan.max_candidates[last]) * sizeof(uint32_t);
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
  const RunArgs a = SingleRun(params);
  for (int s = from_stage; s < n && s >= 0; ++s) {
    const cudaError_t err = CheckArgs(plan, a, s);
    if (err != cudaSuccess) return err;
  }
  if (from_stage < 0 || from_stage >= n || params.workspace == nullptr) {
    return cudaErrorInvalidValue;
  }
  cudaError_t err = CheckMask(plan, params.mask);
  if (err != cudaSuccess) return err;
  const size_t begin = plan.keys_offset[from_stage];
  err = cudaMemsetAsync(a.ws + begin, 0, KeysEnd(plan) - begin, stream);
  if (err != cudaSuccess) return err;
  return LaunchStages(plan, a, from_stage, stream);
}

size_t PruneBatchWorkspaceBytes(const PrunePlan& plan, int num_query_blocks) {
  return plan.batch_block_bytes * size_t(std::max(num_query_blocks, 0));
}

cudaError_t LaunchRunStagesBatched(const PrunePlan& plan, const PruneBatchParams& params,
                                   cudaStream_t stream) {
  const RunArgs a = BatchRun(plan, params);
  for (int s = 0; s < plan.cfg.num_stages; ++s) {
    const cudaError_t err = CheckArgs(plan, a, s);
    if (err != cudaSuccess) return err;
  }
  if (params.num_query_blocks < 1 || params.num_query_blocks > 65535 ||
      params.workspace == nullptr || params.blocks == nullptr ||
      params.block_counts == nullptr || params.blocks_stride < plan.block_capacity ||
      (plan.cfg.pooled_stages > 0 && params.pooled_q_stride < int64_t(plan.num_pooled) *
                                                                   plan.num_q_heads *
                                                                   plan.head_dim) ||
      params.full_q_stride < int64_t(plan.num_full) * plan.num_q_heads * plan.head_dim) {
    return cudaErrorInvalidValue;
  }
  // Kernels offset per-block pointers in 32-bit arithmetic.
  const int64_t last = params.num_query_blocks - 1;
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  if (int64_t(plan.batch_block_bytes) * (last + 1) > kMax ||
      std::max({params.pooled_q_stride, params.full_q_stride, params.pooled_positions_stride,
                params.full_positions_stride, int64_t(params.blocks_stride)}) * last > kMax ||
      std::min({params.pooled_q_stride, params.full_q_stride, params.pooled_positions_stride,
                params.full_positions_stride}) < 0) {
    return cudaErrorInvalidValue;
  }
  cudaError_t err = cudaMemset2DAsync(a.ws, plan.batch_block_bytes, 0, KeysEnd(plan),
                                      size_t(params.num_query_blocks), stream);
  if (err != cudaSuccess) return err;
  return LaunchStages(plan, a, 0, stream);
}

cudaError_t LaunchScoreChunks(const PrunePlan& plan, const PruneParams& params, int stage,
                              const int64_t* lefts, const int* count, uint32_t* keys,
                              cudaStream_t stream) {
  const RunArgs a = SingleRun(params);
  cudaError_t err = CheckArgs(plan, a, stage);
  if (err != cudaSuccess) return err;
  if (keys == nullptr || (lefts == nullptr) != (count == nullptr)) return cudaErrorInvalidValue;
  err = cudaMemsetAsync(keys, 0, size_t(plan.max_candidates[stage]) * sizeof(uint32_t), stream);
  if (err != cudaSuccess) return err;
  kernels::ScoreParams p = MakeScoreParams(plan, a, stage);
  p.cand = CandidatesOf(plan, a, 0);
  p.cand.capacity = plan.max_candidates[stage];
  p.cand.lefts = lefts;
  p.cand.count = count;
  p.keys = keys;
  return LaunchScore(plan, p, stage, 1, stream);
}

}  // namespace ihip::engine::cuda
