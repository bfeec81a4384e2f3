// engine/synthetic (DESIGN §3.6): the structured data is deterministic per seed and has the
// promised structure (hot sink, an 8-aligned needle in the middle whose logit exceeds every
// other middle key's by the margin for every query head); EvaluateDecode's metrics behave at
// their extremes.

#include "engine/synthetic/synthetic_data.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "engine/hip/dtype_convert.h"
#include "engine/hip_config.h"
#include "engine/synthetic/accuracy.h"
#include "gtest/gtest.h"

namespace ihip::engine::synthetic {
namespace {

SyntheticOptions Small(DType dt = DType::kF32, uint64_t seed = 1) {
  SyntheticOptions o;
  o.length = 8192;
  o.num_q_heads = 8;
  o.num_kv_heads = 2;
  o.head_dim = 64;
  o.dtype = dt;
  o.seed = seed;
  return o;
}

// Scaled logits of query 0 against key t for query head h.
double Logit(const SyntheticData& d, int h, int64_t t) {
  const SyntheticOptions& o = d.options;
  const int group = o.num_q_heads / o.num_kv_heads;
  std::vector<float> q(o.head_dim), k(o.head_dim);
  ToFloat(o.dtype, d.q_at(0) + size_t(h) * o.head_dim * DTypeSize(o.dtype), o.head_dim, q.data());
  ToFloat(o.dtype, d.k_at(t) + size_t(h / group) * o.head_dim * DTypeSize(o.dtype), o.head_dim,
          k.data());
  double s = 0;
  for (int i = 0; i < o.head_dim; ++i) s += double(q[i]) * k[i];
  return s * d.scale;
}

TEST(SyntheticDataTest, DeterministicPerSeed) {
  const SyntheticData a = Generate(Small(DType::kBF16, 7));
  const SyntheticData b = Generate(Small(DType::kBF16, 7));
  const SyntheticData c = Generate(Small(DType::kBF16, 8));
  EXPECT_EQ(a.k, b.k);
  EXPECT_EQ(a.v, b.v);
  EXPECT_EQ(a.q, b.q);
  EXPECT_EQ(a.needle_token, b.needle_token);
  EXPECT_NE(a.k, c.k);
  EXPECT_EQ(a.k.size(), size_t(8192) * 2 * 64 * 2);
  EXPECT_EQ(a.query_position(0), 8191);
}

TEST(SyntheticDataTest, NeedleAndSinkStructure) {
  for (uint64_t seed : {1, 2, 3}) {
    const SyntheticData d = Generate(Small(DType::kF32, seed));
    const int64_t needle = d.needle_token;
    ASSERT_GE(needle, 256);
    ASSERT_EQ(needle % 8, 0);
    ASSERT_LT(needle + 8, 8191 - 1024 + 1);  // in the middle, before the query's window
    EXPECT_NEAR(d.achieved_margin, 3.0, 0.01) << seed;
    for (int h = 0; h < 8; ++h) {
      double best_other = -INFINITY, needle_min = INFINITY;
      for (int64_t t = 256; t < 8191 - 1023; ++t) {
        const double l = Logit(d, h, t);
        if (t >= needle && t < needle + 8) {
          needle_min = std::min(needle_min, l);
        } else {
          best_other = std::max(best_other, l);
        }
      }
      EXPECT_GE(needle_min - best_other, 3.0 - 0.01) << "seed " << seed << " head " << h;
      for (int64_t t = 0; t < 4; ++t) EXPECT_NEAR(Logit(d, h, t), 6.0, 1e-3);  // hot sinks
    }
  }
}

TEST(SyntheticDataTest, FixedNeedleToken) {
  SyntheticOptions o = Small();
  o.needle_token = 4003;  // rounded down to the 8-token grid
  EXPECT_EQ(Generate(o).needle_token, 4000);
  o.plant_needle = false;
  EXPECT_EQ(Generate(o).needle_token, -1);
}

TEST(EvaluateDecodeTest, Extremes) {
  const SyntheticData d = Generate(Small());
  const LayerConfig cfg = HipConfig::Make().default_layer;
  // Every middle block selected: all keys attended, the sparse output is the dense one.
  std::vector<int64_t> all;
  for (int64_t b = 256 / 8; b * 8 < 8192 - 1024; ++b) all.push_back(b);
  std::vector<float> zeros(8 * 64, 0.0f);
  const DecodeAccuracy dense_only = EvaluateDecode(d, 0, all, cfg, zeros.data());
  EXPECT_TRUE(dense_only.needle_selected);
  EXPECT_NEAR(dense_only.mass_recall, 1.0, 1e-9);
  EXPECT_NEAR(dense_only.topk_recall, 1.0, 1e-9);
  EXPECT_NEAR(dense_only.output_error, 1.0, 1e-9);  // o_sparse = 0: ||0 - o|| / ||o||
  // No block selected.
  const DecodeAccuracy none = EvaluateDecode(d, 0, {}, cfg, zeros.data());
  EXPECT_FALSE(none.needle_selected);
  EXPECT_EQ(none.topk_recall, 0.0);
  EXPECT_LT(none.mass_recall, 1.0);
  EXPECT_GT(none.mass_recall, 0.0);  // sink and window
  // Only the needle's block.
  const DecodeAccuracy needle = EvaluateDecode(d, 0, {d.needle_token / 8}, cfg, zeros.data());
  EXPECT_TRUE(needle.needle_selected);
  EXPECT_GT(needle.mass_recall, none.mass_recall);
  EXPECT_NEAR(needle.topk_recall, 8.0 / 2048, 1e-9);
}

}  // namespace
}  // namespace ihip::engine::synthetic
