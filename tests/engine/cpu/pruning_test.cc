// engine/cpu/pruning.h (DESIGN §3.2–3.4): deterministic top-k (higher score first, then lower
// token index; inactive chunks never kept), chunk scores against a double-precision reference of
// the representative search in every RoPE style (none, relative, chunk-indexed), pooled vs full
// queries per stage, no probe past the scan limit, and re-running RunStages from each stage
// cache with the same query equals a full run.

#include "engine/cpu/pruning.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <numeric>
#include <set>
#include <vector>

#include "engine/cpu/thread_pool.h"
#include "engine/hip/mask.h"
#include "gtest/gtest.h"
#include "tests/engine/test_util.h"

namespace ihip::engine::cpu {
namespace {

using testing::PagedKv;
using testing::Random;

constexpr float kInactive = -std::numeric_limits<float>::infinity();

// ---- TopChunks ----

std::vector<int64_t> ReferenceTop(const std::vector<float>& scores,
                                  const std::vector<int64_t>& chunks, int64_t keep) {
  std::vector<int64_t> idx;
  for (int64_t i = 0; i < int64_t(scores.size()); ++i) {
    if (scores[i] != kInactive) idx.push_back(i);
  }
  std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) {
    if (scores[a] != scores[b]) return scores[a] > scores[b];
    return chunks[a] < chunks[b];
  });
  if (int64_t(idx.size()) > keep) idx.resize(keep);
  std::sort(idx.begin(), idx.end());
  return idx;
}

TEST(TopChunksTest, TiesBrokenByLowerTokenIndexAndInactiveNeverKept) {
  Random rng(41);
  for (int iter = 0; iter < 3000; ++iter) {
    const int64_t n = rng.Uniform(0, 400);
    std::vector<int64_t> chunks(n);
    int64_t left = 256;
    for (auto& c : chunks) c = (left += 8 * rng.Uniform(1, 4));
    std::vector<float> scores(n);
    for (auto& s : scores) s = rng.Bernoulli(0.15) ? kInactive : float(rng.Uniform(0, 3));
    const int64_t keep = rng.Uniform(0, n + 10);
    std::vector<int64_t> got = TopChunks(scores, chunks, keep);
    std::sort(got.begin(), got.end());
    ASSERT_EQ(got, ReferenceTop(scores, chunks, keep)) << "n=" << n << " keep=" << keep;
    for (int64_t i : got) ASSERT_NE(scores[i], kInactive);
  }
}

TEST(TopChunksTest, IndependentOfInputOrder) {
  Random rng(42);
  const int64_t n = 300;
  std::vector<int64_t> chunks(n);
  std::vector<float> scores(n);
  for (int64_t i = 0; i < n; ++i) {
    chunks[i] = 256 + 32 * i;
    scores[i] = rng.Bernoulli(0.1) ? kInactive : float(rng.Uniform(0, 5));
  }
  std::set<int64_t> want;
  for (int64_t i : TopChunks(scores, chunks, 77)) want.insert(chunks[i]);
  ASSERT_EQ(want.size(), 77u);
  for (int rep = 0; rep < 20; ++rep) {
    std::vector<int64_t> perm(n);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng.gen());
    std::vector<int64_t> c2(n);
    std::vector<float> s2(n);
    for (int64_t i = 0; i < n; ++i) {
      c2[i] = chunks[perm[i]];
      s2[i] = scores[perm[i]];
    }
    std::set<int64_t> got;
    for (int64_t i : TopChunks(s2, c2, 77)) got.insert(c2[i]);
    ASSERT_EQ(got, want);
  }
}

TEST(TopChunksTest, SmallCases) {
  // All tied: the lowest token indices win.
  EXPECT_EQ(TopChunks({1, 1, 1, 1}, {300, 100, 400, 200}, 2).size(), 2u);
  std::vector<int64_t> got = TopChunks({1, 1, 1, 1}, {300, 100, 400, 200}, 2);
  std::sort(got.begin(), got.end());
  EXPECT_EQ(got, (std::vector<int64_t>{1, 3}));
  // An inactive chunk is not kept even when there is room.
  got = TopChunks({kInactive, 0.5f, kInactive}, {8, 16, 24}, 3);
  EXPECT_EQ(got, (std::vector<int64_t>{1}));
  EXPECT_TRUE(TopChunks({}, {}, 5).empty());
  EXPECT_TRUE(TopChunks({1, 2}, {8, 16}, 0).empty());
}

// ---- ScoreChunks against a reference ----

// Random KV and queries for pruning tests. Keys as fp32 (exact), queries scaled.
struct PruneFixture {
  int Hq, Hkv, D;
  int64_t length;
  std::vector<float> k, v;
  std::unique_ptr<PagedKv> kv;
  LayerConfig cfg;
  std::unique_ptr<Rope> rope;
  RopeSpec rope_spec;

  PruneFixture(int hq, int hkv, int d, int64_t len, uint64_t seed, const LayerConfig& c,
               bool with_rope)
      : Hq(hq), Hkv(hkv), D(d), length(len), cfg(c) {
    Random rng(seed);
    // Slowly varying keys (some locality, like real keys) plus noise.
    k.resize(size_t(len) * Hkv * D);
    std::vector<float> state = rng.Normals(size_t(Hkv) * D);
    for (int64_t t = 0; t < len; ++t) {
      for (size_t i = 0; i < state.size(); ++i) {
        state[i] = 0.95f * state[i] + 0.31f * rng.Normal();
        k[size_t(t) * state.size() + i] = state[i];
      }
    }
    v = rng.Normals(k.size());
    kv = std::make_unique<PagedKv>(k, v, len, Hkv, D, DType::kF32);
    if (with_rope) {
      rope_spec.mode = RopeMode::kExtend;
      rope_spec.theta = 500000;
      rope_spec.llama3 = Llama3Scaling{};
      rope = std::make_unique<Rope>(rope_spec, D);
    }
  }

  std::vector<float> Queries(int n, uint64_t seed) const {
    Random rng(seed);
    std::vector<float> q = rng.Normals(size_t(n) * Hq * D, 1.0f / std::sqrt(float(D)));
    return q;
  }

  // Reference chunk scores (test_util.h), straight from §3.2/§3.4.
  std::vector<float> RefScores(int stage, const std::vector<int64_t>& chunks, int64_t p_min,
                               const std::vector<float>& q, const std::vector<int64_t>& pos,
                               int nq) const {
    return testing::RefChunkScores(k, length, Hq, Hkv, D, cfg, rope ? &rope_spec : nullptr, stage,
                                   chunks, p_min, {nq, q.data(), pos.data()});
  }

  PruneInput Input(int64_t p_min, const std::vector<float>& pooled, const std::vector<int64_t>& pp,
                   int np, const std::vector<float>& full, const std::vector<int64_t>& fp,
                   int nf) const {
    PruneInput in;
    in.kv = &kv->view;
    in.num_q_heads = Hq;
    in.cfg = &cfg;
    in.rope = rope.get();
    in.p_min = p_min;
    in.pooled = PruneQueries{np, pooled.data(), pp.data()};
    in.full = PruneQueries{nf, full.data(), fp.data()};
    return in;
  }
};

struct StyleCase {
  const char* name;
  bool rope;
  PruneRopeStyle style;
};

void PrintTo(const StyleCase& c, std::ostream* os) { *os << c.name; }

class ScoreChunksTest : public ::testing::TestWithParam<StyleCase> {};

TEST_P(ScoreChunksTest, MatchesReferenceForEveryStage) {
  LayerConfig cfg = HipConfig::Make().default_layer;
  cfg.prune_rope_style = GetParam().style;
  PruneFixture fx(8, 2, 64, 7000, 51, cfg, GetParam().rope);
  ThreadPool pool(2);
  const int64_t p_min = 6900;
  // Prefill-like block: 3 pooled queries for stages 1-2, 10 full queries for stage 3; distinct
  // so that using the wrong set shows.
  const std::vector<float> pooled = fx.Queries(3, 1), full = fx.Queries(10, 2);
  std::vector<int64_t> pp = {p_min, p_min + 4, p_min + 8}, fp(10);
  std::iota(fp.begin(), fp.end(), p_min);
  const PruneInput in = fx.Input(p_min, pooled, pp, 3, full, fp, 10);
  Random rng(52);
  const int64_t limit = ScanLimit(p_min, fx.length, cfg);  // 6900 - 767
  for (int stage = 0; stage < 3; ++stage) {
    const int L = cfg.stages[stage].chunk_size;
    std::vector<int64_t> chunks;
    if (stage == 0) {
      chunks = Stage1Candidates(p_min, cfg);
    } else {
      for (int64_t left = 256; left < limit + 3 * L; left += L) {
        if (rng.Bernoulli(0.5) || left + L > limit) chunks.push_back(left);
      }
    }
    ASSERT_FALSE(chunks.empty());
    const std::vector<float> got = ScoreChunks(in, stage, chunks, &pool);
    const std::vector<float> want = stage < cfg.pooled_stages
                                        ? fx.RefScores(stage, chunks, p_min, pooled, pp, 3)
                                        : fx.RefScores(stage, chunks, p_min, full, fp, 10);
    ASSERT_EQ(got.size(), chunks.size());
    int active = 0;
    for (size_t c = 0; c < chunks.size(); ++c) {
      if (want[c] == kInactive) {
        EXPECT_EQ(got[c], kInactive) << "stage " << stage << " chunk " << chunks[c];
        EXPECT_GE(chunks[c], limit);
        continue;
      }
      ++active;
      EXPECT_NEAR(got[c], want[c], 1e-4 * (1 + std::fabs(want[c])))
          << GetParam().name << " stage " << stage << " chunk " << chunks[c];
    }
    EXPECT_GT(active, 3);
  }
}

INSTANTIATE_TEST_SUITE_P(Styles, ScoreChunksTest,
                         ::testing::Values(StyleCase{"none", false, PruneRopeStyle::kRelative},
                                           StyleCase{"relative", true, PruneRopeStyle::kRelative},
                                           StyleCase{"chunk_indexed", true,
                                                     PruneRopeStyle::kChunkIndexed}),
                         [](const auto& info) { return std::string(info.param.name); });

// No probe reads a key in (p_min - 768, p_min]: plant keys there that would outscore anything.
TEST(ScoreChunksScanLimitTest, NoProbeReadsPastTheLimit) {
  const LayerConfig cfg = HipConfig::Make().default_layer;
  const int Hq = 4, Hkv = 2, D = 64;
  const int64_t len = 5001, p_min = 5000;
  const int64_t limit = ScanLimit(p_min, len, cfg);
  ASSERT_EQ(limit, p_min - 767);
  Random rng(53);
  const std::vector<float> q = rng.Normals(size_t(Hq) * D, 0.125f);
  std::vector<float> k = rng.Normals(size_t(len) * Hkv * D), v = k;
  for (int64_t t = limit; t < len; ++t) {
    for (int g = 0; g < Hkv; ++g) {
      for (int d = 0; d < D; ++d) k[(size_t(t) * Hkv + g) * D + d] = 1000.0f * q[g * 2 * D + d];
    }
  }
  PagedKv kv(k, v, len, Hkv, D, DType::kF32);
  ThreadPool pool(2);
  const int64_t pos = p_min;
  PruneInput in;
  in.kv = &kv.view;
  in.num_q_heads = Hq;
  in.cfg = &cfg;
  in.p_min = p_min;
  in.pooled = in.full = PruneQueries{1, q.data(), &pos};
  for (int stage = 0; stage < 3; ++stage) {
    const int L = cfg.stages[stage].chunk_size;
    std::vector<int64_t> chunks;
    for (int64_t left = 256; left < len; left += L) chunks.push_back(left);
    const std::vector<float> s = ScoreChunks(in, stage, chunks, &pool);
    for (size_t c = 0; c < chunks.size(); ++c) {
      if (chunks[c] >= limit) {
        EXPECT_EQ(s[c], kInactive) << "stage " << stage << " chunk " << chunks[c];
      } else {
        EXPECT_LT(s[c], 50.0f) << "stage " << stage << " chunk " << chunks[c]
                               << " read a key at or past the scan limit";
      }
    }
  }
}

// ---- RunStages from the stage caches ----

struct RerunCase {
  const char* name;
  bool rope;
  PruneRopeStyle style;
  bool prefill;
};

void PrintTo(const RerunCase& c, std::ostream* os) { *os << c.name; }

class RunStagesTest : public ::testing::TestWithParam<RerunCase> {};

TEST_P(RunStagesTest, RerunFromEachStageCacheEqualsFullRun) {
  const RerunCase& rc = GetParam();
  LayerConfig cfg = HipConfig::Make().default_layer;  // 3K: 128 / 256 / 256 chunks kept
  cfg.prune_rope_style = rc.style;
  const int64_t len = 40000;
  PruneFixture fx(8, 2, 64, len, 61, cfg, rc.rope);
  ThreadPool pool(2);
  const int64_t p_min = rc.prefill ? len - 64 : len - 1;
  const int nf = rc.prefill ? 64 : 1, np = rc.prefill ? 16 : 1;
  const std::vector<float> full = fx.Queries(nf, 3);
  std::vector<float> pooled = rc.prefill ? fx.Queries(np, 4) : full;
  std::vector<int64_t> fp(nf), pp(np);
  for (int i = 0; i < nf; ++i) fp[i] = p_min + i;
  for (int i = 0; i < np; ++i) pp[i] = p_min + 4 * i;
  const PruneInput in = fx.Input(p_min, pooled, pp, np, full, fp, nf);

  MaskCache cache;
  std::vector<std::vector<int64_t>> kept;
  ASSERT_TRUE(RunStages(in, 0, &cache, &pool, &kept).ok());
  ASSERT_TRUE(cache.valid);
  ASSERT_EQ(kept.size(), 3u);
  // The stages really prune: 152 stage-1 candidates -> 128, 1024 -> 256, 1024 -> 256.
  EXPECT_EQ(Stage1Candidates(p_min, cfg).size(), 152u);
  EXPECT_EQ(kept[0].size(), 128u);
  EXPECT_EQ(kept[1].size(), 256u);
  EXPECT_EQ(kept[2].size(), 256u);
  EXPECT_EQ(cache.blocks.size(), 256u);
  EXPECT_EQ(cache.stage_inputs[1].size(), 1024u);
  EXPECT_EQ(cache.stage_inputs[2].size(), 1024u);
  EXPECT_EQ(cache.stage_inputs[1], SplitChunks(kept[0], 256, 32, 256));
  EXPECT_EQ(cache.stage_inputs[2], SplitChunks(kept[1], 32, 8, 256));
  EXPECT_EQ(cache.blocks, ChunksToBlocks(kept[2], 8));

  for (int from = 1; from <= 2; ++from) {
    MaskCache rerun = cache;
    rerun.blocks.clear();
    std::vector<std::vector<int64_t>> kept2;
    ASSERT_TRUE(RunStages(in, from, &rerun, &pool, &kept2).ok());
    ASSERT_EQ(kept2.size(), size_t(3 - from));
    for (int s = from; s < 3; ++s) EXPECT_EQ(kept2[s - from], kept[s]) << "stage " << s;
    EXPECT_EQ(rerun.blocks, cache.blocks) << "re-run from stage " << from + 1;
    EXPECT_EQ(rerun.stage_inputs, cache.stage_inputs);
  }
  // A full run again is identical (determinism, thread scheduling included).
  MaskCache again;
  ASSERT_TRUE(RunStages(in, 0, &again, &pool).ok());
  EXPECT_EQ(again.blocks, cache.blocks);
  EXPECT_EQ(again.stage_inputs, cache.stage_inputs);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, RunStagesTest,
    ::testing::Values(RerunCase{"decode_none", false, PruneRopeStyle::kRelative, false},
                      RerunCase{"decode_relative", true, PruneRopeStyle::kRelative, false},
                      RerunCase{"decode_chunk_indexed", true, PruneRopeStyle::kChunkIndexed, false},
                      RerunCase{"prefill_none", false, PruneRopeStyle::kRelative, true},
                      RerunCase{"prefill_relative", true, PruneRopeStyle::kRelative, true}),
    [](const auto& info) { return std::string(info.param.name); });

// A re-run reads its input from the cache, not from a fresh stage-1 pass.
TEST(RunStagesCacheTest, RerunUsesTheCachedInput) {
  const LayerConfig cfg = HipConfig::Make().default_layer;
  PruneFixture fx(4, 2, 64, 12000, 71, cfg, false);
  ThreadPool pool(2);
  const std::vector<float> q = fx.Queries(1, 5);
  const std::vector<int64_t> pos = {11999};
  const PruneInput in = fx.Input(11999, q, pos, 1, q, pos, 1);
  MaskCache cache;
  cache.stage_inputs.resize(3);
  // Stage 3's input: 40 chunks of 8 in [1000, 1320): the final selection must come from them.
  for (int64_t left = 1000; left < 1320; left += 8) cache.stage_inputs[2].push_back(left);
  ASSERT_TRUE(RunStages(in, 2, &cache, &pool).ok());
  ASSERT_EQ(cache.blocks.size(), 40u);  // fewer candidates than the 256 kept: all of them
  EXPECT_EQ(cache.blocks.front(), 125);
  EXPECT_EQ(cache.blocks.back(), 164);
}

TEST(RunStagesCacheTest, InterruptStopsTheStages) {
  const LayerConfig cfg = HipConfig::Make().default_layer;
  PruneFixture fx(4, 2, 64, 6000, 72, cfg, false);
  ThreadPool pool(2);
  const std::vector<float> q = fx.Queries(1, 6);
  const std::vector<int64_t> pos = {5999};
  PruneInput in = fx.Input(5999, q, pos, 1, q, pos, 1);
  std::atomic<bool> cancelled{true};
  in.interrupt.cancelled = &cancelled;
  MaskCache cache;
  EXPECT_EQ(RunStages(in, 0, &cache, &pool).code(), absl::StatusCode::kCancelled);
  EXPECT_FALSE(cache.valid);
  in.interrupt.cancelled = nullptr;
  in.interrupt.deadline = absl::Now() - absl::Seconds(1);
  EXPECT_EQ(RunStages(in, 0, &cache, &pool).code(), absl::StatusCode::kDeadlineExceeded);
}

}  // namespace
}  // namespace ihip::engine::cpu
