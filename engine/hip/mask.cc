#include "engine/hip/mask.h"

#include <algorithm>

#include "engine/hip/rope.h"

namespace ihip::engine {

std::vector<int64_t> Stage1Candidates(int64_t p_min, const LayerConfig& cfg) {
  std::vector<int64_t> lefts;
  const int64_t chunk = cfg.stages.front().chunk_size;
  const int64_t last_left = p_min - cfg.window_tokens;  // left_j <= p_min - window
  for (int64_t left = cfg.sink_tokens; left <= last_left; left += chunk) lefts.push_back(left);
  return lefts;
}

int64_t ScanLimit(int64_t p_min, int64_t kv_length, const LayerConfig& cfg) {
  return std::min(kv_length, p_min - cfg.masking_window() + 1);
}

std::vector<int64_t> SplitChunks(const std::vector<int64_t>& kept, int from, int to, int sink) {
  std::vector<int64_t> aligned;
  aligned.reserve(kept.size());
  for (int64_t left : kept) aligned.push_back(sink + from * ((left - sink) / from));
  std::sort(aligned.begin(), aligned.end());
  aligned.erase(std::unique(aligned.begin(), aligned.end()), aligned.end());
  std::vector<int64_t> out;
  out.reserve(aligned.size() * (from / to));
  for (int64_t left : aligned) {
    for (int64_t x = left; x < left + from; x += to) out.push_back(x);
  }
  return out;
}

std::vector<int64_t> ChunksToBlocks(const std::vector<int64_t>& kept, int chunk_size) {
  std::vector<int64_t> blocks;
  blocks.reserve(kept.size() * (chunk_size / 8));
  for (int64_t left : kept) {
    for (int64_t x = left; x < left + chunk_size; x += 8) blocks.push_back(x / 8);
  }
  std::sort(blocks.begin(), blocks.end());
  blocks.erase(std::unique(blocks.begin(), blocks.end()), blocks.end());
  return blocks;
}

std::vector<KeyRun> SparseRuns(int64_t p, int64_t p_min, const LayerConfig& cfg,
                               const std::vector<int64_t>& blocks) {
  std::vector<KeyRun> runs;
  const int64_t window_begin = std::max<int64_t>(0, std::min(p, p_min) - cfg.window_tokens + 1);
  const StreamingPositions pos =
      MakeStreamingPositions(p_min, cfg.window_tokens, 8 * int64_t(blocks.size()));
  // Sink: tokens below the window among the first sink_tokens.
  const int64_t sink_end = std::min<int64_t>(cfg.sink_tokens, window_begin);
  if (sink_end > 0) runs.push_back({0, sink_end, pos.selected_base - cfg.sink_tokens});
  // Selected: tokens of the selected blocks below the window; the j-th selected token (masked
  // ones included) sits at selected_base + j.
  for (size_t m = 0; m < blocks.size(); ++m) {
    const int64_t begin = std::max<int64_t>(blocks[m] * 8, cfg.sink_tokens);
    const int64_t end = std::min<int64_t>(blocks[m] * 8 + 8, window_begin);
    if (begin >= end) continue;
    const int64_t pos_begin = pos.selected_base + 8 * int64_t(m) + (begin - blocks[m] * 8);
    // Merge with the previous selected run when tokens and positions both continue (never
    // with the sink run, whose positions are clamped).
    if (!runs.empty() && runs.back().begin >= cfg.sink_tokens && runs.back().end == begin &&
        runs.back().pos_begin + (begin - runs.back().begin) == pos_begin) {
      runs.back().end = end;
    } else {
      runs.push_back({begin, end, pos_begin});
    }
  }
  runs.push_back({window_begin, p + 1, window_begin});
  return runs;
}

std::vector<KeyRun> DenseRuns(int64_t p) { return {KeyRun{0, p + 1, 0}}; }

int64_t CountKeys(const std::vector<KeyRun>& runs) {
  int64_t n = 0;
  for (const KeyRun& r : runs) n += r.end - r.begin;
  return n;
}

}  // namespace ihip::engine
