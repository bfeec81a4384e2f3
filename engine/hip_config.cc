#include "engine/hip_config.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace ihip::engine {
namespace {

bool IsPowerOfTwo(int x) { return x > 0 && (x & (x - 1)) == 0; }

std::vector<StageSpec> PresetStages(HipPreset preset, RefreshPreset refresh, int final_tokens) {
  const std::vector<int> r = RefreshIntervals(refresh);
  std::vector<StageSpec> s;
  if (preset == HipPreset::k3K) {
    s = {{256, 32768, r[0]}, {32, 8192, r[1]}, {8, 2048, r[2]}};
  } else {
    s = {{64, 32768, r[0]}, {32, 16384, r[1]}, {16, 4096, r[2]}};
  }
  if (final_tokens > 0) s.back().kept_tokens = final_tokens;
  return s;
}

}  // namespace

std::vector<int> RefreshIntervals(RefreshPreset preset) {
  switch (preset) {
    case RefreshPreset::kPaper:
      return {16, 8, 4};
    case RefreshPreset::kFast:
      return {32, 16, 8};
    case RefreshPreset::kFlash:
      return {96, 24, 8};
  }
  return {16, 8, 4};
}

HipConfig HipConfig::Make(HipPreset preset, RefreshPreset refresh) {
  HipConfig c;
  c.preset = preset;
  c.refresh = refresh;
  c.default_layer.stages = PresetStages(preset, refresh, 0);
  c.dense_layer.stages = PresetStages(preset, refresh, 4096);
  c.dense_layer.prune_rope_style = PruneRopeStyle::kChunkIndexed;
  return c;
}

HipConfig HipConfig::FullBudget() {
  HipConfig c = Make();
  for (LayerConfig* l : {&c.default_layer, &c.dense_layer}) {
    for (StageSpec& s : l->stages) s.kept_tokens = s.chunk_size * (1 << 22);
  }
  return c;
}

const LayerConfig& HipConfig::ForLayer(int layer) const {
  if (auto it = overrides.find(layer); it != overrides.end()) return it->second;
  if (std::find(dense_layers.begin(), dense_layers.end(), layer) != dense_layers.end()) {
    return dense_layer;
  }
  return default_layer;
}

absl::Status HipConfig::Validate(int num_layers) const {
  for (int layer : dense_layers) {
    if (layer < 0 || layer >= num_layers) {
      return absl::InvalidArgumentError(absl::StrCat("config.dense_layers: layer ", layer,
                                                     " is out of range [0, ", num_layers, ")"));
    }
  }
  for (const auto& [layer, unused] : overrides) {
    if (layer < 0 || layer >= num_layers) {
      return absl::InvalidArgumentError(absl::StrCat("config.layer_overrides: layer ", layer,
                                                     " is out of range [0, ", num_layers, ")"));
    }
  }
  for (int layer = 0; layer < num_layers; ++layer) {
    absl::Status s = ForLayer(layer).Validate();
    if (!s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("config of layer ", layer, ": ", s.message()));
    }
  }
  return absl::OkStatus();
}

absl::Status LayerConfig::Validate() const {
  auto bad = [](auto... parts) { return absl::InvalidArgumentError(absl::StrCat(parts...)); };
  if (sink_tokens < 0 || sink_tokens % 8 != 0) {
    return bad("sink_tokens must be a non-negative multiple of 8, got ", sink_tokens);
  }
  if (stages.empty()) return bad("stages must not be empty");
  if (query_block < 1) return bad("query_block must be >= 1, got ", query_block);
  if (pool_stride < 1) return bad("pool_stride must be >= 1, got ", pool_stride);
  if (pooled_stages < 0) return bad("pooled_stages must be >= 0, got ", pooled_stages);
  for (size_t i = 0; i < stages.size(); ++i) {
    const StageSpec& s = stages[i];
    const std::string where = absl::StrCat("stages[", i, "].");
    if (!IsPowerOfTwo(s.chunk_size) || s.chunk_size < 8) {
      return bad(where, "chunk_size must be a power of two >= 8, got ", s.chunk_size);
    }
    if (i > 0 && s.chunk_size > stages[i - 1].chunk_size) {
      return bad(where, "chunk_size (", s.chunk_size, ") must not exceed the previous stage's (",
                 stages[i - 1].chunk_size, ")");
    }
    if (s.kept_tokens < s.chunk_size || s.kept_tokens % s.chunk_size != 0) {
      return bad(where, "kept_tokens (", s.kept_tokens, ") must be a positive multiple of ",
                 "chunk_size (", s.chunk_size, ")");
    }
    if (s.refresh_interval < 1) {
      return bad(where, "refresh_interval must be >= 1, got ", s.refresh_interval);
    }
  }
  if (window_tokens <= stages.front().chunk_size) {
    return bad("window_tokens (", window_tokens, ") must exceed the stage-1 chunk_size (",
               stages.front().chunk_size, "): masking shrinks the window by one chunk");
  }
  // Between two refreshes of stage 1, decode appends refresh_interval tokens; they must stay in
  // the (shrunk) window, or the cached candidates would miss them.
  if (stages.front().refresh_interval > masking_window()) {
    return bad("stages[0].refresh_interval (", stages.front().refresh_interval,
               ") must not exceed window_tokens - stages[0].chunk_size (", masking_window(), ")");
  }
  return absl::OkStatus();
}

absl::StatusOr<HipPreset> ParseHipPreset(const std::string& name) {
  const std::string n = absl::AsciiStrToLower(name);
  if (n == "3k") return HipPreset::k3K;
  if (n == "5k") return HipPreset::k5K;
  return absl::InvalidArgumentError(absl::StrCat("unknown preset '", name, "' (3k, 5k)"));
}

absl::StatusOr<RefreshPreset> ParseRefreshPreset(const std::string& name) {
  const std::string n = absl::AsciiStrToLower(name);
  if (n == "paper") return RefreshPreset::kPaper;
  if (n == "fast") return RefreshPreset::kFast;
  if (n == "flash") return RefreshPreset::kFlash;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown refresh preset '", name, "' (paper, fast, flash)"));
}

const char* HipPresetName(HipPreset p) { return p == HipPreset::k3K ? "3k" : "5k"; }

const char* RefreshPresetName(RefreshPreset p) {
  switch (p) {
    case RefreshPreset::kPaper:
      return "paper";
    case RefreshPreset::kFast:
      return "fast";
    case RefreshPreset::kFlash:
      return "flash";
  }
  return "paper";
}

}  // namespace ihip::engine
