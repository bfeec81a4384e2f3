// engine/cpu/thread_pool.h: ParallelFor runs every index exactly once — alone, from several
// threads at once, and nested inside another ParallelFor — for every pool size.

#include "engine/cpu/thread_pool.h"

#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace ihip::engine::cpu {
namespace {

// Counts per index; ExpectEachOnce checks every count is exactly 1.
struct Counts {
  explicit Counts(int64_t n) : c(new std::atomic<int>[size_t(n)]), n(n) {
    for (int64_t i = 0; i < n; ++i) c[i] = 0;
  }
  void Hit(int64_t i) {
    ASSERT_GE(i, 0);
    ASSERT_LT(i, n);
    c[i].fetch_add(1);
  }
  void ExpectEachOnce(const char* what) const {
    int64_t bad = 0;
    for (int64_t i = 0; i < n; ++i) bad += c[i].load() != 1;
    EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << n << " indices not run exactly once";
  }
  std::unique_ptr<std::atomic<int>[]> c;
  int64_t n;
};

class ThreadPoolTest : public ::testing::TestWithParam<int> {};

TEST_P(ThreadPoolTest, EveryIndexExactlyOnce) {
  ThreadPool pool(GetParam());
  if (GetParam() > 0) {
    EXPECT_EQ(pool.num_threads(), GetParam());
  }
  EXPECT_GE(pool.num_threads(), 1);
  for (int64_t n : {0, 1, 2, 3, 7, 64, 1000, 100003}) {
    Counts counts(n);
    pool.ParallelFor(n, [&](int64_t i) { counts.Hit(i); });
    counts.ExpectEachOnce("single call");
  }
  pool.ParallelFor(-5, [&](int64_t) { ADD_FAILURE() << "negative n must run nothing"; });
}

TEST_P(ThreadPoolTest, ManyCallsInARow) {
  ThreadPool pool(GetParam());
  for (int round = 0; round < 2000; ++round) {
    const int64_t n = 1 + round % 37;
    Counts counts(n);
    pool.ParallelFor(n, [&](int64_t i) { counts.Hit(i); });
    counts.ExpectEachOnce("round");
    if (::testing::Test::HasFailure()) return;
  }
}

TEST_P(ThreadPoolTest, ConcurrentCallsFromSeveralThreads) {
  ThreadPool pool(GetParam());
  constexpr int kCallers = 6, kRounds = 40;
  std::vector<std::thread> callers;
  std::atomic<int> failures{0};
  for (int w = 0; w < kCallers; ++w) {
    callers.emplace_back([&, w] {
      for (int round = 0; round < kRounds; ++round) {
        const int64_t n = 500 + 97 * w + round;
        std::vector<std::atomic<int>> c(static_cast<size_t>(n));
        pool.ParallelFor(n, [&](int64_t i) { c[size_t(i)].fetch_add(1); });
        for (auto& x : c) failures += x.load() != 1;
      }
    });
  }
  for (auto& t : callers) t.join();
  EXPECT_EQ(failures.load(), 0);
}

TEST_P(ThreadPoolTest, NestedCalls) {
  ThreadPool pool(GetParam());
  constexpr int64_t kOuter = 24, kInner = 150;
  Counts counts(kOuter * kInner);
  pool.ParallelFor(kOuter, [&](int64_t i) {
    pool.ParallelFor(kInner, [&](int64_t j) { counts.Hit(i * kInner + j); });
  });
  counts.ExpectEachOnce("nested");

  // Three levels.
  constexpr int64_t kA = 5, kB = 6, kC = 40;
  Counts deep(kA * kB * kC);
  pool.ParallelFor(kA, [&](int64_t a) {
    pool.ParallelFor(kB, [&](int64_t b) {
      pool.ParallelFor(kC, [&](int64_t c) { deep.Hit((a * kB + b) * kC + c); });
    });
  });
  deep.ExpectEachOnce("three levels");
}

TEST_P(ThreadPoolTest, NestedAndConcurrent) {
  ThreadPool pool(GetParam());
  constexpr int kCallers = 4;
  std::vector<std::unique_ptr<Counts>> counts;
  for (int w = 0; w < kCallers; ++w) counts.push_back(std::make_unique<Counts>(16 * 64));
  std::vector<std::thread> callers;
  for (int w = 0; w < kCallers; ++w) {
    callers.emplace_back([&, w] {
      pool.ParallelFor(16, [&](int64_t i) {
        pool.ParallelFor(64, [&](int64_t j) { counts[w]->Hit(i * 64 + j); });
      });
    });
  }
  for (auto& t : callers) t.join();
  for (auto& c : counts) c->ExpectEachOnce("nested and concurrent");
}

TEST_P(ThreadPoolTest, ConstructAndDestroyRepeatedly) {
  for (int i = 0; i < 50; ++i) {
    ThreadPool pool(GetParam());
    Counts counts(10);
    pool.ParallelFor(10, [&](int64_t k) { counts.Hit(k); });
    counts.ExpectEachOnce("fresh pool");
  }
}

// 0 = one thread per hardware thread; 1 = the caller alone.
INSTANTIATE_TEST_SUITE_P(Sizes, ThreadPoolTest, ::testing::Values(0, 1, 2, 3, 8),
                         [](const auto& info) { return "threads" + std::to_string(info.param); });

}  // namespace
}  // namespace ihip::engine::cpu
