// KV storage dtypes end to end (DESIGN §2 ModelSpec kv dtype, §3.5 "fp8 storage upcast"): a
// sequence storing KV as fp8 (E4M3, E5M2) or bf16 behind an fp32 wire computes exactly what an
// fp32-KV sequence computes on the same values rounded through that storage dtype, and stays
// close to the unrounded fp32 run; sparse (with real pruning) and dense, decode and prefill.

#include <cmath>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/engine/cpu/engine_test_util.h"
#include "tests/engine/test_util.h"

namespace ihip::engine {
namespace {

using testing::EngineUnderTest;
using testing::LayerData;

class KvStorageTest : public ::testing::TestWithParam<DType> {};

}  // namespace

void PrintTo(DType t, std::ostream* os) { *os << DTypeName(t); }

namespace {

TEST_P(KvStorageTest, MatchesFp32KvOnRoundedValuesAndIsClose) {
  const DType kv = GetParam();
  ModelSpec m;
  m.num_layers = 4;
  m.num_q_heads = 8;
  m.num_kv_heads = 2;
  m.head_dim = 64;
  m.dtype = DType::kF32;
  m.kv_dtype = kv;
  ModelSpec m32 = m;
  m32.kv_dtype = DType::kF32;
  const HipConfig config = HipConfig::Make();  // layer 3: default 3K stages, real pruning
  const int64_t len = 12000;
  const int layer = 3;
  const LayerData d = testing::MakeLayerData(m, len, 21, len - 150);
  // The same inputs rounded through the storage dtype, for the fp32-KV sequence.
  LayerData dr = d;
  dr.model = m32;
  dr.k_wire = testing::ToWire(DType::kF32, testing::Rounded(kv, d.k));
  dr.v_wire = testing::ToWire(DType::kF32, testing::Rounded(kv, d.v));
  LayerData d32 = d;
  d32.model = m32;

  EngineUnderTest eut;
  ASSERT_TRUE(eut.engine->CreateSequence("kv", m, config).ok());
  ASSERT_TRUE(eut.engine->CreateSequence("rounded", m32, config).ok());
  ASSERT_TRUE(eut.engine->CreateSequence("fp32", m32, config).ok());
  ASSERT_TRUE(eut.Append("kv", layer, d, 0, len).ok());
  ASSERT_TRUE(eut.Append("rounded", layer, dr, 0, len).ok());
  ASSERT_TRUE(eut.Append("fp32", layer, d32, 0, len).ok());

  for (AttentionMode mode : {AttentionMode::kSparse, AttentionMode::kDense}) {
    for (auto [first, T] : {std::pair<int64_t, int>{len - 1, 1}, {len - 150, 150}}) {
      AttendOptions o = testing::Eval(mode);
      o.return_selected = true;
      AttendResult rk, rr;
      auto ok = eut.Attend("kv", layer, d, first, T, o, &rk);
      auto orr = eut.Attend("rounded", layer, dr, first, T, o, &rr);
      auto o32 = eut.Attend("fp32", layer, d32, first, T, o);
      ASSERT_TRUE(ok.ok() && orr.ok() && o32.ok()) << ok.status() << orr.status() << o32.status();
      const std::string what = std::string(DTypeName(kv)) +
                               (mode == AttentionMode::kSparse ? " sparse" : " dense") +
                               " T=" + std::to_string(T);
      // Identical values stored: identical masks and outputs.
      ASSERT_EQ(rk.masks.size(), rr.masks.size());
      for (size_t i = 0; i < rk.masks.size(); ++i) {
        EXPECT_EQ(rk.masks[i].blocks, rr.masks[i].blocks) << what;
      }
      EXPECT_EQ(*ok, *orr) << what;
      // Close to the unrounded run (dense: the same keys; sparse masks may legitimately pick
      // other blocks once scores move, so there the error is only reported): fp8 E4M3 has a
      // 3-bit mantissa (relative error <= 1/16), E5M2 a 2-bit one (<= 1/8).
      const double err = testing::RelativeL2(*ok, *o32);
      EXPECT_GT(err, 0.0) << what << ": the storage dtype was not applied";
      if (mode == AttentionMode::kDense) {
        const double tol = kv == DType::kF8E5M2   ? 0.25
                           : kv == DType::kF8E4M3 ? 0.12
                           : kv == DType::kBF16   ? 0.01
                                                  : 0.002;
        EXPECT_LT(err, tol) << what;
      }
      RecordProperty(what, std::to_string(err));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, KvStorageTest,
                         ::testing::Values(DType::kF8E4M3, DType::kF8E5M2, DType::kBF16,
                                           DType::kF16),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

TEST(KvStorageBytesTest, PageBytesFollowTheStorageDtype) {
  for (DType kv : {DType::kF32, DType::kBF16, DType::kF8E4M3}) {
    ModelSpec m;
    m.num_layers = 1;
    m.num_q_heads = 8;
    m.num_kv_heads = 2;
    m.head_dim = 64;
    m.dtype = DType::kBF16;
    m.kv_dtype = kv;
    HipConfig c = HipConfig::Make();
    c.dense_layers = {};
    const LayerData d = testing::MakeLayerData(m, 130, 3);
    EngineUnderTest eut;
    ASSERT_TRUE(eut.engine->CreateSequence("s", m, c).ok());
    ASSERT_TRUE(eut.Append("s", 0, d, 0, 130).ok());
    // 3 pages of 64 tokens, K and V, [64][2][64] each.
    EXPECT_EQ(eut.store->BytesUsed(), int64_t(3 * 2 * 64 * 2 * 64 * DTypeSize(kv)))
        << DTypeName(kv);
  }
}

}  // namespace
}  // namespace ihip::engine
