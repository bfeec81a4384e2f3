// Tests for kvstore/ring.h (SPSC ring of SHM_FORMAT.md) and the futex doorbells of futex.h:
// empty and full, FIFO order, entry placement at head % n, counters wrapping past 2^32, and
// ordered delivery of many messages between two threads and between two processes (fork), the
// consumer and producer waiting on doorbells, never sleeping in a loop.

#include "kvstore/ring.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <limits>
#include <random>
#include <thread>
#include <vector>

#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "kvstore/futex.h"
#include "kvstore/shm_segment.h"
#include "tests/kvstore/kvstore_test_util.h"

namespace ihip::kvstore {
namespace {

using testing::SmallSegmentOptions;
using testing::UniqueShmName;

constexpr uint32_t kMax = std::numeric_limits<uint32_t>::max();
constexpr absl::Duration kWaitLimit = absl::Seconds(20);  // a lost wake-up fails, never hangs

// A ring in ordinary memory, laid out as in the segment: header, then entries.
struct LocalRing {
  explicit LocalRing(uint32_t capacity) : entries(capacity) {}
  Ring ring() { return Ring(&header, entries.data(), uint32_t(entries.size())); }
  void SetCounters(uint32_t head, uint32_t tail) {
    header.head.store(head);
    header.tail.store(tail);
  }
  RingHeader header;
  std::vector<Message> entries;
};

Message Numbered(uint64_t i) {
  Message m{};
  m.op = uint32_t(i % 11);
  m.request_id = i;
  m.sequence = ~i;
  m.arg0 = i * 0x9E3779B97F4A7C15ull;
  m.arg1 = i + 1;
  m.layer = uint32_t(i >> 3);
  m.count = uint32_t(i * 7);
  m.mailbox_bytes = uint32_t(i ^ 0x55);
  return m;
}

// Returns "" if `m` is message `i`, else what differs.
std::string CheckNumbered(const Message& m, uint64_t i) {
  const Message want = Numbered(i);
  if (std::memcmp(&m, &want, sizeof(Message)) == 0) return "";
  return absl::StrCat("expected message ", i, ", got request_id ", m.request_id);
}

TEST(RingTest, EmptyRingPopsNothing) {
  LocalRing lr(8);
  Ring r = lr.ring();
  EXPECT_EQ(r.capacity(), 8u);
  EXPECT_TRUE(r.empty());
  EXPECT_EQ(r.size(), 0u);
  Message m = Numbered(99);
  EXPECT_FALSE(r.TryPop(&m));
  EXPECT_EQ(CheckNumbered(m, 99), "");  // untouched
  ASSERT_TRUE(r.TryPush(Numbered(1)));
  ASSERT_TRUE(r.TryPop(&m));
  EXPECT_FALSE(r.TryPop(&m));
  EXPECT_TRUE(r.empty());
}

TEST(RingTest, FullRingPushesNothingAndKeepsFifoOrder) {
  for (uint32_t capacity : {2u, 8u, 64u}) {
    LocalRing lr(capacity);
    Ring r = lr.ring();
    for (uint32_t i = 0; i < capacity; ++i) ASSERT_TRUE(r.TryPush(Numbered(i))) << i;
    EXPECT_EQ(r.size(), capacity);
    EXPECT_FALSE(r.TryPush(Numbered(1000)));
    EXPECT_EQ(r.size(), capacity);
    Message m;
    ASSERT_TRUE(r.TryPop(&m));
    EXPECT_EQ(CheckNumbered(m, 0), "");
    ASSERT_TRUE(r.TryPush(Numbered(capacity)));  // one slot freed
    EXPECT_FALSE(r.TryPush(Numbered(1000)));
    for (uint32_t i = 1; i <= capacity; ++i) {
      ASSERT_TRUE(r.TryPop(&m));
      EXPECT_EQ(CheckNumbered(m, i), "");
    }
    EXPECT_FALSE(r.TryPop(&m));
  }
}

TEST(RingTest, EntriesLiveAtCounterModuloCapacity) {
  LocalRing lr(8);
  lr.SetCounters(kMax - 2, kMax - 2);
  Ring r = lr.ring();
  for (uint64_t k = 0; k < 6; ++k) ASSERT_TRUE(r.TryPush(Numbered(k)));
  EXPECT_EQ(lr.header.head.load(), uint32_t(kMax - 2 + 6));  // wrapped to 3
  EXPECT_EQ(lr.header.head.load(), 3u);
  for (uint64_t k = 0; k < 6; ++k) {
    const uint32_t counter = uint32_t(kMax - 2 + k);
    EXPECT_EQ(CheckNumbered(lr.entries[counter % 8], k), "") << "k=" << k;
  }
}

TEST(RingTest, FullAndEmptyAcrossTheCounterWrap) {
  LocalRing lr(8);
  lr.SetCounters(kMax - 3, kMax - 3);
  Ring r = lr.ring();
  for (uint64_t i = 0; i < 8; ++i) ASSERT_TRUE(r.TryPush(Numbered(i)));
  EXPECT_LT(lr.header.head.load(), lr.header.tail.load());  // head wrapped, tail did not
  EXPECT_EQ(r.size(), 8u);
  EXPECT_FALSE(r.TryPush(Numbered(100)));
  Message m;
  for (uint64_t i = 0; i < 8; ++i) {
    ASSERT_TRUE(r.TryPop(&m));
    EXPECT_EQ(CheckNumbered(m, i), "");
  }
  EXPECT_TRUE(r.empty());
  EXPECT_FALSE(r.TryPop(&m));
}

TEST(RingTest, ManyMoreMessagesThanCapacityAcrossTheWrap) {
  LocalRing lr(16);
  lr.SetCounters(kMax - 100, kMax - 100);
  Ring r = lr.ring();
  std::mt19937 rng(7);
  uint64_t pushed = 0, popped = 0;
  Message m;
  while (popped < 100000) {
    const uint32_t burst = rng() % 17;  // 0..16: sometimes fills the ring exactly
    for (uint32_t i = 0; i < burst; ++i) {
      if (!r.TryPush(Numbered(pushed))) {
        ASSERT_EQ(r.size(), 16u);
        break;
      }
      ++pushed;
    }
    const uint32_t drain = rng() % 17;
    for (uint32_t i = 0; i < drain; ++i) {
      if (!r.TryPop(&m)) {
        ASSERT_EQ(pushed, popped);
        break;
      }
      ASSERT_EQ(CheckNumbered(m, popped), "");
      ++popped;
    }
    ASSERT_EQ(r.size(), pushed - popped);
  }
  EXPECT_LT(lr.header.head.load(), uint32_t(kMax - 100));  // the counters wrapped
}

// Producer/consumer over one ring with doorbells both ways: "data" (producer -> consumer) and
// "space" (consumer -> producer, when the ring was full).
struct Doorbells {
  std::atomic<uint32_t>* data;
  std::atomic<uint32_t>* data_sleeping;
  std::atomic<uint32_t>* space;
  std::atomic<uint32_t>* space_sleeping;
};

// Pushes messages [0, n); false if it waited for space longer than kWaitLimit.
bool Produce(Ring ring, const Doorbells& d, uint64_t n) {
  for (uint64_t i = 0; i < n; ++i) {
    const Message m = Numbered(i);
    while (!ring.TryPush(m)) {
      if (!WaitForDoorbell(
              d.space, d.space_sleeping, [&] { return ring.size() < ring.capacity(); }, 200,
              kWaitLimit)) {
        return false;
      }
    }
    RingDoorbell(d.data, d.data_sleeping);
  }
  return true;
}

// Pops n messages and checks they are [0, n) in order; returns "" or what went wrong.
std::string Consume(Ring ring, const Doorbells& d, uint64_t n) {
  Message m;
  for (uint64_t i = 0; i < n; ++i) {
    while (!ring.TryPop(&m)) {
      if (!WaitForDoorbell(
              d.data, d.data_sleeping, [&] { return !ring.empty(); }, 200, kWaitLimit)) {
        return absl::StrCat("timed out waiting for message ", i);
      }
    }
    RingDoorbell(d.space, d.space_sleeping);
    std::string err = CheckNumbered(m, i);
    if (!err.empty()) return err;
  }
  if (ring.TryPop(&m)) return "extra message after the last one";
  return "";
}

TEST(RingTest, TwoThreadsDeliverMillionsInOrderAcrossTheWrap) {
  constexpr uint64_t kMessages = 3'000'000;
  LocalRing lr(64);
  lr.SetCounters(kMax - 1000, kMax - 1000);
  std::atomic<uint32_t> data{0}, data_sleeping{0}, space{0}, space_sleeping{0};
  const Doorbells d{&data, &data_sleeping, &space, &space_sleeping};
  bool produced = false;
  std::thread producer([&] { produced = Produce(lr.ring(), d, kMessages); });
  const std::string err = Consume(lr.ring(), d, kMessages);
  producer.join();
  EXPECT_TRUE(produced);
  EXPECT_EQ(err, "");
  EXPECT_EQ(lr.header.head.load(), uint32_t(kMax - 1000 + kMessages));
  EXPECT_EQ(lr.header.tail.load(), lr.header.head.load());
}

TEST(RingTest, WaitForDoorbellTimesOutWithoutAWake) {
  std::atomic<uint32_t> bell{0}, sleeping{0};
  EXPECT_FALSE(WaitForDoorbell(
      &bell, &sleeping, [] { return false; }, 10, absl::Milliseconds(20)));
  EXPECT_EQ(sleeping.load(), 0u);
  EXPECT_TRUE(WaitForDoorbell(
      &bell, &sleeping, [] { return true; }, 0, absl::ZeroDuration()));
}

TEST(RingTest, SleepingConsumerIsWokenByTheDoorbell) {
  std::atomic<uint32_t> bell{0}, sleeping{0};
  std::atomic<bool> ready{false};
  bool woke = false;
  std::thread consumer([&] {
    woke = WaitForDoorbell(
        &bell, &sleeping, [&] { return ready.load(); }, 0, kWaitLimit);
  });
  // Wait (bounded) until the consumer announced its sleep, then publish and ring.
  for (int i = 0; i < 20000 && sleeping.load() == 0; ++i) std::this_thread::yield();
  ready.store(true);
  RingDoorbell(&bell, &sleeping);
  consumer.join();
  EXPECT_TRUE(woke);
  EXPECT_GE(bell.load(), 1u);
}

// The child maps the segment itself (Attach), produces into client 0's request ring and _exits;
// the parent consumes from its own mapping. Doorbells: the header's server doorbell for data,
// client 0's completion doorbell for space.
TEST(RingTest, TwoProcessesDeliverInOrderThroughTheSegment) {
  constexpr uint64_t kMessages = 300'000;
  SegmentOptions o = SmallSegmentOptions(UniqueShmName(), 2);
  o.ring_entries = 32;
  auto seg = ShmSegment::Create(o);
  ASSERT_TRUE(seg.ok()) << seg.status();
  SegmentHeader* h = (*seg)->header();
  ClientEntry* c = (*seg)->client(0);
  // Start near the wrap so that the counters pass 2^32 during the run.
  {
    std::byte* ring0 = (*seg)->base() + h->rings_offset;
    auto* rh = reinterpret_cast<RingHeader*>(ring0);
    rh->head.store(kMax - 5000);
    rh->tail.store(kMax - 5000);
  }
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto mine = ShmSegment::Attach(o.name);
    if (!mine.ok()) _exit(2);
    SegmentHeader* ch = (*mine)->header();
    ClientEntry* cc = (*mine)->client(0);
    const Doorbells d{&ch->server_doorbell, &ch->server_sleeping, &cc->completion_doorbell,
                      &cc->client_sleeping};
    _exit(Produce((*mine)->request_ring(0), d, kMessages) ? 0 : 3);
  }
  const Doorbells d{&h->server_doorbell, &h->server_sleeping, &c->completion_doorbell,
                    &c->client_sleeping};
  const std::string err = Consume((*seg)->request_ring(0), d, kMessages);
  if (!err.empty()) kill(child, SIGKILL);
  int wstatus = 0;
  ASSERT_EQ(waitpid(child, &wstatus, 0), child);
  EXPECT_EQ(err, "");
  ASSERT_TRUE(WIFEXITED(wstatus));
  EXPECT_EQ(WEXITSTATUS(wstatus), 0);
  const auto* rh = reinterpret_cast<RingHeader*>((*seg)->base() + h->rings_offset);
  EXPECT_EQ(rh->head.load(), uint32_t(kMax - 5000 + kMessages));
  EXPECT_EQ(rh->tail.load(), rh->head.load());
}

}  // namespace
}  // namespace ihip::kvstore
