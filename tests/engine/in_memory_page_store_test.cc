// InMemoryPageStore: the PageStore contract (engine/page_store.h) — all-or-nothing Allocate
// against a capacity, Commit bounds, Abort frees what the failed append added, Pin ranges,
// byte accounting, status codes.

#include "engine/in_memory_page_store.h"

#include <cstring>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace ihip::engine {
namespace {

const PageGeometry kGeom{64, 2, 64, DType::kF32};  // 64 * 2 * 64 * 4 * 2 = 64 KiB per page

TEST(InMemoryPageStoreTest, CreateDropAndErrors) {
  InMemoryPageStore store;
  EXPECT_TRUE(store.CreateSequence("a", 2, kGeom).ok());
  EXPECT_EQ(store.CreateSequence("a", 2, kGeom).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(store.CreateSequence("b", 2, PageGeometry{12, 2, 64, DType::kF32}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store.Length("nope", 0).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store.Length("a", 2).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(store.Length("a", -1).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(*store.Length("a", 1), 0);
  EXPECT_TRUE(store.DropSequence("a").ok());
  EXPECT_EQ(store.DropSequence("a").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store.BytesUsed(), 0);
}

TEST(InMemoryPageStoreTest, AllocateCommitAbortAccounting) {
  InMemoryPageStore store;
  ASSERT_TRUE(store.CreateSequence("s", 1, kGeom).ok());
  std::vector<std::byte*> pages;
  ASSERT_TRUE(store.Allocate("s", 0, 3, &pages).ok());
  ASSERT_EQ(pages.size(), 3u);
  EXPECT_EQ(store.BytesUsed(), int64_t(3 * kGeom.page_bytes()));
  // Fresh pages are zeroed.
  for (std::byte* p : pages) {
    for (size_t i = 0; i < kGeom.page_bytes(); i += 997) EXPECT_EQ(p[i], std::byte{0});
  }
  // Commit may not exceed the allocated tokens nor go backwards.
  EXPECT_EQ(store.Commit("s", 0, 3 * 64 + 1).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(store.Commit("s", 0, 100).ok());
  EXPECT_EQ(*store.Length("s", 0), 100);
  EXPECT_EQ(store.Commit("s", 0, 99).code(), absl::StatusCode::kInvalidArgument);
  // Abort frees the page past ceil(100 / 64) = 2.
  ASSERT_TRUE(store.Abort("s", 0).ok());
  EXPECT_EQ(store.BytesUsed(), int64_t(2 * kGeom.page_bytes()));
  EXPECT_EQ(*store.Length("s", 0), 100);
  // Pin ranges.
  std::vector<std::byte*> pinned;
  ASSERT_TRUE(store.Pin("s", 0, 0, 2, &pinned).ok());
  EXPECT_EQ(pinned, std::vector<std::byte*>(pages.begin(), pages.begin() + 2));
  EXPECT_EQ(store.Pin("s", 0, 1, 2, &pinned).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(store.Pin("s", 0, -1, 1, &pinned).code(), absl::StatusCode::kOutOfRange);
  EXPECT_TRUE(store.Unpin("s", 0, 0, 2).ok());
  EXPECT_EQ(store.Unpin("s", 0, 0, 3).code(), absl::StatusCode::kOutOfRange);
  ASSERT_TRUE(store.DropSequence("s").ok());
  EXPECT_EQ(store.BytesUsed(), 0);
}

TEST(InMemoryPageStoreTest, CapacityIsAllOrNothing) {
  InMemoryPageStore store(int64_t(5 * kGeom.page_bytes()));
  ASSERT_TRUE(store.CreateSequence("a", 2, kGeom).ok());
  ASSERT_TRUE(store.CreateSequence("b", 1, kGeom).ok());
  std::vector<std::byte*> pages;
  ASSERT_TRUE(store.Allocate("a", 0, 3, &pages).ok());
  const int64_t before = store.BytesUsed();
  const absl::Status s = store.Allocate("a", 1, 3, &pages);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_EQ(store.BytesUsed(), before);
  std::vector<std::byte*> none;
  EXPECT_TRUE(store.Pin("a", 1, 0, 0, &none).ok());
  EXPECT_EQ(store.Pin("a", 1, 0, 1, &none).code(), absl::StatusCode::kOutOfRange);
  ASSERT_TRUE(store.Allocate("b", 0, 2, &pages).ok());  // exactly fills the capacity
  EXPECT_EQ(store.BytesUsed(), int64_t(5 * kGeom.page_bytes()));
  EXPECT_EQ(store.Allocate("b", 0, 1, &pages).code(), absl::StatusCode::kResourceExhausted);
  ASSERT_TRUE(store.DropSequence("a").ok());
  EXPECT_TRUE(store.Allocate("b", 0, 3, &pages).ok());
}

TEST(InMemoryPageStoreTest, ConcurrentSequences) {
  InMemoryPageStore store;
  std::vector<std::thread> threads;
  for (int w = 0; w < 4; ++w) {
    threads.emplace_back([&, w] {
      const std::string id = "seq" + std::to_string(w);
      ASSERT_TRUE(store.CreateSequence(id, 1, kGeom).ok());
      for (int i = 0; i < 50; ++i) {
        std::vector<std::byte*> pages;
        ASSERT_TRUE(store.Allocate(id, 0, 1, &pages).ok());
        std::memset(pages[0], w + 1, 16);
        ASSERT_TRUE(store.Commit(id, 0, int64_t(i + 1) * 64).ok());
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(store.BytesUsed(), int64_t(4 * 50 * kGeom.page_bytes()));
  for (int w = 0; w < 4; ++w) {
    std::vector<std::byte*> pages;
    ASSERT_TRUE(store.Pin("seq" + std::to_string(w), 0, 0, 50, &pages).ok());
    for (std::byte* p : pages) EXPECT_EQ(p[0], std::byte(w + 1));
  }
}

}  // namespace
}  // namespace ihip::engine
