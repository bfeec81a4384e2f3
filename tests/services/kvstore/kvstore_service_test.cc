// ihip-kvstore as a real process on loopback: the admin API through a real gRPC channel,
// grpc.health.v1, /metrics, pages through the rings, durability across kill -9, SIGTERM.

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <httplib.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "ihip/v1/kvstore.grpc.pb.h"
#include "kvstore/kv_store_client.h"
#include "tests/testing/child_process.h"

namespace ihip {
namespace {

using testing::ChildProcess;

constexpr uint32_t kPageBytes = 64 << 10;
constexpr uint32_t kPageTokens = 64;

std::string UniqueShmName() {
  static std::atomic<int> counter{0};
  return absl::StrCat("/ihip-test-", getpid(), "-svc-", counter++);
}

// Fills page `page` of `layer` with a pattern only that page has.
void Fill(std::byte* p, uint32_t layer, uint64_t page) {
  for (uint32_t i = 0; i < kPageBytes / 8; ++i) {
    const uint64_t v = (uint64_t(layer) << 48) ^ (page << 32) ^ i;
    std::memcpy(p + 8 * i, &v, 8);
  }
}
bool Matches(const std::byte* p, uint32_t layer, uint64_t page) {
  for (uint32_t i = 0; i < kPageBytes / 8; ++i) {
    uint64_t v;
    std::memcpy(&v, p + 8 * i, 8);
    if (v != ((uint64_t(layer) << 48) ^ (page << 32) ^ i)) return false;
  }
  return true;
}

class KvStoreServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::MakeTempDir();
    shm_ = UniqueShmName();
  }
  void TearDown() override {
    if (server_ != nullptr && server_->running()) {
      server_->Signal(SIGTERM);  // graceful: the kvstore unlinks its segment
      server_->Wait(absl::Seconds(20));
    }
    server_.reset();
    shm_unlink(shm_.c_str());  // in case a test killed it
    testing::RemoveTree(dir_);
  }

  void StartServer() {
    server_ = std::make_unique<ChildProcess>();
    ASSERT_TRUE(server_->Start(
        {IHIP_KVSTORE_BIN, "--segment_name=" + shm_, "--host_tier_gib=0.0625", "--slot_kib=64",
         "--rocksdb_path=" + dir_ + "/db", "--durable", "--grpc_address=127.0.0.1:0",
         "--metrics_host=127.0.0.1", "--metrics_port=0", "--lease_ms=2000"},
        dir_ + "/kvstore.log"));
    const std::string ready = server_->WaitForLine("ihip-kvstore ready", absl::Seconds(30));
    ASSERT_FALSE(ready.empty()) << "ihip-kvstore did not become ready";
    grpc_port_ = testing::ReadyField(ready, "grpc_port");
    metrics_port_ = testing::ReadyField(ready, "metrics_port");
    channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", grpc_port_),
                                   grpc::InsecureChannelCredentials());
    stub_ = ihip::v1::KvStore::NewStub(channel_);
  }

  std::unique_ptr<kvstore::KvStoreClient> AttachClient() {
    kvstore::KvStoreClientOptions o;
    o.segment_name = shm_;
    o.client_name = "test";
    auto c = kvstore::KvStoreClient::Attach(o);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? std::move(*c) : nullptr;
  }

  std::string dir_, shm_;
  std::unique_ptr<ChildProcess> server_;
  int grpc_port_ = 0, metrics_port_ = 0;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<ihip::v1::KvStore::Stub> stub_;
};

TEST_F(KvStoreServiceTest, AdminApiHealthMetricsAndGracefulStop) {
  StartServer();
  {
    grpc::ClientContext ctx;
    ihip::v1::AttachRequest req;
    ihip::v1::AttachResponse resp;
    ASSERT_TRUE(stub_->Attach(&ctx, req, &resp).ok());
    EXPECT_EQ(resp.segment_name(), shm_);
    EXPECT_EQ(resp.layout_version(), 1u);
    EXPECT_GT(resp.segment_bytes(), 64u << 20);
    EXPECT_EQ(resp.lease_ms(), 2000u);
  }
  auto client = AttachClient();
  ASSERT_NE(client, nullptr);
  auto handle = client->CreateSequence("s1", 2, kPageBytes, kPageTokens, "geometry");
  ASSERT_TRUE(handle.ok()) << handle.status();
  uint64_t first = 0;
  std::vector<std::byte*> pages;
  ASSERT_TRUE(client->Allocate(*handle, 0, 3, &first, &pages).ok());
  for (int i = 0; i < 3; ++i) Fill(pages[i], 0, i);
  ASSERT_TRUE(client->Commit(*handle, 0, 150).ok());
  ASSERT_TRUE(client->Unpin(*handle, 0, 0, 3).ok());
  {
    grpc::ClientContext ctx;
    ihip::v1::ListKvSequencesResponse resp;
    ASSERT_TRUE(stub_->ListSequences(&ctx, {}, &resp).ok());
    ASSERT_EQ(resp.sequences_size(), 1);
    EXPECT_EQ(resp.sequences(0).sequence_id(), "s1");
    ASSERT_EQ(resp.sequences(0).layer_lengths_size(), 2);
    EXPECT_EQ(resp.sequences(0).layer_lengths(0), 150u);
    EXPECT_EQ(resp.sequences(0).layer_lengths(1), 0u);
    EXPECT_EQ(resp.sequences(0).pages_host(), 3u);
  }
  {
    grpc::ClientContext ctx;
    ihip::v1::KvStoreStats stats;
    ASSERT_TRUE(stub_->Stats(&ctx, {}, &stats).ok());
    EXPECT_EQ(stats.sequences(), 1u);
    EXPECT_EQ(stats.pages_used(), 3u);
    EXPECT_EQ(stats.pages_pinned(), 0u);
    EXPECT_EQ(stats.page_bytes(), kPageBytes);
  }
  {  // Suspend: the idle pages leave the host tier; a pin brings them back byte-exact.
    grpc::ClientContext ctx;
    ihip::v1::SuspendKvSequenceRequest req;
    req.set_sequence_id("s1");
    ihip::v1::SuspendKvSequenceResponse resp;
    ASSERT_TRUE(stub_->SuspendSequence(&ctx, req, &resp).ok());
    grpc::ClientContext ctx2;
    ihip::v1::KvStoreStats stats;
    ASSERT_TRUE(stub_->Stats(&ctx2, {}, &stats).ok());
    EXPECT_EQ(stats.pages_used(), 0u);
    EXPECT_EQ(stats.pages_on_disk(), 3u);
  }
  ASSERT_TRUE(client->Pin(*handle, 0, 0, 3, &pages).ok());
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(Matches(pages[i], 0, i)) << "page " << i;
  {
    grpc::ClientContext ctx;
    ihip::v1::CompactResponse resp;
    EXPECT_TRUE(stub_->Compact(&ctx, {}, &resp).ok());
  }
  {  // Health: grpc.health.v1.Health/Check with an empty request answers SERVING (field 1 = 1).
    grpc::GenericStub generic(channel_);
    grpc::ClientContext ctx;
    grpc::ByteBuffer request, response;
    grpc::Slice empty("");
    request = grpc::ByteBuffer(&empty, 1);
    grpc::Status status;
    std::atomic<bool> done{false};
    generic.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request,
                      &response, [&](grpc::Status s) {
                        status = s;
                        done = true;
                      });
    while (!done) absl::SleepFor(absl::Milliseconds(5));
    ASSERT_TRUE(status.ok()) << status.error_message();
    std::vector<grpc::Slice> slices;
    ASSERT_TRUE(response.Dump(&slices).ok());
    std::string bytes;
    for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
    EXPECT_EQ(bytes, std::string("\x08\x01", 2));
  }
  {  // /metrics reflects what happened.
    httplib::Client http("127.0.0.1", metrics_port_);
    auto res = http.Get("/metrics");
    ASSERT_TRUE(res);
    ASSERT_EQ(res->status, 200);
    EXPECT_NE(res->body.find("ihip_kvstore_sequences 1"), std::string::npos) << res->body;
    EXPECT_NE(res->body.find("ihip_kvstore_fetched_back_pages_total 3"), std::string::npos);
    EXPECT_NE(res->body.find("ihip_kvstore_ring_request_seconds_count{op=\"pin\"} 1"),
              std::string::npos);
    EXPECT_NE(res->body.find("ihip_kvstore_clients 1"), std::string::npos);
    EXPECT_NE(res->body.find("ihip_kvstore_rocksdb_statistic{name=\"rocksdb.bytes.written\"}"),
              std::string::npos);
  }
  {  // Drop through the admin API; unknown sequences are NOT_FOUND.
    grpc::ClientContext ctx;
    ihip::v1::DropKvSequenceRequest req;
    req.set_sequence_id("s1");
    ihip::v1::DropKvSequenceResponse resp;
    ASSERT_TRUE(stub_->DropSequence(&ctx, req, &resp).ok());
    grpc::ClientContext ctx2;
    req.set_sequence_id("nope");
    EXPECT_EQ(stub_->DropSequence(&ctx2, req, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
    grpc::ClientContext ctx3;
    ihip::v1::ListKvSequencesResponse list;
    ASSERT_TRUE(stub_->ListSequences(&ctx3, {}, &list).ok());
    EXPECT_EQ(list.sequences_size(), 0);
  }
  client.reset();
  server_->Signal(SIGTERM);
  EXPECT_EQ(server_->Wait(absl::Seconds(20)), 0);
  const int fd = shm_open(shm_.c_str(), O_RDONLY, 0);
  EXPECT_LT(fd, 0) << "segment left behind after SIGTERM";
  if (fd >= 0) close(fd);
}

TEST_F(KvStoreServiceTest, DurableAcrossKill9) {
  StartServer();
  auto client = AttachClient();
  ASSERT_NE(client, nullptr);
  auto handle = client->CreateSequence("d", 2, kPageBytes, kPageTokens, "");
  ASSERT_TRUE(handle.ok());
  uint64_t first = 0;
  std::vector<std::byte*> pages;
  // Layer 0: 4 pages committed. Layer 1: 2 pages committed, then 2 more written but never
  // committed.
  ASSERT_TRUE(client->Allocate(*handle, 0, 4, &first, &pages).ok());
  for (int i = 0; i < 4; ++i) Fill(pages[i], 0, i);
  ASSERT_TRUE(client->Commit(*handle, 0, 4 * kPageTokens).ok());
  ASSERT_TRUE(client->Allocate(*handle, 1, 2, &first, &pages).ok());
  for (int i = 0; i < 2; ++i) Fill(pages[i], 1, i);
  ASSERT_TRUE(client->Commit(*handle, 1, 2 * kPageTokens - 5).ok());
  ASSERT_TRUE(client->Allocate(*handle, 1, 2, &first, &pages).ok());
  for (int i = 0; i < 2; ++i) Fill(pages[i], 1, 2 + i);
  server_->Signal(SIGKILL);
  EXPECT_EQ(server_->Wait(absl::Seconds(10)), 128 + SIGKILL);
  client.reset();  // its kvstore is gone: detaching fails fast, not a hang

  StartServer();  // same RocksDB path, same segment name
  client = AttachClient();
  ASSERT_NE(client, nullptr);
  auto info = client->OpenSequence("d");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->layer_lengths, (std::vector<uint64_t>{4 * kPageTokens, 2 * kPageTokens - 5}));
  ASSERT_TRUE(client->Pin(info->handle, 0, 0, 4, &pages).ok());
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(Matches(pages[i], 0, i)) << "layer 0 page " << i;
  ASSERT_TRUE(client->Pin(info->handle, 1, 0, 2, &pages).ok());
  for (int i = 0; i < 2; ++i) EXPECT_TRUE(Matches(pages[i], 1, i)) << "layer 1 page " << i;
  EXPECT_EQ(client->Pin(info->handle, 1, 2, 1, &pages).code(), absl::StatusCode::kOutOfRange)
      << "uncommitted pages must be absent after a restart";
  client.reset();
  server_->Signal(SIGTERM);
  EXPECT_EQ(server_->Wait(absl::Seconds(20)), 0);
}

}  // namespace
}  // namespace ihip
