// RoPE `extend` mode through CpuEngine (DESIGN §3.4): keys stored before RoPE and rotated on the
// fly. Sparse attention differs from dense only as the StreamingLLM renumbering predicts: when
// every key is in the window, sparse equals dense exactly; with the full budget, sparse equals
// reference attention at the renumbered positions (selected tokens contiguous right before the
// window, sink before them, clamped at 0) and dense equals reference attention at the true
// positions; Llama-3.1 scaling is applied.

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "engine/hip/mask.h"
#include "gtest/gtest.h"
#include "tests/engine/cpu/engine_test_util.h"
#include "tests/engine/test_util.h"

namespace ihip::engine {
namespace {

using testing::EngineUnderTest;
using testing::LayerData;

ModelSpec Llama31Layer(DType dtype, int hq = 8, int hkv = 2, int d = 128) {
  ModelSpec m;
  m.num_layers = 1;
  m.num_q_heads = hq;
  m.num_kv_heads = hkv;
  m.head_dim = d;
  m.dtype = m.kv_dtype = dtype;
  m.rope.mode = RopeMode::kExtend;
  m.rope.theta = 500000;
  m.rope.llama3 = Llama3Scaling{8.0, 1.0, 4.0, 8192};
  return m;
}

HipConfig NoDenseLayers(HipConfig c) {
  c.dense_layers = {};
  return c;
}

// Every key in the window (p < 1024): the sparse key set is the dense one at the true positions,
// so the outputs are identical, bit for bit.
TEST(ExtendRopeTest, AllKeysInTheWindowSparseEqualsDenseExactly) {
  for (DType dt : {DType::kBF16, DType::kF32}) {
    for (const HipConfig& config : {NoDenseLayers(HipConfig::Make()), HipConfig::FullBudget()}) {
      ModelSpec m = Llama31Layer(dt);
      HipConfig c = config;
      c.dense_layers = {};
      const int64_t len = 900;
      const LayerData d = testing::MakeLayerData(m, len, 5, len - 150);
      EngineUnderTest eut;
      ASSERT_TRUE(eut.engine->CreateSequence("s", m, c).ok());
      ASSERT_TRUE(eut.Append("s", 0, d, 0, len).ok());
      for (auto [first, T] : {std::pair<int64_t, int>{len - 1, 1}, {len - 150, 150}}) {
        auto sparse = eut.Attend("s", 0, d, first, T, testing::Eval());
        auto dense = eut.Attend("s", 0, d, first, T, testing::Eval(AttentionMode::kDense));
        ASSERT_TRUE(sparse.ok()) << sparse.status();
        ASSERT_TRUE(dense.ok()) << dense.status();
        EXPECT_EQ(*sparse, *dense) << DTypeName(dt) << " T=" << T;
      }
    }
  }
}

class ExtendFullBudgetTest : public ::testing::Test {
 protected:
  void Check(int64_t len, int T, int hq, int hkv, int dim) {
    const ModelSpec m = Llama31Layer(DType::kF32, hq, hkv, dim);
    const HipConfig c = NoDenseLayers(HipConfig::FullBudget());
    const LayerConfig& cfg = c.ForLayer(0);
    const LayerData d = testing::MakeLayerData(m, len, 6 + len, len - T);
    EngineUnderTest eut;
    ASSERT_TRUE(eut.engine->CreateSequence("s", m, c).ok());
    ASSERT_TRUE(eut.Append("s", 0, d, 0, len - T).ok());
    AttendOptions so;
    so.return_selected = true;
    AttendResult r;
    auto sparse = eut.Attend("s", 0, d, len - T, T, so, &r);
    ASSERT_TRUE(sparse.ok()) << sparse.status();
    auto dense = eut.Attend("s", 0, d, len - T, T, testing::Eval(AttentionMode::kDense));
    ASSERT_TRUE(dense.ok()) << dense.status();
    const testing::RefRopeTable table(m.rope, dim, len);
    for (const MaskInfo& mi : r.masks) {
      const int64_t p_min = len - T + mi.query_offset;
      for (int i : {0, mi.num_queries / 2, mi.num_queries - 1}) {
        const int64_t p = p_min + i;
        const size_t row = d.q_row(), at = size_t(mi.query_offset + i) * row;
        const std::vector<float> got_sparse(sparse->begin() + at, sparse->begin() + at + row);
        const std::vector<float> got_dense(dense->begin() + at, dense->begin() + at + row);
        const auto renumbered =
            testing::SpecSparseKeys(p, p_min, cfg.sink_tokens, cfg.window_tokens, mi.blocks);
        const std::vector<double> want_sparse = testing::RefAttention(
            d.wire_q_at(p), hq, hkv, dim, m.scale(), d.stored_k, d.stored_v, renumbered, p, &table);
        const std::vector<double> want_dense =
            testing::RefAttention(d.wire_q_at(p), hq, hkv, dim, m.scale(), d.stored_k, d.stored_v,
                                  testing::SpecDenseKeys(p), p, &table);
        EXPECT_LE(testing::WorstRatio(got_sparse, want_sparse, 2e-5, 2e-4), 1.0)
            << "sparse vs renumbered reference, query " << p;
        EXPECT_LE(testing::WorstRatio(got_dense, want_dense, 2e-5, 2e-4), 1.0)
            << "dense vs true-position reference, query " << p;
        // The renumbering matters: at true positions the sparse output would be different.
        const std::vector<float> want_dense_f(want_dense.begin(), want_dense.end());
        if (renumbered.size() > size_t(cfg.window_tokens) + 8) {
          EXPECT_GT(testing::RelativeL2(got_sparse, want_dense_f), 1e-3) << "query " << p;
        }
      }
    }
  }
};

TEST_F(ExtendFullBudgetTest, Decode) { Check(3001, 1, 8, 2, 128); }
TEST_F(ExtendFullBudgetTest, DecodeGqa6to1Dim64) { Check(4001, 1, 6, 1, 64); }
TEST_F(ExtendFullBudgetTest, Prefill) { Check(3001, 150, 8, 2, 64); }

// 1024 <= p < 1280: no stage-1 candidate yet (K = 0), the sink tokens below the window are
// renumbered to (p - 1023) - 256 + i, clamped at 0 — here all of them land on position 0.
TEST(ExtendRopeTest, SinkPositionsClampAtZero) {
  const ModelSpec m = Llama31Layer(DType::kF32, 4, 2, 64);
  const HipConfig c = NoDenseLayers(HipConfig::Make());
  const LayerConfig& cfg = c.ForLayer(0);
  const int64_t len = 1101;  // query at 1100: window [77, 1100], sink tokens 0..76
  const LayerData d = testing::MakeLayerData(m, len, 8, len - 1);
  EngineUnderTest eut;
  ASSERT_TRUE(eut.engine->CreateSequence("s", m, c).ok());
  ASSERT_TRUE(eut.Append("s", 0, d, 0, len).ok());
  AttendOptions o = testing::Eval();
  o.return_selected = true;
  AttendResult r;
  auto sparse = eut.Attend("s", 0, d, len - 1, 1, o, &r);
  ASSERT_TRUE(sparse.ok()) << sparse.status();
  ASSERT_EQ(r.masks.size(), 1u);
  EXPECT_TRUE(r.masks[0].blocks.empty());
  const auto keys = testing::SpecSparseKeys(1100, 1100, 256, 1024, {});
  EXPECT_EQ(keys.size(), 1101u);
  for (int64_t t = 0; t < 77; ++t) ASSERT_EQ(keys.at(t), 0);
  const testing::RefRopeTable table(m.rope, 64, len);
  const std::vector<double> want = testing::RefAttention(
      d.wire_q_at(1100), 4, 2, 64, m.scale(), d.stored_k, d.stored_v, keys, 1100, &table);
  EXPECT_LE(testing::WorstRatio(*sparse, want, 2e-5, 2e-4), 1.0);
  EXPECT_EQ(r.attended_keys, 1101);
  (void)cfg;
}

// The service rotates: the same pre-RoPE inputs in `extend` mode and pre-rotated (by the test, at
// the true positions) in `none` mode give the same dense output.
TEST(ExtendRopeTest, DenseExtendEqualsDenseNoneOnPreRotatedInputs) {
  const ModelSpec me = Llama31Layer(DType::kF32, 4, 2, 64);
  ModelSpec mn = me;
  mn.rope = RopeSpec{};
  const int64_t len = 2000;
  const LayerData de = testing::MakeLayerData(me, len, 9, len - 3);
  LayerData dn = de;
  dn.model = mn;
  const Rope rope(me.rope, 64);
  for (int64_t t = 0; t < len; ++t) {
    for (int h = 0; h < 2; ++h) {
      float* k = dn.k.data() + (size_t(t) * 2 + h) * 64;
      rope.Rotate(k, t, k);
    }
    for (int h = 0; h < 4 && t >= len - 3; ++h) {
      float* q = dn.q.data() + (size_t(t) * 4 + h) * 64;
      rope.Rotate(q, t, q);
    }
  }
  dn.k_wire = testing::ToWire(DType::kF32, dn.k);
  dn.q_wire = testing::ToWire(DType::kF32, dn.q);
  EngineUnderTest eut;
  ASSERT_TRUE(eut.engine->CreateSequence("e", me, NoDenseLayers(HipConfig::Make())).ok());
  ASSERT_TRUE(eut.engine->CreateSequence("n", mn, NoDenseLayers(HipConfig::Make())).ok());
  ASSERT_TRUE(eut.Append("e", 0, de, 0, len).ok());
  ASSERT_TRUE(eut.Append("n", 0, dn, 0, len).ok());
  auto oe = eut.Attend("e", 0, de, len - 3, 3, testing::Eval(AttentionMode::kDense));
  auto on = eut.Attend("n", 0, dn, len - 3, 3, testing::Eval(AttentionMode::kDense));
  ASSERT_TRUE(oe.ok() && on.ok());
  const std::vector<double> ref(on->begin(), on->end());
  EXPECT_LE(testing::WorstRatio(*oe, ref, 1e-5, 1e-4), 1.0);
}

}  // namespace
}  // namespace ihip::engine
