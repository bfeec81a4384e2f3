#pragma once

// Small fp32 helpers with a fixed summation order (8 partial sums), so results do not depend on
// how the compiler vectorises them.

#include <cstdint>

namespace ihip::engine::cpu {

inline float Dot(const float* a, const float* b, int n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int i = 0; i < n; i += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  }
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

// y += a * x
inline void Axpy(float a, const float* x, float* y, int n) {
  for (int i = 0; i < n; ++i) y[i] += a * x[i];
}

inline void Scale(float a, float* y, int n) {
  for (int i = 0; i < n; ++i) y[i] *= a;
}

}  // namespace ihip::engine::cpu
