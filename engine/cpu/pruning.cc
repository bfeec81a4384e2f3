#include "engine/cpu/pruning.h"

#include <algorithm>
#include <limits>
#include <numeric>

#include "engine/cpu/representative_search.h"
#include "engine/cpu/thread_pool.h"
#include "engine/cpu/vector_math.h"
#include "engine/hip/dtype_convert.h"
#include "engine/status_macros.h"

namespace ihip::engine::cpu {
namespace {

constexpr float kInactive = -std::numeric_limits<float>::infinity();
constexpr int64_t kChunksPerTask = 8;

// The block's queries as each side of a probe sees them, for one chunk.
//   none:          both sides use q as sent.
//   relative:      side 0 scores R(mw + 1) q . k (key at 0), side 1 R(mw) q . k (key at 1).
//   chunk-indexed: both sides use R(qpos - chunk_index) q (key at its chunk's index).
// R(a) q . R(b) k = R(a - b) q . k, so keys are never rotated while pruning.
struct SideQueries {
  const float* side[2];
  int64_t stride;  // floats between consecutive queries of one head
};

}  // namespace

std::vector<float> ScoreChunks(const PruneInput& in, int stage, const std::vector<int64_t>& chunks,
                               ThreadPool* pool) {
  const LayerConfig& cfg = *in.cfg;
  const KvView& kv = *in.kv;
  const int L = cfg.stages[stage].chunk_size;
  const PruneQueries& qs = stage < cfg.pooled_stages ? in.pooled : in.full;
  const int Hq = in.num_q_heads;
  const int D = kv.geometry.head_dim;
  const int group = Hq / kv.geometry.kv_heads;
  const int64_t limit = ScanLimit(in.p_min, kv.length, cfg);
  const int mw = cfg.masking_window();
  const bool relative = in.rope != nullptr && cfg.prune_rope_style == PruneRopeStyle::kRelative;
  const bool chunk_indexed =
      in.rope != nullptr && cfg.prune_rope_style == PruneRopeStyle::kChunkIndexed;
  const size_t qfloats = size_t(qs.num) * Hq * D;

  // Relative style: the two rotated versions of every query, once per stage.
  std::vector<float> rel[2];
  if (relative) {
    for (int side = 0; side < 2; ++side) {
      rel[side].resize(qfloats);
      for (size_t row = 0; row < size_t(qs.num) * Hq; ++row) {
        in.rope->Rotate(qs.q + row * D, mw + 1 - side, rel[side].data() + row * D);
      }
    }
  }
  const int64_t n = int64_t(chunks.size());
  std::vector<float> scores(n, kInactive);
  const int64_t tasks = (n + kChunksPerTask - 1) / kChunksPerTask;
  pool->ParallelFor(tasks, [&](int64_t task) {
    std::vector<float> key(D), rotated(chunk_indexed ? qfloats : 0), cs(D / 2), sn(D / 2);
    for (int64_t c = task * kChunksPerTask; c < std::min(n, (task + 1) * kChunksPerTask); ++c) {
      const int64_t l = chunks[c];
      const int64_t r = std::min<int64_t>(l + L, limit);
      if (l >= r) continue;
      SideQueries sq{{qs.q, qs.q}, int64_t(Hq) * D};
      if (relative) sq = {{rel[0].data(), rel[1].data()}, int64_t(Hq) * D};
      if (chunk_indexed) {
        for (int i = 0; i < qs.num; ++i) {
          const int64_t qpos = std::min<int64_t>(qs.positions[i], n + mw);
          in.rope->Angles(qpos - c, cs.data(), sn.data());
          for (int h = 0; h < Hq; ++h) {
            const size_t off = (size_t(i) * Hq + h) * D;
            Rope::RotateWith(qs.q + off, cs.data(), sn.data(), D / 2, rotated.data() + off);
          }
        }
        sq = {{rotated.data(), rotated.data()}, int64_t(Hq) * D};
      }
      float best = kInactive;
      for (int h = 0; h < Hq; ++h) {
        const int kvh = h / group;
        auto probe = [&](int64_t t, int side) {
          ToFloat(kv.geometry.dtype, kv.Key(t, kvh), D, key.data());
          float s = kInactive;
          const float* q = sq.side[side] + size_t(h) * D;
          for (int i = 0; i < qs.num; ++i) s = std::max(s, Dot(q + i * sq.stride, key.data(), D));
          return s;
        };
        const Representative rep = RepresentativeSearch(l, r, probe);
        best = std::max(best, rep.score);
      }
      scores[c] = best;
    }
  });
  return scores;
}

std::vector<int64_t> TopChunks(const std::vector<float>& scores, const std::vector<int64_t>& chunks,
                               int64_t keep) {
  std::vector<int64_t> idx;
  idx.reserve(scores.size());
  for (int64_t i = 0; i < int64_t(scores.size()); ++i) {
    if (scores[i] != kInactive) idx.push_back(i);
  }
  auto better = [&](int64_t a, int64_t b) {
    if (scores[a] != scores[b]) return scores[a] > scores[b];
    return chunks[a] < chunks[b];
  };
  if (int64_t(idx.size()) > keep) {
    std::partial_sort(idx.begin(), idx.begin() + keep, idx.end(), better);
    idx.resize(keep);
  }
  return idx;
}

absl::Status RunStages(const PruneInput& in, int from_stage, MaskCache* cache, ThreadPool* pool,
                       std::vector<std::vector<int64_t>>* stage_kept) {
  const LayerConfig& cfg = *in.cfg;
  const int num_stages = int(cfg.stages.size());
  cache->stage_inputs.resize(num_stages);
  std::vector<int64_t> input =
      from_stage == 0 ? Stage1Candidates(in.p_min, cfg) : cache->stage_inputs[from_stage];
  if (from_stage == 0) cache->anchor = in.p_min;
  for (int s = from_stage; s < num_stages; ++s) {
    IHIP_RETURN_IF_ERROR(in.interrupt.Check());
    const StageSpec& spec = cfg.stages[s];
    const std::vector<float> scores = ScoreChunks(in, s, input, pool);
    std::vector<int64_t> kept;
    for (int64_t i : TopChunks(scores, input, spec.kept_chunks())) kept.push_back(input[i]);
    std::sort(kept.begin(), kept.end());
    if (stage_kept != nullptr) stage_kept->push_back(kept);
    if (s + 1 < num_stages) {
      input = SplitChunks(kept, spec.chunk_size, cfg.stages[s + 1].chunk_size, cfg.sink_tokens);
      cache->stage_inputs[s + 1] = input;
    } else {
      cache->blocks = ChunksToBlocks(kept, spec.chunk_size);
    }
  }
  cache->valid = true;
  return absl::OkStatus();
}

}  // namespace ihip::engine::cpu
