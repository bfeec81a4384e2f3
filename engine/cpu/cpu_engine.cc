#include "engine/cpu/cpu_engine.h"

#include <algorithm>

#include "engine/cpu/attention.h"
#include "engine/cpu/pruning.h"
#include "engine/cpu/vector_math.h"
#include "engine/status_macros.h"

namespace ihip::engine::cpu {

absl::Status CpuEngineOptions::Validate() const { return paged().Validate(); }

CpuEngine::CpuEngine(const CpuEngineOptions& options, PageStore* store)
    : PagedEngine(options.paged(), store), pool_(options.num_threads) {}

absl::Status CpuEngine::Compute(const Sequence& seq, LayerState& state, const LayerConfig& cfg,
                                Step& step, AttendResult* result) {
  if (step.options.mode == AttentionMode::kDense) return Dense(seq, step, result);
  if (step.num_tokens == 1) return Decode(seq, cfg, step, result);
  return Prefill(seq, cfg, step, result);
}

absl::Status CpuEngine::Decode(const Sequence& seq, const LayerConfig& cfg, Step& step,
                               AttendResult* result) {
  const int64_t p = step.position;
  const int from = RefreshFrom(cfg, step);
  std::vector<std::vector<int64_t>> kept;
  if (from > 0) {
    PruneInput in;
    in.kv = &step.kv;
    in.num_q_heads = seq.model.num_q_heads;
    in.cfg = &cfg;
    in.rope = seq.rope.get();
    in.p_min = p;
    in.pooled = in.full = PruneQueries{1, step.q.data(), &p};
    in.interrupt = step.interrupt;
    IHIP_RETURN_IF_ERROR(RunStages(in, from - 1, &step.cache, &pool_,
                                   step.options.return_stage_chunks ? &kept : nullptr));
  }
  const std::vector<KeyRun> runs = SparseRuns(p, step.cache.anchor, cfg, step.cache.blocks);
  IHIP_RETURN_IF_ERROR(AttendQueries(step.kv, seq.model.num_q_heads, seq.rope.get(),
                                     {AttentionQuery{step.q.data(), p, &runs, step.o.data()}},
                                     step.interrupt, &pool_));
  result->refreshed_from_stage = from;
  result->attended_keys = CountKeys(runs);
  if (step.options.return_selected) {
    result->masks.push_back(MaskInfo{0, 1, step.cache.blocks, std::move(kept)});
  }
  return absl::OkStatus();
}

absl::Status CpuEngine::Prefill(const Sequence& seq, const LayerConfig& cfg, Step& step,
                                AttendResult* result) {
  const int Hq = seq.model.num_q_heads;
  const int D = seq.model.head_dim;
  const size_t qrow = size_t(Hq) * D;
  for (int b0 = 0; b0 < step.num_tokens; b0 += cfg.query_block) {
    const int nb = std::min(cfg.query_block, step.num_tokens - b0);
    const int64_t p_min = step.position + b0;
    // Stages 1..pooled_stages score with queries mean-pooled over groups of pool_stride.
    const int ng = (nb + cfg.pool_stride - 1) / cfg.pool_stride;
    std::vector<float> pooled(ng * qrow, 0.0f);
    std::vector<int64_t> pooled_pos(ng), full_pos(nb);
    for (int i = 0; i < nb; ++i) full_pos[i] = p_min + i;
    for (int g = 0; g < ng; ++g) {
      const int first = g * cfg.pool_stride;
      const int count = std::min(cfg.pool_stride, nb - first);
      pooled_pos[g] = p_min + first;
      for (int i = first; i < first + count; ++i) {
        Axpy(1.0f / count, step.q.data() + (b0 + i) * qrow, pooled.data() + g * qrow, int(qrow));
      }
    }
    PruneInput in;
    in.kv = &step.kv;
    in.num_q_heads = Hq;
    in.cfg = &cfg;
    in.rope = seq.rope.get();
    in.p_min = p_min;
    in.pooled = PruneQueries{ng, pooled.data(), pooled_pos.data()};
    in.full = PruneQueries{nb, step.q.data() + b0 * qrow, full_pos.data()};
    in.interrupt = step.interrupt;
    MaskCache block_cache;
    std::vector<std::vector<int64_t>> kept;
    IHIP_RETURN_IF_ERROR(
        RunStages(in, 0, &block_cache, &pool_, step.options.return_stage_chunks ? &kept : nullptr));
    std::vector<std::vector<KeyRun>> runs(nb);
    std::vector<AttentionQuery> queries(nb);
    for (int i = 0; i < nb; ++i) {
      runs[i] = SparseRuns(p_min + i, p_min, cfg, block_cache.blocks);
      queries[i] = AttentionQuery{step.q.data() + (b0 + i) * qrow, p_min + i, &runs[i],
                                  step.o.data() + (b0 + i) * qrow};
      result->attended_keys += CountKeys(runs[i]);
    }
    IHIP_RETURN_IF_ERROR(
        AttendQueries(step.kv, Hq, seq.rope.get(), queries, step.interrupt, &pool_));
    if (step.options.return_selected) {
      result->masks.push_back(MaskInfo{b0, nb, block_cache.blocks, std::move(kept)});
    }
  }
  result->refreshed_from_stage = 1;
  return absl::OkStatus();
}

absl::Status CpuEngine::Dense(const Sequence& seq, Step& step, AttendResult* result) {
  const size_t qrow = size_t(seq.model.num_q_heads) * seq.model.head_dim;
  std::vector<std::vector<KeyRun>> runs(step.num_tokens);
  std::vector<AttentionQuery> queries(step.num_tokens);
  for (int i = 0; i < step.num_tokens; ++i) {
    const int64_t p = step.position + i;
    runs[i] = DenseRuns(p);
    queries[i] = AttentionQuery{step.q.data() + i * qrow, p, &runs[i], step.o.data() + i * qrow};
    result->attended_keys += p + 1;
  }
  return AttendQueries(step.kv, seq.model.num_q_heads, seq.rope.get(), queries, step.interrupt,
                       &pool_);
}

}  // namespace ihip::engine::cpu
