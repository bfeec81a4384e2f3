// engine/hip/mask.h against DESIGN §3.1–3.4: the attended key set (SparseRuns) equals a
// brute-force mask built from the definitions — sink, window (p - W, p], the tokens of the
// selected 8-token blocks, causality, each key once, StreamingLLM renumbering — and the stage-1
// grid, scan limit, realignment and splitting follow §3.2.

#include "engine/hip/mask.h"

#include <algorithm>
#include <map>
#include <set>

#include "engine/hip_config.h"
#include "gtest/gtest.h"
#include "tests/engine/test_util.h"

namespace ihip::engine {
namespace {

using testing::Random;
using testing::SpecSparseKeys;

LayerConfig Cfg(int sink, int window, int chunk1 = 256) {
  LayerConfig c = HipConfig::Make().default_layer;
  c.sink_tokens = sink;
  c.window_tokens = window;
  c.stages[0].chunk_size = chunk1;
  c.stages[0].kept_tokens = chunk1 * 128;
  return c;
}

// Expands runs to token -> position, failing on a key seen twice, an empty run or runs out of
// ascending token order.
std::map<int64_t, int64_t> Expand(const std::vector<KeyRun>& runs, std::string* error) {
  std::map<int64_t, int64_t> keys;
  int64_t last_end = -1;
  for (const KeyRun& r : runs) {
    if (r.begin >= r.end) *error += "empty run; ";
    if (r.begin < last_end) *error += "runs out of order or overlapping; ";
    last_end = r.end;
    for (int64_t t = r.begin; t < r.end; ++t) {
      const int64_t pos = std::max<int64_t>(0, r.pos_begin + (t - r.begin));
      if (!keys.emplace(t, pos).second) *error += "key attended twice; ";
    }
  }
  return keys;
}

std::string Describe(const std::map<int64_t, int64_t>& got,
                     const std::map<int64_t, int64_t>& want) {
  std::string s;
  int shown = 0;
  for (const auto& [t, pos] : want) {
    auto it = got.find(t);
    if (it == got.end()) {
      s += " missing " + std::to_string(t);
    } else if (it->second != pos) {
      s += " token " + std::to_string(t) + " at " + std::to_string(it->second) + " want " +
           std::to_string(pos);
    } else {
      continue;
    }
    if (++shown == 8) break;
  }
  for (const auto& [t, pos] : got) {
    if (!want.count(t) && shown++ < 16) s += " extra " + std::to_string(t);
  }
  return s;
}

TEST(SparseRunsTest, HandWorkedExample) {
  // Defaults: sink 256, window 1024. p = p_min = 10000, blocks {100, 101, 500}: K = 24,
  // base = 10000 - 1024 - 24 + 1 = 8953.
  const LayerConfig cfg = Cfg(256, 1024);
  const std::vector<KeyRun> runs = SparseRuns(10000, 10000, cfg, {100, 101, 500});
  const std::vector<KeyRun> want = {
      {0, 256, 8953 - 256},     // sink at 8697..8952
      {800, 816, 8953},         // blocks 100, 101 (contiguous: merged)
      {4000, 4008, 8953 + 16},  // block 500
      {8977, 10001, 8977},      // window (p - 1024, p], true positions; 8976 + 1 = 8977
  };
  EXPECT_EQ(runs, want);
  EXPECT_EQ(CountKeys(runs), 256 + 24 + 1024);
  // The last selected token sits right before the window's first key.
  EXPECT_EQ(want[2].pos_begin + 7 + 1, 10000 - 1024 + 1);
}

TEST(SparseRunsTest, ShortContextIsAllWindow) {
  const LayerConfig cfg = Cfg(256, 1024);
  for (int64_t p : {0, 1, 255, 256, 700, 1023}) {
    EXPECT_EQ(SparseRuns(p, p, cfg, {}), DenseRuns(p)) << p;
  }
  EXPECT_EQ(DenseRuns(41), (std::vector<KeyRun>{{0, 42, 0}}));
  EXPECT_EQ(CountKeys(DenseRuns(41)), 42);
}

// The main property: many random queries, block sets and configs.
TEST(SparseRunsTest, MatchesBruteForceDefinition) {
  Random rng(20240601);
  const int kSinks[] = {0, 8, 64, 256};
  const int kWindows[] = {300, 1024, 1500};
  int checked = 0, rejected = 0, with_prefill = 0, with_masked_blocks = 0;
  while (checked < 6000) {
    const int sink = kSinks[rng.Uniform(0, 3)];
    const int window = kWindows[rng.Uniform(0, 2)];
    const LayerConfig cfg = Cfg(sink, window, 256);
    const int64_t p = rng.Uniform(0, 9000);
    const int64_t p_min = rng.Bernoulli(0.5) ? p : std::max<int64_t>(0, p - rng.Uniform(0, 63));
    // Blocks from the sink's end to a little past p (masked by causality / the window), at a
    // random density.
    const double density = rng.Bernoulli(0.2) ? 1.0 : rng.Uniform01() * 0.5;
    std::vector<int64_t> blocks;
    for (int64_t b = sink / 8; b < p / 8 + 3; ++b) {
      if (rng.Bernoulli(density)) blocks.push_back(b);
    }
    // The spec renumbers selected tokens from base = p_min - W - K + 1; it says nothing about a
    // negative base (possible only with a small sink and a huge budget): leave that case out.
    if (p_min - window - 8 * int64_t(blocks.size()) + 1 < 0) {
      ++rejected;
      continue;
    }
    std::string error;
    const auto got = Expand(SparseRuns(p, p_min, cfg, blocks), &error);
    const auto want = SpecSparseKeys(p, p_min, sink, window, blocks);
    ASSERT_TRUE(error.empty()) << error << " p=" << p << " p_min=" << p_min;
    ASSERT_EQ(got, want) << "p=" << p << " p_min=" << p_min << " sink=" << sink
                         << " window=" << window << " blocks=" << blocks.size() << ":"
                         << Describe(got, want);
    EXPECT_EQ(CountKeys(SparseRuns(p, p_min, cfg, blocks)), int64_t(want.size()));
    ++checked;
    with_prefill += p_min < p;
    with_masked_blocks += !blocks.empty() && 8 * blocks.back() + 7 > p - window;
  }
  EXPECT_GT(with_prefill, 1000);
  EXPECT_GT(with_masked_blocks, 1000);
  RecordProperty("rejected_negative_base", rejected);
}

// Blocks that overlap the sink: every key still attended once, through the sink.
TEST(SparseRunsTest, BlocksOverlappingTheSinkAreAttendedOnce) {
  Random rng(7);
  const LayerConfig cfg = Cfg(256, 1024);
  for (int iter = 0; iter < 500; ++iter) {
    const int64_t p = rng.Uniform(1300, 6000);
    std::vector<int64_t> blocks;
    for (int64_t b = 0; b < p / 8; ++b) {
      if (rng.Bernoulli(0.3)) blocks.push_back(b);
    }
    std::string error;
    const auto got = Expand(SparseRuns(p, p, cfg, blocks), &error);
    ASSERT_TRUE(error.empty()) << error;
    std::set<int64_t> want;
    for (int64_t t = 0; t < 256; ++t) want.insert(t);
    for (int64_t t = p - 1023; t <= p; ++t) want.insert(t);
    for (int64_t b : blocks) {
      for (int64_t t = 8 * b; t < 8 * b + 8 && t <= p; ++t) want.insert(t);
    }
    std::set<int64_t> keys;
    for (const auto& [t, pos] : got) keys.insert(t);
    ASSERT_EQ(keys, want) << "p=" << p;
    for (int64_t t = 0; t < 256; ++t) {  // sink positions, whatever else selects them
      ASSERT_EQ(got.at(t),
                std::max<int64_t>(0, p - 1024 - 8 * int64_t(blocks.size()) + 1 - 256 + t));
    }
  }
}

// ---- The stage-1 grid and the scan limit (§3.2) ----

TEST(Stage1CandidatesTest, GridAndCount) {
  const LayerConfig cfg = Cfg(256, 1024);
  for (int64_t p = 0; p < 20000; p += 37) {
    const std::vector<int64_t> c = Stage1Candidates(p, cfg);
    // Decode with T = p + 1 keys: ceil((T - sink - window) / 256) chunks (0 when negative).
    const int64_t T = p + 1;
    const int64_t want = T - 256 - 1024 > 0 ? (T - 256 - 1024 + 255) / 256 : 0;
    ASSERT_EQ(int64_t(c.size()), want) << "p=" << p;
    for (size_t j = 0; j < c.size(); ++j) {
      ASSERT_EQ(c[j], 256 + 256 * int64_t(j));
      ASSERT_LE(c[j], p - 1024);  // starts before the window
    }
  }
  // Another grid: sink 64, chunk 64, window 512.
  const LayerConfig c2 = Cfg(64, 512, 64);
  EXPECT_EQ(Stage1Candidates(64 + 512 - 1, c2), std::vector<int64_t>{});
  EXPECT_EQ(Stage1Candidates(64 + 512, c2), std::vector<int64_t>{64});
  EXPECT_EQ(Stage1Candidates(64 + 512 + 64, c2), (std::vector<int64_t>{64, 128}));
}

TEST(ScanLimitTest, WindowShrunkByOneChunk) {
  const LayerConfig cfg = Cfg(256, 1024);
  // No probe reads a key past p_min - 768: the exclusive end is p_min - 767.
  EXPECT_EQ(ScanLimit(10000, 10001, cfg), 10000 - 767);
  EXPECT_EQ(ScanLimit(10000, 5000, cfg), 5000);  // bounded by the keys present
  const LayerConfig c2 = Cfg(64, 512, 64);
  EXPECT_EQ(ScanLimit(2000, 2100, c2), 2000 - 448 + 1);
}

// ---- Between stages (§3.2) ----

TEST(SplitChunksTest, RealignsDedupsSortsAndSplits) {
  // Kept chunks of size 32 (sink 256) given unsorted, one off-grid, one duplicate after
  // realignment: 300 -> 288 (256 + 32 * 1), 290 -> 288.
  const std::vector<int64_t> out = SplitChunks({416, 300, 256, 290}, 32, 8, 256);
  EXPECT_EQ(out,
            (std::vector<int64_t>{256, 264, 272, 280, 288, 296, 304, 312, 416, 424, 432, 440}));
  // Stage 1 -> 2 with the default sizes.
  const std::vector<int64_t> s2 = SplitChunks({512}, 256, 32, 256);
  ASSERT_EQ(s2.size(), 8u);
  for (int i = 0; i < 8; ++i) EXPECT_EQ(s2[i], 512 + 32 * i);
  EXPECT_TRUE(SplitChunks({}, 256, 32, 256).empty());
}

TEST(SplitChunksTest, RandomAgainstDefinition) {
  Random rng(3);
  for (int iter = 0; iter < 300; ++iter) {
    const int sink = 8 * int(rng.Uniform(0, 40));
    const int from = 1 << rng.Uniform(3, 8);
    const int to = from >> rng.Uniform(0, 3);
    if (to < 8) continue;
    std::vector<int64_t> kept;
    for (int i = 0; i < 20; ++i) kept.push_back(sink + rng.Uniform(0, 5000));
    std::set<int64_t> lefts;  // realigned: sink + from * floor((left - sink) / from)
    for (int64_t l : kept) lefts.insert(sink + from * ((l - sink) / from));
    std::vector<int64_t> want;
    for (int64_t l : lefts) {
      for (int64_t x = l; x < l + from; x += to) want.push_back(x);
    }
    ASSERT_EQ(SplitChunks(kept, from, to, sink), want);
  }
}

TEST(ChunksToBlocksTest, AscendingUniqueBlocks) {
  EXPECT_EQ(ChunksToBlocks({272, 256}, 16), (std::vector<int64_t>{32, 33, 34, 35}));
  EXPECT_EQ(ChunksToBlocks({800, 96}, 8), (std::vector<int64_t>{12, 100}));
  EXPECT_TRUE(ChunksToBlocks({}, 8).empty());
}

}  // namespace
}  // namespace ihip::engine
