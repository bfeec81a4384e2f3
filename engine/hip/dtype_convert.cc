#include "engine/hip/dtype_convert.h"

#include <algorithm>
#include <array>
#include <cmath>

namespace ihip::engine {
namespace {

// Decodes a small float format with `man` mantissa bits and exponent bias `bias`.
float DecodeMinifloat(uint32_t bits, int exp_bits, int man, int bias) {
  const uint32_t sign = bits >> (exp_bits + man);
  const uint32_t exp = (bits >> man) & ((1u << exp_bits) - 1);
  const uint32_t mant = bits & ((1u << man) - 1);
  float v;
  if (exp == 0) {
    v = std::ldexp(float(mant), 1 - bias - man);
  } else {
    v = std::ldexp(float(mant | (1u << man)), int(exp) - bias - man);
  }
  return sign ? -v : v;
}

// Rounds |f| (finite) to the nearest value of a format with `man` mantissa bits, minimum normal
// exponent `emin` (unbiased), to nearest even, and encodes it; saturates at `max_code`.
uint32_t EncodeMinifloat(float f, int man, int bias, uint32_t max_code) {
  const float a = std::fabs(f);
  const uint32_t sign = std::signbit(f) ? 1u : 0u;
  const int emin = 1 - bias;
  int e;
  std::frexp(a, &e);                // a = m * 2^e, m in [0.5, 1)
  int exp = e - 1;                  // a = 1.x * 2^exp
  if (a == 0.0f) return sign << 7;  // keeps -0
  if (exp < emin) exp = emin;       // subnormal range: fixed quantum
  const float quantum = std::ldexp(1.0f, exp - man);
  float q = std::nearbyint(a / quantum);  // nearest even under the default rounding mode
  // q in [0, 2^(man+1)]; rebuild the code.
  uint32_t code;
  if (q >= float(1u << (man + 1))) {  // rounded up into the next binade
    exp += 1;
    q /= 2;
  }
  if (q < float(1u << man)) {
    code = uint32_t(q);  // subnormal (exp == emin)
  } else {
    code = (uint32_t(exp + bias) << man) | (uint32_t(q) - (1u << man));
  }
  if (code > max_code) code = max_code;
  return (sign << 7) | code;
}

const std::array<float, 256>& E4M3Table() {
  static const std::array<float, 256> t = [] {
    std::array<float, 256> a{};
    for (uint32_t i = 0; i < 256; ++i) {
      a[i] = ((i & 0x7f) == 0x7f) ? NAN : DecodeMinifloat(i, 4, 3, 7);
    }
    return a;
  }();
  return t;
}

const std::array<float, 256>& E5M2Table() {
  static const std::array<float, 256> t = [] {
    std::array<float, 256> a{};
    for (uint32_t i = 0; i < 256; ++i) {
      const uint32_t exp = (i >> 2) & 0x1f;
      if (exp == 0x1f) {
        a[i] = (i & 3) ? NAN : ((i & 0x80) ? -INFINITY : INFINITY);
      } else {
        a[i] = DecodeMinifloat(i, 5, 2, 15);
      }
    }
    return a;
  }();
  return t;
}

}  // namespace

float F16ToFloat(uint16_t h) {
  const uint32_t sign = uint32_t(h >> 15) << 31;
  const uint32_t exp = (h >> 10) & 0x1f;
  const uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else if (exp == 0) {
    const float v = std::ldexp(float(mant), -24);
    std::memcpy(&bits, &v, 4);
    bits |= sign;
  } else {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t FloatToF16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  const uint16_t sign = uint16_t((bits >> 16) & 0x8000);
  const float a = std::fabs(f);
  if (std::isnan(f)) return sign | 0x7e00;
  if (a >= 65520.0f) return sign | 0x7c00;  // rounds to infinity
  if (a < std::ldexp(1.0f, -14)) {          // subnormal: quantum 2^-24
    return sign | uint16_t(std::nearbyint(a * 16777216.0f));
  }
  // Normal: round the 23-bit mantissa to 10 bits, nearest even.
  uint32_t abs_bits = bits & 0x7fffffffu;
  abs_bits += 0xfffu + ((abs_bits >> 13) & 1u);
  const uint32_t exp = (abs_bits >> 23) - 112;
  return sign | uint16_t((exp << 10) | ((abs_bits >> 13) & 0x3ff));
}

float F8E4M3ToFloat(uint8_t v) { return E4M3Table()[v]; }
float F8E5M2ToFloat(uint8_t v) { return E5M2Table()[v]; }

uint8_t FloatToF8E4M3(float f) {
  if (std::isnan(f)) return 0x7f;
  if (std::isinf(f)) return f > 0 ? 0x7e : 0xfe;  // saturate
  return uint8_t(EncodeMinifloat(f, 3, 7, 0x7e));
}

uint8_t FloatToF8E5M2(float f) {
  if (std::isnan(f)) return 0x7f;
  if (std::isinf(f)) return f > 0 ? 0x7b : 0xfb;  // saturate
  return uint8_t(EncodeMinifloat(f, 2, 15, 0x7b));
}

void ToFloat(DType t, const void* src, size_t n, float* dst) {
  switch (t) {
    case DType::kF32:
      std::memcpy(dst, src, n * 4);
      return;
    case DType::kBF16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = Bf16ToFloat(s[i]);
      return;
    }
    case DType::kF16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = F16ToFloat(s[i]);
      return;
    }
    case DType::kF8E4M3: {
      const uint8_t* s = static_cast<const uint8_t*>(src);
      const auto& table = E4M3Table();
      for (size_t i = 0; i < n; ++i) dst[i] = table[s[i]];
      return;
    }
    case DType::kF8E5M2: {
      const uint8_t* s = static_cast<const uint8_t*>(src);
      const auto& table = E5M2Table();
      for (size_t i = 0; i < n; ++i) dst[i] = table[s[i]];
      return;
    }
  }
}

void FromFloat(DType t, const float* src, size_t n, void* dst) {
  switch (t) {
    case DType::kF32:
      std::memcpy(dst, src, n * 4);
      return;
    case DType::kBF16: {
      uint16_t* d = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = FloatToBf16(src[i]);
      return;
    }
    case DType::kF16: {
      uint16_t* d = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = FloatToF16(src[i]);
      return;
    }
    case DType::kF8E4M3: {
      uint8_t* d = static_cast<uint8_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = FloatToF8E4M3(src[i]);
      return;
    }
    case DType::kF8E5M2: {
      uint8_t* d = static_cast<uint8_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = FloatToF8E5M2(src[i]);
      return;
    }
  }
}

void Convert(DType from, const void* src, DType to, void* dst, size_t n) {
  if (from == to) {
    std::memcpy(dst, src, n * DTypeSize(from));
    return;
  }
  constexpr size_t kTile = 1024;
  float tmp[kTile];
  const auto* s = static_cast<const std::byte*>(src);
  auto* d = static_cast<std::byte*>(dst);
  for (size_t i = 0; i < n; i += kTile) {
    const size_t m = std::min(kTile, n - i);
    ToFloat(from, s + i * DTypeSize(from), m, tmp);
    FromFloat(to, tmp, m, d + i * DTypeSize(to));
  }
}

}  // namespace ihip::engine
