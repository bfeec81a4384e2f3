// The engine over ihip-kvstore (KvStorePageStore + KvStoreClient + an in-process StoreServer):
// the same outputs as over the in-process page store, recovery of a sequence by a new engine
// (an ihip-server restart), and unpinning idle layers and suspending sequences.

#include "engine/kvstore_page_store.h"

#include <memory>
#include <string>
#include <vector>

#include "engine/cpu/cpu_engine.h"
#include "engine/hip/dtype_convert.h"
#include "engine/in_memory_page_store.h"
#include "gtest/gtest.h"
#include "kvstore/kv_store_client.h"
#include "tests/engine/cpu/engine_test_util.h"
#include "tests/kvstore/kvstore_test_util.h"

namespace ihip::engine {
namespace {

using kvstore::KvStoreClient;
using kvstore::KvStoreClientOptions;

ModelSpec SmallModel() {
  ModelSpec m;
  m.num_layers = 4;
  m.num_q_heads = 8;
  m.num_kv_heads = 2;
  m.head_dim = 64;
  m.dtype = DType::kBF16;
  m.kv_dtype = DType::kBF16;
  return m;
}

class EngineOverKvStoreTest : public kvstore::testing::KvStoreFixture {
 protected:
  void SetUp() override {
    // Pages of 64 tokens x 2 heads x 64 dims x bf16, K and V: 32 KiB.
    shm_name_ = kvstore::testing::UniqueShmName();
    kvstore::SegmentOptions o = kvstore::testing::SmallSegmentOptions(shm_name_, 512);
    o.slot_bytes = 32 << 10;
    o.pool_bytes = 512 * o.slot_bytes;
    auto seg = kvstore::ShmSegment::Create(o);
    ASSERT_TRUE(seg.ok()) << seg.status();
    segment_ = std::move(seg).value();
    auto disk = kvstore::DiskTier::Open(kvstore::testing::TestDiskOptions(disk_path()));
    ASSERT_TRUE(disk.ok()) << disk.status();
    disk_ = std::move(disk).value();
    store_ = std::make_unique<kvstore::Store>(kvstore::StoreOptions{}, segment_.get(), disk_.get());
    StartServer();
  }

  std::unique_ptr<KvStoreClient> Attach() {
    KvStoreClientOptions o;
    o.segment_name = shm_name_;
    o.client_name = "engine";
    auto c = KvStoreClient::Attach(o);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? std::move(c).value() : nullptr;
  }

  // Appends the first `n` tokens of layer `layer`, then decodes token n; returns the output.
  static std::vector<float> AppendAndDecode(Engine& e, const testing::LayerData& d, int layer,
                                            int64_t n) {
    for (int64_t t = 0; t < n; t += 1000) {
      const int c = int(std::min<int64_t>(1000, n - t));
      EXPECT_TRUE(e.AppendKv("s", layer, t, c, d.k_at(t), d.v_at(t)).ok());
    }
    return Decode(e, d, layer, n);
  }
  static std::vector<float> Decode(Engine& e, const testing::LayerData& d, int layer, int64_t p) {
    std::vector<uint16_t> out(d.q_row());
    AttendItem item{"s", layer, p, 1, d.q_at(p), d.k_at(p), d.v_at(p), out.data(), {}};
    AttendResult r;
    const absl::Status s = e.Attend(item, &r);
    EXPECT_TRUE(s.ok()) << s;
    std::vector<float> f(out.size());
    ToFloat(DType::kBF16, out.data(), out.size(), f.data());
    return f;
  }
};

TEST_F(EngineOverKvStoreTest, SameOutputsAsTheInProcessStore) {
  const ModelSpec m = SmallModel();
  const HipConfig cfg = HipConfig::Make();
  const testing::LayerData d = testing::MakeLayerData(m, 4100, 7, 4000);
  InMemoryPageStore mem;
  cpu::CpuEngine reference({}, &mem);
  ASSERT_TRUE(reference.CreateSequence("s", m, cfg).ok());
  auto client = Attach();
  ASSERT_NE(client, nullptr);
  KvStorePageStore kv(client.get());
  cpu::CpuEngine engine({}, &kv);
  ASSERT_TRUE(engine.CreateSequence("s", m, cfg, "metadata").ok());
  for (int layer : {0, 3}) {
    const auto want = AppendAndDecode(reference, d, layer, 4001);
    const auto got = AppendAndDecode(engine, d, layer, 4001);
    EXPECT_EQ(got, want) << "layer " << layer;
    for (int64_t p = 4002; p < 4010; ++p)
      EXPECT_EQ(Decode(engine, d, layer, p), Decode(reference, d, layer, p));
  }
  EXPECT_EQ(engine.GetSequence("s")->layer_lengths, reference.GetSequence("s")->layer_lengths);
  EXPECT_TRUE(store_->CheckConsistency().ok());
}

TEST_F(EngineOverKvStoreTest, ANewEngineRecoversTheSequence) {
  const ModelSpec m = SmallModel();
  const HipConfig cfg = HipConfig::Make();
  const testing::LayerData d = testing::MakeLayerData(m, 3100, 11, 3000);
  InMemoryPageStore mem;
  cpu::CpuEngine reference({}, &mem);
  ASSERT_TRUE(reference.CreateSequence("s", m, cfg).ok());
  AppendAndDecode(reference, d, 1, 3000);
  {
    auto client = Attach();
    KvStorePageStore kv(client.get());
    cpu::CpuEngine engine({}, &kv);
    ASSERT_TRUE(engine.CreateSequence("s", m, cfg, "model spec bytes").ok());
    AppendAndDecode(engine, d, 1, 3000);
    EXPECT_GT(store_->Stats().pages_pinned, 0u);
  }  // the engine and its client go: the kvstore releases the pins
  EXPECT_EQ(store_->Stats().pages_pinned, 0u);
  auto client = Attach();
  KvStorePageStore kv(client.get());
  auto stored = kv.OpenSequence("s");
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ(stored->metadata, "model spec bytes");
  EXPECT_EQ(stored->lengths, (std::vector<int64_t>{0, 3001, 0, 0}));
  cpu::CpuEngine engine({}, &kv);
  ModelSpec other = m;
  other.head_dim = 128;
  EXPECT_EQ(engine.RecoverSequence("s", other, cfg).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(engine.RecoverSequence("s", m, cfg).ok());
  EXPECT_EQ(engine.GetSequence("s")->layer_lengths, (std::vector<int64_t>{0, 3001, 0, 0}));
  for (int64_t p = 3001; p < 3006; ++p) {
    EXPECT_EQ(Decode(engine, d, 1, p), Decode(reference, d, 1, p)) << p;
  }
  EXPECT_EQ(engine.RecoverSequence("s", m, cfg).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(engine.RecoverSequence("nope", m, cfg).code(), absl::StatusCode::kNotFound);
}

TEST_F(EngineOverKvStoreTest, IdleLayersUnpinAndSuspendedSequencesComeBack) {
  const ModelSpec m = SmallModel();
  const HipConfig cfg = HipConfig::Make();
  const testing::LayerData d = testing::MakeLayerData(m, 2600, 5, 2500);
  InMemoryPageStore mem;
  cpu::CpuEngine reference({}, &mem);
  ASSERT_TRUE(reference.CreateSequence("s", m, cfg).ok());
  auto client = Attach();
  KvStorePageStore kv(client.get());
  cpu::CpuEngine engine({}, &kv);
  ASSERT_TRUE(engine.CreateSequence("s", m, cfg).ok());
  for (int layer : {0, 2}) {
    EXPECT_EQ(AppendAndDecode(engine, d, layer, 2500), AppendAndDecode(reference, d, layer, 2500));
  }
  EXPECT_EQ(engine.Stats().pinned_layers, 2);
  EXPECT_EQ(engine.UnpinIdle(absl::Hours(1)), 0);  // just used: stays pinned
  EXPECT_EQ(engine.UnpinIdle(absl::ZeroDuration()), 4);
  EXPECT_EQ(engine.Stats().pinned_layers, 0);
  EXPECT_EQ(store_->Stats().pages_pinned, 0u);
  ASSERT_TRUE(engine.SuspendSequence("s").ok());
  EXPECT_EQ(store_->Stats().slots_used, 0u);
  EXPECT_GT(store_->Stats().pages_disk_only, 0u);
  // The next step pins (fetching back from disk) and computes the same thing.
  for (int64_t p = 2501; p < 2504; ++p) {
    EXPECT_EQ(Decode(engine, d, 2, p), Decode(reference, d, 2, p)) << p;
  }
  EXPECT_GT(store_->Stats().fetch_backs, 0u);
  EXPECT_EQ(engine.Stats().pinned_layers, 1);
  EXPECT_TRUE(engine.ReleaseSequence("s").ok());
  EXPECT_EQ(store_->Stats().sequences, 0u);
  EXPECT_TRUE(store_->CheckConsistency().ok());
}

}  // namespace
}  // namespace ihip::engine
