// CudaLayer::Prefill: a prefill chunk on the GPU (DESIGN §3.2 prefill, §3.5). Each query block
// of 64 queries is pruned with its queries mean-pooled over groups of pool_stride in the pooled
// stages (as the CPU backend), into its own row of selected blocks (all full blocks in one
// batched pruning run); one tensor-core attention launch then serves every block.

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/cuda_layer.h"
#include "engine/cuda/prefill_attention.h"
#include "engine/status_macros.h"

namespace ihip::engine::cuda {
namespace {

// Host-side inputs of the per-block pruning: pooled queries and positions, full positions and
// the step scalars of every block.
struct BlockInputs {
  int num_blocks = 0;
  int max_pooled = 0;
  std::vector<float> pooled;             // [num_blocks][max_pooled][Hq][D]
  std::vector<int64_t> pooled_pos;       // [num_blocks][max_pooled]
  std::vector<int64_t> full_pos;         // [num_blocks][query_block]
  std::vector<StepScalars> scalars;      // [num_blocks]
  std::vector<std::pair<int, int>> counts;  // (pooled, full) per block
};

BlockInputs MakeBlockInputs(const LayerStep& step, const LayerConfig& cfg, int qrow) {
  BlockInputs in;
  const int T = step.num_tokens;
  const int qb = cfg.query_block;
  in.num_blocks = (T + qb - 1) / qb;
  in.max_pooled = (qb + cfg.pool_stride - 1) / cfg.pool_stride;
  in.pooled.assign(size_t(in.num_blocks) * in.max_pooled * qrow, 0.0f);
  in.pooled_pos.assign(size_t(in.num_blocks) * in.max_pooled, 0);
  in.full_pos.assign(size_t(in.num_blocks) * qb, 0);
  for (int b = 0; b < in.num_blocks; ++b) {
    const int b0 = b * qb;
    const int nb = std::min(qb, T - b0);
    const int64_t p_min = step.position + b0;
    const int ng = (nb + cfg.pool_stride - 1) / cfg.pool_stride;
    for (int i = 0; i < nb; ++i) in.full_pos[size_t(b) * qb + i] = p_min + i;
    for (int g = 0; g < ng; ++g) {
      const int first = g * cfg.pool_stride;
      const int count = std::min(cfg.pool_stride, nb - first);
      in.pooled_pos[size_t(b) * in.max_pooled + g] = p_min + first;
      float* dst = in.pooled.data() + (size_t(b) * in.max_pooled + g) * qrow;
      for (int i = first; i < first + count; ++i) {
        const float* src = step.q + size_t(b0 + i) * qrow;
        for (int x = 0; x < qrow; ++x) dst[x] += src[x] / float(count);
      }
    }
    in.scalars.push_back(StepScalars{p_min, step.kv_length, p_min, p_min});
    in.counts.emplace_back(ng, nb);
  }
  return in;
}

template <class T>
absl::Status Put(DeviceBuffer& buf, const std::vector<T>& host, cudaStream_t s) {
  IHIP_RETURN_IF_ERROR(buf.Reserve(std::max<size_t>(host.size() * sizeof(T), 16)));
  IHIP_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(buf.get(), host.data(), host.size() * sizeof(T),
                                            cudaMemcpyHostToDevice, s));
  return absl::OkStatus();
}

}  // namespace

absl::Status CudaLayer::Prefill(const LayerStep& step, bool dense, cudaStream_t s,
                                AttendResult* result) {
  const LayerConfig& cfg = *step.cfg;
  const int T = step.num_tokens;
  const int qrow = model_.num_q_heads * model_.head_dim;
  const size_t qo_bytes = size_t(T) * qrow * sizeof(float);
  IHIP_RETURN_IF_ERROR(pf_q_.Reserve(qo_bytes));
  IHIP_RETURN_IF_ERROR(pf_o_.Reserve(qo_bytes));
  IHIP_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(pf_q_.get(), step.q, qo_bytes,
                                            cudaMemcpyHostToDevice, s));
  PrefillAttentionParams pa;
  pa.kv = Kv();
  pa.kv_length = step.kv_length;
  pa.position = step.position;
  pa.num_tokens = T;
  pa.num_q_heads = model_.num_q_heads;
  pa.q = pf_q_.as<const float>();
  pa.dense = dense;
  pa.query_block = cfg.query_block;
  pa.sink_tokens = cfg.sink_tokens;
  pa.window_tokens = cfg.window_tokens;
  pa.rope = Rope();
  pa.out = pf_o_.get();
  pa.out_dtype = ElemType::kF32;
  pa.sm_count = ctx_->num_sms();
  BlockInputs in;
  if (!dense) {
    in = MakeBlockInputs(step, cfg, qrow);
    IHIP_ASSIGN_OR_RETURN(const PrunePlan* full_plan,
                          PlanFor(cfg, in.max_pooled, cfg.query_block, step.kv_length));
    const int cap = full_plan->block_capacity;
    IHIP_RETURN_IF_ERROR(Put(pf_pooled_, in.pooled, s));
    std::vector<int64_t> positions = in.pooled_pos;
    positions.insert(positions.end(), in.full_pos.begin(), in.full_pos.end());
    IHIP_RETURN_IF_ERROR(Put(pf_pos_, positions, s));
    IHIP_RETURN_IF_ERROR(Put(pf_step_, in.scalars, s));
    IHIP_RETURN_IF_ERROR(pf_blocks_.Reserve(size_t(in.num_blocks) * cap * 8));
    IHIP_RETURN_IF_ERROR(pf_counts_.Reserve(size_t(in.num_blocks) * sizeof(int)));
    const int64_t* d_pos = pf_pos_.as<const int64_t>();
    const size_t full_pos_offset = in.pooled_pos.size();
    if (step.interrupt != nullptr) {
      const absl::Status st = step.interrupt->Check();
      if (!st.ok()) {
        cudaStreamSynchronize(s);
        return st;
      }
    }
    // Every block with a full query block is pruned in one batched run (its own workspace
    // slice, shared with the attention that follows on the stream); a shorter last block has
    // its own plan and runs alone.
    const bool last_short = !in.counts.empty() &&
                            in.counts.back() != std::make_pair(in.max_pooled, cfg.query_block);
    const int batched = in.num_blocks - (last_short ? 1 : 0);
    pa.blocks = pf_blocks_.as<const int64_t>();
    pa.block_counts = pf_counts_.as<const int>();
    pa.max_blocks = cap;
    IHIP_RETURN_IF_ERROR(pf_ws_.Reserve(std::max<size_t>(
        {PrefillAttentionWorkspaceBytes(pa), PruneBatchWorkspaceBytes(*full_plan, batched), 16})));
    if (batched > 0) {
      PruneBatchParams bp;
      bp.kv = Kv();
      bp.step = pf_step_.as<const StepScalars>();
      bp.pooled_q = pf_pooled_.as<const float>();
      bp.pooled_q_stride = int64_t(in.max_pooled) * qrow;
      bp.pooled_positions = d_pos;
      bp.pooled_positions_stride = in.max_pooled;
      bp.full_q = pf_q_.as<const float>();
      bp.full_q_stride = int64_t(cfg.query_block) * qrow;
      bp.full_positions = d_pos + full_pos_offset;
      bp.full_positions_stride = cfg.query_block;
      bp.rope = Rope();
      bp.blocks = pf_blocks_.as<int64_t>();
      bp.blocks_stride = cap;
      bp.block_counts = pf_counts_.as<int>();
      bp.num_query_blocks = batched;
      bp.workspace = pf_ws_.get();
      IHIP_CUDA_RETURN_IF_ERROR(LaunchRunStagesBatched(*full_plan, bp, s));
    }
    for (int b = batched; b < in.num_blocks; ++b) {
      IHIP_ASSIGN_OR_RETURN(const PrunePlan* plan, PlanFor(cfg, in.counts[b].first,
                                                           in.counts[b].second, step.kv_length));
      PruneParams pp;
      pp.kv = Kv();
      pp.step = pf_step_.as<const StepScalars>() + b;
      pp.pooled_q = pf_pooled_.as<const float>() + size_t(b) * in.max_pooled * qrow;
      pp.pooled_positions = d_pos + size_t(b) * in.max_pooled;
      pp.full_q = pf_q_.as<const float>() + size_t(b) * cfg.query_block * qrow;
      pp.full_positions = d_pos + full_pos_offset + size_t(b) * cfg.query_block;
      pp.rope = Rope();
      pp.mask = mask_;
      pp.mask.blocks = pf_blocks_.as<int64_t>() + size_t(b) * cap;
      pp.mask.num_blocks = pf_counts_.as<int>() + b;
      pp.mask.block_capacity = cap;
      pp.workspace = prune_ws_.get();
      IHIP_CUDA_RETURN_IF_ERROR(LaunchRunStages(*plan, pp, 0, s));
    }
    mask_valid_ = false;  // the decode mask buffers may have served as stage scratch
  }
  IHIP_RETURN_IF_ERROR(pf_ws_.Reserve(std::max<size_t>(PrefillAttentionWorkspaceBytes(pa), 16)));
  pa.workspace = pf_ws_.get();
  IHIP_CUDA_RETURN_IF_ERROR(LaunchPrefillAttention(pa, s));
  IHIP_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(step.o, pf_o_.get(), qo_bytes,
                                            cudaMemcpyDeviceToHost, s));
  std::vector<int64_t> blocks;
  std::vector<int> counts;
  if (!dense) {
    blocks.resize(size_t(in.num_blocks) * pa.max_blocks);
    counts.resize(in.num_blocks);
    IHIP_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(blocks.data(), pa.blocks, blocks.size() * 8,
                                              cudaMemcpyDeviceToHost, s));
    IHIP_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(counts.data(), pa.block_counts,
                                              counts.size() * sizeof(int),
                                              cudaMemcpyDeviceToHost, s));
  }
  IHIP_RETURN_IF_ERROR(Finish(s));
  result->refreshed_from_stage = 1;
  for (int i = 0; i < T; ++i) {
    if (dense) result->attended_keys += step.position + i + 1;
  }
  for (int b = 0; !dense && b < in.num_blocks; ++b) {
    const int64_t* row = blocks.data() + size_t(b) * pa.max_blocks;
    std::vector<int64_t> mask(row, row + std::clamp(counts[b], 0, pa.max_blocks));
    const int b0 = b * cfg.query_block;
    const int nb = std::min(cfg.query_block, T - b0);
    const int64_t p_min = step.position + b0;
    for (int i = 0; i < nb; ++i) {
      result->attended_keys += CountKeys(SparseRuns(p_min + i, p_min, cfg, mask));
    }
    if (step.return_selected) result->masks.push_back(MaskInfo{b0, nb, std::move(mask), {}});
  }
  return absl::OkStatus();
}

}  // namespace ihip::engine::cuda
