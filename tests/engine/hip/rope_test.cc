// engine/hip/rope.h against DESIGN §3.4: neox rotate-half with angles in double, the relative
// property pruning relies on, angle addition (Rope::Step) over thousands of steps, Llama-3
// frequency scaling against the published formula, and the StreamingLLM position helper.

#include "engine/hip/rope.h"

#include <cmath>
#include <numbers>
#include <vector>

#include "gtest/gtest.h"
#include "tests/engine/test_util.h"

namespace ihip::engine {
namespace {

using testing::Random;

RopeSpec Llama31() {  // Llama-3.1-8B
  RopeSpec s;
  s.mode = RopeMode::kExtend;
  s.theta = 500000;
  s.llama3 = Llama3Scaling{8.0, 1.0, 4.0, 8192};
  return s;
}

RopeSpec Plain(double theta = 10000) {
  RopeSpec s;
  s.mode = RopeMode::kExtend;
  s.theta = theta;
  return s;
}

// The published Llama-3 rule, written independently of the engine and of test_util:
// wavelen = 2 pi / f; wavelen < L / high: unchanged; wavelen > L / low: f / factor; otherwise
// (1 - s) f / factor + s f with s = (L / wavelen - low) / (high - low).
double PublishedLlama3(double f, double factor, double low, double high, double L) {
  const double wavelen = 2 * std::numbers::pi / f;
  if (wavelen < L / high) return f;
  if (wavelen > L / low) return f / factor;
  const double s = (L / wavelen - low) / (high - low);
  return (1 - s) * f / factor + s * f;
}

TEST(RopeFrequenciesTest, PlainTheta) {
  for (int D : {64, 128, 256}) {
    for (double theta : {10000.0, 500000.0}) {
      const std::vector<double> f = RopeInverseFrequencies(Plain(theta), D);
      ASSERT_EQ(f.size(), size_t(D / 2));
      for (int i = 0; i < D / 2; ++i) {
        EXPECT_NEAR(f[i], std::exp(-std::log(theta) * 2.0 * i / D), 1e-15 * std::max(1.0, f[i]));
      }
      EXPECT_EQ(Rope(Plain(theta), D).inv_freq(), f);
    }
  }
}

TEST(RopeFrequenciesTest, Llama3MatchesPublishedFormula) {
  const RopeSpec spec = Llama31();
  const std::vector<double> f = RopeInverseFrequencies(spec, 128);
  int unchanged = 0, divided = 0, smoothed = 0;
  for (int i = 0; i < 64; ++i) {
    const double base = std::pow(500000.0, -2.0 * i / 128);
    const double want = PublishedLlama3(base, 8, 1, 4, 8192);
    EXPECT_NEAR(f[i], want, 1e-14 * want) << "i=" << i;
    EXPECT_NEAR(Llama3ScaleFrequency(base, *spec.llama3), want, 1e-14 * want);
    const double wavelen = 2 * std::numbers::pi / base;
    if (wavelen < 8192.0 / 4) {
      EXPECT_DOUBLE_EQ(f[i], base) << i;
      ++unchanged;
    } else if (wavelen > 8192.0 / 1) {
      EXPECT_NEAR(f[i], base / 8, 1e-15 * base) << i;
      ++divided;
    } else {
      EXPECT_GT(f[i], base / 8) << i;
      EXPECT_LT(f[i], base) << i;
      ++smoothed;
    }
  }
  // Llama-3.1-8B's 64 frequencies hit every regime.
  EXPECT_GT(unchanged, 0);
  EXPECT_GT(divided, 0);
  EXPECT_GT(smoothed, 0);
  EXPECT_DOUBLE_EQ(f[0], 1.0);
  // The smooth band is continuous at both ends.
  const Llama3Scaling s = *spec.llama3;
  const double f_hi = 2 * std::numbers::pi / (8192.0 / 4);  // wavelen = L / high
  const double f_lo = 2 * std::numbers::pi / 8192.0;        // wavelen = L / low
  EXPECT_NEAR(Llama3ScaleFrequency(f_hi * (1 - 1e-12), s), f_hi, 1e-9 * f_hi);
  EXPECT_NEAR(Llama3ScaleFrequency(f_lo * (1 + 1e-12), s), f_lo / 8, 1e-9 * f_lo);
}

TEST(RopeTest, RotationMatchesNeoxRotateHalfInDouble) {
  Random rng(11);
  const int64_t kPositions[] = {0, 1, 2, 17, 767, 769, 4096, 131071, 1000003, 3000000, 4194303};
  for (const RopeSpec& spec : {Plain(10000), Plain(500000), Llama31()}) {
    for (int D : {64, 128, 256}) {
      const Rope rope(spec, D);
      const std::vector<double> f = testing::RefInvFreq(spec, D);
      for (int64_t pos : kPositions) {
        const std::vector<float> x = rng.Normals(D);
        std::vector<double> xd(x.begin(), x.end()), want(D);
        testing::RefRotate(xd.data(), D, pos, f, want.data());
        std::vector<float> got(D);
        rope.Rotate(x.data(), pos, got.data());
        for (int d = 0; d < D; ++d) {
          ASSERT_NEAR(got[d], want[d], 2e-6 * (1 + std::fabs(want[d])))
              << "D=" << D << " pos=" << pos << " d=" << d;
        }
        // In place.
        std::vector<float> inplace = x;
        rope.Rotate(inplace.data(), pos, inplace.data());
        EXPECT_EQ(inplace, got);
        // Angles and AnglesF64 agree with cos/sin of pos * f in double.
        std::vector<double> c(D / 2), s(D / 2);
        rope.AnglesF64(pos, c.data(), s.data());
        for (int i = 0; i < D / 2; ++i) {
          ASSERT_NEAR(c[i], std::cos(double(pos) * f[i]), 1e-9);
          ASSERT_NEAR(s[i], std::sin(double(pos) * f[i]), 1e-9);
        }
      }
    }
  }
}

TEST(RopeTest, RotationIsRotateHalfNotInterleaved) {
  // D = 64, position 1, plain theta: only frequency 0 (= 1 rad) rotates the pair (x0, x32).
  const Rope rope(Plain(), 64);
  std::vector<float> x(64, 0.0f), out(64);
  x[0] = 1.0f;
  rope.Rotate(x.data(), 1, out.data());
  EXPECT_NEAR(out[0], std::cos(1.0), 1e-6);
  EXPECT_NEAR(out[32], std::sin(1.0), 1e-6);
  EXPECT_NEAR(out[1], 0.0, 1e-7);
}

// R(a) q . R(b) k == R(a - b) q . k: pruning rotates only the query (§3.4).
TEST(RopeTest, RelativePositionProperty) {
  Random rng(12);
  for (const RopeSpec& spec : {Plain(10000), Llama31()}) {
    for (int D : {64, 128, 256}) {
      const Rope rope(spec, D);
      for (int iter = 0; iter < 40; ++iter) {
        const int64_t a = rng.Uniform(0, 3000000);
        const int64_t b = rng.Bernoulli(0.5) ? rng.Uniform(0, a) : a - rng.Uniform(0, 800);
        if (b < 0) continue;
        const std::vector<float> q = rng.Normals(D), k = rng.Normals(D);
        std::vector<float> qa(D), kb(D), qd(D);
        rope.Rotate(q.data(), a, qa.data());
        rope.Rotate(k.data(), b, kb.data());
        rope.Rotate(q.data(), a - b, qd.data());
        double lhs = 0, rhs = 0, norm = 0;
        for (int d = 0; d < D; ++d) {
          lhs += double(qa[d]) * kb[d];
          rhs += double(qd[d]) * k[d];
          norm += double(q[d]) * q[d];
        }
        // |q| |k| ~ D; fp32 rotation error ~1e-7 per element.
        ASSERT_NEAR(lhs, rhs, 2e-5 * norm) << "a=" << a << " b=" << b << " D=" << D;
      }
    }
  }
}

TEST(RopeTest, StepAngleAdditionStaysExact) {
  for (const RopeSpec& spec : {Plain(10000), Llama31()}) {
    for (int D : {64, 128, 256}) {
      const Rope rope(spec, D);
      for (int64_t start : {int64_t{0}, int64_t{12345}, int64_t{2999000}}) {
        std::vector<double> c(D / 2), s(D / 2), ce(D / 2), se(D / 2);
        rope.AnglesF64(start, c.data(), s.data());
        double worst = 0;
        constexpr int kSteps = 5000;
        for (int i = 1; i <= kSteps; ++i) {
          rope.Step(c.data(), s.data());
          if (i % 500 == 0) {
            rope.AnglesF64(start + i, ce.data(), se.data());
            for (int j = 0; j < D / 2; ++j) {
              worst = std::max({worst, std::fabs(c[j] - ce[j]), std::fabs(s[j] - se[j])});
            }
          }
        }
        // Angle addition drifts by ~1e-16 per step; AnglesF64 itself rounds pos * f to the
        // double ulp of the product (~2e-10 rad at 3M positions).
        EXPECT_LT(worst, 1e-11 + 4e-16 * double(start + kSteps)) << "D=" << D << " start=" << start;
      }
    }
  }
}

TEST(RopeTest, RotateWithGivenAngles) {
  const Rope rope(Llama31(), 128);
  Random rng(5);
  const std::vector<float> x = rng.Normals(128);
  std::vector<float> c(64), s(64), a(128), b(128);
  rope.Angles(77777, c.data(), s.data());
  Rope::RotateWith(x.data(), c.data(), s.data(), 64, a.data());
  rope.Rotate(x.data(), 77777, b.data());
  EXPECT_EQ(a, b);
}

TEST(StreamingPositionsTest, Definition) {
  // base = p_min - window - K + 1; sink token i at max(0, base - sink + i).
  const StreamingPositions sp = MakeStreamingPositions(10000, 1024, 2048);
  EXPECT_EQ(sp.selected_base, 10000 - 1024 - 2048 + 1);
  EXPECT_EQ(sp.SinkPosition(0, 256), sp.selected_base - 256);
  EXPECT_EQ(sp.SinkPosition(255, 256), sp.selected_base - 1);
  const StreamingPositions small = MakeStreamingPositions(1100, 1024, 0);
  EXPECT_EQ(small.selected_base, 77);
  EXPECT_EQ(small.SinkPosition(0, 256), 0);
  EXPECT_EQ(small.SinkPosition(179, 256), 0);
  EXPECT_EQ(small.SinkPosition(180, 256), 1);
}

}  // namespace
}  // namespace ihip::engine
