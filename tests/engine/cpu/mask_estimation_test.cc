// End-to-end mask estimation through CpuEngine (DESIGN §3.2–3.4): the chunks kept by every stage
// and the final blocks equal a double-precision reference written from the definitions
// (test_util.h RefMaskEstimation), for decode and prefill (blocks of 64 queries, stages 1-2
// scored with queries mean-pooled over groups of 4, the last block partial), in RoPE `none`
// mode and in `extend` mode with the relative and chunk-indexed styles, for both presets; and
// the sparse output equals reference attention over the spec's key set with those blocks.

#include <cmath>
#include <vector>

#include "engine/hip/mask.h"
#include "gtest/gtest.h"
#include "tests/engine/cpu/engine_test_util.h"
#include "tests/engine/test_util.h"

namespace ihip::engine {
namespace {

using testing::EngineUnderTest;
using testing::LayerData;

struct Case {
  const char* name;
  HipPreset preset;
  bool dense_layer;  // use the config's dense layer (4096 final tokens, chunk-indexed RoPE)
  bool extend;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class MaskEstimationTest : public ::testing::TestWithParam<Case> {
 protected:
  static constexpr int64_t kLength = 40000;

  void SetUp() override {
    const Case& c = GetParam();
    model_.num_layers = 1;
    model_.num_q_heads = 8;
    model_.num_kv_heads = 2;
    model_.head_dim = 64;
    model_.dtype = model_.kv_dtype = DType::kF32;
    if (c.extend) {
      model_.rope.mode = RopeMode::kExtend;
      model_.rope.theta = 500000;
      model_.rope.llama3 = Llama3Scaling{};
    }
    config_ = HipConfig::Make(c.preset);
    config_.dense_layers = c.dense_layer ? std::vector<int>{0} : std::vector<int>{};
    cfg_ = config_.ForLayer(0);
    data_ = testing::MakeLayerData(model_, kLength, 1234, kLength - 200, 1.0f);
    ASSERT_TRUE(eut_.engine->CreateSequence("s", model_, config_).ok());
    ASSERT_TRUE(eut_.Append("s", 0, data_, 0, kLength).ok());
  }

  // Scaled queries of positions [p, p + n), as the engine folds the scale in (fp32).
  std::vector<float> Scaled(int64_t p, int n) const {
    std::vector<float> q(data_.wire_q_at(p), data_.wire_q_at(p) + size_t(n) * data_.q_row());
    for (float& x : q) x *= model_.scale();
    return q;
  }

  testing::RefMask Reference(int64_t p_min, int n) const {
    const std::vector<float> full = Scaled(p_min, n);
    const size_t row = data_.q_row();
    const int groups = (n + cfg_.pool_stride - 1) / cfg_.pool_stride;
    std::vector<float> pooled(size_t(groups) * row, 0.0f);
    std::vector<int64_t> full_pos(n), pooled_pos(groups);
    for (int i = 0; i < n; ++i) full_pos[i] = p_min + i;
    for (int g = 0; g < groups; ++g) {
      const int first = g * cfg_.pool_stride, count = std::min(cfg_.pool_stride, n - first);
      pooled_pos[g] = p_min + first;  // a pooled query sits at its group's first position
      for (size_t e = 0; e < row; ++e) {
        double sum = 0;
        for (int i = first; i < first + count; ++i) sum += full[size_t(i) * row + e];
        pooled[size_t(g) * row + e] = float(sum / count);
      }
    }
    const RopeSpec* rope = model_.rope.mode == RopeMode::kExtend ? &model_.rope : nullptr;
    return testing::RefMaskEstimation(
        data_.stored_k, kLength, model_.num_q_heads, model_.num_kv_heads, model_.head_dim, cfg_,
        rope, p_min, {groups, pooled.data(), pooled_pos.data()}, {n, full.data(), full_pos.data()});
  }

  void CheckOutput(const std::vector<float>& out, int64_t first, int n, int64_t p_min,
                   const std::vector<int64_t>& blocks, const char* what) {
    const RopeSpec* spec = model_.rope.mode == RopeMode::kExtend ? &model_.rope : nullptr;
    std::unique_ptr<testing::RefRopeTable> table;
    if (spec) table = std::make_unique<testing::RefRopeTable>(*spec, model_.head_dim, kLength);
    for (int i = 0; i < n; ++i) {
      const int64_t p = first + i;
      const auto keys =
          testing::SpecSparseKeys(p, p_min, cfg_.sink_tokens, cfg_.window_tokens, blocks);
      const std::vector<double> want = testing::RefAttention(
          data_.wire_q_at(p), model_.num_q_heads, model_.num_kv_heads, model_.head_dim,
          model_.scale(), data_.stored_k, data_.stored_v, keys, p, table.get());
      const std::vector<float> got(out.begin() + size_t(i) * data_.q_row(),
                                   out.begin() + size_t(i + 1) * data_.q_row());
      ASSERT_LE(testing::WorstRatio(got, want, 2e-5, 2e-4), 1.0) << what << " query " << p;
    }
  }

  ModelSpec model_;
  HipConfig config_;
  LayerConfig cfg_;
  LayerData data_;
  EngineUnderTest eut_;
};

TEST_P(MaskEstimationTest, DecodeMatchesReference) {
  const int64_t p = kLength - 1;
  AttendOptions o = testing::Eval();
  o.return_selected = o.return_stage_chunks = true;
  AttendResult r;
  auto out = eut_.Attend("s", 0, data_, p, 1, o, &r);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(r.refreshed_from_stage, 1);  // nothing cached after a bulk append
  ASSERT_EQ(r.masks.size(), 1u);
  const MaskInfo& m = r.masks[0];
  EXPECT_EQ(m.query_offset, 0);
  EXPECT_EQ(m.num_queries, 1);
  const testing::RefMask want = Reference(p, 1);
  ASSERT_EQ(m.stage_chunks.size(), cfg_.stages.size());
  for (size_t s = 0; s < cfg_.stages.size(); ++s) {
    EXPECT_EQ(m.stage_chunks[s], want.kept[s]) << "stage " << s + 1;
    EXPECT_EQ(int64_t(want.kept[s].size()), cfg_.stages[s].kept_chunks())
        << "stage " << s + 1 << " should prune at this length";
  }
  EXPECT_EQ(m.blocks, want.blocks);
  EXPECT_EQ(int64_t(m.blocks.size()) * 8, cfg_.final_tokens());
  EXPECT_EQ(
      r.attended_keys,
      int64_t(
          testing::SpecSparseKeys(p, p, cfg_.sink_tokens, cfg_.window_tokens, m.blocks).size()));
  CheckOutput(*out, p, 1, p, m.blocks, "decode");
}

TEST_P(MaskEstimationTest, PrefillMatchesReference) {
  const int64_t first = kLength - 150;  // blocks of 64, 64 and a partial 22
  AttendOptions o = testing::Eval();
  o.return_selected = o.return_stage_chunks = true;
  AttendResult r;
  auto out = eut_.Attend("s", 0, data_, first, 150, o, &r);
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(r.masks.size(), 3u);
  int64_t attended = 0;
  for (int b = 0; b < 3; ++b) {
    const MaskInfo& m = r.masks[b];
    EXPECT_EQ(m.query_offset, 64 * b);
    EXPECT_EQ(m.num_queries, b < 2 ? 64 : 22);
    const int64_t p_min = first + m.query_offset;
    const testing::RefMask want = Reference(p_min, m.num_queries);
    ASSERT_EQ(m.stage_chunks.size(), cfg_.stages.size());
    for (size_t s = 0; s < cfg_.stages.size(); ++s) {
      EXPECT_EQ(m.stage_chunks[s], want.kept[s]) << "block " << b << " stage " << s + 1;
    }
    EXPECT_EQ(m.blocks, want.blocks) << "block " << b;
    for (int i = 0; i < m.num_queries; ++i) {
      attended += int64_t(
          testing::SpecSparseKeys(p_min + i, p_min, cfg_.sink_tokens, cfg_.window_tokens, m.blocks)
              .size());
    }
    const std::vector<float> part(
        out->begin() + size_t(m.query_offset) * data_.q_row(),
        out->begin() + size_t(m.query_offset + m.num_queries) * data_.q_row());
    // Spot-check the output of a few queries of the block against reference attention.
    for (int i : {0, m.num_queries / 2, m.num_queries - 1}) {
      const std::vector<float> one(part.begin() + size_t(i) * data_.q_row(),
                                   part.begin() + size_t(i + 1) * data_.q_row());
      CheckOutput(one, p_min + i, 1, p_min, m.blocks, "prefill");
    }
  }
  EXPECT_EQ(r.attended_keys, attended);
}

INSTANTIATE_TEST_SUITE_P(
    Configs, MaskEstimationTest,
    ::testing::Values(Case{"preset3k_none", HipPreset::k3K, false, false},
                      Case{"preset3k_extend_relative", HipPreset::k3K, false, true},
                      Case{"preset3k_dense_layer_extend_chunk_indexed", HipPreset::k3K, true, true},
                      Case{"preset5k_none", HipPreset::k5K, false, false}),
    [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace ihip::engine
