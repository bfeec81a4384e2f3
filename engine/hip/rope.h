#pragma once

// Rotary position embedding (neox rotate-half), computed in fp32 from angles reduced in double
// precision (positions reach millions; pos * freq in fp32 would lose the phase), and the
// StreamingLLM renumbering of positions used by sparse attention (DESIGN §3.4).

#include <cstdint>
#include <vector>

#include "engine/types.h"

namespace ihip::engine {

// Inverse frequencies theta^(-2i/D), i < D/2, with Llama-3 scaling applied when `spec` has it.
std::vector<double> RopeInverseFrequencies(const RopeSpec& spec, int head_dim);

// The Llama-3 scaled frequency of one unscaled inverse frequency (the published formula).
double Llama3ScaleFrequency(double inv_freq, const Llama3Scaling& s);

class Rope {
 public:
  Rope(const RopeSpec& spec, int head_dim);

  int head_dim() const { return head_dim_; }
  const std::vector<double>& inv_freq() const { return inv_freq_; }

  // cos/sin of position `pos` for every frequency: out_cos[i], out_sin[i], i < D/2.
  void Angles(int64_t pos, float* out_cos, float* out_sin) const;
  void AnglesF64(int64_t pos, double* out_cos, double* out_sin) const;
  // Advances double-precision angles from position pos to pos + 1 (angle addition).
  void Step(double* cos, double* sin) const;
  // Rotates `x` [D] by position `pos` (or by the given angles) into `out` (may alias x).
  void Rotate(const float* x, int64_t pos, float* out) const;
  static void RotateWith(const float* x, const float* cos, const float* sin, int half, float* out);

 private:
  int head_dim_;
  std::vector<double> inv_freq_;
  std::vector<double> step_cos_, step_sin_;  // cos/sin of each inverse frequency
};

// Positions used by sparse attention in `extend` mode for one query block with first position
// p_min, `num_selected_tokens` = 8 x selected blocks: the j-th selected token sits at
// selected_base + j, sink token i at max(0, selected_base - sink + i).
struct StreamingPositions {
  int64_t selected_base = 0;
  int64_t SinkPosition(int64_t i, int sink_tokens) const {
    const int64_t p = selected_base - sink_tokens + i;
    return p < 0 ? 0 : p;
  }
};
StreamingPositions MakeStreamingPositions(int64_t p_min, int window_tokens,
                                          int64_t num_selected_tokens);

}  // namespace ihip::engine
