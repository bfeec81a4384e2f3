// ihip-server (with ihip-kvstore) as real processes on loopback: results equal the in-process
// engine, every error path, many concurrent streams, a kill -9 of the server, deadlines.

#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/cpu/cpu_engine.h"
#include "engine/in_memory_page_store.h"
#include "gtest/gtest.h"
#include "ihip/v1/attention.grpc.pb.h"
#include "ihip/v1/kvstore.grpc.pb.h"
#include "tests/testing/child_process.h"

namespace ihip {
namespace {

using testing::ChildProcess;
using v1::Attention;

constexpr int kLayers = 4, kHq = 4, kHkv = 2, kD = 64;

v1::ModelSpec SmallModel() {
  v1::ModelSpec m;
  m.set_num_layers(kLayers);
  m.set_num_q_heads(kHq);
  m.set_num_kv_heads(kHkv);
  m.set_head_dim(kD);
  m.set_dtype(v1::DTYPE_FP32);
  return m;
}

// Random fp32 rows as bytes.
std::string Floats(std::mt19937& rng, size_t n) {
  std::normal_distribution<float> nd;
  std::string s(n * 4, '\0');
  for (size_t i = 0; i < n; ++i) {
    const float f = nd(rng);
    std::memcpy(s.data() + 4 * i, &f, 4);
  }
  return s;
}

class ServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::MakeTempDir();
    shm_ = absl::StrCat("/ihip-test-", getpid(), "-srv");
  }
  void TearDown() override {
    // Graceful stops, so the kvstore unlinks its segment; shm_unlink as a fallback (a kvstore
    // killed by a test leaves it behind).
    for (auto* p : {&server_, &kvstore_}) {
      if (*p != nullptr && (*p)->running()) {
        (*p)->Signal(SIGTERM);
        (*p)->Wait(absl::Seconds(20));
      }
      p->reset();
    }
    shm_unlink(shm_.c_str());
    testing::RemoveTree(dir_);
  }

  void StartKvStore(const std::string& extra = "") {
    kvstore_ = std::make_unique<ChildProcess>();
    std::vector<std::string> args = {IHIP_KVSTORE_BIN,
                                     "--segment_name=" + shm_,
                                     "--host_tier_gib=0.0625",
                                     "--slot_kib=64",
                                     "--grpc_address=127.0.0.1:0",
                                     "--metrics_host=127.0.0.1",
                                     "--metrics_port=0",
                                     "--lease_ms=1000"};
    if (!extra.empty()) args.push_back(extra);
    ASSERT_TRUE(kvstore_->Start(args, dir_ + "/kvstore.log"));
    const std::string ready = kvstore_->WaitForLine("ihip-kvstore ready", absl::Seconds(30));
    ASSERT_FALSE(ready.empty());
    kv_port_ = testing::ReadyField(ready, "grpc_port");
  }
  void StartServer() {
    server_ = std::make_unique<ChildProcess>();
    ASSERT_TRUE(server_->Start(
        {IHIP_SERVER_BIN, "--kv_backend=kvstore",
         absl::StrCat("--kvstore_address=127.0.0.1:", kv_port_), "--grpc_address=127.0.0.1:0",
         "--metrics_host=127.0.0.1", "--metrics_port=0", "--threads=2", "--workers=4"},
        dir_ + "/server.log"));
    const std::string ready = server_->WaitForLine("ihip-server ready", absl::Seconds(30));
    ASSERT_FALSE(ready.empty()) << "ihip-server did not become ready";
    channel_ =
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", testing::ReadyField(ready, "grpc_port")),
                            grpc::InsecureChannelCredentials());
    stub_ = Attention::NewStub(channel_);
  }
  void StartBoth(const std::string& kvstore_flag = "") {
    StartKvStore(kvstore_flag);
    StartServer();
  }

  grpc::Status Create(const std::string& id, v1::SequenceInfo* info = nullptr,
                      v1::HipConfig config = {}) {
    grpc::ClientContext ctx;
    v1::CreateSequenceRequest req;
    *req.mutable_model() = SmallModel();
    *req.mutable_config() = config;
    req.set_sequence_id(id);
    v1::SequenceInfo out;
    return stub_->CreateSequence(&ctx, req, info != nullptr ? info : &out);
  }
  // Appends `n` random tokens to `layer` through AppendKV, from position `from`.
  grpc::Status Append(const std::string& id, int layer, int64_t from, int n, std::mt19937& rng) {
    grpc::ClientContext ctx;
    v1::AppendKVResponse resp;
    auto writer = stub_->AppendKV(&ctx, &resp);
    for (int t = 0; t < n; t += 500) {
      const int c = std::min(500, n - t);
      v1::AppendKVChunk chunk;
      chunk.set_sequence_id(id);
      chunk.set_layer(layer);
      chunk.set_position(uint64_t(from + t));
      chunk.set_num_tokens(c);
      chunk.set_k(Floats(rng, size_t(c) * kHkv * kD));
      chunk.set_v(Floats(rng, size_t(c) * kHkv * kD));
      if (!writer->Write(chunk)) break;
    }
    writer->WritesDone();
    return writer->Finish();
  }
  v1::AttendItem DecodeItem(const std::string& id, int layer, int64_t pos, std::mt19937& rng) {
    v1::AttendItem it;
    it.set_sequence_id(id);
    it.set_layer(layer);
    it.set_position(uint64_t(pos));
    it.set_num_tokens(1);
    it.set_q(Floats(rng, kHq * kD));
    it.set_k(Floats(rng, kHkv * kD));
    it.set_v(Floats(rng, kHkv * kD));
    return it;
  }
  std::vector<uint64_t> Lengths(const std::string& id) {
    grpc::ClientContext ctx;
    v1::GetSequenceRequest req;
    req.set_sequence_id(id);
    v1::SequenceInfo info;
    if (!stub_->GetSequence(&ctx, req, &info).ok()) return {};
    return {info.layer_lengths().begin(), info.layer_lengths().end()};
  }

  std::string dir_, shm_;
  int kv_port_ = 0;
  std::unique_ptr<ChildProcess> kvstore_, server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<Attention::Stub> stub_;
};

// The service computes exactly what the engine computes in-process on the same inputs.
TEST_F(ServerTest, ResultsEqualTheInProcessEngine) {
  StartBoth();
  {
    grpc::Status cs = Create("s");
    ASSERT_TRUE(cs.ok()) << cs.error_message();
  }
  std::mt19937 rng(1);
  // The same random stream feeds the service and the local engine.
  std::mt19937 rng_copy = rng;
  ASSERT_TRUE(Append("s", 3, 0, 3000, rng).ok());
  v1::AttendRequest req;
  *req.add_items() = DecodeItem("s", 3, 3000, rng);
  req.mutable_items(0)->set_return_selected_blocks(true);
  req.set_request_id(42);
  v1::AttendResponse resp;
  grpc::ClientContext ctx;
  ASSERT_TRUE(stub_->Attend(&ctx, req, &resp).ok());
  EXPECT_EQ(resp.request_id(), 42u);
  ASSERT_EQ(resp.results_size(), 1);
  EXPECT_EQ(resp.results(0).refreshed_from_stage(), 1u);
  EXPECT_GT(resp.results(0).selected_blocks_size(), 0);

  engine::InMemoryPageStore mem;
  engine::cpu::CpuEngine local({}, &mem);
  engine::ModelSpec m;
  m.num_layers = kLayers;
  m.num_q_heads = kHq;
  m.num_kv_heads = kHkv;
  m.head_dim = kD;
  m.dtype = m.kv_dtype = engine::DType::kF32;
  engine::HipConfig cfg = engine::HipConfig::Make();
  ASSERT_TRUE(local.CreateSequence("s", m, cfg).ok());
  for (int t = 0; t < 3000; t += 500) {
    const std::string k = Floats(rng_copy, size_t(500) * kHkv * kD);
    const std::string v = Floats(rng_copy, size_t(500) * kHkv * kD);
    ASSERT_TRUE(local.AppendKv("s", 3, t, 500, k.data(), v.data()).ok());
  }
  const v1::AttendItem& it = req.items(0);
  std::vector<float> out(kHq * kD);
  engine::AttendItem e{"s",           3,          3000, 1, it.q().data(), it.k().data(),
                       it.v().data(), out.data(), {}};
  engine::AttendResult r;
  ASSERT_TRUE(local.Attend(e, &r).ok());
  ASSERT_EQ(resp.results(0).o().size(), out.size() * 4);
  EXPECT_EQ(std::memcmp(resp.results(0).o().data(), out.data(), out.size() * 4), 0);
  EXPECT_EQ(Lengths("s"), (std::vector<uint64_t>{0, 0, 0, 3001}));
}

TEST_F(ServerTest, EveryErrorPathAndNothingAppended) {
  StartBoth();
  std::mt19937 rng(2);
  ASSERT_TRUE(Create("e").ok());
  EXPECT_EQ(Create("e").error_code(), grpc::StatusCode::ALREADY_EXISTS);
  ASSERT_TRUE(Append("e", 0, 0, 100, rng).ok());
  auto attend = [&](v1::AttendItem it) {
    grpc::ClientContext ctx;
    v1::AttendRequest req;
    *req.add_items() = std::move(it);
    v1::AttendResponse resp;
    return stub_->Attend(&ctx, req, &resp);
  };
  {  // Unknown sequence.
    grpc::Status s = attend(DecodeItem("nope", 0, 0, rng));
    EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND) << s.error_message();
  }
  {  // Wrong q size: the field is named.
    v1::AttendItem it = DecodeItem("e", 0, 100, rng);
    it.set_q(it.q().substr(4));
    grpc::Status s = attend(it);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(s.error_message().find("items[0].q"), std::string::npos) << s.error_message();
  }
  {  // Layer out of range.
    grpc::Status s = attend(DecodeItem("e", kLayers, 0, rng));
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(s.error_message().find("layer"), std::string::npos) << s.error_message();
  }
  {  // Position gap.
    grpc::Status s = attend(DecodeItem("e", 0, 150, rng));
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(s.error_message().find("position"), std::string::npos) << s.error_message();
  }
  {  // A request whose second item is bad appends nothing at all.
    grpc::ClientContext ctx;
    v1::AttendRequest req;
    *req.add_items() = DecodeItem("e", 0, 100, rng);
    *req.add_items() = DecodeItem("e", 1, 7, rng);  // gap
    v1::AttendResponse resp;
    EXPECT_EQ(stub_->Attend(&ctx, req, &resp).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  EXPECT_EQ(Lengths("e"), (std::vector<uint64_t>{100, 0, 0, 0}));
  {  // A batch whose second item would pass max_context is rejected whole, up front.
    grpc::ClientContext cctx;
    v1::CreateSequenceRequest creq;
    *creq.mutable_model() = SmallModel();
    creq.mutable_model()->set_max_context(4);
    creq.set_sequence_id("small");
    v1::SequenceInfo info;
    ASSERT_TRUE(stub_->CreateSequence(&cctx, creq, &info).ok());
    grpc::ClientContext ctx;
    v1::AttendRequest req;
    *req.add_items() = DecodeItem("small", 0, 0, rng);
    v1::AttendItem big = DecodeItem("small", 1, 0, rng);
    big.set_num_tokens(8);
    big.set_q(Floats(rng, size_t(8) * kHq * kD));
    big.set_k(Floats(rng, size_t(8) * kHkv * kD));
    big.set_v(Floats(rng, size_t(8) * kHkv * kD));
    *req.add_items() = big;
    v1::AttendResponse resp;
    grpc::Status s = stub_->Attend(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
    EXPECT_EQ(Lengths("small"), (std::vector<uint64_t>{0, 0, 0, 0}));
  }
  {  // Bad model spec.
    grpc::ClientContext ctx;
    v1::CreateSequenceRequest req;
    *req.mutable_model() = SmallModel();
    req.mutable_model()->set_head_dim(96);
    v1::SequenceInfo info;
    grpc::Status s = stub_->CreateSequence(&ctx, req, &info);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(s.error_message().find("head_dim"), std::string::npos) << s.error_message();
  }
  {  // AppendKV with a bad chunk fails the stream and appends nothing of that chunk.
    grpc::ClientContext ctx;
    v1::AppendKVResponse resp;
    auto w = stub_->AppendKV(&ctx, &resp);
    v1::AppendKVChunk c;
    c.set_sequence_id("e");
    c.set_layer(0);
    c.set_position(100);
    c.set_num_tokens(2);
    c.set_k(Floats(rng, kHkv * kD));  // one token's worth
    c.set_v(Floats(rng, kHkv * kD));
    w->Write(c);
    w->WritesDone();
    grpc::Status s = w->Finish();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(s.error_message().find("chunk.k"), std::string::npos) << s.error_message();
  }
  EXPECT_EQ(Lengths("e"), (std::vector<uint64_t>{100, 0, 0, 0}));
  {  // Release, then the sequence is gone.
    grpc::ClientContext ctx;
    v1::ReleaseSequenceRequest req;
    req.set_sequence_id("e");
    v1::ReleaseSequenceResponse resp;
    EXPECT_TRUE(stub_->ReleaseSequence(&ctx, req, &resp).ok());
    grpc::ClientContext ctx2;
    EXPECT_EQ(stub_->ReleaseSequence(&ctx2, req, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  // Capacity: the 64 MiB pool has no disk tier; filling it is RESOURCE_EXHAUSTED, not a crash.
  ASSERT_TRUE(Create("big").ok());
  grpc::Status s;
  int64_t pos = 0;
  for (int i = 0; i < 40 && s.ok(); ++i, pos += 4000) s = Append("big", 0, pos, 4000, rng);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  EXPECT_EQ(Lengths("big")[0] % 500, 0u);  // whole chunks only
  server_->Signal(SIGTERM);
  EXPECT_EQ(server_->Wait(absl::Seconds(30)), 0);
}

TEST_F(ServerTest, ManyConcurrentStreamsThenNothingLeaks) {
  StartBoth("--host_tier_gib=0.5");
  constexpr int kStreams = 32;
  const absl::Duration kFor = absl::Seconds(10);
  std::atomic<int> errors{0};
  std::atomic<int64_t> steps{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kStreams; ++i) {
    threads.emplace_back([&, i] {
      std::mt19937 rng(100 + i);
      const std::string id = absl::StrCat("stream-", i);
      if (!Create(id).ok() || !Append(id, 1, 0, 1500, rng).ok()) {
        ++errors;
        return;
      }
      grpc::ClientContext ctx;
      auto stream = stub_->AttendStream(&ctx);
      const absl::Time end = absl::Now() + kFor;
      for (int64_t pos = 1500; absl::Now() < end; ++pos) {
        v1::AttendRequest req;
        req.set_request_id(uint64_t(pos));
        *req.add_items() = DecodeItem(id, 1, pos, rng);
        v1::AttendResponse resp;
        if (!stream->Write(req) || !stream->Read(&resp) || resp.request_id() != uint64_t(pos) ||
            resp.results_size() != 1) {
          ++errors;
          break;
        }
        ++steps;
      }
      stream->WritesDone();
      if (!stream->Finish().ok()) ++errors;
      grpc::ClientContext rctx;
      v1::ReleaseSequenceRequest rel;
      rel.set_sequence_id(id);
      v1::ReleaseSequenceResponse rresp;
      if (!stub_->ReleaseSequence(&rctx, rel, &rresp).ok()) ++errors;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_GT(steps.load(), kStreams);
  grpc::ClientContext ctx;
  v1::ListSequencesResponse list;
  ASSERT_TRUE(stub_->ListSequences(&ctx, {}, &list).ok());
  EXPECT_EQ(list.sequences_size(), 0);
  // The kvstore holds nothing for them any more: no sequence, no pinned page.
  auto kv = v1::KvStore::NewStub(grpc::CreateChannel(absl::StrCat("127.0.0.1:", kv_port_),
                                                     grpc::InsecureChannelCredentials()));
  grpc::ClientContext kctx;
  v1::KvStoreStats stats;
  ASSERT_TRUE(kv->Stats(&kctx, {}, &stats).ok());
  EXPECT_EQ(stats.sequences(), 0u);
  EXPECT_EQ(stats.pages_pinned(), 0u);
  EXPECT_EQ(stats.pages_used(), 0u);
  std::cout << "decode steps over " << kStreams << " streams in 10 s: " << steps.load() << "\n";
}

TEST_F(ServerTest, SequencesSurviveAKill9OfTheServer) {
  StartBoth();
  std::mt19937 rng(3);
  ASSERT_TRUE(Create("keep").ok());
  ASSERT_TRUE(Append("keep", 2, 0, 2000, rng).ok());
  {  // Mid-stream: a few steps, then the server dies.
    grpc::ClientContext ctx;
    auto stream = stub_->AttendStream(&ctx);
    for (int64_t pos = 2000; pos < 2005; ++pos) {
      v1::AttendRequest req;
      *req.add_items() = DecodeItem("keep", 2, pos, rng);
      v1::AttendResponse resp;
      ASSERT_TRUE(stream->Write(req) && stream->Read(&resp));
    }
    server_->Signal(SIGKILL);
    EXPECT_EQ(server_->Wait(absl::Seconds(10)), 128 + SIGKILL);
    v1::AttendResponse resp;
    EXPECT_FALSE(stream->Read(&resp));
    EXPECT_FALSE(stream->Finish().ok());
  }
  StartServer();  // the kvstore kept the KV; the new server recovers the sequence
  EXPECT_EQ(Lengths("keep"), (std::vector<uint64_t>{0, 0, 2005, 0}));
  grpc::ClientContext ctx;
  v1::AttendRequest req;
  *req.add_items() = DecodeItem("keep", 2, 2005, rng);
  v1::AttendResponse resp;
  ASSERT_TRUE(stub_->Attend(&ctx, req, &resp).ok());
  EXPECT_EQ(Lengths("keep"), (std::vector<uint64_t>{0, 0, 2006, 0}));
}

TEST_F(ServerTest, KvStoreAwayIsUnavailableThenRecovers) {
  // Durable, on a fixed port: the restarted kvstore serves the same sequences at the same address.
  auto start_durable = [&] {
    kvstore_ = std::make_unique<ChildProcess>();
    ASSERT_TRUE(
        kvstore_->Start({IHIP_KVSTORE_BIN, "--segment_name=" + shm_, "--host_tier_gib=0.0625",
                         "--slot_kib=64", "--rocksdb_path=" + dir_ + "/db", "--durable",
                         "--grpc_address=127.0.0.1:" + std::to_string(kv_port_),
                         "--metrics_host=127.0.0.1", "--metrics_port=0", "--lease_ms=1000"},
                        dir_ + "/kvstore.log"));
    ASSERT_FALSE(kvstore_->WaitForLine("ihip-kvstore ready", absl::Seconds(30)).empty());
  };
  kv_port_ = testing::FreePort();
  start_durable();
  StartServer();
  std::mt19937 rng(5);
  ASSERT_TRUE(Create("r").ok());
  ASSERT_TRUE(Append("r", 0, 0, 1000, rng).ok());
  kvstore_->Signal(SIGKILL);
  ASSERT_EQ(kvstore_->Wait(absl::Seconds(10)), 128 + SIGKILL);
  {
    grpc::ClientContext ctx;
    v1::AttendRequest req;
    *req.add_items() = DecodeItem("r", 0, 1000, rng);
    v1::AttendResponse resp;
    grpc::Status s = stub_->Attend(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
  }
  start_durable();  // same port, same RocksDB: the server re-attaches by itself
  grpc::Status s;
  for (int i = 0; i < 100; ++i) {
    grpc::ClientContext ctx;
    v1::AttendRequest req;
    *req.add_items() = DecodeItem("r", 0, 1000, rng);
    v1::AttendResponse resp;
    s = stub_->Attend(&ctx, req, &resp);
    if (s.ok()) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(Lengths("r"), (std::vector<uint64_t>{1001, 0, 0, 0}));
}

TEST_F(ServerTest, AnExpiredDeadlineStopsTheWorkAndAppendsNothing) {
  StartBoth();
  std::mt19937 rng(4);
  // Dense prefill of 4000 tokens over 20000: seconds of work on this machine.
  ASSERT_TRUE(Create("d").ok());
  ASSERT_TRUE(Append("d", 0, 0, 20000, rng).ok());
  v1::AttendItem it;
  it.set_sequence_id("d");
  it.set_layer(0);
  it.set_position(20000);
  it.set_num_tokens(4000);
  it.set_q(Floats(rng, size_t(4000) * kHq * kD));
  it.set_k(Floats(rng, size_t(4000) * kHkv * kD));
  it.set_v(Floats(rng, size_t(4000) * kHkv * kD));
  it.set_mode(v1::ATTENTION_MODE_DENSE);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(200));
  v1::AttendRequest req;
  *req.add_items() = DecodeItem("d", 1, 0, rng);  // applied first, then undone
  *req.add_items() = it;
  v1::AttendResponse resp;
  const absl::Time t0 = absl::Now();
  EXPECT_EQ(stub_->Attend(&ctx, req, &resp).error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  // The server stops too: nothing was appended, and it answers the next call without first
  // finishing seconds of abandoned work.
  absl::SleepFor(absl::Milliseconds(500));
  EXPECT_EQ(Lengths("d"), (std::vector<uint64_t>{20000, 0, 0, 0}));
  std::cout << "GetSequence answered " << absl::ToDoubleMilliseconds(absl::Now() - t0)
            << " ms after the call started\n";
}

}  // namespace
}  // namespace ihip
