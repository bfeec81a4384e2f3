#pragma once

// Accuracy of one sparse decode step against dense attention on synthetic data (DESIGN §3.6),
// computed straight from the data (an oracle independent of the engine). RoPE `none` mode.

#include <cstdint>
#include <vector>

#include "engine/hip_config.h"
#include "engine/synthetic/synthetic_data.h"

namespace ihip::engine::synthetic {

struct DecodeAccuracy {
  bool needle_selected = false;  // the needle's 8-token block is among the selected blocks
  double topk_recall = 0;   // share of each head's dense top-2048 middle keys that are selected,
                            // averaged over query heads
  double mass_recall = 0;   // dense softmax probability on the attended keys, averaged over heads
  double output_error = 0;  // ||o_sparse - o_dense|| / ||o_dense|| over all heads
};

// `query` indexes data.q (its position is data.query_position(query)); `blocks` are the
// selected 8-token blocks; `o_sparse` and `o_dense` are [Hq][D] fp32 (null o_dense: computed).
// Only keys up to the query's position are considered.
DecodeAccuracy EvaluateDecode(const SyntheticData& data, int query,
                              const std::vector<int64_t>& blocks, const LayerConfig& cfg,
                              const float* o_sparse, const float* o_dense = nullptr,
                              int topk = 2048);

}  // namespace ihip::engine::synthetic
