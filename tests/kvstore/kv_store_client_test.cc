// Tests for kvstore/kv_store_client.h against a StoreServer (store_server.h) over the rings of a
// real segment: every operation end to end and byte-exact, errors and corrupt raw messages
// answered with an error completion (the client keeps working), client slots, a client process
// that dies holding pins (reclaimed by the lease), the kvstore process killed with SIGKILL during
// appends and restarted on the same RocksDB path (committed pages intact, uncommitted absent),
// and a stopped server making calls fail fast with UNAVAILABLE.

#include "kvstore/kv_store_client.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "kvstore/futex.h"
#include "kvstore/store_server.h"
#include "tests/kvstore/kvstore_test_util.h"

namespace ihip::kvstore {
namespace {

using testing::BytesEqual;
using testing::Child;
using testing::KvStoreFixture;
using testing::PageSeed;
using testing::PatternBytes;
using testing::Pipe;
using testing::ReadFully;
using testing::WriteFully;

constexpr uint32_t kPageBytes = 12 << 10;
constexpr uint32_t kTokens = 16;
const std::string kGeometry = "0123456789abcdef0123456789ABCDEF";  // 32 bytes

class KvStoreClientTest : public KvStoreFixture {
 protected:
  void TearDown() override {
    clients_.clear();  // detach before the server stops
    KvStoreFixture::TearDown();
  }
  // Starts store + server; records the server's client events.
  void StartServing(uint64_t slots = 32, bool with_disk = true, StoreOptions so = {}) {
    StartStore(slots, with_disk, so);
    StoreServerOptions options;
    options.on_client = [this](uint32_t client, const char* event) {
      std::lock_guard<std::mutex> lock(events_mu_);
      events_.emplace_back(client, event);
      events_cv_.notify_all();
    };
    StartServer(options);
  }
  KvStoreClientOptions ClientOptions(absl::Duration timeout = absl::Seconds(20)) const {
    KvStoreClientOptions o;
    o.segment_name = shm_name_;
    o.client_name = "test";
    o.timeout = timeout;
    return o;
  }
  KvStoreClient* Attach(absl::Duration timeout = absl::Seconds(20)) {
    auto c = KvStoreClient::Attach(ClientOptions(timeout));
    EXPECT_TRUE(c.ok()) << c.status();
    if (!c.ok()) return nullptr;
    clients_.push_back(std::move(c).value());
    return clients_.back().get();
  }
  // Waits for the server to report an event about `client`; returns the event ("" on timeout).
  std::string WaitForEvent(uint32_t client, absl::Duration timeout = absl::Seconds(30)) {
    std::unique_lock<std::mutex> lock(events_mu_);
    std::string found;
    events_cv_.wait_for(lock, absl::ToChronoNanoseconds(timeout), [&] {
      for (const auto& [c, e] : events_) {
        if (c == client) found = e;
      }
      return !found.empty();
    });
    return found;
  }
  // The server reports a reclaim before it marks the slot free: wait (bounded) for the mark.
  bool WaitForFreeSlot(uint32_t client) {
    const absl::Time limit = absl::Now() + absl::Seconds(30);
    while (segment_->client(client)->state.load() != uint32_t(ClientState::kFree)) {
      if (absl::Now() > limit) return false;
      std::this_thread::yield();
    }
    return true;
  }
  void ExpectConsistent() {
    absl::Status s = store_->CheckConsistency();
    EXPECT_TRUE(s.ok()) << s;
  }

  std::vector<std::unique_ptr<KvStoreClient>> clients_;
  std::mutex events_mu_;
  std::condition_variable events_cv_;
  std::vector<std::pair<uint32_t, std::string>> events_;
};

void FillPage(std::byte* page, uint64_t handle, uint32_t layer, uint64_t index,
              uint32_t bytes = kPageBytes) {
  const auto pattern = PatternBytes(bytes, PageSeed(handle, layer, index));
  std::memcpy(page, pattern.data(), pattern.size());
}

bool PageIs(const std::byte* page, uint64_t handle, uint32_t layer, uint64_t index,
            uint32_t bytes = kPageBytes) {
  return BytesEqual(page, PatternBytes(bytes, PageSeed(handle, layer, index)));
}

TEST_F(KvStoreClientTest, AttachFailsCleanlyWithoutAServer) {
  shm_name_ = testing::UniqueShmName();
  auto c = KvStoreClient::Attach(ClientOptions());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kUnavailable) << c.status();  // no segment
  StartStore();
  c = KvStoreClient::Attach(ClientOptions());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kUnavailable) << c.status();  // not served
  KvStoreClientOptions bad = ClientOptions(absl::ZeroDuration());
  EXPECT_EQ(KvStoreClient::Attach(bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad = ClientOptions();
  bad.spin = -1;
  EXPECT_EQ(KvStoreClient::Attach(bad).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(KvStoreClientTest, EveryOperationEndToEndByteExact) {
  StartServing(16);
  KvStoreClient* c = Attach();
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(segment_->client(c->client_index())->state.load(), uint32_t(ClientState::kAttached));
  EXPECT_EQ(std::string(segment_->client(c->client_index())->name), "test");

  auto h = c->CreateSequence("seq", 2, kPageBytes, kTokens, kGeometry);
  ASSERT_TRUE(h.ok()) << h.status();
  const std::string metadata("\x00\x01 opaque metadata", 19);
  ASSERT_TRUE(c->CreateSequence("with-metadata", 1, kPageBytes, kTokens, kGeometry, metadata).ok());
  EXPECT_EQ(c->OpenSequence("with-metadata")->metadata, metadata);
  auto info = c->OpenSequence("seq");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->metadata, "");
  EXPECT_EQ(info->handle, *h);
  EXPECT_EQ(info->num_layers, 2u);
  EXPECT_EQ(info->page_bytes, kPageBytes);
  EXPECT_EQ(info->page_tokens, kTokens);
  EXPECT_EQ(info->geometry, kGeometry);
  EXPECT_EQ(info->layer_lengths, (std::vector<uint64_t>{0, 0}));

  // Append 3 pages to each layer; commit 2.5 pages of layer 0 and 3 of layer 1.
  for (uint32_t layer = 0; layer < 2; ++layer) {
    uint64_t first = 99;
    std::vector<std::byte*> pages;
    ASSERT_TRUE(c->Allocate(*h, layer, 3, &first, &pages).ok());
    EXPECT_EQ(first, 0u);
    ASSERT_EQ(pages.size(), 3u);
    for (uint64_t i = 0; i < 3; ++i) FillPage(pages[i], *h, layer, i);
  }
  ASSERT_TRUE(c->Commit(*h, 0, 2 * kTokens + 8).ok());
  ASSERT_TRUE(c->Commit(*h, 1, 3 * kTokens).ok());
  EXPECT_EQ(store_->Stats().pages_pinned, 6u);
  ASSERT_TRUE(c->Unpin(*h, 0, 0, 3).ok());
  ASSERT_TRUE(c->Unpin(*h, 1, 0, 3).ok());
  EXPECT_EQ(store_->Stats().pages_pinned, 0u);
  info = c->OpenSequence("seq");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->layer_lengths, (std::vector<uint64_t>{2 * kTokens + 8, 3 * kTokens}));

  // The bytes are in the pool: the server's mapping and a pin through the client agree.
  std::vector<std::byte*> pages;
  ASSERT_TRUE(c->Pin(*h, 1, 0, 3, &pages).ok());
  ASSERT_EQ(pages.size(), 3u);
  for (uint64_t i = 0; i < 3; ++i) {
    EXPECT_TRUE(PageIs(pages[i], *h, 1, i)) << i;
    const uint64_t slot = uint64_t(pages[i] - c->slot_address(0)) / slot_bytes();
    EXPECT_EQ(pages[i], c->slot_address(slot));
    EXPECT_TRUE(PageIs(segment_->slot_data(slot), *h, 1, i)) << i;
    EXPECT_EQ(segment_->slot_entry(slot)->sequence, *h);
    EXPECT_EQ(segment_->slot_entry(slot)->page, i);
    EXPECT_EQ(segment_->slot_entry(slot)->pins, 1u);
  }
  ASSERT_TRUE(c->Unpin(*h, 1, 0, 3).ok());

  // Suspend: pages leave the host tier; a pin fetches them back byte-exact.
  ASSERT_TRUE(c->SuspendSequence(*h).ok());
  EXPECT_EQ(store_->GetSequence(*h)->pages_resident, 0u);
  ASSERT_TRUE(c->Pin(*h, 0, 0, 3, &pages).ok());
  for (uint64_t i = 0; i < 3; ++i) EXPECT_TRUE(PageIs(pages[i], *h, 0, i)) << i;
  ASSERT_TRUE(c->Unpin(*h, 0, 0, 3).ok());
  EXPECT_GE(store_->Stats().fetch_backs, 3u);

  // A second client sees the same sequence and bytes through its own mapping.
  KvStoreClient* c2 = Attach();
  ASSERT_NE(c2, nullptr);
  EXPECT_NE(c2->client_index(), c->client_index());
  auto info2 = c2->OpenSequence("seq");
  ASSERT_TRUE(info2.ok());
  EXPECT_EQ(info2->handle, *h);
  ASSERT_TRUE(c2->Pin(*h, 1, 1, 2, &pages).ok());
  EXPECT_TRUE(PageIs(pages[0], *h, 1, 1));
  EXPECT_TRUE(PageIs(pages[1], *h, 1, 2));
  // Pins are per client: c cannot unpin c2's pins.
  EXPECT_EQ(c->Unpin(*h, 1, 1, 2).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(c2->Unpin(*h, 1, 1, 2).ok());

  // Abort drops an uncommitted page; appending continues after the committed ones.
  uint64_t first = 0;
  ASSERT_TRUE(c->Allocate(*h, 1, 2, &first, &pages).ok());
  EXPECT_EQ(first, 3u);
  ASSERT_TRUE(c->Abort(*h, 1).ok());
  ASSERT_TRUE(c->Allocate(*h, 1, 1, &first, &pages).ok());
  EXPECT_EQ(first, 3u);
  ASSERT_TRUE(c->Abort(*h, 1).ok());
  EXPECT_EQ(store_->Stats().pages_pinned, 0u);

  // Drop: gone for both clients; the pool is empty again.
  ASSERT_TRUE(c->DropSequence(*h).ok());
  EXPECT_EQ(c2->OpenSequence("seq").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->Stats().slots_used, 0u);
  ExpectConsistent();
}

TEST_F(KvStoreClientTest, StoreErrorsTravelBackWithTheirMessages) {
  StartServing(4);
  KvStoreClient* c = Attach();
  ASSERT_NE(c, nullptr);
  auto h = c->CreateSequence("s", 1, kPageBytes, kTokens, "");
  ASSERT_TRUE(h.ok());
  std::vector<std::byte*> pages;
  uint64_t first;
  absl::Status s = c->Allocate(*h + 7, 0, 1, &first, &pages);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(s.message(), "unknown sequence handle")) << s;
  s = c->Pin(*h, 3, 0, 1, &pages);
  EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange) << s;
  EXPECT_EQ(c->CreateSequence("s", 1, kPageBytes, kTokens, "").status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(c->CreateSequence("t", 1, 1 << 20, kTokens, "").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c->OpenSequence("").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(c->Commit(*h, 0, 1).code(), absl::StatusCode::kFailedPrecondition);
  // The pool (4 slots, pinned) runs out: RESOURCE_EXHAUSTED, and nothing is half-done.
  ASSERT_TRUE(c->Allocate(*h, 0, 3, &first, &pages).ok());
  s = c->Allocate(*h, 0, 2, &first, &pages);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_EQ(store_->Stats().slots_used, 3u);
  ASSERT_TRUE(c->Allocate(*h, 0, 1, &first, &pages).ok());
  EXPECT_EQ(first, 3u);
  ExpectConsistent();
}

// Sends `m` by pushing it straight into the client's request ring (bypassing Call, which would
// rewrite mailbox_bytes) and waits for its completion.
absl::StatusOr<Message> RawRoundTrip(KvStoreClient* c, const Message& m) {
  ShmSegment* seg = c->segment();
  SegmentHeader* h = seg->header();
  ClientEntry* me = seg->client(c->client_index());
  Ring rq = seg->request_ring(c->client_index());
  Ring cq = seg->completion_ring(c->client_index());
  if (!rq.TryPush(m)) return absl::InternalError("request ring full");
  RingDoorbell(&h->server_doorbell, &h->server_sleeping);
  if (!WaitForDoorbell(
          &me->completion_doorbell, &me->client_sleeping, [&] { return !cq.empty(); }, 1000,
          absl::Seconds(20))) {
    return absl::DeadlineExceededError("no completion");
  }
  Message reply;
  if (!cq.TryPop(&reply)) return absl::InternalError("pop failed");
  return reply;
}

TEST_F(KvStoreClientTest, CorruptMessagesGetErrorCompletionsAndTheClientGoesOn) {
  StartServing(8);
  KvStoreClient* c = Attach();
  ASSERT_NE(c, nullptr);
  auto h = c->CreateSequence("s", 1, kPageBytes, kTokens, kGeometry);
  ASSERT_TRUE(h.ok());
  const StoreStats before = store_->Stats();
  const uint64_t box = segment_->header()->mailbox_bytes;

  // Unknown ops.
  for (uint32_t op : {0u, 12u, 999u, 0xffffffffu}) {  // 11 is kTruncate
    Message m{};
    m.op = op;
    m.sequence = *h;
    absl::Status s = c->Call(&m);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << "op " << op << ": " << s;
    EXPECT_EQ(m.op, op);  // echoed
  }
  // Short and inconsistent create payloads.
  {
    Message m{};
    m.op = uint32_t(Op::kCreateSequence);
    const char shortp[10] = {};
    EXPECT_EQ(c->Call(&m, shortp, sizeof(shortp)).code(), absl::StatusCode::kInvalidArgument);
    m = {};
    m.op = uint32_t(Op::kCreateSequence);
    EXPECT_EQ(c->Call(&m).code(), absl::StatusCode::kInvalidArgument);  // no payload at all
    SequenceSpec spec = testing::MakeSpec(1, kPageBytes, kTokens);
    spec.id_bytes = 1000;  // more id than the payload holds
    std::string payload(reinterpret_cast<const char*>(&spec), sizeof(spec));
    payload += "x";
    m = {};
    m.op = uint32_t(Op::kCreateSequence);
    EXPECT_EQ(c->Call(&m, payload.data(), uint32_t(payload.size())).code(),
              absl::StatusCode::kInvalidArgument);
    spec.id_bytes = 0;  // a payload longer than its spec says
    payload.assign(reinterpret_cast<const char*>(&spec), sizeof(spec));
    payload += "xyz";
    m = {};
    m.op = uint32_t(Op::kCreateSequence);
    EXPECT_EQ(c->Call(&m, payload.data(), uint32_t(payload.size())).code(),
              absl::StatusCode::kInvalidArgument);
  }
  // A payload larger than the mailbox is refused by the client before it is sent...
  {
    std::vector<char> big(box + 1, 'x');
    Message m{};
    m.op = uint32_t(Op::kOpenSequence);
    EXPECT_EQ(c->Call(&m, big.data(), uint32_t(big.size())).code(),
              absl::StatusCode::kInvalidArgument);
  }
  // ...and a request claiming one, pushed raw, is refused by the server.
  for (Op op : {Op::kOpenSequence, Op::kCreateSequence, Op::kCommit}) {
    Message m{};
    m.op = uint32_t(op);
    m.request_id = 1ull << 60;
    m.sequence = *h;
    m.mailbox_bytes = uint32_t(box) + 1;
    auto reply = RawRoundTrip(c, m);
    ASSERT_TRUE(reply.ok()) << reply.status();
    EXPECT_EQ(absl::StatusCode(reply->status), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(reply->request_id, m.request_id);
    EXPECT_EQ(reply->op, m.op);
    m.mailbox_bytes = 0xffffffffu;
    reply = RawRoundTrip(c, m);
    ASSERT_TRUE(reply.ok()) << reply.status();
    EXPECT_EQ(absl::StatusCode(reply->status), absl::StatusCode::kInvalidArgument);
  }
  // More pages than the mailbox can list, and zero pages.
  {
    Message m{};
    m.op = uint32_t(Op::kAllocate);
    m.sequence = *h;
    m.count = uint32_t(box / 8 + 1);
    EXPECT_EQ(c->Call(&m).code(), absl::StatusCode::kInvalidArgument);
    m = {};
    m.op = uint32_t(Op::kPin);
    m.sequence = *h;
    m.count = 0xffffffffu;
    EXPECT_EQ(c->Call(&m).code(), absl::StatusCode::kInvalidArgument);
    m = {};
    m.op = uint32_t(Op::kAllocate);
    m.sequence = *h;
    m.count = 0;
    EXPECT_EQ(c->Call(&m).code(), absl::StatusCode::kInvalidArgument);
  }
  // Nothing changed, and the same client still works.
  const StoreStats after = store_->Stats();
  EXPECT_EQ(after.sequences, before.sequences);
  EXPECT_EQ(after.slots_used, before.slots_used);
  EXPECT_EQ(after.pages_pinned, before.pages_pinned);
  ExpectConsistent();
  uint64_t first;
  std::vector<std::byte*> pages;
  ASSERT_TRUE(c->Allocate(*h, 0, 2, &first, &pages).ok());
  FillPage(pages[0], *h, 0, 0);
  FillPage(pages[1], *h, 0, 1);
  ASSERT_TRUE(c->Commit(*h, 0, 2 * kTokens).ok());
  auto info = c->OpenSequence("s");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->layer_lengths, (std::vector<uint64_t>{2 * kTokens}));
  EXPECT_EQ(info->geometry, kGeometry);
  EXPECT_EQ(segment_->client(c->client_index())->state.load(), uint32_t(ClientState::kAttached));
}

// Pushes `n` requests into the client's request ring without reading a completion (waiting,
// bounded, while the ring is full). Returns false if the server stopped taking them.
bool FloodWithoutReading(KvStoreClient* c, int n) {
  ShmSegment* seg = c->segment();
  Ring rq = seg->request_ring(c->client_index());
  for (int i = 0; i < n; ++i) {
    Message m{};
    m.op = uint32_t(Op::kOpenSequence);  // empty id: NOT_FOUND, the store is unchanged
    m.request_id = (1ull << 62) + uint64_t(i);
    const absl::Time limit = absl::Now() + absl::Seconds(20);
    while (!rq.TryPush(m)) {
      if (absl::Now() > limit) return false;
      std::this_thread::yield();
    }
    RingDoorbell(&seg->header()->server_doorbell, &seg->header()->server_sleeping);
  }
  return true;
}

TEST_F(KvStoreClientTest, ClientThatStopsReadingCompletionsIsReclaimed) {
  StartServing(8);
  KvStoreClient* a = Attach();
  ASSERT_NE(a, nullptr);
  auto h = a->CreateSequence("s", 1, kPageBytes, kTokens, "");
  ASSERT_TRUE(h.ok());
  uint64_t first;
  std::vector<std::byte*> pages;
  ASSERT_TRUE(a->Allocate(*h, 0, 2, &first, &pages).ok());
  const uint32_t index = a->client_index();
  // One more request than the completion ring holds.
  ASSERT_TRUE(FloodWithoutReading(a, int(seg_options_.ring_entries) + 1));
  EXPECT_EQ(WaitForEvent(index), "completion ring full");
  EXPECT_TRUE(WaitForFreeSlot(index));
  EXPECT_EQ(store_->Stats().pages_pinned, 0u);
  EXPECT_EQ(store_->Stats().slots_used, 0u);  // its uncommitted pages went
  ExpectConsistent();
  EXPECT_EQ(a->OpenSequence("s").status().code(), absl::StatusCode::kUnavailable);
}

// A reclaimed client whose slot was claimed again by another client must fail with UNAVAILABLE,
// and must not act on the new owner's slot: neither its calls nor its detach (at destruction).
TEST_F(KvStoreClientTest, ReclaimedClientDoesNotTouchItsSlotsNextOwner) {
  StartServing(8);
  KvStoreClient* a = Attach();
  ASSERT_NE(a, nullptr);
  const uint32_t index = a->client_index();
  ASSERT_TRUE(FloodWithoutReading(a, int(seg_options_.ring_entries) + 1));
  ASSERT_EQ(WaitForEvent(index), "completion ring full");
  ASSERT_TRUE(WaitForFreeSlot(index));
  KvStoreClient* b = Attach();
  ASSERT_NE(b, nullptr);
  ASSERT_EQ(b->client_index(), index);  // the first free slot
  auto h = b->CreateSequence("b", 1, kPageBytes, kTokens, "");
  ASSERT_TRUE(h.ok());
  uint64_t first;
  std::vector<std::byte*> pages;
  ASSERT_TRUE(b->Allocate(*h, 0, 2, &first, &pages).ok());

  EXPECT_EQ(a->OpenSequence("b").status().code(), absl::StatusCode::kUnavailable)
      << "a reclaimed client sent a request through the slot of its next owner";
  // Destroying the stale client must leave b attached with its pins.
  for (auto it = clients_.begin(); it != clients_.end(); ++it) {
    if (it->get() == a) {
      clients_.erase(it);
      break;
    }
  }
  EXPECT_EQ(segment_->client(index)->state.load(), uint32_t(ClientState::kAttached));
  EXPECT_EQ(store_->Stats().pages_pinned, 2u) << "b lost its pins";
  EXPECT_TRUE(b->Commit(*h, 0, 2 * kTokens).ok());
  ExpectConsistent();
}

TEST_F(KvStoreClientTest, ClientSlotsRunOutAndDetachReleasesPins) {
  StartServing(8);
  std::vector<KvStoreClient*> cs;
  for (uint32_t i = 0; i < seg_options_.max_clients; ++i) cs.push_back(Attach());
  for (KvStoreClient* c : cs) ASSERT_NE(c, nullptr);
  auto extra = KvStoreClient::Attach(ClientOptions());
  EXPECT_EQ(extra.status().code(), absl::StatusCode::kResourceExhausted) << extra.status();

  auto h = cs[0]->CreateSequence("s", 1, kPageBytes, kTokens, "");
  ASSERT_TRUE(h.ok());
  uint64_t first;
  std::vector<std::byte*> pages;
  ASSERT_TRUE(cs[1]->Allocate(*h, 0, 3, &first, &pages).ok());
  ASSERT_TRUE(cs[1]->Commit(*h, 0, 2 * kTokens).ok());  // page 2 stays uncommitted
  EXPECT_EQ(store_->Stats().pages_pinned, 3u);
  const uint32_t index = cs[1]->client_index();
  clients_.erase(clients_.begin() + 1);  // detaches
  EXPECT_EQ(WaitForEvent(index), "detached");
  EXPECT_TRUE(WaitForFreeSlot(index));
  EXPECT_EQ(store_->Stats().pages_pinned, 0u);
  EXPECT_EQ(store_->Stats().slots_used, 2u);  // the uncommitted page went
  ExpectConsistent();
  KvStoreClient* again = Attach();  // the slot is free again
  ASSERT_NE(again, nullptr);
  EXPECT_EQ(again->client_index(), index);
  auto info = again->OpenSequence("s");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->layer_lengths, (std::vector<uint64_t>{2 * kTokens}));
}

TEST_F(KvStoreClientTest, OneClientFromManyThreads) {
  StartServing(32);
  KvStoreClient* c = Attach();
  ASSERT_NE(c, nullptr);
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 100; ++i) {
        const std::string id = absl::StrCat("t", t, "-", i);
        auto h = c->CreateSequence(id, 1, kPageBytes, kTokens, "");
        uint64_t first;
        std::vector<std::byte*> pages;
        if (!h.ok() || !c->Allocate(*h, 0, 1, &first, &pages).ok()) {
          ++failures;
          continue;
        }
        FillPage(pages[0], *h, 0, 0);
        if (!c->Commit(*h, 0, kTokens).ok() || !c->Unpin(*h, 0, 0, 1).ok() ||
            !c->Pin(*h, 0, 0, 1, &pages).ok() || !PageIs(pages[0], *h, 0, 0) ||
            !c->DropSequence(*h).ok()) {
          ++failures;
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(store_->Stats().sequences, 0u);
  EXPECT_EQ(store_->Stats().slots_used, 0u);
  ExpectConsistent();
}

TEST_F(KvStoreClientTest, LiveIdleClientKeepsItsLease) {
  StartServing(8, false);
  KvStoreClient* c = Attach();
  ASSERT_NE(c, nullptr);
  auto h = c->CreateSequence("s", 1, kPageBytes, kTokens, "");
  ASSERT_TRUE(h.ok());
  uint64_t first;
  std::vector<std::byte*> pages;
  ASSERT_TRUE(c->Allocate(*h, 0, 1, &first, &pages).ok());
  // Idle for five lease periods: the heartbeat keeps the pins.
  absl::SleepFor(5 * seg_options_.lease);
  EXPECT_EQ(store_->Stats().pages_pinned, 1u);
  EXPECT_TRUE(c->Commit(*h, 0, kTokens).ok());
  EXPECT_EQ(segment_->client(c->client_index())->state.load(), uint32_t(ClientState::kAttached));
}

// What a forked client child does: attach, create "dead", allocate 3 pages, fill them, commit 2,
// pin page 0 once more, report its client index, then either _exit without detaching or wait to
// be killed. Exit codes > 0 say which step failed.
[[noreturn]] void DyingClient(const std::string& shm, int go_fd, int report_fd, bool wait) {
  char go;
  if (!ReadFully(go_fd, &go, 1)) _exit(10);
  KvStoreClientOptions o;
  o.segment_name = shm;
  o.client_name = "doomed";
  auto c = KvStoreClient::Attach(o);
  if (!c.ok()) _exit(11);
  auto h = (*c)->CreateSequence("dead", 1, kPageBytes, kTokens, "");
  if (!h.ok()) _exit(12);
  uint64_t first;
  std::vector<std::byte*> pages;
  if (!(*c)->Allocate(*h, 0, 3, &first, &pages).ok()) _exit(13);
  for (uint64_t i = 0; i < 3; ++i) FillPage(pages[i], *h, 0, i);
  if (!(*c)->Commit(*h, 0, 2 * kTokens).ok()) _exit(14);
  if (!(*c)->Pin(*h, 0, 0, 1, &pages).ok()) _exit(15);
  const uint32_t index = (*c)->client_index();
  if (!WriteFully(report_fd, &index, sizeof(index))) _exit(16);
  if (wait) {
    for (;;) pause();
  }
  _exit(0);  // no destructors: the client never detaches
}

// Forks the client child before the server thread exists (fork copies only the calling thread),
// then starts serving and lets the child go. Returns the child's client index.
class DeadClientTest : public KvStoreClientTest {
 protected:
  void RunChild(bool wait) {
    StartStore(16, /*with_disk=*/false);
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) DyingClient(shm_name_, go_.fd[0], report_.fd[1], wait);
    child_ = std::make_unique<Child>(pid);
    go_.CloseRead();
    report_.CloseWrite();
    StoreServerOptions options;
    options.on_client = [this](uint32_t client, const char* event) {
      std::lock_guard<std::mutex> lock(events_mu_);
      events_.emplace_back(client, event);
      events_cv_.notify_all();
    };
    StartServer(options);
    ASSERT_TRUE(WriteFully(go_.fd[1], "g", 1));
    ASSERT_TRUE(ReadFully(report_.fd[0], &index_, sizeof(index_)))
        << "the child failed before reporting; wait status " << child_->Wait();
  }
  void ExpectReclaimed() {
    EXPECT_TRUE(WaitForFreeSlot(index_));
    const StoreStats st = store_->Stats();
    EXPECT_EQ(st.pages_pinned, 0u);
    EXPECT_EQ(st.slots_used, 2u);  // the committed pages stay, the uncommitted one went
    ExpectConsistent();
    // The slot can be claimed again, and the committed pages are intact.
    KvStoreClient* c = Attach();
    ASSERT_NE(c, nullptr);
    auto info = c->OpenSequence("dead");
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->layer_lengths, (std::vector<uint64_t>{2 * kTokens}));
    std::vector<std::byte*> pages;
    ASSERT_TRUE(c->Pin(info->handle, 0, 0, 2, &pages).ok());
    EXPECT_TRUE(PageIs(pages[0], info->handle, 0, 0));
    EXPECT_TRUE(PageIs(pages[1], info->handle, 0, 1));
    std::vector<std::byte*> none;
    EXPECT_EQ(c->Pin(info->handle, 0, 2, 1, &none).code(), absl::StatusCode::kOutOfRange);
  }

  Pipe go_, report_;
  std::unique_ptr<Child> child_;
  uint32_t index_ = 0;
};

TEST_F(DeadClientTest, ExitedClientWithPinsIsReclaimed) {
  ASSERT_NO_FATAL_FAILURE(RunChild(/*wait=*/false));
  const int status = child_->Wait();
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "wait status " << status;
  const std::string event = WaitForEvent(index_);
  EXPECT_TRUE(event == "process gone" || event == "lease expired") << "event '" << event << "'";
  ExpectReclaimed();
}

TEST_F(DeadClientTest, KilledClientWithPinsIsReclaimedWhenItsLeaseExpires) {
  ASSERT_NO_FATAL_FAILURE(RunChild(/*wait=*/true));
  EXPECT_EQ(store_->Stats().pages_pinned, 3u);
  child_->Kill();
  // Not reaped yet: the zombie still "exists" for kill(pid, 0), so only the lease can tell.
  EXPECT_EQ(WaitForEvent(index_), "lease expired");
  const int status = child_->Wait();
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "wait status " << status;
  ExpectReclaimed();
}

TEST_F(KvStoreClientTest, StopMakesCallsFailFastWithUnavailable) {
  StartServing(8);
  KvStoreClient* c = Attach(absl::Seconds(60));  // a hang would show as "did not answer"
  ASSERT_NE(c, nullptr);
  KvStoreClient* busy = Attach(absl::Seconds(60));
  ASSERT_NE(busy, nullptr);
  auto h = c->CreateSequence("s", 1, kPageBytes, kTokens, "");
  ASSERT_TRUE(h.ok());
  // One client hammers the server while it stops: each call ends OK or UNAVAILABLE, the first
  // UNAVAILABLE ends the loop, and none of them waited out its timeout.
  std::atomic<int> calls{0};
  absl::Status last;
  std::thread hammer([&] {
    for (;;) {
      auto info = busy->OpenSequence("s");
      ++calls;
      if (!info.ok()) {
        last = info.status();
        return;
      }
    }
  });
  while (calls.load() < 100) std::this_thread::yield();
  server_->Stop();
  hammer.join();
  EXPECT_EQ(last.code(), absl::StatusCode::kUnavailable) << last;
  EXPECT_FALSE(absl::StrContains(last.message(), "in time")) << last;
  // A call after the stop fails at once, and the client stays failed.
  absl::Status s = c->Commit(*h, 0, 0);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_FALSE(absl::StrContains(s.message(), "in time")) << s;
  EXPECT_EQ(c->OpenSequence("s").status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(segment_->header()->server_state.load(), uint32_t(ServerState::kStopped));
  EXPECT_EQ(KvStoreClient::Attach(ClientOptions()).status().code(), absl::StatusCode::kUnavailable);

  // A new server on the same store: old clients must re-attach (new epoch); new ones work.
  const uint64_t epoch = segment_->header()->server_epoch.load();
  clients_.clear();  // their detach fails fast; the new server must not trip over their slots
  StartServer();
  EXPECT_EQ(segment_->header()->server_epoch.load(), epoch + 1);
  KvStoreClient* fresh = Attach();
  ASSERT_NE(fresh, nullptr);
  auto info = fresh->OpenSequence("s");
  EXPECT_TRUE(info.ok()) << info.status();
}

TEST_F(KvStoreClientTest, CallInFlightWhenTheServerStopsReturnsUnavailable) {
  // No server thread: the test plays the server, so the request is surely in flight.
  StartStore(4, false);
  SegmentHeader* h = segment_->header();
  h->server_epoch.fetch_add(1);
  h->server_state.store(uint32_t(ServerState::kServing));
  KvStoreClient* c = Attach(absl::Seconds(60));
  ASSERT_NE(c, nullptr);
  absl::Status result;
  std::thread caller([&] { result = c->OpenSequence("x").status(); });
  Ring rq = segment_->request_ring(c->client_index());
  const absl::Time limit = absl::Now() + absl::Seconds(30);
  while (rq.empty() && absl::Now() < limit) std::this_thread::yield();
  ASSERT_FALSE(rq.empty());
  // What StoreServer::Stop does: mark stopped, then ring every client's doorbell.
  h->server_state.store(uint32_t(ServerState::kStopped));
  ClientEntry* me = segment_->client(c->client_index());
  me->completion_doorbell.fetch_add(1);
  FutexWakeAll(&me->completion_doorbell);
  caller.join();
  EXPECT_EQ(result.code(), absl::StatusCode::kUnavailable) << result;
  EXPECT_FALSE(absl::StrContains(result.message(), "in time")) << result;
}

// ---- The kvstore process killed during appends, then restarted ---------------------------------

constexpr uint32_t kCrashLayers = 2;

// A separate ihip-kvstore process: Create + DiskTier + durable Store (Recover) + StoreServer.
// Writes one byte to `ready_fd` when serving; stops cleanly when `stop_fd` reaches EOF, checking
// the store's consistency. Exit codes > 0 say which step failed.
[[noreturn]] void KvstoreChild(const std::string& shm, const std::string& db, int ready_fd,
                               int stop_fd) {
  auto seg = ShmSegment::Create(testing::SmallSegmentOptions(shm, 24));
  if (!seg.ok()) _exit(20);
  auto disk = DiskTier::Open(testing::TestDiskOptions(db));
  if (!disk.ok()) _exit(21);
  StoreOptions so;
  so.durable = true;
  int code = 0;
  {
    Store store(so, seg->get(), disk->get());
    if (!store.Recover().ok()) _exit(22);
    if (!store.CheckConsistency().ok()) _exit(23);
    StoreServer server({}, seg->get(), &store);
    server.Start();
    if (!WriteFully(ready_fd, "r", 1)) _exit(24);
    char c;
    while (read(stop_fd, &c, 1) > 0) {
    }
    server.Stop();
    if (!store.CheckConsistency().ok()) code = 25;
  }
  disk->reset();
  seg->reset();
  _exit(code);
}

// The kvstore child is this test binary run again (fork + exec) with kKvstoreChildEnv set: a
// plain fork would inherit RocksDB's process-wide thread pool without its threads (other tests
// opened RocksDB in this process), and its flushes would never run. The hook below runs before
// main() in the exec'd process and never returns there.
constexpr char kKvstoreChildEnv[] = "IHIP_KVSTORE_TEST_KVSTORE_CHILD";  // "shm|db|ready|stop"

const bool kKvstoreChildHook = [] {
  const char* spec = std::getenv(kKvstoreChildEnv);
  if (spec == nullptr) return false;
  const std::vector<std::string> parts = absl::StrSplit(spec, '|');
  int ready = -1, stop = -1;
  if (parts.size() != 4 || !absl::SimpleAtoi(parts[2], &ready) ||
      !absl::SimpleAtoi(parts[3], &stop)) {
    _exit(30);
  }
  KvstoreChild(parts[0], parts[1], ready, stop);
}();

struct KvstoreProcess {
  Pipe ready, stop;
  std::unique_ptr<Child> child;
};

std::unique_ptr<KvstoreProcess> StartKvstore(const std::string& shm, const std::string& db) {
  auto p = std::make_unique<KvstoreProcess>();
  // Everything exec needs is built before fork (the child may only call async-signal-safe
  // functions until it execs).
  std::string var =
      absl::StrCat(kKvstoreChildEnv, "=", shm, "|", db, "|", p->ready.fd[1], "|", p->stop.fd[0]);
  std::vector<char*> env;
  for (char** e = environ; *e != nullptr; ++e) env.push_back(*e);
  env.push_back(var.data());
  env.push_back(nullptr);
  char exe[] = "/proc/self/exe";
  char* argv[] = {exe, nullptr};
  const pid_t pid = fork();
  if (pid < 0) return nullptr;
  if (pid == 0) {
    close(p->ready.fd[0]);
    close(p->stop.fd[1]);  // else the child would hold its own stop pipe open
    execve(exe, argv, env.data());
    _exit(31);
  }
  p->child = std::make_unique<Child>(pid);
  p->ready.CloseWrite();
  p->stop.CloseRead();
  char r;
  if (!ReadFully(p->ready.fd[0], &r, 1)) {
    ADD_FAILURE() << "kvstore child did not start; wait status " << p->child->Wait();
    return nullptr;
  }
  return p;
}

TEST(KvstoreCrashTest, KilledDuringAppendsThenRestartedServesEveryCommittedPage) {
  testing::TempDir dir;
  const std::string shm = testing::UniqueShmName();
  const std::string db = dir.path() + "/db";
  auto server = StartKvstore(shm, db);
  ASSERT_NE(server, nullptr);

  KvStoreClientOptions o;
  o.segment_name = shm;
  o.timeout = absl::Seconds(2);  // a dead kvstore is noticed by the timeout
  auto client = KvStoreClient::Attach(o);
  ASSERT_TRUE(client.ok()) << client.status();
  auto h = (*client)->CreateSequence("crash", kCrashLayers, kPageBytes, kTokens, kGeometry);
  ASSERT_TRUE(h.ok()) << h.status();

  // Append round-robin over the layers; a killer thread SIGKILLs the kvstore once 60 commits
  // returned OK, while the appends go on.
  uint64_t committed[kCrashLayers] = {}, attempted[kCrashLayers] = {};
  std::mutex mu;
  std::condition_variable cv;
  int ok_commits = 0;
  bool appends_over = false;
  std::thread killer([&] {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return ok_commits >= 60 || appends_over; });
    server->child->Kill();
  });
  absl::Status failure;
  for (uint64_t page = 0; failure.ok() && page < 100000; ++page) {
    for (uint32_t layer = 0; layer < kCrashLayers && failure.ok(); ++layer) {
      uint64_t first;
      std::vector<std::byte*> pages;
      failure = (*client)->Allocate(*h, layer, 1, &first, &pages);
      if (!failure.ok()) break;
      if (first != page) {
        failure = absl::InternalError(absl::StrCat("allocated page ", first, ", wanted ", page));
        break;
      }
      FillPage(pages[0], *h, layer, page);
      attempted[layer] = (page + 1) * kTokens;
      failure = (*client)->Commit(*h, layer, (page + 1) * kTokens);
      if (!failure.ok()) break;
      committed[layer] = (page + 1) * kTokens;
      {
        std::lock_guard<std::mutex> lock(mu);
        ++ok_commits;
      }
      cv.notify_all();
      failure = (*client)->Unpin(*h, layer, page, 1);
    }
  }
  {
    std::lock_guard<std::mutex> lock(mu);
    appends_over = true;
  }
  cv.notify_all();
  killer.join();
  EXPECT_EQ(failure.code(), absl::StatusCode::kUnavailable) << failure;
  ASSERT_GE(ok_commits, 60);
  const int status = server->child->Wait();
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "wait status " << status;
  client->reset();  // its detach fails fast: the connection is already marked lost
  server.reset();

  // Restart on the same RocksDB path and shm name; re-attach.
  server = StartKvstore(shm, db);
  ASSERT_NE(server, nullptr);
  o.timeout = absl::Seconds(20);
  client = KvStoreClient::Attach(o);
  ASSERT_TRUE(client.ok()) << client.status();
  auto info = (*client)->OpenSequence("crash");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->handle, *h);
  EXPECT_EQ(info->geometry, kGeometry);
  ASSERT_EQ(info->layer_lengths.size(), kCrashLayers);
  for (uint32_t layer = 0; layer < kCrashLayers; ++layer) {
    SCOPED_TRACE(absl::StrCat("layer ", layer));
    const uint64_t length = info->layer_lengths[layer];
    // The commit in flight at the kill may or may not have landed; nothing else may differ.
    EXPECT_TRUE(length == committed[layer] || length == attempted[layer])
        << "length " << length << ", last OK commit " << committed[layer] << ", last attempt "
        << attempted[layer];
    const uint64_t n = length / kTokens;
    for (uint64_t first = 0; first < n; first += 8) {
      const uint32_t count = uint32_t(std::min<uint64_t>(8, n - first));
      std::vector<std::byte*> pages;
      absl::Status s = (*client)->Pin(*h, layer, first, count, &pages);
      ASSERT_TRUE(s.ok()) << s;
      for (uint32_t i = 0; i < count; ++i) {
        EXPECT_TRUE(PageIs(pages[i], *h, layer, first + i)) << "page " << first + i;
      }
      ASSERT_TRUE((*client)->Unpin(*h, layer, first, count).ok());
    }
    // Uncommitted pages are absent.
    std::vector<std::byte*> pages;
    EXPECT_EQ((*client)->Pin(*h, layer, n, 1, &pages).code(), absl::StatusCode::kOutOfRange);
    // Appending continues at the committed end.
    uint64_t first = 0;
    ASSERT_TRUE((*client)->Allocate(*h, layer, 1, &first, &pages).ok());
    EXPECT_EQ(first, n);
    FillPage(pages[0], *h, layer, n);
    ASSERT_TRUE((*client)->Commit(*h, layer, (n + 1) * kTokens).ok());
  }
  client->reset();
  // A clean stop: the child checks the store's consistency and exits 0.
  server->stop.CloseWrite();
  const int final_status = server->child->Wait();
  EXPECT_TRUE(WIFEXITED(final_status) && WEXITSTATUS(final_status) == 0)
      << "wait status " << final_status;
}

}  // namespace
}  // namespace ihip::kvstore
