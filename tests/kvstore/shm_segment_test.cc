// Tests for kvstore/shm_segment.h and the layout of SHM_FORMAT.md: option validation, Create then
// Attach seeing the same header, clean errors for a missing segment, a wrong magic, a wrong
// layout version and a wrong size, and a layout whose regions are aligned, inside the segment and
// disjoint (checked by arithmetic and by writing every region and reading it back).

#include "kvstore/shm_segment.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "gtest/gtest.h"
#include "kvstore/shm_format.h"
#include "tests/kvstore/kvstore_test_util.h"

namespace ihip::kvstore {
namespace {

using testing::SmallSegmentOptions;
using testing::UniqueShmName;

bool ShmExists(const std::string& name) {
  const int fd = shm_open(name.c_str(), O_RDONLY, 0);
  if (fd < 0) return false;
  close(fd);
  return true;
}

TEST(SegmentOptionsTest, DefaultsAndSmallOptionsAreValid) {
  EXPECT_TRUE(SegmentOptions{}.Validate().ok());
  EXPECT_TRUE(SmallSegmentOptions(UniqueShmName()).Validate().ok());
}

TEST(SegmentOptionsTest, RejectsBadValues) {
  struct Case {
    const char* what;
    void (*mutate)(SegmentOptions&);
  };
  const Case cases[] = {
      {"empty name", [](SegmentOptions& o) { o.name.clear(); }},
      {"bare slash", [](SegmentOptions& o) { o.name = std::string(1, '/'); }},
      {"no leading slash", [](SegmentOptions& o) { o.name = "ihip"; }},
      {"inner slash", [](SegmentOptions& o) { o.name = "/ihip/x"; }},
      {"zero slot_bytes", [](SegmentOptions& o) { o.slot_bytes = 0; }},
      {"slot_bytes not 4 KiB multiple", [](SegmentOptions& o) { o.slot_bytes = 4096 + 512; }},
      {"pool smaller than a slot", [](SegmentOptions& o) { o.pool_bytes = o.slot_bytes - 4096; }},
      {"zero clients", [](SegmentOptions& o) { o.max_clients = 0; }},
      {"too many clients", [](SegmentOptions& o) { o.max_clients = 1025; }},
      {"zero ring entries", [](SegmentOptions& o) { o.ring_entries = 0; }},
      {"one ring entry", [](SegmentOptions& o) { o.ring_entries = 1; }},
      {"ring entries not power of two", [](SegmentOptions& o) { o.ring_entries = 96; }},
      {"small mailbox", [](SegmentOptions& o) { o.mailbox_bytes = 4095; }},
      {"zero lease", [](SegmentOptions& o) { o.lease = absl::ZeroDuration(); }},
      {"negative lease", [](SegmentOptions& o) { o.lease = -absl::Seconds(1); }},
  };
  for (const Case& c : cases) {
    SegmentOptions o = SmallSegmentOptions(UniqueShmName());
    c.mutate(o);
    const absl::Status s = o.Validate();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.what << ": " << s;
    // Create refuses the same options and leaves nothing behind.
    auto seg = ShmSegment::Create(o);
    EXPECT_EQ(seg.status().code(), absl::StatusCode::kInvalidArgument) << c.what;
    if (o.name.size() > 1 && o.name[0] == '/' && o.name.find('/', 1) == std::string::npos) {
      EXPECT_FALSE(ShmExists(o.name)) << c.what;
    }
  }
}

TEST(ShmSegmentTest, CreateThenAttachSeesTheSameHeader) {
  SegmentOptions o = SmallSegmentOptions(UniqueShmName(), 8);
  o.mailbox_bytes = 5000;  // rounded up to 8 KiB
  auto created = ShmSegment::Create(o);
  ASSERT_TRUE(created.ok()) << created.status();
  auto attached = ShmSegment::Attach(o.name);
  ASSERT_TRUE(attached.ok()) << attached.status();
  const SegmentHeader& a = *(*created)->header();
  const SegmentHeader& b = *(*attached)->header();
  EXPECT_NE((*created)->base(), (*attached)->base());  // two mappings of one object

  EXPECT_EQ(b.magic, kShmMagic);
  EXPECT_EQ(b.layout_version, kLayoutVersion);
  EXPECT_EQ(b.header_bytes, kHeaderBytes);
  EXPECT_EQ(b.slot_bytes, o.slot_bytes);
  EXPECT_EQ(b.slot_count, o.pool_bytes / o.slot_bytes);
  EXPECT_EQ(b.max_clients, o.max_clients);
  EXPECT_EQ(b.ring_entries, o.ring_entries);
  EXPECT_EQ(b.mailbox_bytes, 8192u);
  EXPECT_EQ(b.lease_ns, uint64_t(absl::ToInt64Nanoseconds(o.lease)));
  EXPECT_EQ(b.segment_bytes, (*attached)->size());
  EXPECT_EQ((*created)->size(), (*attached)->size());
  EXPECT_EQ(b.server_state.load(), uint32_t(ServerState::kStarting));
  // Every plain field agrees between the two mappings.
  EXPECT_EQ(std::memcmp(&a, &b, offsetof(SegmentHeader, server_doorbell)), 0);

  // What one mapping writes, the other reads.
  (*created)->slot_data(7)[100] = std::byte{0x5a};
  EXPECT_EQ((*attached)->slot_data(7)[100], std::byte{0x5a});
  (*attached)->mailbox(3)[0] = std::byte{0xa5};
  EXPECT_EQ((*created)->mailbox(3)[0], std::byte{0xa5});
  (*created)->header()->server_epoch.store(41);
  EXPECT_EQ((*attached)->header()->server_epoch.load(), 41u);
  // Clients start free.
  for (uint32_t i = 0; i < o.max_clients; ++i) {
    EXPECT_EQ((*attached)->client(i)->state.load(), uint32_t(ClientState::kFree));
  }
}

TEST(ShmSegmentTest, DestroyingTheCreatorUnlinks) {
  const std::string name = UniqueShmName();
  {
    auto seg = ShmSegment::Create(SmallSegmentOptions(name, 2));
    ASSERT_TRUE(seg.ok()) << seg.status();
    EXPECT_TRUE(ShmExists(name));
    auto attached = ShmSegment::Attach(name);
    ASSERT_TRUE(attached.ok());
    attached->reset();  // an attacher does not unlink
    EXPECT_TRUE(ShmExists(name));
  }
  EXPECT_FALSE(ShmExists(name));
}

TEST(ShmSegmentTest, CreateReplacesAStaleObject) {
  const std::string name = UniqueShmName();
  const int fd = shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, 12345), 0);
  close(fd);
  auto seg = ShmSegment::Create(SmallSegmentOptions(name, 2));
  ASSERT_TRUE(seg.ok()) << seg.status();
  auto attached = ShmSegment::Attach(name);
  ASSERT_TRUE(attached.ok()) << attached.status();
  EXPECT_EQ((*attached)->size(), (*seg)->size());
}

TEST(ShmSegmentTest, MissingSegmentIsUnavailable) {
  auto seg = ShmSegment::Attach(UniqueShmName());
  EXPECT_EQ(seg.status().code(), absl::StatusCode::kUnavailable) << seg.status();
}

TEST(ShmSegmentTest, WrongMagicIsFailedPrecondition) {
  auto seg = ShmSegment::Create(SmallSegmentOptions(UniqueShmName(), 2));
  ASSERT_TRUE(seg.ok());
  SegmentHeader* h = (*seg)->header();
  h->magic = kShmMagic ^ 1;
  auto attached = ShmSegment::Attach((*seg)->name());
  EXPECT_EQ(attached.status().code(), absl::StatusCode::kFailedPrecondition) << attached.status();
  h->magic = 0;  // a segment still being laid out
  attached = ShmSegment::Attach((*seg)->name());
  EXPECT_EQ(attached.status().code(), absl::StatusCode::kFailedPrecondition) << attached.status();
  h->magic = kShmMagic;
  EXPECT_TRUE(ShmSegment::Attach((*seg)->name()).ok());
}

TEST(ShmSegmentTest, WrongLayoutVersionIsFailedPrecondition) {
  auto seg = ShmSegment::Create(SmallSegmentOptions(UniqueShmName(), 2));
  ASSERT_TRUE(seg.ok());
  SegmentHeader* h = (*seg)->header();
  h->layout_version = kLayoutVersion + 1;
  auto attached = ShmSegment::Attach((*seg)->name());
  EXPECT_EQ(attached.status().code(), absl::StatusCode::kFailedPrecondition) << attached.status();
  h->layout_version = kLayoutVersion;
  EXPECT_TRUE(ShmSegment::Attach((*seg)->name()).ok());
}

TEST(ShmSegmentTest, SizeMismatchIsFailedPrecondition) {
  auto seg = ShmSegment::Create(SmallSegmentOptions(UniqueShmName(), 2));
  ASSERT_TRUE(seg.ok());
  SegmentHeader* h = (*seg)->header();
  h->segment_bytes += 4096;
  auto attached = ShmSegment::Attach((*seg)->name());
  EXPECT_EQ(attached.status().code(), absl::StatusCode::kFailedPrecondition) << attached.status();
  h->segment_bytes -= 4096;
  EXPECT_TRUE(ShmSegment::Attach((*seg)->name()).ok());
}

// A header whose regions do not fit the object it describes (corruption, or a writer of another
// build) must be refused at Attach: otherwise clients index past the mapping.
TEST(ShmSegmentTest, HeaderWhoseRegionsLieOutsideTheObjectIsFailedPrecondition) {
  auto seg = ShmSegment::Create(SmallSegmentOptions(UniqueShmName(), 2));
  ASSERT_TRUE(seg.ok());
  SegmentHeader* h = (*seg)->header();
  std::vector<std::byte> saved(offsetof(SegmentHeader, server_doorbell));
  std::memcpy(saved.data(), h, saved.size());
  struct Case {
    const char* what;
    void (*mutate)(SegmentHeader*);
  };
  const Case cases[] = {
      {"slot_count past the end", [](SegmentHeader* x) { x->slot_count += 1; }},
      {"pool_offset past the end", [](SegmentHeader* x) { x->pool_offset = x->segment_bytes; }},
      {"max_clients huge", [](SegmentHeader* x) { x->max_clients = 1u << 20; }},
      {"ring_entries not a power of two", [](SegmentHeader* x) { x->ring_entries = 48; }},
      {"mailboxes past the end",
       [](SegmentHeader* x) { x->mailboxes_offset = x->segment_bytes - 4096; }},
  };
  for (const Case& c : cases) {
    c.mutate(h);
    auto attached = ShmSegment::Attach((*seg)->name());
    EXPECT_EQ(attached.status().code(), absl::StatusCode::kFailedPrecondition)
        << c.what << ": " << attached.status();
    std::memcpy(static_cast<void*>(h), saved.data(), saved.size());
  }
  EXPECT_TRUE(ShmSegment::Attach((*seg)->name()).ok());
}

TEST(ShmSegmentTest, TooSmallObjectIsFailedPrecondition) {
  const std::string name = UniqueShmName();
  const int fd = shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, 100), 0);
  close(fd);
  auto attached = ShmSegment::Attach(name);
  EXPECT_EQ(attached.status().code(), absl::StatusCode::kFailedPrecondition) << attached.status();
  shm_unlink(name.c_str());
}

TEST(ShmSegmentTest, RegionsAreAlignedOrderedAndInside) {
  for (uint32_t entries : {2u, 64u, 1024u}) {
    for (uint32_t clients : {1u, 3u, 16u}) {
      SegmentOptions o = SmallSegmentOptions(UniqueShmName(), 5);
      o.ring_entries = entries;
      o.max_clients = clients;
      o.mailbox_bytes = 4096 + 1;
      o.populate_threads = 0;
      auto seg = ShmSegment::Create(o);
      ASSERT_TRUE(seg.ok()) << seg.status();
      const SegmentHeader& h = *(*seg)->header();
      SCOPED_TRACE(absl::StrCat("entries ", entries, " clients ", clients));
      EXPECT_EQ(h.pool_offset % kPoolAlign, 0u);
      EXPECT_EQ(reinterpret_cast<uintptr_t>((*seg)->base()) % 4096, 0u);
      EXPECT_EQ(h.rings_offset % 4096, 0u);
      EXPECT_EQ(h.mailboxes_offset % 4096, 0u);
      EXPECT_EQ(h.mailbox_bytes % 4096, 0u);
      EXPECT_EQ(h.slot_table_offset % alignof(SlotEntry), 0u);
      EXPECT_EQ(h.ring_pair_bytes, 2 * (sizeof(RingHeader) + uint64_t(entries) * sizeof(Message)));
      EXPECT_EQ(h.ring_pair_bytes % kCacheLine, 0u);
      // header | clients | rings | mailboxes | slot table | pool, each after the previous one.
      EXPECT_GE(h.clients_offset, kHeaderBytes);
      EXPECT_LE(h.clients_offset + clients * sizeof(ClientEntry), h.rings_offset);
      EXPECT_LE(h.rings_offset + clients * h.ring_pair_bytes, h.mailboxes_offset);
      EXPECT_LE(h.mailboxes_offset + clients * h.mailbox_bytes, h.slot_table_offset);
      EXPECT_LE(h.slot_table_offset + h.slot_count * sizeof(SlotEntry), h.pool_offset);
      EXPECT_EQ(h.pool_offset + h.slot_count * h.slot_bytes, h.segment_bytes);
      EXPECT_EQ((*seg)->size(), h.segment_bytes);
      EXPECT_EQ((*seg)->slot_data(h.slot_count - 1) + h.slot_bytes,
                (*seg)->base() + h.segment_bytes);
    }
  }
}

// Fills every ring entry, mailbox, slot-table entry, slot and client entry with a value unique
// to its place, then reads all of them back: any two regions that overlap clobber each other.
TEST(ShmSegmentTest, RegionsDoNotOverlap) {
  SegmentOptions o = SmallSegmentOptions(UniqueShmName(), 6);
  o.ring_entries = 8;
  o.max_clients = 3;
  o.mailbox_bytes = 4096;
  o.slot_bytes = 8192;
  o.pool_bytes = 6 * o.slot_bytes;
  auto created = ShmSegment::Create(o);
  ASSERT_TRUE(created.ok()) << created.status();
  ShmSegment& seg = **created;
  const SegmentHeader& h = *seg.header();
  const uint64_t magic_before = h.magic;
  auto tag = [](uint64_t region, uint64_t a, uint64_t b) { return (region << 48) | (a << 24) | b; };
  for (uint32_t c = 0; c < o.max_clients; ++c) {
    seg.client(c)->generation.store(tag(1, c, 0));
    std::memset(seg.client(c)->name, int('a' + c), sizeof(seg.client(c)->name));
    for (int which = 0; which < 2; ++which) {
      Ring r = which == 0 ? seg.request_ring(c) : seg.completion_ring(c);
      ASSERT_EQ(r.capacity(), o.ring_entries);
      for (uint32_t e = 0; e < o.ring_entries; ++e) {
        Message m{};
        m.request_id = tag(2 + which, c, e);
        m.arg0 = m.arg1 = m.sequence = m.reserved2 = m.request_id;
        ASSERT_TRUE(r.TryPush(m));
      }
    }
    std::byte* box = seg.mailbox(c);
    for (uint64_t i = 0; i < h.mailbox_bytes; i += 8) {
      const uint64_t v = tag(4, c, i);
      std::memcpy(box + i, &v, 8);
    }
  }
  for (uint64_t s = 0; s < h.slot_count; ++s) {
    SlotEntry* e = seg.slot_entry(s);
    e->sequence = tag(5, s, 0);
    e->reserved = tag(5, s, 1);
    std::byte* d = seg.slot_data(s);
    for (uint64_t i = 0; i < h.slot_bytes; i += 8) {
      const uint64_t v = tag(6, s, i);
      std::memcpy(d + i, &v, 8);
    }
  }
  // Read everything back through a second mapping.
  auto attached = ShmSegment::Attach(seg.name());
  ASSERT_TRUE(attached.ok()) << attached.status();
  ShmSegment& other = **attached;
  EXPECT_EQ(other.header()->magic, magic_before);
  EXPECT_EQ(std::memcmp(seg.header(), other.header(), offsetof(SegmentHeader, server_doorbell)), 0);
  for (uint32_t c = 0; c < o.max_clients; ++c) {
    EXPECT_EQ(other.client(c)->generation.load(), tag(1, c, 0));
    for (char ch : other.client(c)->name) EXPECT_EQ(ch, char('a' + c));
    for (int which = 0; which < 2; ++which) {
      Ring r = which == 0 ? other.request_ring(c) : other.completion_ring(c);
      EXPECT_EQ(r.size(), o.ring_entries);
      for (uint32_t e = 0; e < o.ring_entries; ++e) {
        Message m;
        ASSERT_TRUE(r.TryPop(&m));
        const uint64_t want = tag(2 + which, c, e);
        EXPECT_EQ(m.request_id, want);
        EXPECT_EQ(m.arg0, want);
        EXPECT_EQ(m.arg1, want);
        EXPECT_EQ(m.sequence, want);
        EXPECT_EQ(m.reserved2, want);
      }
    }
    const std::byte* box = other.mailbox(c);
    for (uint64_t i = 0; i < h.mailbox_bytes; i += 8) {
      uint64_t v;
      std::memcpy(&v, box + i, 8);
      ASSERT_EQ(v, tag(4, c, i)) << "mailbox " << c << " byte " << i;
    }
  }
  for (uint64_t s = 0; s < h.slot_count; ++s) {
    EXPECT_EQ(other.slot_entry(s)->sequence, tag(5, s, 0));
    EXPECT_EQ(other.slot_entry(s)->reserved, tag(5, s, 1));
    const std::byte* d = other.slot_data(s);
    for (uint64_t i = 0; i < h.slot_bytes; i += 8) {
      uint64_t v;
      std::memcpy(&v, d + i, 8);
      ASSERT_EQ(v, tag(6, s, i)) << "slot " << s << " byte " << i;
    }
  }
}

TEST(ShmSegmentTest, MonotonicNanosDoesNotGoBack) {
  uint64_t last = MonotonicNanos();
  for (int i = 0; i < 1000; ++i) {
    const uint64_t now = MonotonicNanos();
    EXPECT_GE(now, last);
    last = now;
  }
}

}  // namespace
}  // namespace ihip::kvstore
