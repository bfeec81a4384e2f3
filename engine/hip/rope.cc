#include "engine/hip/rope.h"

#include <cmath>
#include <numbers>

namespace ihip::engine {

double Llama3ScaleFrequency(double inv_freq, const Llama3Scaling& s) {
  const double low_freq_wavelen = s.original_max_positions / s.low_freq_factor;
  const double high_freq_wavelen = s.original_max_positions / s.high_freq_factor;
  const double wavelen = 2.0 * std::numbers::pi / inv_freq;
  if (wavelen < high_freq_wavelen) return inv_freq;
  if (wavelen > low_freq_wavelen) return inv_freq / s.factor;
  const double smooth = (s.original_max_positions / wavelen - s.low_freq_factor) /
                        (s.high_freq_factor - s.low_freq_factor);
  return (1.0 - smooth) * inv_freq / s.factor + smooth * inv_freq;
}

std::vector<double> RopeInverseFrequencies(const RopeSpec& spec, int head_dim) {
  std::vector<double> f(head_dim / 2);
  for (int i = 0; i < head_dim / 2; ++i) {
    f[i] = std::pow(spec.theta, -2.0 * i / head_dim);
    if (spec.llama3.has_value()) f[i] = Llama3ScaleFrequency(f[i], *spec.llama3);
  }
  return f;
}

Rope::Rope(const RopeSpec& spec, int head_dim)
    : head_dim_(head_dim), inv_freq_(RopeInverseFrequencies(spec, head_dim)) {
  for (double f : inv_freq_) {
    step_cos_.push_back(std::cos(f));
    step_sin_.push_back(std::sin(f));
  }
}

void Rope::AnglesF64(int64_t pos, double* out_cos, double* out_sin) const {
  const double two_pi = 2.0 * std::numbers::pi;
  for (size_t i = 0; i < inv_freq_.size(); ++i) {
    const double a = std::fmod(double(pos) * inv_freq_[i], two_pi);
    out_cos[i] = std::cos(a);
    out_sin[i] = std::sin(a);
  }
}

void Rope::Step(double* cos, double* sin) const {
  for (size_t i = 0; i < inv_freq_.size(); ++i) {
    const double c = cos[i] * step_cos_[i] - sin[i] * step_sin_[i];
    const double s = sin[i] * step_cos_[i] + cos[i] * step_sin_[i];
    cos[i] = c;
    sin[i] = s;
  }
}

void Rope::Angles(int64_t pos, float* out_cos, float* out_sin) const {
  double c[128], s[128];
  AnglesF64(pos, c, s);
  for (size_t i = 0; i < inv_freq_.size(); ++i) {
    out_cos[i] = float(c[i]);
    out_sin[i] = float(s[i]);
  }
}

void Rope::RotateWith(const float* x, const float* cos, const float* sin, int half, float* out) {
  for (int i = 0; i < half; ++i) {
    const float x1 = x[i];
    const float x2 = x[i + half];
    out[i] = x1 * cos[i] - x2 * sin[i];
    out[i + half] = x2 * cos[i] + x1 * sin[i];
  }
}

void Rope::Rotate(const float* x, int64_t pos, float* out) const {
  const int half = head_dim_ / 2;
  float c[128], s[128];
  Angles(pos, c, s);
  RotateWith(x, c, s, half, out);
}

StreamingPositions MakeStreamingPositions(int64_t p_min, int window_tokens,
                                          int64_t num_selected_tokens) {
  return StreamingPositions{p_min - window_tokens - num_selected_tokens + 1};
}

}  // namespace ihip::engine
