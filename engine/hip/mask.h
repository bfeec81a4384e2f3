#pragma once

// Backend-neutral pieces of the mask (DESIGN §3.1–3.3): the stage-1 chunk grid and its
// eligibility, the scan limit that keeps probes out of the shrunk window, realignment and
// splitting between stages, and the attended key set of a query as runs of keys with their
// RoPE positions.

#include <cstdint>
#include <vector>

#include "engine/hip_config.h"

namespace ihip::engine {

// Per (sequence, layer): what decode reuses between refreshes.
struct MaskCache {
  bool valid = false;
  // stage_inputs[s] = left token of every candidate chunk of stage s (0-based, s >= 1), ascending.
  std::vector<std::vector<int64_t>> stage_inputs;
  std::vector<int64_t> blocks;  // final selected 8-token blocks, ascending
  int64_t anchor = 0;           // query position of the last stage-1 run (SparseRuns' p_min)
  int64_t decode_step = 0;      // steps since the last prefill or bulk append
};

// Left tokens of the stage-1 candidate chunks for a query block starting at p_min: chunks of
// the stage-1 grid starting at `sink` with left <= p_min - window.
std::vector<int64_t> Stage1Candidates(int64_t p_min, const LayerConfig& cfg);

// Exclusive end of the keys any probe may read for a block starting at p_min (the window shrunk
// by one stage-1 chunk), also bounded by the keys present.
int64_t ScanLimit(int64_t p_min, int64_t kv_length, const LayerConfig& cfg);

// Realigns the kept chunks of a stage (chunk size `from`) to that stage's grid, dedups, sorts
// them, and splits each into chunks of size `to`: the next stage's candidates.
std::vector<int64_t> SplitChunks(const std::vector<int64_t>& kept, int from, int to, int sink);

// The final stage's kept chunks as ascending 8-token block indices.
std::vector<int64_t> ChunksToBlocks(const std::vector<int64_t>& kept, int chunk_size);

// Keys [begin, end) attended at RoPE positions max(0, pos_begin + (t - begin)).
struct KeyRun {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t pos_begin = 0;
  bool operator==(const KeyRun&) const = default;
};

// What the query at position p attends to: sink, selected blocks and window, each key once, none
// after p, in ascending token order; positions follow the StreamingLLM renumbering (window keys
// keep their true positions). `p_min` (<= p) is the block's anchor: the position for which its
// stage-1 candidates were computed — the first query of a prefill block, or in decode the step
// of the last stage-1 refresh (MaskCache::anchor).
//
// The window is (p_min - window, p], not (p - window, p]: the candidates cover the keys up to
// p_min - window, so a later query of the block (or a decode step reusing a cached mask) would
// otherwise skip the keys between the last candidate chunk and its own window — sparse would
// then differ from dense under a budget that covers every token, and keys sliding out of the
// window between refreshes would be lost. With p == p_min this is exactly DESIGN §3.1.
std::vector<KeyRun> SparseRuns(int64_t p, int64_t p_min, const LayerConfig& cfg,
                               const std::vector<int64_t>& blocks);
// Every key up to p at its true position.
std::vector<KeyRun> DenseRuns(int64_t p);
int64_t CountKeys(const std::vector<KeyRun>& runs);

}  // namespace ihip::engine
