// engine/hip/dtype_convert.h: bf16 / fp16 / fp8 (OCP E4M3 "fn", E5M2) conversions. Exact round
// trips of every representable value, round to nearest even (checked against an exhaustive
// nearest-value search and, for fp16, the compiler's _Float16), FP8 saturation, NaN and infinity
// handling, and the array helpers.

#include "engine/hip/dtype_convert.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "gtest/gtest.h"
#include "tests/engine/test_util.h"

namespace ihip::engine {
namespace {

using testing::Random;

float FromBits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}
uint32_t Bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

// ---- Independent decoders, straight from the format definitions ----

double DecodeE4M3(uint8_t c) {  // bias 7, no infinities, S.1111.111 = NaN, max 448
  const int sign = c >> 7, exp = (c >> 3) & 0xf, man = c & 7;
  if (exp == 0xf && man == 7) return std::numeric_limits<double>::quiet_NaN();
  const double mag = exp == 0 ? std::ldexp(man, -9) : std::ldexp(8 + man, exp - 10);
  return sign ? -mag : mag;
}

double DecodeE5M2(uint8_t c) {  // bias 15, IEEE-like: exponent 31 = inf / NaN, max 57344
  const int sign = c >> 7, exp = (c >> 2) & 0x1f, man = c & 3;
  double mag;
  if (exp == 0x1f) {
    mag = man == 0 ? std::numeric_limits<double>::infinity()
                   : std::numeric_limits<double>::quiet_NaN();
  } else {
    mag = exp == 0 ? std::ldexp(man, -16) : std::ldexp(4 + man, exp - 17);
  }
  return sign ? -mag : mag;
}

// The code nearest to x among the finite codes of the sign of x (ties to the even code), with
// saturation at the largest finite magnitude: what a saturating RNE conversion must return.
uint8_t NearestFp8(double x, double (*decode)(uint8_t), uint8_t max_code) {
  const uint8_t sign = std::signbit(x) ? 0x80 : 0;
  const double a = std::fabs(x);
  if (a >= decode(max_code)) return sign | max_code;
  uint8_t best = 0;
  double best_d = INFINITY;
  for (int c = 0; c <= max_code; ++c) {
    const double d = std::fabs(decode(uint8_t(c)) - a);
    if (d < best_d || (d == best_d && (c & 1) == 0)) {
      best = uint8_t(c);
      best_d = d;
    }
  }
  return sign | best;
}

// Nearest bf16 by comparing the two truncation candidates in double (ties to even).
uint16_t NearestBf16(float f) {
  const uint32_t b = Bits(f);
  const uint32_t lo = b & 0xffff0000u;
  const double vlo = FromBits(lo);
  const uint32_t hi_bits = lo + 0x10000u;
  // The candidate above the largest finite bf16 is 2^128 (it encodes as infinity).
  const double vhi = (hi_bits & 0x7fffffffu) == 0x7f800000u
                         ? std::copysign(std::ldexp(1.0, 128), double(f))
                         : double(FromBits(hi_bits));
  const double dlo = std::fabs(double(f) - vlo), dhi = std::fabs(vhi - double(f));
  if (dlo < dhi) return uint16_t(lo >> 16);
  if (dhi < dlo) return uint16_t(hi_bits >> 16);
  return ((lo >> 16) & 1) ? uint16_t(hi_bits >> 16) : uint16_t(lo >> 16);
}

bool IsBf16NaN(uint16_t h) { return (h & 0x7f80) == 0x7f80 && (h & 0x7f) != 0; }
bool IsF16NaN(uint16_t h) { return (h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0; }

uint16_t F16Bits(_Float16 h) {
  uint16_t b;
  std::memcpy(&b, &h, 2);
  return b;
}
_Float16 F16FromBits(uint16_t b) {
  _Float16 h;
  std::memcpy(&h, &b, 2);
  return h;
}

// ---- bf16 ----

TEST(Bf16Test, EveryValueRoundTrips) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = Bf16ToFloat(uint16_t(h));
    EXPECT_EQ(Bits(f), h << 16);
    if (IsBf16NaN(uint16_t(h))) {
      ASSERT_TRUE(IsBf16NaN(FloatToBf16(f))) << std::hex << h;
    } else {
      ASSERT_EQ(FloatToBf16(f), h) << std::hex << h;  // incl. -0 and +-inf
    }
  }
}

TEST(Bf16Test, HalfwayCasesRoundToEven) {
  Random rng(1);
  for (int i = 0; i < 100000; ++i) {
    const uint16_t h = uint16_t(rng.Uniform(0, 0x7f7e)) | (rng.Bernoulli(0.5) ? 0x8000 : 0);
    const float half = FromBits((uint32_t(h) << 16) | 0x8000u);  // exactly between h and h+1
    ASSERT_EQ(FloatToBf16(half), uint16_t(h + (h & 1))) << std::hex << h;
    ASSERT_EQ(FloatToBf16(FromBits(Bits(half) - 1)), h);                // just below: down
    ASSERT_EQ(FloatToBf16(FromBits(Bits(half) + 1)), uint16_t(h + 1));  // just above: up
  }
  EXPECT_EQ(FloatToBf16(FromBits(0x3f808000u)), 0x3f80);  // 1 + 2^-8: tie, 0x3f80 is even
  EXPECT_EQ(FloatToBf16(FromBits(0x3f818000u)), 0x3f82);  // tie, rounds up to even
  // The largest finite bf16 plus half an ulp rounds to infinity (bf16 has infinities).
  EXPECT_EQ(FloatToBf16(FromBits(0x7f7f8000u)), 0x7f80);
}

TEST(Bf16Test, RandomValuesAreNearest) {
  Random rng(2);
  for (int i = 0; i < 1000000; ++i) {
    const uint32_t b = uint32_t(rng.gen()());
    const float f = FromBits(b);
    if (std::isnan(f)) continue;
    ASSERT_EQ(FloatToBf16(f), NearestBf16(f)) << std::hex << b;
  }
}

TEST(Bf16Test, NaNStaysNaN) {
  for (uint32_t b :
       {0x7fc00000u, 0xffc00000u, 0x7f800001u, 0x7f80ffffu, 0xff800001u, 0x7fffffffu}) {
    const uint16_t h = FloatToBf16(FromBits(b));
    EXPECT_TRUE(IsBf16NaN(h)) << std::hex << b << " -> " << h;  // never turns into infinity
    EXPECT_TRUE(std::isnan(Bf16ToFloat(h)));
  }
  EXPECT_EQ(FloatToBf16(INFINITY), 0x7f80);
  EXPECT_EQ(FloatToBf16(-INFINITY), 0xff80);
}

// ---- fp16 ----

TEST(F16Test, EveryValueDecodesLikeFloat16AndRoundTrips) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = F16ToFloat(uint16_t(h));
    const float want = float(F16FromBits(uint16_t(h)));
    if (IsF16NaN(uint16_t(h))) {
      ASSERT_TRUE(std::isnan(f)) << std::hex << h;
      ASSERT_TRUE(IsF16NaN(FloatToF16(f))) << std::hex << h;
    } else {
      ASSERT_EQ(Bits(f), Bits(want)) << std::hex << h;
      ASSERT_EQ(FloatToF16(f), h) << std::hex << h;  // incl. -0, subnormals, +-inf
    }
  }
}

TEST(F16Test, HalfwayCasesRoundToEven) {
  // Between every pair of adjacent positive finite halves (subnormals, binade edges, the top).
  for (uint32_t h = 0; h < 0x7bff; ++h) {
    const double mid = (double(F16ToFloat(uint16_t(h))) + F16ToFloat(uint16_t(h + 1))) / 2;
    const float f = float(mid);  // exact: 12 significant bits
    ASSERT_EQ(double(f), mid);
    const uint16_t even = (h & 1) ? uint16_t(h + 1) : uint16_t(h);
    ASSERT_EQ(FloatToF16(f), even) << std::hex << h;
    ASSERT_EQ(FloatToF16(-f), uint16_t(even | 0x8000)) << std::hex << h;
    ASSERT_EQ(FloatToF16(std::nextafter(f, 0.0f)), h) << std::hex << h;
    ASSERT_EQ(FloatToF16(std::nextafter(f, INFINITY)), h + 1) << std::hex << h;
  }
  // Overflow: 65504 is the largest half; 65520 is halfway to 65536 and rounds (to even) to inf.
  EXPECT_EQ(FloatToF16(65504.0f), 0x7bff);
  EXPECT_EQ(FloatToF16(std::nextafter(65520.0f, 0.0f)), 0x7bff);
  EXPECT_EQ(FloatToF16(65520.0f), 0x7c00);
  EXPECT_EQ(FloatToF16(-1e9f), 0xfc00);
  // Below half the smallest subnormal (2^-25): zero, keeping the sign; at 2^-25: tie to 0.
  EXPECT_EQ(FloatToF16(std::ldexp(1.0f, -25)), 0x0000);
  EXPECT_EQ(FloatToF16(std::nextafter(std::ldexp(1.0f, -25), 1.0f)), 0x0001);
  EXPECT_EQ(FloatToF16(-std::ldexp(1.0f, -26)), 0x8000);
}

TEST(F16Test, RandomValuesMatchFloat16) {
  Random rng(3);
  for (int i = 0; i < 1000000; ++i) {
    // Exponents concentrated around the fp16 range.
    const uint32_t b =
        (uint32_t(rng.gen()()) & 0x807fffffu) | (uint32_t(rng.Uniform(127 - 30, 127 + 17)) << 23);
    const float f = FromBits(b);
    ASSERT_EQ(FloatToF16(f), F16Bits(_Float16(f))) << std::hex << b;
  }
}

TEST(F16Test, NaNAndInfinity) {
  for (uint32_t b : {0x7fc00000u, 0xffc00000u, 0x7f800001u, 0x7fffffffu}) {
    EXPECT_TRUE(IsF16NaN(FloatToF16(FromBits(b)))) << std::hex << b;
  }
  EXPECT_EQ(FloatToF16(INFINITY), 0x7c00);
  EXPECT_EQ(FloatToF16(-INFINITY), 0xfc00);
}

// ---- fp8 ----

struct Fp8Format {
  const char* name;
  float (*to_float)(uint8_t);
  uint8_t (*from_float)(float);
  double (*decode)(uint8_t);
  uint8_t max_code;
  double max_value;
};

void PrintTo(const Fp8Format& f, std::ostream* os) { *os << f.name; }

const Fp8Format kE4M3{"e4m3", F8E4M3ToFloat, FloatToF8E4M3, DecodeE4M3, 0x7e, 448};
const Fp8Format kE5M2{"e5m2", F8E5M2ToFloat, FloatToF8E5M2, DecodeE5M2, 0x7b, 57344};

class Fp8Test : public ::testing::TestWithParam<Fp8Format> {};

TEST_P(Fp8Test, DecodesEveryCodeByTheDefinition) {
  const Fp8Format& f = GetParam();
  for (int c = 0; c < 256; ++c) {
    const double want = f.decode(uint8_t(c));
    const float got = f.to_float(uint8_t(c));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << f.name << " " << c;
    } else {
      EXPECT_EQ(double(got), want) << f.name << " " << c;
    }
  }
  EXPECT_EQ(f.to_float(f.max_code), f.max_value);
  EXPECT_EQ(f.to_float(uint8_t(f.max_code | 0x80)), -f.max_value);
}

TEST_P(Fp8Test, EveryNonzeroFiniteCodeRoundTrips) {
  const Fp8Format& f = GetParam();
  for (int c = 0; c < 256; ++c) {
    const float v = f.to_float(uint8_t(c));
    if (!std::isfinite(v) || v == 0.0f) continue;
    ASSERT_EQ(f.from_float(v), c) << f.name << " code " << c << " value " << v;
  }
  EXPECT_EQ(f.from_float(0.0f), 0x00) << f.name;
}

// -0 is exactly representable in both fp8 formats (code 0x80), as it is in bf16 and fp16.
// Converting -0.0f must give 0x80, like every other negative value that rounds to zero does.
// EXPOSES AN ENGINE BUG: EncodeMinifloat (engine/hip/dtype_convert.cc:33) returns 0 for a == 0
// before the sign is applied, so -0.0f -> 0x00 while -1e-30f -> 0x80.
TEST_P(Fp8Test, NegativeZeroKeepsItsSign) {
  const Fp8Format& f = GetParam();
  EXPECT_EQ(f.from_float(-std::ldexp(1.0f, -30)), 0x80) << f.name;  // rounds to -0
  EXPECT_EQ(f.from_float(-0.0f), 0x80)
      << f.name << ": -0.0f loses its sign (EncodeMinifloat returns 0 before applying it)";
  EXPECT_TRUE(std::signbit(f.to_float(0x80)));
}

TEST_P(Fp8Test, HalfwayCasesRoundToEven) {
  const Fp8Format& f = GetParam();
  for (int c = 0; c < f.max_code; ++c) {
    const double lo = f.to_float(uint8_t(c)), hi = f.to_float(uint8_t(c + 1));
    const float mid = float((lo + hi) / 2);
    ASSERT_EQ(double(mid), (lo + hi) / 2);
    const int even = (c & 1) ? c + 1 : c;
    ASSERT_EQ(f.from_float(mid), even) << f.name << " between codes " << c << " and " << c + 1;
    ASSERT_EQ(f.from_float(-mid), even | 0x80) << f.name << " " << c;
    ASSERT_EQ(f.from_float(std::nextafter(mid, 0.0f)), c) << f.name << " " << c;
    ASSERT_EQ(f.from_float(std::nextafter(mid, INFINITY)), c + 1) << f.name << " " << c;
  }
}

TEST_P(Fp8Test, RandomValuesAreNearestWithSaturation) {
  const Fp8Format& f = GetParam();
  Random rng(4);
  for (int i = 0; i < 200000; ++i) {
    // Log-uniform magnitudes from far below the smallest subnormal to far above the maximum.
    const double mag = std::exp2(rng.Uniform01() * 50 - 30) * (f.max_value / 448);
    const float x = float(rng.Bernoulli(0.5) ? -mag : mag);
    ASSERT_EQ(f.from_float(x), NearestFp8(x, f.decode, f.max_code)) << f.name << " " << x;
  }
}

TEST_P(Fp8Test, SaturatesAndHandlesNaN) {
  const Fp8Format& f = GetParam();
  const float max = float(f.max_value);
  for (float x :
       {std::nextafter(max, INFINITY), max * 1.0625f, max * 1.125f, max * 2, 1e30f, INFINITY}) {
    EXPECT_EQ(f.from_float(x), f.max_code) << f.name << " " << x;
    EXPECT_EQ(f.from_float(-x), f.max_code | 0x80) << f.name << " " << -x;
  }
  for (float x : {NAN, -NAN, FromBits(0x7f800001u)}) {
    EXPECT_TRUE(std::isnan(f.to_float(f.from_float(x)))) << f.name;
  }
}

INSTANTIATE_TEST_SUITE_P(Formats, Fp8Test, ::testing::Values(kE4M3, kE5M2),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(Fp8CodesTest, KnownCodes) {
  EXPECT_EQ(F8E4M3ToFloat(0x38), 1.0f);
  EXPECT_EQ(F8E4M3ToFloat(0x01), std::ldexp(1.0f, -9));
  EXPECT_EQ(F8E4M3ToFloat(0x08), std::ldexp(1.0f, -6));
  EXPECT_EQ(F8E4M3ToFloat(0x7e), 448.0f);
  EXPECT_TRUE(std::isnan(F8E4M3ToFloat(0x7f)));
  EXPECT_TRUE(std::isnan(F8E4M3ToFloat(0xff)));
  EXPECT_EQ(F8E4M3ToFloat(0x78), 256.0f);  // e4m3fn has no infinity: 0x78 is finite
  EXPECT_EQ(F8E5M2ToFloat(0x3c), 1.0f);
  EXPECT_EQ(F8E5M2ToFloat(0x01), std::ldexp(1.0f, -16));
  EXPECT_EQ(F8E5M2ToFloat(0x7b), 57344.0f);
  EXPECT_EQ(F8E5M2ToFloat(0x7c), INFINITY);
  EXPECT_EQ(F8E5M2ToFloat(0xfc), -INFINITY);
  EXPECT_EQ(FloatToF8E4M3(1.0f), 0x38);
  EXPECT_EQ(FloatToF8E5M2(-2.0f), 0xc0);
}

// ---- Arrays ----

TEST(ConvertTest, ArraysMatchScalarsForEveryPair) {
  const DType kAll[] = {DType::kF32, DType::kF16, DType::kBF16, DType::kF8E4M3, DType::kF8E5M2};
  Random rng(9);
  std::vector<float> x = rng.Normals(3000, 50.0f);  // 3000 > the 1024-element tile
  // Signed zeros are left out here (NegativeZeroKeepsItsSign covers them): values that round to
  // zero in fp8 are moved away from it.
  for (float& v : x) {
    if (std::fabs(v) < 0.01f) v = 1.0f;
  }
  x[5] = 1e6f;  // saturates fp8, overflows fp16
  for (DType from : kAll) {
    std::vector<std::byte> src(x.size() * DTypeSize(from));
    FromFloat(from, x.data(), x.size(), src.data());
    std::vector<float> xf(x.size());
    ToFloat(from, src.data(), x.size(), xf.data());
    for (DType to : kAll) {
      std::vector<std::byte> dst(x.size() * DTypeSize(to)), want(dst.size());
      Convert(from, src.data(), to, dst.data(), x.size());
      FromFloat(to, xf.data(), xf.size(), want.data());
      ASSERT_EQ(dst, want) << DTypeName(from) << " -> " << DTypeName(to);
    }
  }
  // Scalar helpers agree with the array helpers.
  std::vector<uint16_t> b(x.size());
  FromFloat(DType::kBF16, x.data(), x.size(), b.data());
  for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(b[i], FloatToBf16(x[i]));
  std::vector<uint8_t> e(x.size());
  FromFloat(DType::kF8E4M3, x.data(), x.size(), e.data());
  for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(e[i], FloatToF8E4M3(x[i]));
}

}  // namespace
}  // namespace ihip::engine
