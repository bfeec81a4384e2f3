// engine/cpu/attention.h (DESIGN §3.5): attention over runs of keys equals a double-precision
// softmax reference over the same (token, position) set — runs of any length (tile boundaries),
// gaps, jumps and clamped positions in RoPE `extend` mode, GQA head mapping (query head h reads
// kv head h / group), storage dtypes, several queries at once — and an interrupt stops it.

#include "engine/cpu/attention.h"

#include <atomic>
#include <map>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/cpu/thread_pool.h"
#include "gtest/gtest.h"
#include "tests/engine/test_util.h"

namespace ihip::engine::cpu {
namespace {

using testing::PagedKv;
using testing::Random;

std::map<int64_t, int64_t> KeysOf(const std::vector<KeyRun>& runs) {
  std::map<int64_t, int64_t> keys;
  for (const KeyRun& r : runs) {
    for (int64_t t = r.begin; t < r.end; ++t) {
      keys[t] = std::max<int64_t>(0, r.pos_begin + (t - r.begin));
    }
  }
  return keys;
}

struct Shape {
  int hq, hkv, d;
  DType kv_dtype;
  bool rope;
};

void PrintTo(const Shape& s, std::ostream* os) {
  *os << s.hq << "/" << s.hkv << " D" << s.d << " " << DTypeName(s.kv_dtype)
      << (s.rope ? " rope" : "");
}

class AttendQueriesTest : public ::testing::TestWithParam<Shape> {};

TEST_P(AttendQueriesTest, MatchesReferenceOverArbitraryRuns) {
  const Shape& sh = GetParam();
  const int64_t len = 2500;
  Random rng(91 + sh.hq + sh.d);
  const std::vector<float> k = rng.Normals(size_t(len) * sh.hkv * sh.d);
  const std::vector<float> v = rng.Normals(k.size());
  PagedKv kv(k, v, len, sh.hkv, sh.d, sh.kv_dtype);
  const std::vector<float> sk = testing::Rounded(sh.kv_dtype, k);
  const std::vector<float> sv = testing::Rounded(sh.kv_dtype, v);
  RopeSpec spec;
  spec.mode = RopeMode::kExtend;
  spec.theta = 500000;
  spec.llama3 = Llama3Scaling{};
  std::unique_ptr<Rope> rope = sh.rope ? std::make_unique<Rope>(spec, sh.d) : nullptr;
  std::unique_ptr<testing::RefRopeTable> table =
      sh.rope ? std::make_unique<testing::RefRopeTable>(spec, sh.d, 4 * len) : nullptr;
  ThreadPool pool(2);

  // Query sets: a dense run; runs with gaps, jumps in position and a run starting below 0
  // (clamped); a run much longer than a tile starting mid-tile; a single key.
  const int64_t p = len - 1;
  std::vector<std::vector<KeyRun>> run_sets = {
      {{0, p + 1, 0}},
      {{0, 100, -60}, {300, 301, 40}, {777, 1000, 41}, {2000, p + 1, 2000}},
      {{5, 1300, 3000}, {1400, 1401, 3}, {1402, 1403, 3}, {2400, p + 1, 2400}},
      {{p, p + 1, p}},
  };
  std::vector<std::vector<float>> outs(run_sets.size(), std::vector<float>(size_t(sh.hq) * sh.d));
  std::vector<float> q = rng.Normals(size_t(run_sets.size()) * sh.hq * sh.d, 0.2f);
  std::vector<AttentionQuery> queries;
  for (size_t i = 0; i < run_sets.size(); ++i) {
    queries.push_back(AttentionQuery{q.data() + i * sh.hq * sh.d, p, &run_sets[i], outs[i].data()});
  }
  ASSERT_TRUE(AttendQueries(kv.view, sh.hq, rope.get(), queries, Interrupt{}, &pool).ok());
  for (size_t i = 0; i < run_sets.size(); ++i) {
    const std::vector<double> want =
        testing::RefAttention(q.data() + i * sh.hq * sh.d, sh.hq, sh.hkv, sh.d, 1.0, sk, sv,
                              KeysOf(run_sets[i]), p, table.get());
    EXPECT_LE(testing::WorstRatio(outs[i], want, 1e-5, 1e-4), 1.0) << "run set " << i;
  }
  // A single key: the output is its value (of the query head's kv head).
  const int group = sh.hq / sh.hkv;
  for (int h = 0; h < sh.hq; ++h) {
    for (int dd = 0; dd < sh.d; ++dd) {
      ASSERT_NEAR(outs[3][size_t(h) * sh.d + dd], sv[(size_t(p) * sh.hkv + h / group) * sh.d + dd],
                  1e-6);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttendQueriesTest,
                         ::testing::Values(Shape{4, 4, 64, DType::kF32, false},
                                           Shape{8, 2, 128, DType::kF32, true},
                                           Shape{6, 1, 256, DType::kBF16, true},
                                           Shape{32, 8, 64, DType::kF8E4M3, false},
                                           Shape{4, 2, 64, DType::kF16, true}),
                         [](const auto& info) {
                           const Shape& s = info.param;
                           return absl::StrCat("h", s.hq, "_", s.hkv, "_d", s.d, "_",
                                               DTypeName(s.kv_dtype), s.rope ? "_rope" : "");
                         });

TEST(AttendQueriesInterruptTest, CancelledAndExpired) {
  const int64_t len = 300;
  Random rng(92);
  const std::vector<float> k = rng.Normals(size_t(len) * 2 * 64), v = k;
  PagedKv kv(k, v, len, 2, 64, DType::kF32);
  ThreadPool pool(2);
  const std::vector<KeyRun> runs = DenseRuns(len - 1);
  std::vector<float> q = rng.Normals(4 * 64), out(4 * 64);
  const std::vector<AttentionQuery> queries = {{q.data(), len - 1, &runs, out.data()}};
  std::atomic<bool> cancelled{true};
  EXPECT_EQ(AttendQueries(kv.view, 4, nullptr, queries,
                          Interrupt{absl::InfiniteFuture(), &cancelled}, &pool)
                .code(),
            absl::StatusCode::kCancelled);
  EXPECT_EQ(AttendQueries(kv.view, 4, nullptr, queries,
                          Interrupt{absl::Now() - absl::Seconds(1), nullptr}, &pool)
                .code(),
            absl::StatusCode::kDeadlineExceeded);
}

}  // namespace
}  // namespace ihip::engine::cpu
