// Tests for kvstore/store.h, in process (Store methods called directly, clients 0 and 1): a full
// pool is RESOURCE_EXHAUSTED after spilling what can be spilled (no disk tier, everything
// pinned), spilling and fetch-back are byte-exact, the watermarks, SuspendSequence,
// DropSequence, durability across a restart (new segment, reopened disk tier, Recover),
// ReleaseClient, Abort, and bad requests answered with an error that leaves the store consistent.

#include "kvstore/store.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/kvstore/kvstore_test_util.h"

namespace ihip::kvstore {
namespace {

using testing::KvStoreFixture;
using testing::MakeSpec;
using testing::PageSeed;
using testing::PatternBytes;

constexpr uint32_t kPageBytes = 12 << 10;  // < the 16 KiB slot: only the page's bytes count
constexpr uint32_t kTokens = 16;

#define EXPECT_CONSISTENT() ExpectConsistent()

class StoreTest : public KvStoreFixture {
 protected:
  uint64_t Create(const std::string& id, uint32_t layers = 1, uint32_t page_bytes = kPageBytes) {
    auto h = store_->CreateSequence(id, MakeSpec(layers, page_bytes, kTokens), "geometry:" + id);
    EXPECT_TRUE(h.ok()) << h.status();
    return h.ok() ? *h : 0;
  }
  // Appends `count` pages pinned by `client`, each filled with its (handle, layer, page) pattern.
  absl::Status Append(uint32_t client, uint64_t handle, uint32_t layer, uint32_t count,
                      uint32_t page_bytes = kPageBytes, uint64_t* first_out = nullptr) {
    std::vector<uint64_t> slots;
    auto first = store_->Allocate(client, handle, layer, count, &slots);
    if (!first.ok()) return first.status();
    EXPECT_EQ(slots.size(), count);
    for (uint32_t i = 0; i < count; ++i) {
      const auto bytes = PatternBytes(page_bytes, PageSeed(handle, layer, *first + i));
      std::memcpy(segment_->slot_data(slots[i]), bytes.data(), bytes.size());
    }
    if (first_out != nullptr) *first_out = *first;
    return absl::OkStatus();
  }
  // Appends one page, commits it (length = pages * kTokens) and unpins it.
  void AppendCommitUnpin(uint32_t client, uint64_t handle, uint32_t layer) {
    uint64_t page = 0;
    ASSERT_TRUE(Append(client, handle, layer, 1, kPageBytes, &page).ok());
    ASSERT_TRUE(store_->Commit(handle, layer, (page + 1) * kTokens).ok());
    ASSERT_TRUE(store_->Unpin(client, handle, layer, page, 1).ok());
  }
  // Pins pages [first, first + count), compares each with its pattern, unpins them.
  void ExpectPages(uint32_t client, uint64_t handle, uint32_t layer, uint64_t first, uint32_t count,
                   uint32_t page_bytes = kPageBytes) {
    std::vector<uint64_t> slots;
    absl::Status s = store_->Pin(client, handle, layer, first, count, &slots);
    ASSERT_TRUE(s.ok()) << s;
    ASSERT_EQ(slots.size(), count);
    for (uint32_t i = 0; i < count; ++i) {
      const auto want = PatternBytes(page_bytes, PageSeed(handle, layer, first + i));
      EXPECT_TRUE(testing::BytesEqual(segment_->slot_data(slots[i]), want))
          << "layer " << layer << " page " << first + i << " differs";
    }
    s = store_->Unpin(client, handle, layer, first, count);
    ASSERT_TRUE(s.ok()) << s;
  }
  // The store's own invariants, and the slot table in the segment mirroring it: a slot is
  // resident iff it is used, and its pin count is the page's.
  void ExpectConsistent() {
    const absl::Status s = store_->CheckConsistency();
    EXPECT_TRUE(s.ok()) << s;
    const StoreStats st = store_->Stats();
    uint64_t resident = 0, pinned = 0;
    for (uint64_t slot = 0; slot < st.slots_total; ++slot) {
      const SlotEntry* e = segment_->slot_entry(slot);
      if (e->state == uint32_t(SlotState::kResident)) {
        ++resident;
        pinned += e->pins > 0;
      } else {
        EXPECT_EQ(e->state, uint32_t(SlotState::kFree)) << "slot " << slot;
        EXPECT_EQ(e->pins, 0u) << "slot " << slot;
      }
    }
    EXPECT_EQ(resident, st.slots_used);
    EXPECT_EQ(pinned, st.pages_pinned);
  }
  uint64_t PagesOf(uint64_t handle, uint32_t layer) {
    auto info = store_->GetSequence(handle);
    EXPECT_TRUE(info.ok());
    std::vector<uint64_t> slots;
    // The page count is the first `first` for which a zero-length pin is in range.
    uint64_t n = 0;
    while (store_->Pin(0, handle, layer, n + 1, 0, &slots).ok()) ++n;
    return n;
  }
};

TEST_F(StoreTest, OptionsValidate) {
  EXPECT_TRUE(StoreOptions{}.Validate().ok());
  StoreOptions o;
  o.low_watermark = 0.95;  // above high
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kInvalidArgument);
  o = {};
  o.high_watermark = 1.5;
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kInvalidArgument);
  o = {};
  o.low_watermark = 0;
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kInvalidArgument);
  o = {};
  o.spill_batch = 0;
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(StoreTest, FullPoolWithoutDiskIsResourceExhausted) {
  StartStore(/*slots=*/16, /*with_disk=*/false);
  const uint64_t h = Create("a");
  for (int i = 0; i < 14; ++i) ASSERT_TRUE(Append(0, h, 0, 1).ok()) << i;
  // All or nothing: 3 pages do not fit in the 2 free slots.
  absl::Status s = Append(0, h, 0, 3);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_EQ(store_->Stats().slots_used, 14u);
  EXPECT_EQ(PagesOf(h, 0), 14u);
  EXPECT_CONSISTENT();
  ASSERT_TRUE(Append(0, h, 0, 2).ok());
  s = Append(0, h, 0, 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  // Committed and unpinned, the pages still cannot leave: there is no disk tier.
  ASSERT_TRUE(store_->Commit(h, 0, 16 * kTokens).ok());
  ASSERT_TRUE(store_->Unpin(0, h, 0, 0, 16).ok());
  s = Append(0, h, 0, 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_EQ(store_->Stats().spills, 0u);
  EXPECT_EQ(store_->Stats().slots_used, 16u);
  EXPECT_CONSISTENT();
  ExpectPages(0, h, 0, 0, 16);  // nothing was damaged
  // Suspend needs a disk tier.
  EXPECT_EQ(store_->SuspendSequence(h).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_CONSISTENT();
}

TEST_F(StoreTest, FullPoolOfPinnedPagesIsResourceExhaustedWithDisk) {
  StartStore(16);
  const uint64_t h = Create("a");
  for (int i = 0; i < 16; ++i) ASSERT_TRUE(Append(0, h, 0, 1).ok()) << i;
  absl::Status s = Append(1, h, 0, 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  ASSERT_TRUE(store_->Commit(h, 0, 16 * kTokens).ok());  // committed but still pinned
  s = Append(1, h, 0, 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_EQ(store_->Stats().spills, 0u);
  EXPECT_EQ(store_->Stats().pages_pinned, 16u);
  EXPECT_CONSISTENT();
  // One unpinned page is enough for one more allocation.
  ASSERT_TRUE(store_->Unpin(0, h, 0, 3, 1).ok());
  ASSERT_TRUE(Append(1, h, 0, 1).ok());
  EXPECT_EQ(store_->Stats().spills, 1u);
  EXPECT_EQ(Append(1, h, 0, 1).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_CONSISTENT();
  // Pinning the spilled page back needs a slot too: refused, and the call changes nothing.
  std::vector<uint64_t> slots;
  s = store_->Pin(1, h, 0, 2, 2, &slots);  // page 2 resident, page 3 on disk only
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_TRUE(slots.empty());
  EXPECT_EQ(store_->Stats().pages_pinned, 16u);
  EXPECT_CONSISTENT();
}

TEST_F(StoreTest, SpillsLetAllocationContinueAndFetchBackIsByteExact) {
  StartStore(16);
  const uint64_t a = Create("a", 2), b = Create("b", 1);
  // Three times the pool, in committed unpinned pages of two sequences and three layers.
  for (int i = 0; i < 16; ++i) {
    AppendCommitUnpin(0, a, 0);
    AppendCommitUnpin(1, b, 0);
    AppendCommitUnpin(0, a, 1);
  }
  StoreStats st = store_->Stats();
  EXPECT_LE(st.slots_used, st.slots_total);
  EXPECT_GE(st.spills, 48u - 16u);
  EXPECT_EQ(st.spill_bytes, st.spills * kPageBytes);
  EXPECT_GE(st.pages_disk_only, 48u - 16u);
  EXPECT_EQ(st.pages_pinned, 0u);
  EXPECT_CONSISTENT();
  // Every page comes back with its bytes, whichever tier holds it.
  for (uint64_t p = 0; p < 16; p += 4) {
    ExpectPages(1, a, 0, p, 4);
    ExpectPages(0, b, 0, p, 4);
    ExpectPages(1, a, 1, p, 4);
  }
  st = store_->Stats();
  EXPECT_GE(st.fetch_backs, 32u);
  EXPECT_EQ(st.fetch_back_bytes, st.fetch_backs * kPageBytes);
  EXPECT_CONSISTENT();
  // A page pinned by two clients stays resident while the pool churns.
  std::vector<uint64_t> s0, s1;
  ASSERT_TRUE(store_->Pin(0, a, 0, 5, 1, &s0).ok());
  ASSERT_TRUE(store_->Pin(1, a, 0, 5, 1, &s1).ok());
  EXPECT_EQ(s0, s1);
  for (int i = 0; i < 20; ++i) AppendCommitUnpin(0, b, 0);
  ASSERT_TRUE(store_->Unpin(0, a, 0, 5, 1).ok());
  for (int i = 0; i < 20; ++i) AppendCommitUnpin(0, b, 0);
  const auto want = PatternBytes(kPageBytes, PageSeed(a, 0, 5));
  EXPECT_TRUE(testing::BytesEqual(segment_->slot_data(s1[0]), want));
  ASSERT_TRUE(store_->Unpin(1, a, 0, 5, 1).ok());
  EXPECT_CONSISTENT();
}

TEST_F(StoreTest, FullSlotPagesSpillByteExact) {
  StartStore(8);
  const uint32_t full = uint32_t(slot_bytes());
  const uint64_t h = Create("full", 1, full);
  for (uint64_t p = 0; p < 24; ++p) {
    ASSERT_TRUE(Append(0, h, 0, 1, full).ok());
    ASSERT_TRUE(store_->Commit(h, 0, (p + 1) * kTokens).ok());
    ASSERT_TRUE(store_->Unpin(0, h, 0, p, 1).ok());
  }
  EXPECT_GT(store_->Stats().spills, 0u);
  for (uint64_t p = 0; p < 24; ++p) ExpectPages(0, h, 0, p, 1, full);
  EXPECT_CONSISTENT();
}

TEST_F(StoreTest, UsedSlotsDropToLowWatermarkAfterPassingHigh) {
  StoreOptions so;
  so.high_watermark = 0.75;
  so.low_watermark = 0.5;
  so.spill_batch = 3;  // several batches per spill
  StartStore(32, true, so);
  const uint64_t h = Create("w");
  const uint64_t total = 32, high = 24, low = 16;  // 0.75 and 0.5 of 32 slots
  int crossings = 0;
  for (int i = 0; i < 100; ++i) {
    const uint64_t before = store_->Stats().slots_used;
    AppendCommitUnpin(0, h, 0);
    const uint64_t after = store_->Stats().slots_used;
    ASSERT_LE(after, high) << "after allocation " << i;
    if (before + 1 > high) {
      ++crossings;
      EXPECT_LE(after, low) << "allocation " << i << " passed the high watermark";
    } else {
      EXPECT_EQ(after, before + 1) << "spilled below the high watermark at allocation " << i;
    }
  }
  EXPECT_GE(crossings, 2);
  EXPECT_LE(store_->Stats().slots_used, total);
  EXPECT_CONSISTENT();
}

TEST_F(StoreTest, SuspendSequenceMovesUnpinnedCommittedPagesToDisk) {
  StartStore(32);
  const uint64_t h = Create("s", 2), other = Create("other");
  for (int i = 0; i < 4; ++i) {
    AppendCommitUnpin(0, h, 0);
    AppendCommitUnpin(0, h, 1);
    AppendCommitUnpin(0, other, 0);
  }
  std::vector<uint64_t> slots;
  ASSERT_TRUE(store_->Pin(1, h, 1, 2, 1, &slots).ok());  // stays
  ASSERT_TRUE(Append(0, h, 0, 1).ok());                  // page 4 of layer 0: uncommitted
  ASSERT_TRUE(store_->Unpin(0, h, 0, 4, 1).ok());        // unpinned, but not committed: stays
  const uint64_t used_before = store_->Stats().slots_used;
  ASSERT_TRUE(store_->SuspendSequence(h).ok());
  auto info = store_->GetSequence(h);
  ASSERT_TRUE(info.ok());
  EXPECT_TRUE(info->suspended);
  EXPECT_EQ(info->pages_resident, 2u);   // the pinned one and the uncommitted one
  EXPECT_EQ(info->pages_disk_only, 7u);  // the other committed pages
  EXPECT_EQ(store_->Stats().slots_used, used_before - 7);
  auto o = store_->GetSequence(other);
  ASSERT_TRUE(o.ok());
  EXPECT_EQ(o->pages_resident, 4u);  // other sequences are untouched
  EXPECT_FALSE(o->suspended);
  EXPECT_CONSISTENT();
  // Suspending again is harmless; pinning brings pages back byte-exact and un-suspends.
  ASSERT_TRUE(store_->SuspendSequence(h).ok());
  ExpectPages(0, h, 0, 0, 4);
  ExpectPages(0, h, 1, 0, 4);
  EXPECT_FALSE(store_->GetSequence(h)->suspended);
  ASSERT_TRUE(store_->Unpin(1, h, 1, 2, 1).ok());
  EXPECT_CONSISTENT();
}

// A suspend writes spill_batch pages per disk write (one write of a whole sequence would be a
// batch, and a memtable flushed on one thread, of the sequence's size), byte-exact.
TEST_F(StoreTest, SuspendSequenceWritesInSpillBatches) {
  StoreOptions options;
  options.spill_batch = 3;
  StartStore(64, true, options);
  const uint64_t h = Create("long", 2);
  for (int i = 0; i < 10; ++i) {
    AppendCommitUnpin(0, h, 0);
    AppendCommitUnpin(0, h, 1);
  }
  const uint64_t writes_before = disk_->Statistics()["rocksdb.write.self"];
  ASSERT_TRUE(store_->SuspendSequence(h).ok());
  const uint64_t writes = disk_->Statistics()["rocksdb.write.self"] - writes_before;
  EXPECT_EQ(writes, 7u);  // 20 pages, 3 per write
  EXPECT_EQ(store_->GetSequence(h)->pages_disk_only, 20u);
  EXPECT_EQ(store_->Stats().spill_bytes, 20u * kPageBytes);
  EXPECT_CONSISTENT();
  ExpectPages(0, h, 0, 0, 10);
  ExpectPages(0, h, 1, 0, 10);
  EXPECT_CONSISTENT();
}

TEST_F(StoreTest, DropSequenceFreesEverything) {
  StartStore(16);
  const uint64_t h = Create("d", 2), keep = Create("keep");
  for (int i = 0; i < 12; ++i) {
    AppendCommitUnpin(0, h, i % 2);
  }
  for (int i = 0; i < 12; ++i) AppendCommitUnpin(0, keep, 0);  // spills some of "d"
  ASSERT_TRUE(Append(1, h, 0, 2).ok());                        // pinned, uncommitted
  std::vector<uint64_t> slots;
  ASSERT_TRUE(store_->Pin(0, h, 1, 0, 2, &slots).ok());  // pinned, committed
  ASSERT_GT(store_->GetSequence(h)->pages_disk_only, 0u);
  const uint64_t keep_used = store_->GetSequence(keep)->pages_resident;
  const uint64_t keep_disk = store_->GetSequence(keep)->pages_disk_only;

  ASSERT_TRUE(store_->DropSequence(h).ok());
  const StoreStats st = store_->Stats();
  EXPECT_EQ(st.sequences, 1u);
  EXPECT_EQ(st.slots_used, keep_used);
  EXPECT_EQ(st.pages_pinned, 0u);
  EXPECT_EQ(st.pages_on_disk, keep_disk);
  EXPECT_EQ(store_->GetSequence(h).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->OpenSequence("d").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->FindSequence("d").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->Unpin(0, h, 1, 0, 2).code(), absl::StatusCode::kNotFound);
  // Its pages are gone from disk too.
  std::vector<uint8_t> buf(kPageBytes);
  for (uint32_t p = 0; p < 6; ++p) {
    EXPECT_EQ(disk_->ReadPage({h, 0, p}, buf.data(), buf.size()).code(),
              absl::StatusCode::kNotFound);
  }
  EXPECT_CONSISTENT();
  // The id can be used again, with a new handle; the other sequence is intact.
  const uint64_t again = Create("d");
  EXPECT_NE(again, h);
  EXPECT_EQ(PagesOf(again, 0), 0u);
  ExpectPages(0, keep, 0, 0, 12);
  ASSERT_TRUE(store_->DropSequence(keep).ok());
  ASSERT_TRUE(store_->DropSequence(again).ok());
  EXPECT_EQ(store_->Stats().slots_used, 0u);
  EXPECT_TRUE(store_->List().empty());
  EXPECT_CONSISTENT();
}

TEST_F(StoreTest, AbortFreesPagesPastTheCommittedLength) {
  StartStore(16);
  const uint64_t h = Create("a");
  ASSERT_TRUE(Append(0, h, 0, 3).ok());
  ASSERT_TRUE(store_->Commit(h, 0, kTokens + 5).ok());  // pages 0 and 1 (partly) committed
  ASSERT_TRUE(store_->Abort(h, 0).ok());
  EXPECT_EQ(PagesOf(h, 0), 2u);
  EXPECT_EQ(store_->Stats().slots_used, 2u);
  EXPECT_EQ(store_->Stats().pages_pinned, 2u);
  EXPECT_CONSISTENT();
  ASSERT_TRUE(store_->Unpin(0, h, 0, 0, 2).ok());
  uint64_t first = 0;
  ASSERT_TRUE(Append(0, h, 0, 1, kPageBytes, &first).ok());
  EXPECT_EQ(first, 2u);  // appending continues after the committed pages
  EXPECT_CONSISTENT();
}

TEST_F(StoreTest, ReleaseClientReleasesPinsAndFreesUncommittedPages) {
  StartStore(16);
  const uint64_t h = Create("r", 2), other = Create("o");
  ASSERT_TRUE(Append(1, h, 0, 4).ok());
  ASSERT_TRUE(store_->Commit(h, 0, 2 * kTokens).ok());  // pages 2, 3 stay uncommitted
  ASSERT_TRUE(Append(1, h, 1, 1).ok());                 // uncommitted layer 1 page
  AppendCommitUnpin(0, other, 0);
  std::vector<uint64_t> slots;
  ASSERT_TRUE(store_->Pin(1, other, 0, 0, 1, &slots).ok());
  ASSERT_TRUE(store_->Pin(1, other, 0, 0, 1, &slots).ok());  // pinned twice
  ASSERT_TRUE(store_->Pin(0, h, 0, 1, 1, &slots).ok());      // client 0 shares page 1
  EXPECT_EQ(store_->Stats().pages_pinned, 6u);

  store_->ReleaseClient(1);
  StoreStats st = store_->Stats();
  EXPECT_EQ(st.pages_pinned, 1u);  // client 0's
  EXPECT_EQ(st.slots_used, 3u);    // h's two committed pages and other's page
  EXPECT_EQ(PagesOf(h, 0), 2u);
  EXPECT_EQ(PagesOf(h, 1), 0u);
  EXPECT_EQ(store_->GetSequence(h)->layer_lengths, (std::vector<uint64_t>{2 * kTokens, 0}));
  EXPECT_EQ(store_->Unpin(1, other, 0, 0, 1).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_CONSISTENT();
  ExpectPages(1, h, 0, 0, 2);
  store_->ReleaseClient(0);
  EXPECT_EQ(store_->Stats().pages_pinned, 0u);
  store_->ReleaseClient(0);  // nothing left: harmless
  store_->ReleaseClient(1000);
  EXPECT_CONSISTENT();
}

TEST_F(StoreTest, TruncateUndoesCommittedAppends) {
  StoreOptions so;
  so.durable = true;
  StartStore(16, true, so);
  const uint64_t h = Create("t");
  for (int i = 0; i < 3; ++i) AppendCommitUnpin(0, h, 0);
  EXPECT_EQ(store_->Truncate(h, 0, 4 * kTokens).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(store_->Truncate(h, 0, kTokens + 5).ok());
  EXPECT_EQ(PagesOf(h, 0), 2u);
  EXPECT_EQ(store_->Stats().slots_used, 2u);
  EXPECT_CONSISTENT();
  StopAll();
  shm_name_.clear();
  StartStore(16, true, so);
  ASSERT_TRUE(store_->Recover().ok());
  EXPECT_EQ(store_->OpenSequence("t")->layer_lengths, (std::vector<uint64_t>{kTokens + 5}));
  ExpectPages(0, h, 0, 0, 2);
}

TEST_F(StoreTest, AllocateChecksTheExpectedFirstPage) {
  StartStore(16);
  const uint64_t h = Create("x");
  std::vector<uint64_t> slots;
  ASSERT_TRUE(store_->Allocate(0, h, 0, 2, &slots, 0).ok());
  EXPECT_EQ(store_->Allocate(0, h, 0, 1, &slots, 0).status().code(),
            absl::StatusCode::kFailedPrecondition);  // the layer already has 2 pages
  EXPECT_EQ(store_->Allocate(0, h, 0, 1, &slots, 2).value(), 2u);
  EXPECT_CONSISTENT();
}

TEST_F(StoreTest, ReleaseClientFreesUncommittedPagesItNoLongerPins) {
  StartStore(16);
  const uint64_t h = Create("u");
  AppendCommitUnpin(1, h, 0);
  ASSERT_TRUE(Append(1, h, 0, 2).ok());  // pages 1, 2: allocated, never committed
  ASSERT_TRUE(store_->Unpin(1, h, 0, 1, 2).ok());
  store_->ReleaseClient(1);
  EXPECT_EQ(PagesOf(h, 0), 1u);
  EXPECT_EQ(store_->Stats().slots_used, 1u);
  uint64_t first = 0;
  ASSERT_TRUE(Append(0, h, 0, 1, kPageBytes, &first).ok());
  EXPECT_EQ(first, 1u) << "the next append starts right after the committed pages";
  EXPECT_CONSISTENT();
}

TEST_F(StoreTest, BadRequestsFailAndLeaveTheStoreConsistent) {
  StartStore(16);
  const uint64_t h = Create("bad", 2);
  ASSERT_TRUE(Append(0, h, 0, 2).ok());
  ASSERT_TRUE(store_->Commit(h, 0, kTokens + 3).ok());
  const StoreStats before = store_->Stats();
  const uint64_t unknown = h + 1000;
  std::vector<uint64_t> slots;
  using C = absl::StatusCode;
  struct Case {
    const char* what;
    absl::Status status;
    C want;
  };
  const Case cases[] = {
      // Unknown handle.
      {"allocate unknown", store_->Allocate(0, unknown, 0, 1, &slots).status(), C::kNotFound},
      {"commit unknown", store_->Commit(unknown, 0, 1), C::kNotFound},
      {"pin unknown", store_->Pin(0, unknown, 0, 0, 1, &slots), C::kNotFound},
      {"unpin unknown", store_->Unpin(0, unknown, 0, 0, 1), C::kNotFound},
      {"abort unknown", store_->Abort(unknown, 0), C::kNotFound},
      {"drop unknown", store_->DropSequence(unknown), C::kNotFound},
      {"suspend unknown", store_->SuspendSequence(unknown), C::kNotFound},
      {"get unknown", store_->GetSequence(unknown).status(), C::kNotFound},
      {"open unknown", store_->OpenSequence("nope").status(), C::kNotFound},
      // Layer out of range.
      {"allocate layer", store_->Allocate(0, h, 2, 1, &slots).status(), C::kOutOfRange},
      {"commit layer", store_->Commit(h, 2, 1), C::kOutOfRange},
      {"pin layer", store_->Pin(0, h, 7, 0, 1, &slots), C::kOutOfRange},
      {"unpin layer", store_->Unpin(0, h, 2, 0, 1), C::kOutOfRange},
      {"abort layer", store_->Abort(h, 99), C::kOutOfRange},
      // Page out of range.
      {"pin past end", store_->Pin(0, h, 0, 1, 2, &slots), C::kOutOfRange},
      {"pin far", store_->Pin(0, h, 0, 5, 1, &slots), C::kOutOfRange},
      {"pin overflow", store_->Pin(0, h, 0, UINT64_MAX, 2, &slots), C::kOutOfRange},
      {"unpin past end", store_->Unpin(0, h, 0, 0, 3), C::kOutOfRange},
      {"unpin overflow", store_->Unpin(0, h, 0, UINT64_MAX, 1), C::kOutOfRange},
      {"pin empty layer", store_->Pin(0, h, 1, 0, 1, &slots), C::kOutOfRange},
      // Commits that shrink or overrun.
      {"commit shrinking", store_->Commit(h, 0, kTokens), C::kFailedPrecondition},
      {"commit past pages", store_->Commit(h, 0, 2 * kTokens + 1), C::kFailedPrecondition},
      {"commit empty layer", store_->Commit(h, 1, 1), C::kFailedPrecondition},
      // Unpins of pages the client does not hold.
      {"unpin other client", store_->Unpin(1, h, 0, 0, 1), C::kFailedPrecondition},
      // Bad arguments.
      {"allocate zero", store_->Allocate(0, h, 0, 0, &slots).status(), C::kInvalidArgument},
      {"allocate bad client", store_->Allocate(99, h, 0, 1, &slots).status(), C::kInvalidArgument},
      {"pin bad client", store_->Pin(99, h, 0, 0, 1, &slots), C::kInvalidArgument},
      {"unpin bad client", store_->Unpin(99, h, 0, 0, 1), C::kInvalidArgument},
      {"create empty id", store_->CreateSequence("", MakeSpec(1, kPageBytes, kTokens), "").status(),
       C::kInvalidArgument},
      {"create long id",
       store_->CreateSequence(std::string(257, 'x'), MakeSpec(1, kPageBytes, kTokens), "").status(),
       C::kInvalidArgument},
      {"create no layers",
       store_->CreateSequence("x", MakeSpec(0, kPageBytes, kTokens), "").status(),
       C::kInvalidArgument},
      {"create no tokens", store_->CreateSequence("x", MakeSpec(1, kPageBytes, 0), "").status(),
       C::kInvalidArgument},
      {"create zero page", store_->CreateSequence("x", MakeSpec(1, 0, kTokens), "").status(),
       C::kInvalidArgument},
      {"create page > slot",
       store_->CreateSequence("x", MakeSpec(1, uint32_t(slot_bytes()) + 1, kTokens), "").status(),
       C::kInvalidArgument},
      {"create duplicate",
       store_->CreateSequence("bad", MakeSpec(1, kPageBytes, kTokens), "").status(),
       C::kAlreadyExists},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(c.status.code(), c.want) << c.what << ": " << c.status;
    EXPECT_FALSE(c.status.message().empty()) << c.what;
  }
  EXPECT_CONSISTENT();
  const StoreStats after = store_->Stats();
  EXPECT_EQ(after.slots_used, before.slots_used);
  EXPECT_EQ(after.pages_pinned, before.pages_pinned);
  EXPECT_EQ(after.sequences, before.sequences);
  EXPECT_EQ(store_->GetSequence(h)->layer_lengths, (std::vector<uint64_t>{kTokens + 3, 0}));

  // Unpin is all or nothing: page 1 is pinned once, so unpinning [0, 2) twice fails whole.
  ASSERT_TRUE(store_->Unpin(0, h, 0, 0, 1).ok());
  EXPECT_EQ(store_->Unpin(0, h, 0, 0, 2).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(store_->Stats().pages_pinned, 1u);
  ASSERT_TRUE(store_->Unpin(0, h, 0, 1, 1).ok());
  EXPECT_EQ(store_->Unpin(0, h, 0, 1, 1).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(store_->Stats().pages_pinned, 0u);
  // Committing the same length again is fine; growing within the pages too.
  EXPECT_TRUE(store_->Commit(h, 0, kTokens + 3).ok());
  EXPECT_TRUE(store_->Commit(h, 0, 2 * kTokens).ok());
  EXPECT_CONSISTENT();
  ExpectPages(0, h, 0, 0, 2);
}

TEST_F(StoreTest, MetadataIsKeptAndSurvivesARestart) {
  StoreOptions so;
  so.durable = true;
  StartStore(8, true, so);
  const std::string metadata("model spec\0\x01\xff bytes", 20);
  auto h = store_->CreateSequence("m", MakeSpec(2, kPageBytes, kTokens), "geometry", metadata);
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(store_->OpenSequence("m")->metadata, metadata);
  EXPECT_EQ(store_
                ->CreateSequence("big", MakeSpec(1, kPageBytes, kTokens), "",
                                 std::string((64 << 10) + 1, 'x'))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  StopAll();
  shm_name_.clear();
  StartStore(8, true, so);
  ASSERT_TRUE(store_->Recover().ok());
  auto info = store_->OpenSequence("m");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->metadata, metadata);
  EXPECT_EQ(info->geometry.substr(0, 8), "geometry");
}

TEST_F(StoreTest, DurableStoreServesTheSameSequencesAfterARestart) {
  StoreOptions so;
  so.durable = true;
  StartStore(16, true, so);
  const uint64_t a = Create("alpha", 3), b = Create("beta", 1);
  // alpha: layer 0 four full pages; layer 1 two pages, the second partly committed, then a third
  // uncommitted; layer 2 nothing. beta: twenty pages (more than the pool: some spill).
  for (int i = 0; i < 4; ++i) AppendCommitUnpin(0, a, 0);
  ASSERT_TRUE(Append(0, a, 1, 2).ok());
  ASSERT_TRUE(store_->Commit(a, 1, kTokens + 1).ok());
  // The partial page grows after its first commit: the second commit rewrites it.
  {
    std::vector<uint64_t> slots;
    ASSERT_TRUE(store_->Pin(1, a, 1, 1, 1, &slots).ok());
    const auto bytes = PatternBytes(kPageBytes, PageSeed(a, 1, 1) ^ 0xabc);
    std::memcpy(segment_->slot_data(slots[0]), bytes.data(), bytes.size());
    ASSERT_TRUE(store_->Commit(a, 1, kTokens + 9).ok());
    ASSERT_TRUE(store_->Unpin(1, a, 1, 1, 1).ok());
  }
  ASSERT_TRUE(store_->Unpin(0, a, 1, 0, 2).ok());
  ASSERT_TRUE(Append(0, a, 1, 1).ok());  // page 2: never committed
  // delta: two pages unpinned before their commit and spilled (by beta's appends) while still
  // uncommitted: the commit breaks the protocol (write while pinned, commit before unpinning)
  // and is refused, so nothing of delta is committed.
  const uint64_t d = Create("delta", 1);
  ASSERT_TRUE(Append(0, d, 0, 2).ok());
  ASSERT_TRUE(store_->Unpin(0, d, 0, 0, 2).ok());
  for (int i = 0; i < 20; ++i) AppendCommitUnpin(1, b, 0);
  ASSERT_TRUE(Append(1, b, 0, 2).ok());  // pages 20, 21: never committed
  ASSERT_EQ(store_->GetSequence(d)->pages_disk_only, 2u);
  EXPECT_EQ(store_->Commit(d, 0, 2 * kTokens).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_GT(store_->Stats().write_through_bytes, 0u);
  EXPECT_CONSISTENT();

  // Restart: a new segment under a new name, the disk tier reopened at the same path.
  StopAll();
  shm_name_.clear();
  StartStore(16, true, so);
  ASSERT_TRUE(store_->Recover().ok());
  EXPECT_CONSISTENT();
  EXPECT_EQ(store_->Stats().sequences, 3u);
  EXPECT_EQ(store_->Stats().slots_used, 0u);
  auto ia = store_->OpenSequence("alpha");
  ASSERT_TRUE(ia.ok()) << ia.status();
  EXPECT_EQ(ia->handle, a);
  EXPECT_EQ(ia->num_layers, 3u);
  EXPECT_EQ(ia->page_bytes, kPageBytes);
  EXPECT_EQ(ia->page_tokens, kTokens);
  EXPECT_EQ(ia->geometry.substr(0, 14), "geometry:alpha");
  EXPECT_EQ(ia->layer_lengths, (std::vector<uint64_t>{4 * kTokens, kTokens + 9, 0}));
  auto ib = store_->OpenSequence("beta");
  ASSERT_TRUE(ib.ok()) << ib.status();
  EXPECT_EQ(ib->handle, b);
  EXPECT_EQ(ib->layer_lengths, (std::vector<uint64_t>{20 * kTokens}));
  // Committed pages byte-exact; uncommitted ones absent.
  ExpectPages(0, a, 0, 0, 4);
  ExpectPages(0, a, 1, 0, 1);
  {
    std::vector<uint64_t> slots;
    ASSERT_TRUE(store_->Pin(0, a, 1, 1, 1, &slots).ok());
    EXPECT_TRUE(testing::BytesEqual(segment_->slot_data(slots[0]),
                                    PatternBytes(kPageBytes, PageSeed(a, 1, 1) ^ 0xabc)));
    ASSERT_TRUE(store_->Unpin(0, a, 1, 1, 1).ok());
  }
  EXPECT_EQ(PagesOf(a, 1), 2u);
  EXPECT_EQ(PagesOf(a, 2), 0u);
  EXPECT_EQ(PagesOf(b, 0), 20u);
  for (uint64_t p = 0; p < 20; p += 5) ExpectPages(1, b, 0, p, 5);
  EXPECT_EQ(store_->OpenSequence("delta")->layer_lengths, (std::vector<uint64_t>{0}));
  EXPECT_CONSISTENT();
  // New sequences do not reuse recovered handles; appending continues after the committed end.
  const uint64_t c = Create("gamma");
  EXPECT_GT(c, std::max({a, b, d}));
  uint64_t first = 0;
  ASSERT_TRUE(Append(0, b, 0, 1, kPageBytes, &first).ok());
  EXPECT_EQ(first, 20u);
  ASSERT_TRUE(store_->Commit(b, 0, 21 * kTokens).ok());
  ASSERT_TRUE(store_->Unpin(0, b, 0, 20, 1).ok());
  // A dropped sequence stays dropped across the next restart.
  ASSERT_TRUE(store_->DropSequence(a).ok());
  StopAll();
  shm_name_.clear();
  StartStore(16, true, so);
  ASSERT_TRUE(store_->Recover().ok());
  EXPECT_EQ(store_->OpenSequence("alpha").status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(store_->OpenSequence("gamma").ok());
  EXPECT_EQ(store_->OpenSequence("beta")->layer_lengths, (std::vector<uint64_t>{21 * kTokens}));
  for (uint64_t p = 0; p < 21; p += 7) ExpectPages(0, b, 0, p, 7);  // 21 pages > 16 slots
  EXPECT_CONSISTENT();
}

TEST_F(StoreTest, NonDurableStoreRecoversNothing) {
  StartStore(16);
  const uint64_t h = Create("x");
  for (int i = 0; i < 3; ++i) AppendCommitUnpin(0, h, 0);
  ASSERT_TRUE(store_->SuspendSequence(h).ok());  // pages on disk, but no manifest
  StopAll();
  shm_name_.clear();
  StartStore(16);
  ASSERT_TRUE(store_->Recover().ok());
  EXPECT_EQ(store_->Stats().sequences, 0u);
  EXPECT_EQ(store_->OpenSequence("x").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace ihip::kvstore
