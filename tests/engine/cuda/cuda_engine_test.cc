// The CUDA backend through the Engine interface against the CPU reference backend (DESIGN §3.6):
// the same inputs give the same refresh stages, the same selected blocks and the same outputs
// within bf16 tolerance, for decode over refresh cycles, prefill chunks and dense attention;
// graph replay equals eager launches; a suspended layer comes back from the page store; the GPU
// copy's memory limit is a RESOURCE_EXHAUSTED that appends nothing. Fresh random data each run
// (the seed is printed). Labelled `gpu`: skipped without a GPU.

#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engine/cuda/cuda_engine.h"
#include "gtest/gtest.h"
#include "tests/engine/cpu/engine_test_util.h"
#include "tests/engine/cuda/gpu_test_util.h"
#include "tests/engine/test_util.h"

namespace ihip::engine {
namespace {

using testing::EngineUnderTest;
using testing::LayerData;

constexpr int kLayer = 3;  // a sparse layer (0-2 are the dense layers)

uint64_t FreshSeed() {
  const uint64_t seed = testing::FreshSeed();
  std::printf("seed %llu\n", static_cast<unsigned long long>(seed));
  return seed;
}

ModelSpec Model(DType dtype, bool rope) {
  ModelSpec m;
  m.num_layers = 4;
  m.num_q_heads = 8;
  m.num_kv_heads = 2;
  m.head_dim = 128;
  m.dtype = m.kv_dtype = dtype;
  if (rope) {
    m.rope.mode = RopeMode::kExtend;
    m.rope.theta = 500000;
    m.rope.llama3 = Llama3Scaling{};
  }
  return m;
}

// A CUDA engine over its own in-memory store, driven like EngineUnderTest.
struct CudaUnderTest : EngineUnderTest {
  explicit CudaUnderTest(bool graphs = true, double max_device_gib = 0) : EngineUnderTest() {
    cuda::CudaEngineOptions o;
    o.use_graphs = graphs;
    o.max_device_gib = max_device_gib;
    auto made = cuda::NewCudaEngine(o, store.get());
    EXPECT_TRUE(made.ok()) << made.status();
    if (made.ok()) gpu = std::move(*made);
  }
  std::unique_ptr<Engine> gpu;
};

// Runs `steps` appending decode steps after `prefix` tokens on both engines and compares them.
void CompareDecode(const ModelSpec& m, const HipConfig& config, int64_t prefix, int steps,
                   double tolerance) {
  const uint64_t seed = FreshSeed();
  const LayerData d = testing::MakeLayerData(m, prefix + steps, seed, prefix);
  EngineUnderTest cpu;
  CudaUnderTest gpu;
  ASSERT_NE(gpu.gpu, nullptr);
  ASSERT_TRUE(cpu.engine->CreateSequence("s", m, config).ok());
  ASSERT_TRUE(gpu.gpu->CreateSequence("s", m, config).ok());
  ASSERT_TRUE(cpu.Append("s", kLayer, d, 0, prefix).ok());
  for (int64_t t = 0; t < prefix; t += 4096) {
    const int n = int(std::min<int64_t>(4096, prefix - t));
    ASSERT_TRUE(gpu.gpu->AppendKv("s", kLayer, t, n, d.k_at(t), d.v_at(t)).ok());
  }
  AttendOptions o;
  o.return_selected = true;
  for (int i = 0; i < steps; ++i) {
    const int64_t p = prefix + i;
    AttendResult rc, rg;
    auto oc = cpu.Attend("s", kLayer, d, p, 1, o, &rc);
    ASSERT_TRUE(oc.ok()) << oc.status();
    std::vector<std::byte> out(d.q_row() * DTypeSize(m.dtype));
    AttendItem item{"s", kLayer, p, 1, d.q_at(p), d.k_at(p), d.v_at(p), out.data(), o};
    const absl::Status s = gpu.gpu->Attend(item, &rg);
    ASSERT_TRUE(s.ok()) << s;
    const std::vector<float> og = testing::FromWire(m.dtype, out.data(), d.q_row());
    EXPECT_EQ(rg.refreshed_from_stage, rc.refreshed_from_stage) << "step " << i;
    ASSERT_EQ(rg.masks.size(), 1u);
    EXPECT_EQ(rg.masks[0].blocks, rc.masks[0].blocks) << "step " << i << " seed " << seed;
    EXPECT_EQ(rg.attended_keys, rc.attended_keys) << "step " << i;
    EXPECT_LT(testing::RelativeL2(og, *oc), tolerance) << "step " << i << " seed " << seed;
  }
}

TEST(CudaEngineTest, DecodeMatchesCpuOverRefreshCyclesBf16Extend) {
  IHIP_REQUIRE_GPU();
  CompareDecode(Model(DType::kBF16, true), HipConfig::Make(HipPreset::k3K, RefreshPreset::kPaper),
                60000, 40, 1e-2);
}

TEST(CudaEngineTest, DecodeMatchesCpuF32None) {
  IHIP_REQUIRE_GPU();
  CompareDecode(Model(DType::kF32, false), HipConfig::Make(HipPreset::k3K, RefreshPreset::kFast),
                45000, 20, 2e-3);
}

TEST(CudaEngineTest, DenseLayerDecodeMatchesCpu) {
  IHIP_REQUIRE_GPU();
  // Layer 3 configured as a dense layer: chunk-indexed pruning RoPE, 4096 final tokens.
  HipConfig config = HipConfig::Make();
  config.dense_layers = {3};
  CompareDecode(Model(DType::kBF16, true), config, 50000, 12, 1e-2);
}

// Prefill chunk and dense attention (decode and prefill) against the CPU.
TEST(CudaEngineTest, PrefillAndDenseMatchCpu) {
  IHIP_REQUIRE_GPU();
  const ModelSpec m = Model(DType::kBF16, true);
  const HipConfig config = HipConfig::Make();
  const int64_t prefix = 40000;
  const int chunk = 200;  // 4 query blocks, the last one partial
  const uint64_t seed = FreshSeed();
  const LayerData d = testing::MakeLayerData(m, prefix + chunk + 1, seed, prefix);
  EngineUnderTest cpu;
  CudaUnderTest gpu;
  ASSERT_NE(gpu.gpu, nullptr);
  ASSERT_TRUE(cpu.engine->CreateSequence("s", m, config).ok());
  ASSERT_TRUE(gpu.gpu->CreateSequence("s", m, config).ok());
  ASSERT_TRUE(cpu.Append("s", kLayer, d, 0, prefix).ok());
  ASSERT_TRUE(gpu.gpu->AppendKv("s", kLayer, 0, int(prefix), d.k_at(0), d.v_at(0)).ok());
  for (AttentionMode mode : {AttentionMode::kSparse, AttentionMode::kDense}) {
    AttendOptions o;
    o.return_selected = true;
    o.mode = mode;
    o.append = false;  // evaluate the chunk's queries over stored KV (appended below first)
    if (mode == AttentionMode::kSparse) {
      AttendOptions a = o;
      a.append = true;
      AttendResult rc, rg;
      auto oc = cpu.Attend("s", kLayer, d, prefix, chunk, a, &rc);
      ASSERT_TRUE(oc.ok()) << oc.status();
      std::vector<std::byte> out(size_t(chunk) * d.q_row() * DTypeSize(m.dtype));
      AttendItem item{"s", kLayer, prefix, chunk, d.q_at(prefix), d.k_at(prefix),
                      d.v_at(prefix), out.data(), a};
      ASSERT_TRUE(gpu.gpu->Attend(item, &rg).ok());
      const auto og = testing::FromWire(m.dtype, out.data(), size_t(chunk) * d.q_row());
      EXPECT_LT(testing::RelativeL2(og, *oc), 2e-2) << "sparse prefill, seed " << seed;
      ASSERT_EQ(rg.masks.size(), rc.masks.size());
      for (size_t b = 0; b < rc.masks.size(); ++b) {
        EXPECT_EQ(rg.masks[b].blocks, rc.masks[b].blocks) << "query block " << b;
      }
      EXPECT_EQ(rg.attended_keys, rc.attended_keys);
    } else {
      for (int T : {1, chunk}) {
        AttendResult rc, rg;
        auto oc = cpu.Attend("s", kLayer, d, prefix, T, o, &rc);
        ASSERT_TRUE(oc.ok()) << oc.status();
        std::vector<std::byte> out(size_t(T) * d.q_row() * DTypeSize(m.dtype));
        AttendItem item{"s", kLayer, prefix, T, d.q_at(prefix), nullptr, nullptr, out.data(), o};
        ASSERT_TRUE(gpu.gpu->Attend(item, &rg).ok());
        const auto og = testing::FromWire(m.dtype, out.data(), size_t(T) * d.q_row());
        EXPECT_LT(testing::RelativeL2(og, *oc), 2e-2) << "dense T=" << T << ", seed " << seed;
        EXPECT_EQ(rg.attended_keys, rc.attended_keys);
      }
    }
  }
}

// Decode steps replayed from captured graphs give exactly the eager launches' results; a
// suspended sequence (GPU copy dropped) comes back from the page store with the same results.
TEST(CudaEngineTest, GraphReplayEqualsEagerAndSuspendResumes) {
  IHIP_REQUIRE_GPU();
  const ModelSpec m = Model(DType::kBF16, true);
  const HipConfig config = HipConfig::Make(HipPreset::k3K, RefreshPreset::kPaper);
  const int64_t prefix = 30000;
  const int steps = 20;
  const LayerData d = testing::MakeLayerData(m, prefix + steps, FreshSeed(), prefix);
  CudaUnderTest graphs(true), eager(false);
  ASSERT_NE(graphs.gpu, nullptr);
  ASSERT_NE(eager.gpu, nullptr);
  for (Engine* e : {graphs.gpu.get(), eager.gpu.get()}) {
    ASSERT_TRUE(e->CreateSequence("s", m, config).ok());
    ASSERT_TRUE(e->AppendKv("s", kLayer, 0, int(prefix), d.k_at(0), d.v_at(0)).ok());
  }
  for (int i = 0; i < steps; ++i) {
    const int64_t p = prefix + i;
    if (i == 10) {
      ASSERT_TRUE(graphs.gpu->SuspendSequence("s").ok());
    }
    std::vector<std::byte> a(d.q_row() * 2), b(d.q_row() * 2);
    AttendResult ra, rb;
    AttendItem ia{"s", kLayer, p, 1, d.q_at(p), d.k_at(p), d.v_at(p), a.data(), {}};
    AttendItem ib = ia;
    ib.out = b.data();
    ASSERT_TRUE(graphs.gpu->Attend(ia, &ra).ok());
    ASSERT_TRUE(eager.gpu->Attend(ib, &rb).ok());
    EXPECT_EQ(ra.refreshed_from_stage, rb.refreshed_from_stage) << "step " << i;
    EXPECT_TRUE(a == b) << "step " << i << ": graph replay and eager launches differ";
  }
}

TEST(CudaEngineTest, DeviceMemoryLimitIsResourceExhaustedAndAppendsNothing) {
  IHIP_REQUIRE_GPU();
  const ModelSpec m = Model(DType::kBF16, false);
  CudaUnderTest gpu(true, /*max_device_gib=*/16.0 / 1024);  // 16 MiB
  ASSERT_NE(gpu.gpu, nullptr);
  const LayerData d = testing::MakeLayerData(m, 40000, FreshSeed(), 39990);
  ASSERT_TRUE(gpu.gpu->CreateSequence("s", m, HipConfig::Make()).ok());
  // Pages of this shape: 64 tokens x 2 heads x 128 x 2 B x 2 = 64 KiB; 16 MiB = 256 pages.
  ASSERT_TRUE(gpu.gpu->AppendKv("s", kLayer, 0, 8192, d.k_at(0), d.v_at(0)).ok());
  const absl::Status s = gpu.gpu->AppendKv("s", kLayer, 8192, 30000, d.k_at(8192), d.v_at(8192));
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  auto info = gpu.gpu->GetSequence("s");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->layer_lengths[kLayer], 8192);
}

}  // namespace
}  // namespace ihip::engine
