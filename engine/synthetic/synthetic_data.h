#pragma once

// Structured synthetic attention data (DESIGN §3.6), deterministic from a seed: no model weights
// exist here, so tests, benchmarks and the demo use data with the structure that sparse
// attention relies on.
//
// - Keys: per kv head, a slowly varying random walk (k_t = rho k_{t-1} + sqrt(1 - rho^2) e_t,
//   stationary N(0, 1) per element): attention locality.
// - Queries: the last `num_queries` positions carry a query, N(0, query_logit_std^2 / (scale^2 D))
//   per element, so a random key's scaled logit has standard deviation query_logit_std; each
//   next query drifts a little from the previous one.
// - Sinks: the first `hot_sink_tokens` keys are nudged (minimum-norm change) so that every query
//   head of the first query scores them `sink_logit` nats.
// - Needle: an 8-token block (8-aligned) at a random depth of the middle (between the sink and the
//   first query's window) is nudged so that every query head of the first query scores it
//   `needle_margin` nats above the best other middle key. The needle sits in a "passage": keys
//   within `passage_radius` tokens of it are nudged up by passage_logit * (1 - distance/radius)
//   nats, the way the tokens around a fact share its topic. The passage is what lets a
//   hierarchical search climb towards the needle; its peak stays below the needle by at least
//   the margin, since the margin is measured against every other middle key, passage included.
// - Values: i.i.d. N(0, 1) per element.
// Gaussians are approximated by Irwin–Hall sums of 4 uniforms (fast enough for 3M tokens).
// Everything is stored in the wire dtype; scores are computed from the stored (rounded) keys.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "engine/types.h"

namespace ihip::engine::synthetic {

struct SyntheticOptions {
  int64_t length = 32768;  // tokens of KV; the queries sit at the last num_queries positions
  int num_q_heads = 32;
  int num_kv_heads = 8;
  int head_dim = 128;
  DType dtype = DType::kBF16;
  uint64_t seed = 1;
  int num_queries = 1;
  double key_correlation = 0.98;  // rho of the key random walk
  double query_logit_std = 1.0;   // std of a random key's scaled logit
  double query_drift = 0.05;      // relative change from one query to the next
  int hot_sink_tokens = 4;
  double sink_logit = 6.0;
  bool plant_needle = true;
  double needle_margin = 3.0;  // nats above every other middle key
  int64_t needle_token = -1;   // first token of the needle (multiple of 8); -1 = random
  int passage_radius = 128;
  double passage_logit = 4.0;
  int sink_tokens = 256;  // the layer's sink and window: where the middle is
  int window_tokens = 1024;
};

struct SyntheticData {
  SyntheticOptions options;
  float scale = 0;             // softmax scale used (1/sqrt(D))
  std::vector<std::byte> k;    // [length][Hkv][D] in options.dtype
  std::vector<std::byte> v;    // [length][Hkv][D]
  std::vector<std::byte> q;    // [num_queries][Hq][D]
  int64_t needle_token = -1;   // first token of the needle block, -1 without a needle
  double achieved_margin = 0;  // min over heads of needle logit - best other middle logit

  int64_t query_position(int i) const { return options.length - options.num_queries + i; }
  size_t kv_row_bytes() const;  // bytes of one token's k (or v)
  size_t q_row_bytes() const;   // bytes of one token's q
  const std::byte* k_at(int64_t t) const { return k.data() + t * kv_row_bytes(); }
  const std::byte* v_at(int64_t t) const { return v.data() + t * kv_row_bytes(); }
  const std::byte* q_at(int i) const { return q.data() + i * q_row_bytes(); }
};

// Generates the data; `progress` (optional) is called with the fraction done, from one thread.
SyntheticData Generate(const SyntheticOptions& options,
                       const std::function<void(double)>& progress = nullptr);

}  // namespace ihip::engine::synthetic
