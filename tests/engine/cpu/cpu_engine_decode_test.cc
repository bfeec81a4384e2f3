// CpuEngine decoding (DESIGN §3.3): AttendResult::refreshed_from_stage follows the refresh
// schedule of each preset over 300 steps (0 = cached mask reused, and then the mask is the
// previous one), evaluation calls leave the decode-step counter alone, a bulk append or a
// prefill restarts it; re-running from each stage cache with the same query equals a full run;
// concurrent calls on different sequences give the serial results; releasing a sequence while
// a request for it waits never lets that request read dropped pages.

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "engine/hip/refresh_schedule.h"
#include "gtest/gtest.h"
#include "tests/engine/cpu/engine_test_util.h"
#include "tests/engine/test_util.h"

namespace ihip::engine {
namespace {

using testing::EngineUnderTest;
using testing::LayerData;

ModelSpec Small(int layers = 4) {
  ModelSpec m;
  m.num_layers = layers;
  m.num_q_heads = 4;
  m.num_kv_heads = 2;
  m.head_dim = 64;
  m.dtype = m.kv_dtype = DType::kF32;
  return m;
}

constexpr int kLayer = 3;

class RefreshScheduleEngineTest : public ::testing::TestWithParam<RefreshPreset> {};

}  // namespace

void PrintTo(RefreshPreset p, std::ostream* os) { *os << RefreshPresetName(p); }

namespace {

TEST_P(RefreshScheduleEngineTest, FollowsThePresetOver300DecodeSteps) {
  const ModelSpec m = Small();
  const HipConfig config = HipConfig::Make(HipPreset::k3K, GetParam());
  const std::vector<StageSpec>& stages = config.ForLayer(kLayer).stages;
  const int64_t prefix = 2000, steps = 300;
  const LayerData d = testing::MakeLayerData(m, prefix + steps + 40, 31, prefix);
  EngineUnderTest eut;
  ASSERT_TRUE(eut.engine->CreateSequence("s", m, config).ok());
  ASSERT_TRUE(eut.Append("s", kLayer, d, 0, prefix).ok());

  AttendOptions o;
  o.return_selected = true;
  std::vector<int64_t> previous;
  int64_t p = prefix;
  std::map<int, int> count;
  for (int64_t s = 0; s < steps; ++s, ++p) {
    if (s == 150) {  // evaluation calls do not advance the schedule
      AttendResult e;
      ASSERT_TRUE(eut.Attend("s", kLayer, d, p - 1, 1, testing::Eval(), &e).ok());
      ASSERT_TRUE(eut.Attend("s", kLayer, d, p - 5, 5, testing::Eval(), &e).ok());
      ASSERT_TRUE(
          eut.Attend("s", kLayer, d, p - 1, 1, testing::Eval(AttentionMode::kDense), &e).ok());
    }
    AttendResult r;
    ASSERT_TRUE(eut.Attend("s", kLayer, d, p, 1, o, &r).ok());
    const int want = StageToRefresh(stages, s);
    ASSERT_EQ(r.refreshed_from_stage, want) << RefreshPresetName(GetParam()) << " step " << s;
    ++count[want];
    ASSERT_EQ(r.masks.size(), 1u);
    if (want == 0) {
      ASSERT_EQ(r.masks[0].blocks, previous) << "step " << s << " reused a different mask";
    }
    previous = r.masks[0].blocks;
  }
  EXPECT_EQ(count[1], 299 / stages[0].refresh_interval + 1);
  EXPECT_GT(count[0], 0);

  // A bulk append restarts the counter: the next step runs every stage, then the schedule
  // continues from step 1.
  ASSERT_TRUE(eut.Append("s", kLayer, d, p, p + 10).ok());
  p += 10;
  for (int64_t s = 0; s < 20; ++s, ++p) {
    AttendResult r;
    ASSERT_TRUE(eut.Attend("s", kLayer, d, p, 1, o, &r).ok());
    ASSERT_EQ(r.refreshed_from_stage, StageToRefresh(stages, s)) << "after append, step " << s;
  }
  // So does a prefill.
  AttendResult pr;
  ASSERT_TRUE(eut.Attend("s", kLayer, d, p, 5, o, &pr).ok());
  EXPECT_EQ(pr.refreshed_from_stage, 1);
  p += 5;
  for (int64_t s = 0; s < 5; ++s, ++p) {
    AttendResult r;
    ASSERT_TRUE(eut.Attend("s", kLayer, d, p, 1, o, &r).ok());
    ASSERT_EQ(r.refreshed_from_stage, StageToRefresh(stages, s)) << "after prefill, step " << s;
  }
}

INSTANTIATE_TEST_SUITE_P(Presets, RefreshScheduleEngineTest,
                         ::testing::Values(RefreshPreset::kPaper, RefreshPreset::kFast,
                                           RefreshPreset::kFlash),
                         [](const auto& info) {
                           return std::string(RefreshPresetName(info.param));
                         });

// Each layer keeps its own counter.
TEST(RefreshScheduleEngineLayersTest, CountersArePerLayer) {
  const ModelSpec m = Small(5);
  HipConfig config = HipConfig::Make();
  config.dense_layers = {};
  const LayerData d = testing::MakeLayerData(m, 1500, 32, 1400);
  EngineUnderTest eut;
  ASSERT_TRUE(eut.engine->CreateSequence("s", m, config).ok());
  for (int layer : {3, 4}) ASSERT_TRUE(eut.Append("s", layer, d, 0, 1400).ok());
  const auto& stages = config.ForLayer(3).stages;
  for (int64_t s = 0; s < 10; ++s) {
    AttendResult r;
    ASSERT_TRUE(eut.Attend("s", 3, d, 1400 + s, 1, testing::Sparse(), &r).ok());
    EXPECT_EQ(r.refreshed_from_stage, StageToRefresh(stages, s));
  }
  for (int64_t s = 0; s < 5; ++s) {
    AttendResult r;
    ASSERT_TRUE(eut.Attend("s", 4, d, 1400 + s, 1, testing::Sparse(), &r).ok());
    EXPECT_EQ(r.refreshed_from_stage, StageToRefresh(stages, s)) << "layer 4 step " << s;
  }
}

// EXPOSES AN ENGINE BUG: CpuEngine::Attend (engine/cpu/cpu_engine.cc:238) resets or advances the
// mask cache only for sparse-mode appends; dense-mode appends leave the cached mask and counter.
// Tokens appended by a dense-mode Attend must not escape the next sparse steps: AppendKv
// invalidates the mask cache ("the next decode step runs every stage"), and so must any other
// append — otherwise a cached mask from before the append is reused while the appended tokens
// have already slid out of the window. With the full budget every key must be attended.
TEST(MaskCacheEngineTest, DenseAppendsDoNotLeaveAStaleMask) {
  const ModelSpec m = Small();
  HipConfig config = HipConfig::FullBudget();
  const int64_t prefix = 2000, dense_tokens = 1500;
  const LayerData d = testing::MakeLayerData(m, prefix + dense_tokens + 10, 34, prefix);
  for (int T : {int(dense_tokens), 1}) {
    EngineUnderTest eut;
    ASSERT_TRUE(eut.engine->CreateSequence("s", m, config).ok());
    ASSERT_TRUE(eut.Append("s", kLayer, d, 0, prefix).ok());
    AttendResult r;
    ASSERT_TRUE(eut.Attend("s", kLayer, d, prefix, 1, testing::Sparse(), &r).ok());  // step 0
    ASSERT_EQ(r.refreshed_from_stage, 1);
    int64_t p = prefix + 1;
    // Dense appends: one prefill chunk of 1500 tokens, or 1500 dense decode steps.
    while (p < prefix + 1 + dense_tokens) {
      const int n = int(std::min<int64_t>(T, prefix + 1 + dense_tokens - p));
      ASSERT_TRUE(eut.Attend("s", kLayer, d, p, n, testing::Dense()).ok());
      p += n;
    }
    auto sparse = eut.Attend("s", kLayer, d, p, 1, testing::Sparse(), &r);
    ASSERT_TRUE(sparse.ok()) << sparse.status();
    EXPECT_EQ(r.attended_keys, p + 1)
        << "after dense appends of " << T << " token(s) at a time, the sparse step at " << p
        << " reused the mask from position " << prefix << " (refreshed_from_stage "
        << r.refreshed_from_stage << "): " << p + 1 - r.attended_keys << " keys unattended";
    auto dense = eut.Attend("s", kLayer, d, p, 1, testing::Eval(AttentionMode::kDense));
    ASSERT_TRUE(dense.ok());
    const std::vector<double> ref(dense->begin(), dense->end());
    EXPECT_LE(testing::WorstRatio(*sparse, ref, 1e-6, 1e-4), 1.0) << "T=" << T;
  }
}

// §3.3: re-running stages i..3 from the cached input of stage i with the same query gives exactly
// the result of a full run — through the engine's refresh override, outputs included.
TEST(RerunFromCacheEngineTest, EveryOverrideEqualsTheFullRun) {
  const ModelSpec m = Small();
  for (bool extend : {false, true}) {
    ModelSpec mm = m;
    if (extend) {
      mm.rope.mode = RopeMode::kExtend;
      mm.rope.theta = 500000;
      mm.rope.llama3 = Llama3Scaling{};
    }
    HipConfig config = HipConfig::Make();
    const int64_t len = 20000;  // stages 2 and 3 prune
    const LayerData d = testing::MakeLayerData(mm, len, 33, len - 1);
    EngineUnderTest eut;
    ASSERT_TRUE(eut.engine->CreateSequence("s", mm, config).ok());
    ASSERT_TRUE(eut.Append("s", kLayer, d, 0, len - 1).ok());
    AttendOptions full;
    full.refresh = 1;
    full.return_selected = full.return_stage_chunks = true;
    AttendResult rf;
    auto want = eut.Attend("s", kLayer, d, len - 1, 1, full, &rf);
    ASSERT_TRUE(want.ok()) << want.status();
    ASSERT_EQ(rf.refreshed_from_stage, 1);
    ASSERT_EQ(rf.masks[0].blocks.size(), 256u);
    ASSERT_EQ(rf.masks[0].stage_chunks.size(), 3u);
    for (int from : {2, 3, kRefreshReuseMask, 1}) {
      AttendOptions o = testing::Eval(AttentionMode::kSparse, from);
      o.return_selected = o.return_stage_chunks = true;
      AttendResult r;
      auto got = eut.Attend("s", kLayer, d, len - 1, 1, o, &r);
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_EQ(r.refreshed_from_stage, from);
      EXPECT_EQ(r.masks[0].blocks, rf.masks[0].blocks) << "from " << from;
      for (size_t s = 0; s < r.masks[0].stage_chunks.size(); ++s) {
        // The stages that ran report their kept chunks; they match the full run's.
        EXPECT_EQ(r.masks[0].stage_chunks[s],
                  rf.masks[0].stage_chunks[3 - r.masks[0].stage_chunks.size() + s]);
      }
      EXPECT_EQ(*got, *want) << "from " << from << (extend ? " extend" : " none");
    }
  }
}

// Concurrent requests on different sequences (and layers) give exactly the serial results.
TEST(CpuEngineConcurrencyTest, ParallelSequencesMatchSerial) {
  const ModelSpec m = Small();
  const int kSeqs = 4;
  std::vector<LayerData> data;
  for (int i = 0; i < kSeqs; ++i) data.push_back(testing::MakeLayerData(m, 2400, 40 + i, 2000));
  auto run = [&](EngineUnderTest& eut, int i, std::vector<std::vector<float>>* outs) {
    const std::string id = "seq" + std::to_string(i);
    const int layer = i % 2 == 0 ? 3 : 1;  // a default and a dense layer
    ASSERT_TRUE(eut.Append(id, layer, data[i], 0, 2000, 500).ok());
    ASSERT_TRUE(eut.Attend(id, layer, data[i], 2000, 100, testing::Sparse()).ok());
    for (int64_t p = 2100; p < 2140; ++p) {
      auto o = eut.Attend(id, layer, data[i], p, 1, testing::Sparse());
      ASSERT_TRUE(o.ok()) << o.status();
      outs->push_back(*o);
    }
  };
  EngineUnderTest serial, parallel;
  std::vector<std::vector<std::vector<float>>> want(kSeqs), got(kSeqs);
  for (int i = 0; i < kSeqs; ++i) {
    ASSERT_TRUE(
        serial.engine->CreateSequence("seq" + std::to_string(i), m, HipConfig::Make()).ok());
    ASSERT_TRUE(
        parallel.engine->CreateSequence("seq" + std::to_string(i), m, HipConfig::Make()).ok());
  }
  for (int i = 0; i < kSeqs; ++i) run(serial, i, &want[i]);
  std::vector<std::thread> threads;
  for (int i = 0; i < kSeqs; ++i) threads.emplace_back([&, i] { run(parallel, i, &got[i]); });
  for (auto& t : threads) t.join();
  for (int i = 0; i < kSeqs; ++i) EXPECT_EQ(got[i], want[i]) << "sequence " << i;
}

// ---- Release racing a waiting request ----

// A PageStore whose dropped pages stay allocated but are overwritten with 0xff (NaN as fp32),
// so reading a dropped page shows as NaN instead of a use-after-free.
class PoisoningPageStore final : public PageStore {
 public:
  absl::Status CreateSequence(const SequenceId& id, int num_layers, const PageGeometry& g,
                              const std::string& metadata = "") override {
    std::lock_guard<std::mutex> lock(mu_);
    if (seqs_.count(id)) return absl::AlreadyExistsError(id);
    seqs_[id] = Seq{g, std::vector<Layer>(size_t(num_layers))};
    return absl::OkStatus();
  }
  absl::StatusOr<StoredSequence> OpenSequence(const SequenceId& id) override {
    return absl::UnimplementedError("not needed by this test");
  }
  absl::Status SuspendSequence(const SequenceId& id) override { return absl::OkStatus(); }
  absl::Status Truncate(const SequenceId& id, int layer, int64_t length) override {
    return absl::UnimplementedError("not needed by this test");
  }
  absl::Status DropSequence(const SequenceId& id) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = seqs_.find(id);
    if (it == seqs_.end()) return absl::NotFoundError(id);
    for (Layer& l : it->second.layers) {
      for (auto& p : l.pages) {
        std::memset(p.get(), 0xff, it->second.g.page_bytes());
        graveyard_.push_back(std::move(p));
      }
    }
    seqs_.erase(it);
    return absl::OkStatus();
  }
  absl::Status Allocate(const SequenceId& id, int layer, int64_t count,
                        std::vector<std::byte*>* pages, int64_t first = -1) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = seqs_.find(id);
    if (it == seqs_.end()) return absl::NotFoundError(id);
    pages->clear();
    for (int64_t i = 0; i < count; ++i) {
      auto& l = it->second.layers[size_t(layer)];
      l.pages.push_back(std::make_unique<std::byte[]>(it->second.g.page_bytes()));
      pages->push_back(l.pages.back().get());
    }
    return absl::OkStatus();
  }
  absl::Status Commit(const SequenceId& id, int layer, int64_t length) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = seqs_.find(id);
    if (it == seqs_.end()) return absl::NotFoundError(id);
    it->second.layers[size_t(layer)].length = length;
    return absl::OkStatus();
  }
  absl::Status Abort(const SequenceId& id, int layer) override {
    std::lock_guard<std::mutex> lock(mu_);
    return seqs_.count(id) ? absl::OkStatus() : absl::NotFoundError(id);
  }
  absl::StatusOr<int64_t> Length(const SequenceId& id, int layer) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = seqs_.find(id);
    if (it == seqs_.end()) return absl::NotFoundError(id);
    return it->second.layers[size_t(layer)].length;
  }
  absl::Status Pin(const SequenceId& id, int layer, int64_t first, int64_t count,
                   std::vector<std::byte*>* pages) override {
    return absl::UnimplementedError("pin");
  }
  absl::Status Unpin(const SequenceId&, int, int64_t, int64_t) override { return absl::OkStatus(); }
  int64_t BytesUsed() const override { return 0; }

 private:
  struct Layer {
    std::vector<std::unique_ptr<std::byte[]>> pages;
    int64_t length = 0;
  };
  struct Seq {
    PageGeometry g;
    std::vector<Layer> layers;
  };
  std::mutex mu_;
  std::map<SequenceId, Seq> seqs_;
  std::vector<std::unique_ptr<std::byte[]>> graveyard_;
};

// EXPOSES AN ENGINE BUG (engine/cpu/cpu_engine.cc: Attend looks up at :184, locks the layer at
// :198; ReleaseSequence locks/unlocks the layers at :77 and then drops the pages).
// A request that found the sequence before ReleaseSequence removed it, but reaches the layer
// after the release went through, must fail (NOT_FOUND) — not compute on dropped pages.
// CpuEngine::Attend looks the sequence up (Find) and only later locks the layer; Release erases
// the sequence, locks and unlocks each layer and drops the pages: nothing stops the request from
// then reading (or, appending, writing) the freed pages through its LayerState's block table.
// The window between Find and the layer lock is widened here with a legal but long
// dense_layers list (HipConfig::ForLayer scans it in Attend before the lock).
TEST(CpuEngineReleaseRaceTest, ReleasedSequenceIsNeverReadAfterRelease) {
  ModelSpec m = Small(2);
  HipConfig config = HipConfig::Make();
  config.dense_layers.assign(20'000'000, 0);  // layer 0 listed many times; layer 1 is not dense
  const LayerData d = testing::MakeLayerData(m, 200, 51, 0);
  PoisoningPageStore store;
  cpu::CpuEngineOptions opts;
  opts.num_threads = 2;
  cpu::CpuEngine engine(opts, &store);
  int read_after_release = 0, trials = 0;
  for (int trial = 0; trial < 5; ++trial) {
    ASSERT_TRUE(engine.CreateSequence("s", m, config).ok());
    ASSERT_TRUE(engine.AppendKv("s", 1, 0, 200, d.k_at(0), d.v_at(0)).ok());
    std::vector<float> out(size_t(4) * 64, 0.0f);
    absl::Status eval_status;
    std::atomic<bool> started{false};
    std::thread reader([&] {
      AttendItem item;
      item.sequence = "s";
      item.layer = 1;
      item.position = 150;
      item.q = d.q_at(150);
      item.out = out.data();
      item.options.mode = AttentionMode::kDense;
      item.options.append = false;
      AttendResult r;
      started = true;
      eval_status = engine.Attend(item, &r);
    });
    while (!started) std::this_thread::yield();
    std::this_thread::sleep_for(std::chrono::microseconds(300));  // let it pass Find
    const absl::Status released = engine.ReleaseSequence("s");
    reader.join();
    ASSERT_TRUE(released.ok()) << released;
    ++trials;
    bool nan = false;
    for (float x : out) nan |= std::isnan(x);
    if (eval_status.ok() && nan) ++read_after_release;
  }
  EXPECT_EQ(read_after_release, 0)
      << read_after_release << " of " << trials
      << " evaluations returned OK after computing on the released sequence's dropped pages";
}

}  // namespace
}  // namespace ihip::engine
