#pragma once

// Hierarchical pruning on the CPU (DESIGN §3.2–3.3): scores candidate chunks with the
// representative-token search (max over the block's queries and over all query heads), keeps the
// top chunks deterministically, and splits them for the next stage, producing the final 8-token
// blocks of one query block. The readable reference for the CUDA kernels.

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "engine/hip/interrupt.h"
#include "engine/hip/kv_view.h"
#include "engine/hip/mask.h"
#include "engine/hip/rope.h"
#include "engine/hip_config.h"
#include "engine/types.h"

namespace ihip::engine::cpu {

class ThreadPool;

// Queries that score probes: [num][Hq][D] fp32, softmax scale folded in, before RoPE in extend
// mode; positions[i] is query i's position (used by the chunk-indexed style).
struct PruneQueries {
  int num = 0;
  const float* q = nullptr;
  const int64_t* positions = nullptr;
};

struct PruneInput {
  const KvView* kv = nullptr;
  int num_q_heads = 0;
  const LayerConfig* cfg = nullptr;
  const Rope* rope = nullptr;  // null in RoPE `none` mode
  int64_t p_min = 0;           // first query position of the block
  PruneQueries pooled;         // stages 1..cfg->pooled_stages
  PruneQueries full;           // later stages
  Interrupt interrupt;
};

// Scores of `chunks` (left tokens, ascending; size chunk_size) for stage `stage` (0-based):
// max over heads of the representative score; -inf for inactive (empty) chunks.
std::vector<float> ScoreChunks(const PruneInput& in, int stage, const std::vector<int64_t>& chunks,
                               ThreadPool* pool);

// Indices of the `keep` best active chunks: higher score first, then lower token index.
std::vector<int64_t> TopChunks(const std::vector<float>& scores, const std::vector<int64_t>& chunks,
                               int64_t keep);

// Runs stages from_stage..N-1 (0-based). Stage 0 takes Stage1Candidates(p_min); a later stage
// takes cache->stage_inputs[from_stage]. Updates cache->stage_inputs of the stages after
// from_stage and cache->blocks. `stage_kept` (optional) receives each run stage's kept chunks.
absl::Status RunStages(const PruneInput& in, int from_stage, MaskCache* cache, ThreadPool* pool,
                       std::vector<std::vector<int64_t>>* stage_kept = nullptr);

}  // namespace ihip::engine::cpu
