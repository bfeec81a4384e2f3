#pragma once

// Scalar conversions between float and the wire/storage dtypes (round to nearest even; FP8
// saturates to its largest finite value), and row helpers used by the CPU backend.

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "engine/types.h"

namespace ihip::engine {

inline float Bf16ToFloat(uint16_t h) {
  uint32_t bits = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t FloatToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return uint16_t((bits >> 16) | 0x40);  // NaN stays NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return uint16_t(bits >> 16);
}

float F16ToFloat(uint16_t h);
uint16_t FloatToF16(float f);
float F8E4M3ToFloat(uint8_t v);
uint8_t FloatToF8E4M3(float f);
float F8E5M2ToFloat(uint8_t v);
uint8_t FloatToF8E5M2(float f);

// Converts `n` elements of `src` (dtype `t`) to float.
void ToFloat(DType t, const void* src, size_t n, float* dst);
// Converts `n` floats to dtype `t`.
void FromFloat(DType t, const float* src, size_t n, void* dst);
// Converts `n` elements between dtypes (a plain copy when they match).
void Convert(DType from, const void* src, DType to, void* dst, size_t n);

}  // namespace ihip::engine
