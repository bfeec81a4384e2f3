// Launcher of the prefill attention (kernels/prefill_attention.cuh): checks the params, plans the
// CTA shape (query heads per CTA) and the split-K factor, dispatches head_dim x heads-per-CTA to
// the kernel template, and merges the splits when there are several.
//
// Plan: a CTA holds 64 queries x kHeads heads of one GQA group (kHeads = the largest of 4, 2, 1
// that divides the group and fits the registers: 4 for D = 64, 2 for D = 128, 1 for D = 256), so
// the gathered and rotated key tiles serve kHeads heads. When query blocks x kv heads x head
// groups CTAs are fewer than two per multiprocessor, the key range of each block is split over
// up to kMaxSplits CTAs (each at least kMinTilesPerSplit key tiles) and merged by log-sum-exp.

#include <algorithm>

#include "engine/cuda/kernels/prefill_attention.cuh"
#include "engine/cuda/prefill_attention.h"

namespace ihip::engine::cuda {
namespace {

using prefill::PrefillLaunch;

constexpr int kMaxSplits = 64;
constexpr int kMinTilesPerSplit = 4;
constexpr int kMergeRowsPerBlock = 8;  // warps (rows) per block of the merge kernel

struct Plan {
  int heads_per_cta = 1;
  int head_groups = 1;
  int num_query_blocks = 0;
  int splits = 1;
};

int ElemShift(ElemType t) {
  switch (t) {
    case ElemType::kF32:
      return 2;
    case ElemType::kF16:
    case ElemType::kBF16:
      return 1;
    default:
      return 0;
  }
}

bool ValidShapes(const PrefillAttentionParams& p) {
  const DeviceKv& kv = p.kv;
  const int d = kv.head_dim;
  const int dt = int(kv.dtype), ot = int(p.out_dtype);
  return (d == 64 || d == 128 || d == 256) && kv.kv_heads > 0 && p.num_q_heads > 0 &&
         p.num_q_heads % kv.kv_heads == 0 && p.query_block == prefill::kQueryBlock &&
         kv.page_tokens > 0 && kv.page_tokens % 8 == 0 && dt >= 0 && dt <= 4 && ot >= 0 &&
         ot <= 2 && p.sm_count > 0 && p.num_tokens >= 0 && p.position >= 0 &&
         p.window_tokens >= 1 && p.sink_tokens >= 0 && p.max_blocks >= 0;
}

bool ValidPointers(const PrefillAttentionParams& p) {
  const bool sparse_ok =
      p.dense || (p.block_counts != nullptr && (p.max_blocks == 0 || p.blocks != nullptr));
  return p.kv.pages != nullptr && p.q != nullptr && p.out != nullptr && sparse_ok;
}

cudaError_t Validate(const PrefillAttentionParams& p) {
  if (!ValidShapes(p) || !ValidPointers(p)) return cudaErrorInvalidValue;
  const int64_t end = p.position + p.num_tokens;
  if (end > p.kv_length || end + prefill::kQueryBlock >= (int64_t{1} << 31)) {
    return cudaErrorInvalidValue;  // keys missing, or positions beyond the kernels' int range
  }
  return cudaSuccess;
}

// Upper bound of the key tiles of one query block (exact for dense, from max_blocks for sparse).
int64_t MaxKeyTiles(const PrefillAttentionParams& p) {
  const int key_tile = p.kv.head_dim == 256 ? 32 : 64;
  const int64_t slots =
      p.dense ? (p.position + p.num_tokens + 7) / 8
              : (p.sink_tokens + 7) / 8 + p.max_blocks + (p.window_tokens + p.query_block) / 8 + 2;
  return (slots * 8 + key_tile - 1) / key_tile;
}

Plan MakePlan(const PrefillAttentionParams& p) {
  Plan plan;
  const int group = p.num_q_heads / p.kv.kv_heads;
  plan.heads_per_cta = p.kv.head_dim == 64 ? 4 : p.kv.head_dim == 128 ? 2 : 1;
  while (group % plan.heads_per_cta != 0) plan.heads_per_cta /= 2;
  plan.head_groups = group / plan.heads_per_cta;
  plan.num_query_blocks = PrefillQueryBlocks(p);
  const int64_t ctas = int64_t(plan.num_query_blocks) * p.kv.kv_heads * plan.head_groups;
  if (ctas == 0) return plan;
  const int64_t wanted = (2 * int64_t(p.sm_count) + ctas - 1) / ctas;
  const int64_t most = std::min<int64_t>(kMaxSplits, MaxKeyTiles(p) / kMinTilesPerSplit);
  plan.splits = int(std::max<int64_t>(1, std::min(wanted, most)));
  return plan;
}

size_t PartialOutputBytes(const PrefillAttentionParams& p, const Plan& plan) {
  return size_t(plan.splits) * p.num_tokens * p.num_q_heads * p.kv.head_dim * sizeof(float);
}

template <int kHeadDim, int kHeads>
cudaError_t LaunchMain(const PrefillLaunch& launch, const Plan& plan, cudaStream_t stream) {
  const size_t smem = prefill::Layout<kHeadDim, kHeads>::Bytes(1 << launch.elem_shift);
  auto* kernel = &prefill::PrefillAttentionKernel<kHeadDim, kHeads>;
  const cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (err != cudaSuccess) return err;
  const dim3 grid(plan.num_query_blocks, launch.p.kv.kv_heads * plan.head_groups, plan.splits);
  kernel<<<grid, prefill::Tile<kHeadDim, kHeads>::kThreads, smem, stream>>>(launch);
  return cudaGetLastError();
}

// The one runtime -> compile-time dispatch: head_dim x heads per CTA.
cudaError_t Dispatch(const PrefillLaunch& launch, const Plan& plan, cudaStream_t stream) {
  switch (launch.p.kv.head_dim * 8 + plan.heads_per_cta) {
    case 64 * 8 + 4:
      return LaunchMain<64, 4>(launch, plan, stream);
    case 64 * 8 + 2:
      return LaunchMain<64, 2>(launch, plan, stream);
    case 64 * 8 + 1:
      return LaunchMain<64, 1>(launch, plan, stream);
    case 128 * 8 + 2:
      return LaunchMain<128, 2>(launch, plan, stream);
    case 128 * 8 + 1:
      return LaunchMain<128, 1>(launch, plan, stream);
    case 256 * 8 + 1:
      return LaunchMain<256, 1>(launch, plan, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace

size_t PrefillAttentionWorkspaceBytes(const PrefillAttentionParams& p) {
  if (!ValidShapes(p)) return 0;
  const Plan plan = MakePlan(p);
  if (plan.splits == 1) return 0;
  const size_t lse = size_t(plan.splits) * p.num_tokens * p.num_q_heads * sizeof(float);
  return PartialOutputBytes(p, plan) + (lse + 15) / 16 * 16;
}

cudaError_t LaunchPrefillAttention(const PrefillAttentionParams& p, cudaStream_t stream) {
  const cudaError_t err = Validate(p);
  if (err != cudaSuccess) return err;
  if (p.num_tokens == 0) return cudaSuccess;
  const Plan plan = MakePlan(p);
  PrefillLaunch launch;
  launch.p = p;
  launch.group = p.num_q_heads / p.kv.kv_heads;
  launch.head_groups = plan.head_groups;
  launch.num_query_blocks = plan.num_query_blocks;
  launch.splits = plan.splits;
  launch.elem_shift = ElemShift(p.kv.dtype);
  if (plan.splits > 1) {
    if (p.workspace == nullptr) return cudaErrorInvalidValue;
    launch.partial_o = static_cast<float*>(p.workspace);
    launch.partial_lse =
        reinterpret_cast<float*>(static_cast<char*>(p.workspace) + PartialOutputBytes(p, plan));
  }
  const cudaError_t main_err = Dispatch(launch, plan, stream);
  if (main_err != cudaSuccess || plan.splits == 1) return main_err;
  const int64_t rows = int64_t(p.num_tokens) * p.num_q_heads;
  const int64_t blocks = (rows + kMergeRowsPerBlock - 1) / kMergeRowsPerBlock;
  prefill::MergeSplitsKernel<<<unsigned(blocks), 32 * kMergeRowsPerBlock, 0, stream>>>(launch);
  return cudaGetLastError();
}

}  // namespace ihip::engine::cuda
