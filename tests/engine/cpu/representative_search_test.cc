// The representative-token search (DESIGN §3.2), engine/cpu/representative_search.h: the probes
// it makes are exactly those of the definition (split at c = (l + r) / 2, probe (l + c) / 2 as
// the left probe and (c + r) / 2 as the right one, keep the left half only if its probe scored
// strictly higher, a last step with both probes on the remaining token), its score is the max
// over the probes that won a step, it finds the peak of a symmetric unimodal chunk, and an empty
// range is inactive.

#include "engine/cpu/representative_search.h"

#include <cmath>
#include <limits>
#include <vector>

#include "gtest/gtest.h"
#include "tests/engine/test_util.h"

namespace ihip::engine::cpu {
namespace {

using testing::Random;

struct Probe {
  int64_t token;
  int side;
  float score;
};

// Replays a recorded probe sequence against the definition; returns the expected (token, score).
// Fails the test when a probe is not the one the definition makes.
std::pair<int64_t, float> Replay(int64_t l, int64_t r, const std::vector<Probe>& probes) {
  size_t i = 0;
  float best = -std::numeric_limits<float>::infinity();
  for (;;) {
    if (i + 1 >= probes.size()) {
      ADD_FAILURE() << "search stopped early in [" << l << ", " << r << ")";
      return {-1, best};
    }
    const Probe& a = probes[i];
    const Probe& b = probes[i + 1];
    EXPECT_EQ(a.side, 0);
    EXPECT_EQ(b.side, 1);
    if (r - l == 1) {
      EXPECT_EQ(a.token, l);
      EXPECT_EQ(b.token, l);
      best = std::max(best, a.score > b.score ? a.score : b.score);
      EXPECT_EQ(i + 2, probes.size()) << "probes after the last step";
      return {l, best};
    }
    const int64_t c = (l + r) / 2;
    EXPECT_EQ(a.token, (l + c) / 2) << "left probe of [" << l << ", " << r << ")";
    EXPECT_EQ(b.token, (c + r) / 2) << "right probe of [" << l << ", " << r << ")";
    if (a.score > b.score) {  // strictly higher: left half
      r = c;
      best = std::max(best, a.score);
    } else {  // ties go right
      l = c;
      best = std::max(best, b.score);
    }
    i += 2;
    if (::testing::Test::HasFailure()) return {-1, best};
  }
}

TEST(RepresentativeSearchTest, EmptyRangeIsInactive) {
  int calls = 0;
  auto probe = [&](int64_t, int) {
    ++calls;
    return 1.0f;
  };
  for (auto [l, r] : {std::pair<int64_t, int64_t>{5, 5}, {9, 3}, {0, 0}}) {
    const Representative rep = RepresentativeSearch(l, r, probe);
    EXPECT_FALSE(rep.active);
    EXPECT_EQ(rep.score, -std::numeric_limits<float>::infinity());
  }
  EXPECT_EQ(calls, 0);
}

TEST(RepresentativeSearchTest, SingleTokenScoresThroughTheLastStep) {
  std::vector<Probe> probes;
  auto probe = [&](int64_t t, int side) {
    const float s = side == 0 ? 2.0f : 3.5f;  // sides differ (relative RoPE style)
    probes.push_back({t, side, s});
    return s;
  };
  const Representative rep = RepresentativeSearch(41, 42, probe);
  EXPECT_TRUE(rep.active);
  EXPECT_EQ(rep.token, 41);
  EXPECT_EQ(rep.score, 3.5f);
  ASSERT_EQ(probes.size(), 2u);
  EXPECT_EQ(probes[0].token, 41);
  EXPECT_EQ(probes[1].token, 41);
}

// Random scores drawn from a few values (many ties) at random positions: every probe, the
// final token and the score follow the definition.
TEST(RepresentativeSearchTest, ProbesAndScoreFollowTheDefinition) {
  Random rng(31);
  for (int iter = 0; iter < 20000; ++iter) {
    const int64_t n = iter < 300 ? 1 + iter : rng.Uniform(1, 1100);
    const int64_t l = rng.Uniform(0, 100000);
    const int levels = int(rng.Uniform(1, 4));
    std::vector<float> table(size_t(2 * n));
    for (float& x : table) x = float(rng.Uniform(0, levels)) - (rng.Bernoulli(0.1) ? 100 : 0);
    std::vector<Probe> probes;
    auto probe = [&](int64_t t, int side) {
      EXPECT_GE(t, l);
      EXPECT_LT(t, l + n);
      const float s = table[size_t(2 * (t - l) + side)];
      probes.push_back({t, side, s});
      return s;
    };
    const Representative rep = RepresentativeSearch(l, l + n, probe);
    const auto [token, score] = Replay(l, l + n, probes);
    ASSERT_FALSE(::testing::Test::HasFailure()) << "n=" << n << " l=" << l;
    ASSERT_TRUE(rep.active);
    ASSERT_EQ(rep.token, token) << "n=" << n;
    ASSERT_EQ(rep.score, score) << "n=" << n;
    // About 2 log2(n) + 2 probes.
    ASSERT_LE(probes.size(), size_t(2 * (std::ceil(std::log2(double(n))) + 1)));
  }
}

TEST(RepresentativeSearchTest, EqualProbesGoRight) {
  for (int64_t n : {1, 2, 3, 4, 5, 8, 13, 256, 1000}) {
    // A constant chunk: every step ties, so the search ends on the last token.
    const Representative flat =
        RepresentativeSearch(100, 100 + n, [](int64_t, int) { return 0.5f; });
    EXPECT_EQ(flat.token, 100 + n - 1) << n;
    EXPECT_EQ(flat.score, 0.5f);
  }
  // Left probe higher by the smallest amount: left. Equal: right.
  auto first_step = [](float left, float right) {
    int step = 0;
    return RepresentativeSearch(0, 8, [&](int64_t t, int) {
      const float s = step == 0 ? left : (step == 1 ? right : 0.0f);
      ++step;
      return s;
    });
  };
  EXPECT_LT(first_step(std::nextafter(1.0f, 2.0f), 1.0f).token, 4);
  EXPECT_GE(first_step(1.0f, 1.0f).token, 4);
  EXPECT_GE(first_step(1.0f, std::nextafter(1.0f, 2.0f)).token, 4);
}

// A symmetric unimodal chunk, f(t) = g(|t - w|) with g strictly decreasing: the search ends on
// the peak w, and the score is f(w), for every size (1, 2, 3, non-powers of two) and peak.
TEST(RepresentativeSearchTest, FindsThePeakOfASymmetricUnimodalChunk) {
  Random rng(32);
  std::vector<float> g(4096);
  for (int iter = 0; iter < 3000; ++iter) {
    const int64_t n = iter < 600 ? 1 + iter % 300 : rng.Uniform(1, 2048);
    const int64_t l = rng.Uniform(0, 1 << 20);
    const int64_t w = l + rng.Uniform(0, n - 1);
    // Random strictly decreasing profile.
    float v = 10.0f;
    for (float& x : g) {
      x = v;
      v -= 0.001f + float(rng.Uniform01());
    }
    int calls = 0;
    const Representative rep = RepresentativeSearch(l, l + n, [&](int64_t t, int) {
      ++calls;
      return g[size_t(std::llabs(t - w))];
    });
    ASSERT_EQ(rep.token, w) << "n=" << n << " l=" << l << " peak at +" << (w - l);
    ASSERT_EQ(rep.score, g[0]);
  }
  // Monotone chunks: increasing -> last token, decreasing -> first token.
  EXPECT_EQ(RepresentativeSearch(10, 300, [](int64_t t, int) { return float(t); }).token, 299);
  EXPECT_EQ(RepresentativeSearch(10, 300, [](int64_t t, int) { return float(-t); }).token, 10);
}

}  // namespace
}  // namespace ihip::engine::cpu
