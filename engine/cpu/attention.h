#pragma once

// Attention on the CPU over runs of keys (DESIGN §3.1, §3.5): each query attends to the keys of
// its runs, rotated at the runs' positions in RoPE `extend` mode, with an fp32 online softmax.
// Sparse attention passes SparseRuns, dense attention (the oracle) DenseRuns.

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "engine/hip/interrupt.h"
#include "engine/hip/kv_view.h"
#include "engine/hip/mask.h"
#include "engine/hip/rope.h"

namespace ihip::engine::cpu {

class ThreadPool;

struct AttentionQuery {
  const float* q = nullptr;  // [Hq][D] fp32, softmax scale folded in, before RoPE in extend mode
  int64_t position = 0;      // the query's true position
  const std::vector<KeyRun>* runs = nullptr;
  float* out = nullptr;  // [Hq][D] fp32
};

// Computes every query's output; parallel over (query, kv head). `rope` null in `none` mode.
absl::Status AttendQueries(const KvView& kv, int num_q_heads, const Rope* rope,
                           const std::vector<AttentionQuery>& queries, const Interrupt& interrupt,
                           ThreadPool* pool);

}  // namespace ihip::engine::cpu
