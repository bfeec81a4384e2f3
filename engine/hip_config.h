#pragma once

// InfiniteHiP sparse attention configuration (DESIGN §3): stage presets, refresh presets,
// dense layers and per-layer overrides. A HipConfig resolves to one LayerConfig per layer.

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace ihip::engine {

enum class HipPreset { k3K, k5K };
enum class RefreshPreset { kPaper, kFast, kFlash };

// How keys and the query are positioned when pruning in RoPE `extend` mode (DESIGN §3.4).
enum class PruneRopeStyle {
  kRelative,      // query at (window - stage-1 chunk) + 1, left probe at 0, right probe at 1
  kChunkIndexed,  // key at its chunk's index in the stage's candidate list
};

struct StageSpec {
  int chunk_size = 256;       // tokens per chunk scored; power of two >= 8
  int kept_tokens = 32768;    // tokens kept after the stage; multiple of chunk_size
  int refresh_interval = 16;  // decode steps between re-runs of this stage

  int kept_chunks() const { return kept_tokens / chunk_size; }
};

// Everything one layer's pruning and attention needs.
struct LayerConfig {
  int sink_tokens = 256;     // tokens [0, sink) always attended; multiple of 8
  int window_tokens = 1024;  // keys (p - window, p] always attended
  int query_block = 64;      // prefill queries sharing one mask
  int pool_stride = 4;       // prefill: stages <= pooled_stages score with queries mean-pooled
  int pooled_stages = 2;     //   over groups of pool_stride consecutive queries
  std::vector<StageSpec> stages;
  PruneRopeStyle prune_rope_style = PruneRopeStyle::kRelative;

  // The window shrunk by one stage-1 chunk while masking (768 with the defaults): no probe reads
  // a key in (p - masking_window, p].
  int masking_window() const { return window_tokens - stages.front().chunk_size; }
  int final_tokens() const { return stages.back().kept_tokens; }
  absl::Status Validate() const;
};

struct HipConfig {
  HipPreset preset = HipPreset::k3K;
  RefreshPreset refresh = RefreshPreset::kPaper;
  LayerConfig default_layer;  // every layer not listed below
  LayerConfig dense_layer;    // the layers in dense_layers
  std::vector<int> dense_layers = {0, 1, 2};
  std::map<int, LayerConfig> overrides;  // per layer, takes precedence over the above

  // The preset's stages and refresh intervals; dense layers keep 4096 final tokens and prune
  // with chunk-indexed RoPE.
  static HipConfig Make(HipPreset preset = HipPreset::k3K,
                        RefreshPreset refresh = RefreshPreset::kPaper);
  // A budget so large that every token is kept at every stage (sparse == dense): for tests and
  // evaluation.
  static HipConfig FullBudget();

  const LayerConfig& ForLayer(int layer) const;
  // Checks every layer config that `num_layers` layers would use.
  absl::Status Validate(int num_layers) const;
};

// The three refresh intervals of a preset, stage 1 first.
std::vector<int> RefreshIntervals(RefreshPreset preset);
absl::StatusOr<HipPreset> ParseHipPreset(const std::string& name);          // "3k", "5k"
absl::StatusOr<RefreshPreset> ParseRefreshPreset(const std::string& name);  // "paper", ...
const char* HipPresetName(HipPreset p);
const char* RefreshPresetName(RefreshPreset p);

}  // namespace ihip::engine
