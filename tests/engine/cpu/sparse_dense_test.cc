// Sparse attention with a budget that covers every token equals dense attention (DESIGN §3.6),
// RoPE `none`, through CpuEngine: decode (T = 1) and prefill (T = 150: blocks of 64, 64 and a
// partial 22), GQA shapes 4/4, 8/2, 32/8, 6/1, head dims 64/128/256, wire dtypes fp32/fp16/bf16,
// lengths that are multiples of no block or chunk size and exceed sink + window (pruning runs).
// Dense is itself checked against a double-precision reference in fp32. A multi-step decode
// (cached masks reused between refreshes) and decoding from an empty sequence are covered too.

#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/hip/dtype_convert.h"
#include "engine/hip/mask.h"
#include "gtest/gtest.h"
#include "tests/engine/cpu/engine_test_util.h"
#include "tests/engine/test_util.h"

namespace ihip::engine {
namespace {

using testing::EngineUnderTest;
using testing::LayerData;

struct Case {
  int hq, hkv, d;
  DType dtype;
  int64_t length;
  bool dense_layer;  // the config's dense-layer stages (4096 final) instead of the default's
};

std::string Name(const Case& c) {
  return absl::StrCat("h", c.hq, "_", c.hkv, "_d", c.d, "_", DTypeName(c.dtype), "_n", c.length,
                      c.dense_layer ? "_denselayer" : "");
}
void PrintTo(const Case& c, std::ostream* os) { *os << Name(c); }

// Sparse and dense outputs both come from fp32 accumulation over the same keys in a different
// order, then are rounded to the wire dtype: they may differ by the fp32 summation error and,
// after rounding, by one unit in the last place of the wire dtype.
struct Closeness {
  int64_t bad = 0;   // elements outside the tolerance
  double worst = 0;  // max |sparse - dense| / tolerance
  double exact = 0;  // share of identical elements
};

Closeness Compare(const std::vector<float>& sparse, const std::vector<float>& dense, DType dt) {
  const double rtol = dt == DType::kF32 ? 1e-5 : (dt == DType::kF16 ? 0x1p-10 : 0x1p-7);
  const double atol = dt == DType::kF32 ? 1e-6 : (dt == DType::kF16 ? 1e-6 : 1e-5);
  Closeness c;
  int64_t exact = 0;
  for (size_t i = 0; i < sparse.size(); ++i) {
    const double diff = std::fabs(double(sparse[i]) - dense[i]);
    exact += diff == 0;
    const double ratio = diff / (atol + rtol * std::fabs(dense[i]));
    c.worst = std::max(c.worst, ratio);
    c.bad += ratio > 1;
  }
  c.exact = double(exact) / double(sparse.size());
  return c;
}

void ExpectClose(const std::vector<float>& sparse, const std::vector<float>& dense, DType dt,
                 const std::string& what) {
  ASSERT_EQ(sparse.size(), dense.size());
  const Closeness c = Compare(sparse, dense, dt);
  EXPECT_EQ(c.bad, 0) << what << ": worst |sparse - dense| / tolerance = " << c.worst;
  if (dt != DType::kF32) {
    // Rounding to the wire dtype makes most elements identical; only near-ties may differ.
    EXPECT_GT(c.exact, 0.9) << what;
  }
}

// The Prefill cases of length 5203 fail because of the bug FullBudgetCoverageTest isolates: the
// block starting at p_min = 5117 has (5117 - 1280) % 256 = 253, so its queries 5120..5180 miss
// 1..61 keys (1891 in all). The 3001 cases pass only because no block there hits the gap.
class SparseEqualsDenseTest : public ::testing::TestWithParam<Case> {
 protected:
  void Run(int T) {
    const Case& c = GetParam();
    ModelSpec m;
    m.num_layers = 1;
    m.num_q_heads = c.hq;
    m.num_kv_heads = c.hkv;
    m.head_dim = c.d;
    m.dtype = m.kv_dtype = c.dtype;
    HipConfig config = HipConfig::FullBudget();
    config.dense_layers = c.dense_layer ? std::vector<int>{0} : std::vector<int>{};
    const LayerConfig& cfg = config.ForLayer(0);
    const LayerData d = testing::MakeLayerData(m, c.length, 1000 + c.length + c.hq, c.length - T);
    EngineUnderTest eut;
    ASSERT_TRUE(eut.engine->CreateSequence("s", m, config).ok());
    const int64_t first = c.length - T;
    ASSERT_TRUE(eut.Append("s", 0, d, 0, first, 1000).ok());

    AttendOptions so;
    so.return_selected = true;
    AttendResult sr, dr;
    auto sparse = eut.Attend("s", 0, d, first, T, so, &sr);  // appends the T tokens
    ASSERT_TRUE(sparse.ok()) << sparse.status();
    ASSERT_EQ(eut.Length("s", 0), c.length);
    auto dense = eut.Attend("s", 0, d, first, T, testing::Eval(AttentionMode::kDense), &dr);
    ASSERT_TRUE(dense.ok()) << dense.status();

    // Every key up to each query's position is attended, once.
    int64_t all = 0;
    for (int i = 0; i < T; ++i) all += first + i + 1;
    EXPECT_EQ(dr.attended_keys, all);
    EXPECT_EQ(sr.attended_keys, all);
    // The budget keeps every stage-1 candidate: the selected blocks are all of
    // [sink, sink + 256 * #candidates) for each query block.
    ASSERT_EQ(sr.masks.size(), size_t(T == 1 ? 1 : (T + 63) / 64));
    for (const MaskInfo& mi : sr.masks) {
      const int64_t p_min = first + mi.query_offset;
      const int64_t candidates = (p_min - cfg.window_tokens - cfg.sink_tokens) / 256 + 1;
      ASSERT_GT(candidates, 0);
      ASSERT_EQ(int64_t(mi.blocks.size()), 256 * candidates / 8) << "p_min " << p_min;
      EXPECT_EQ(mi.blocks.front(), cfg.sink_tokens / 8);
      EXPECT_EQ(mi.blocks.back(), (cfg.sink_tokens + 256 * candidates) / 8 - 1);
    }
    ExpectClose(*sparse, *dense, c.dtype, Name(c) + " T=" + std::to_string(T));

    if (c.dtype == DType::kF32) {  // the oracle itself, against the definition
      for (int i : {0, T / 2, T - 1}) {
        const int64_t p = first + i;
        const std::vector<double> want = testing::RefAttention(
            d.wire_q_at(p), m.num_q_heads, m.num_kv_heads, m.head_dim, m.scale(), d.stored_k,
            d.stored_v, testing::SpecDenseKeys(p), p, nullptr);
        const std::vector<float> got(dense->begin() + size_t(i) * d.q_row(),
                                     dense->begin() + size_t(i + 1) * d.q_row());
        EXPECT_LE(testing::WorstRatio(got, want, 1e-6, 1e-4), 1.0) << "dense vs reference " << p;
      }
    }
  }
};

TEST_P(SparseEqualsDenseTest, Decode) { Run(1); }
TEST_P(SparseEqualsDenseTest, Prefill) { Run(150); }

INSTANTIATE_TEST_SUITE_P(Shapes, SparseEqualsDenseTest,
                         ::testing::Values(Case{4, 4, 64, DType::kF32, 3001, false},
                                           Case{8, 2, 128, DType::kF16, 5203, false},
                                           Case{32, 8, 128, DType::kBF16, 3001, false},
                                           Case{6, 1, 256, DType::kF32, 5203, false},
                                           Case{8, 2, 256, DType::kBF16, 3001, false},
                                           Case{32, 8, 64, DType::kF32, 5203, false},
                                           Case{4, 4, 128, DType::kF16, 3001, true},
                                           Case{6, 1, 64, DType::kBF16, 5203, true}),
                         [](const auto& info) { return Name(info.param); });

// EXPOSES AN ENGINE/SPEC BUG (see FullBudgetCoverageTest).
// Decode many steps with the default refresh schedule (paper: cached masks reused on 3 of 4
// steps): with the full budget every step must still equal dense. The steps start where the
// stage-1 refresh at p = 3066 leaves its last candidate chunk ending at the window's first key
// ((3066 - 1280) % 256 = 250), so the cached masks of steps 3072..3081 are where keys sliding out
// of the window would be lost (see FullBudgetCoverageTest).
TEST(SparseEqualsDenseDecodeTest, ManyStepsWithCachedMasks) {
  ModelSpec m;
  m.num_layers = 1;
  m.num_q_heads = 8;
  m.num_kv_heads = 2;
  m.head_dim = 64;
  m.dtype = m.kv_dtype = DType::kF32;
  HipConfig config = HipConfig::FullBudget();
  config.dense_layers = {};
  const int64_t start = 3050, steps = 40;
  const LayerData d = testing::MakeLayerData(m, start + steps, 77, start);
  EngineUnderTest eut;
  ASSERT_TRUE(eut.engine->CreateSequence("s", m, config).ok());
  ASSERT_TRUE(eut.Append("s", 0, d, 0, start).ok());
  int reused = 0;
  std::string missing, differ;
  for (int64_t p = start; p < start + steps; ++p) {
    AttendResult r;
    auto sparse = eut.Attend("s", 0, d, p, 1, testing::Sparse(), &r);
    ASSERT_TRUE(sparse.ok()) << sparse.status();
    reused += r.refreshed_from_stage == 0;
    auto dense = eut.Attend("s", 0, d, p, 1, testing::Eval(AttentionMode::kDense));
    ASSERT_TRUE(dense.ok());
    const Closeness c = Compare(*sparse, *dense, m.dtype);
    if (c.bad > 0) differ += " p=" + std::to_string(p) + "(worst " + std::to_string(c.worst) + ")";
    if (r.attended_keys != p + 1) {
      missing += " p=" + std::to_string(p) + ":" + std::to_string(p + 1 - r.attended_keys);
    }
  }
  EXPECT_EQ(reused, 30);  // 40 steps, paper schedule: steps 0, 4, 8, ... refresh
  EXPECT_TRUE(missing.empty()) << "keys not attended (position:count):" << missing;
  EXPECT_TRUE(differ.empty()) << "sparse != dense at:" << differ;
}

// EXPOSE AN ENGINE/SPEC BUG: stage-1 candidates are chosen for p_min (engine/hip/mask.cc:12,
// left <= p_min - window, as DESIGN §3.2 says) but each query's window starts at its own
// p - window + 1 (mask.cc:49), so keys between the last candidate chunk and the window of a later
// query of the block (prefill) or a later decode step (cached mask, §3.3) are attended by nobody,
// and sparse != dense under HipConfig::FullBudget (DESIGN §3.6's invariant).
// Where the full budget loses keys, shown on the key sets alone (engine/hip/mask.h): the final
// mask of a full budget is every stage-1 candidate chunk (SparseEqualsDenseTest checks that
// through the engine); a query at p using a mask computed for p_min <= p (a later query of the
// same prefill block, or a decode step reusing a cached mask) must still attend every key <= p.
// The candidates end at sink + 256 * count <= p_min - 768 - b with b = (p_min - 1280) % 256, and
// the window of p starts at p - 1023, so p - p_min > 255 - b leaves keys
// [sink + 256 * count, p - 1023) unattended.
TEST(FullBudgetCoverageTest, LaterQueriesOfAPrefillBlockSeeEveryKey) {
  const LayerConfig cfg = HipConfig::FullBudget().default_layer;
  int64_t failures = 0;
  std::string first;
  for (int64_t p_min = 1280; p_min < 1280 + 256; ++p_min) {
    const std::vector<int64_t> blocks = ChunksToBlocks(Stage1Candidates(p_min, cfg), 256);
    for (int i = 0; i < cfg.query_block; ++i) {
      const int64_t p = p_min + i;
      const int64_t got = CountKeys(SparseRuns(p, p_min, cfg, blocks));
      if (got != p + 1) {
        if (failures++ == 0) {
          first = "p_min=" + std::to_string(p_min) + " query " + std::to_string(p) + ": attends " +
                  std::to_string(got) + " of " + std::to_string(p + 1) + " keys; selected end at " +
                  std::to_string(8 * (blocks.back() + 1)) + ", window starts at " +
                  std::to_string(p - cfg.window_tokens + 1);
        }
      }
    }
  }
  EXPECT_EQ(failures, 0) << "first: " << first;
}

TEST(FullBudgetCoverageTest, DecodeStepsReusingACachedMaskSeeEveryKey) {
  const LayerConfig cfg = HipConfig::FullBudget().default_layer;
  const int interval = cfg.stages.front().refresh_interval;  // 16 with the paper preset
  int64_t failures = 0;
  std::string first;
  for (int64_t refreshed = 1280; refreshed < 1280 + 256; ++refreshed) {
    const std::vector<int64_t> blocks = ChunksToBlocks(Stage1Candidates(refreshed, cfg), 256);
    for (int k = 1; k < interval; ++k) {
      const int64_t p = refreshed + k;
      // The engine anchors a reused mask at the step of its stage-1 run (MaskCache::anchor).
      const int64_t got = CountKeys(SparseRuns(p, refreshed, cfg, blocks));
      if (got != p + 1 && failures++ == 0) {
        first = "mask from p=" + std::to_string(refreshed) + " reused at p=" + std::to_string(p) +
                ": attends " + std::to_string(got) + " of " + std::to_string(p + 1) + " keys";
      }
    }
  }
  EXPECT_EQ(failures, 0) << "first: " << first;
}

// Token-by-token decode from an empty sequence: every step (p < window) attends every key.
TEST(SparseEqualsDenseDecodeTest, FromEmptySequence) {
  ModelSpec m;
  m.num_layers = 4;
  m.num_q_heads = 4;
  m.num_kv_heads = 2;
  m.head_dim = 64;
  m.dtype = m.kv_dtype = DType::kF32;
  const HipConfig config = HipConfig::Make();  // the real budget: nothing to prune yet
  const LayerData d = testing::MakeLayerData(m, 60, 78);
  EngineUnderTest eut;
  ASSERT_TRUE(eut.engine->CreateSequence("s", m, config).ok());
  for (int64_t p = 0; p < 60; ++p) {
    AttendResult r;
    auto sparse = eut.Attend("s", 3, d, p, 1, testing::Sparse(), &r);
    ASSERT_TRUE(sparse.ok()) << sparse.status();
    EXPECT_EQ(r.attended_keys, p + 1);
    const std::vector<double> want =
        testing::RefAttention(d.wire_q_at(p), 4, 2, 64, m.scale(), d.stored_k, d.stored_v,
                              testing::SpecDenseKeys(p), p, nullptr);
    ASSERT_LE(testing::WorstRatio(*sparse, want, 1e-6, 1e-4), 1.0) << "p=" << p;
  }
  EXPECT_EQ(eut.Length("s", 3), 60);
  EXPECT_EQ(eut.Length("s", 0), 0);
}

}  // namespace
}  // namespace ihip::engine
