// HipConfig presets (DESIGN §3.2, §3.3) and LayerConfig / HipConfig validation: every bad field
// is an INVALID_ARGUMENT whose message names it.

#include "engine/hip_config.h"

#include <string>

#include "gtest/gtest.h"

namespace ihip::engine {
namespace {

void ExpectInvalid(const absl::Status& s, const std::string& needle) {
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(std::string(s.message()).find(needle), std::string::npos)
      << "message '" << s.message() << "' does not name '" << needle << "'";
}

void ExpectStages(const LayerConfig& l, std::vector<std::pair<int, int>> chunk_and_kept,
                  std::vector<int> refresh) {
  ASSERT_EQ(l.stages.size(), chunk_and_kept.size());
  for (size_t i = 0; i < l.stages.size(); ++i) {
    EXPECT_EQ(l.stages[i].chunk_size, chunk_and_kept[i].first) << "stage " << i;
    EXPECT_EQ(l.stages[i].kept_tokens, chunk_and_kept[i].second) << "stage " << i;
    EXPECT_EQ(l.stages[i].refresh_interval, refresh[i]) << "stage " << i;
    EXPECT_EQ(l.stages[i].kept_chunks(), chunk_and_kept[i].second / chunk_and_kept[i].first);
  }
}

TEST(HipConfigTest, Preset3K) {
  const HipConfig c = HipConfig::Make();
  EXPECT_EQ(c.preset, HipPreset::k3K);
  EXPECT_EQ(c.refresh, RefreshPreset::kPaper);
  const LayerConfig& l = c.default_layer;
  EXPECT_EQ(l.sink_tokens, 256);
  EXPECT_EQ(l.window_tokens, 1024);
  EXPECT_EQ(l.query_block, 64);
  EXPECT_EQ(l.pool_stride, 4);
  EXPECT_EQ(l.pooled_stages, 2);
  EXPECT_EQ(l.masking_window(), 768);
  EXPECT_EQ(l.final_tokens(), 2048);
  EXPECT_EQ(l.prune_rope_style, PruneRopeStyle::kRelative);
  ExpectStages(l, {{256, 32768}, {32, 8192}, {8, 2048}}, {16, 8, 4});
  // Dense layers keep 4096 final tokens and prune with chunk-indexed RoPE.
  EXPECT_EQ(c.dense_layers, (std::vector<int>{0, 1, 2}));
  ExpectStages(c.dense_layer, {{256, 32768}, {32, 8192}, {8, 4096}}, {16, 8, 4});
  EXPECT_EQ(c.dense_layer.prune_rope_style, PruneRopeStyle::kChunkIndexed);
  EXPECT_TRUE(c.Validate(32).ok()) << c.Validate(32);
}

TEST(HipConfigTest, Preset5KAndRefreshPresets) {
  const HipConfig c = HipConfig::Make(HipPreset::k5K, RefreshPreset::kFlash);
  ExpectStages(c.default_layer, {{64, 32768}, {32, 16384}, {16, 4096}}, {96, 24, 8});
  ExpectStages(c.dense_layer, {{64, 32768}, {32, 16384}, {16, 4096}}, {96, 24, 8});
  EXPECT_TRUE(c.Validate(32).ok()) << c.Validate(32);
  ExpectStages(HipConfig::Make(HipPreset::k3K, RefreshPreset::kFast).default_layer,
               {{256, 32768}, {32, 8192}, {8, 2048}}, {32, 16, 8});
  EXPECT_EQ(RefreshIntervals(RefreshPreset::kPaper), (std::vector<int>{16, 8, 4}));
  EXPECT_EQ(RefreshIntervals(RefreshPreset::kFast), (std::vector<int>{32, 16, 8}));
  EXPECT_EQ(RefreshIntervals(RefreshPreset::kFlash), (std::vector<int>{96, 24, 8}));
}

TEST(HipConfigTest, FullBudgetKeepsEveryChunk) {
  const HipConfig c = HipConfig::FullBudget();
  for (const LayerConfig* l : {&c.default_layer, &c.dense_layer}) {
    for (const StageSpec& s : l->stages) EXPECT_GE(s.kept_chunks(), 1 << 22);
  }
  EXPECT_TRUE(c.Validate(4).ok()) << c.Validate(4);
}

TEST(HipConfigTest, ForLayerPrecedence) {
  HipConfig c = HipConfig::Make();
  LayerConfig o = c.default_layer;
  o.window_tokens = 2048;
  c.overrides[1] = o;
  c.overrides[5] = o;
  EXPECT_EQ(&c.ForLayer(0), &c.dense_layer);
  EXPECT_EQ(c.ForLayer(1).window_tokens, 2048);  // override beats dense_layers
  EXPECT_EQ(&c.ForLayer(2), &c.dense_layer);
  EXPECT_EQ(&c.ForLayer(3), &c.default_layer);
  EXPECT_EQ(c.ForLayer(5).window_tokens, 2048);
  EXPECT_TRUE(c.Validate(6).ok()) << c.Validate(6);
}

TEST(HipConfigTest, ParsePresets) {
  EXPECT_EQ(*ParseHipPreset("3k"), HipPreset::k3K);
  EXPECT_EQ(*ParseHipPreset("5K"), HipPreset::k5K);
  EXPECT_EQ(*ParseRefreshPreset("paper"), RefreshPreset::kPaper);
  EXPECT_EQ(*ParseRefreshPreset("Fast"), RefreshPreset::kFast);
  EXPECT_EQ(*ParseRefreshPreset("flash"), RefreshPreset::kFlash);
  ExpectInvalid(ParseHipPreset("4k").status(), "4k");
  ExpectInvalid(ParseRefreshPreset("slow").status(), "slow");
  EXPECT_STREQ(HipPresetName(HipPreset::k5K), "5k");
  EXPECT_STREQ(RefreshPresetName(RefreshPreset::kFlash), "flash");
}

// ---- LayerConfig::Validate ----

LayerConfig Good() { return HipConfig::Make().default_layer; }

TEST(LayerConfigTest, DefaultIsValid) { EXPECT_TRUE(Good().Validate().ok()); }

TEST(LayerConfigTest, ChunkSizeMustBePowerOfTwoAtLeast8) {
  for (int cs : {0, 4, 48, 100, 255}) {
    LayerConfig l = Good();
    l.stages[1].chunk_size = cs;
    l.stages[1].kept_tokens = 8192;
    ExpectInvalid(l.Validate(), "stages[1].chunk_size");
  }
}

TEST(LayerConfigTest, ChunkSizeMustNotIncrease) {
  LayerConfig l = Good();
  l.stages[2].chunk_size = 64;  // stage 2 has 32
  ExpectInvalid(l.Validate(), "stages[2].chunk_size");
}

TEST(LayerConfigTest, KeptTokensMustBeAMultipleOfTheChunkSize) {
  LayerConfig l = Good();
  l.stages[0].kept_tokens = 32768 + 8;
  ExpectInvalid(l.Validate(), "stages[0].");
  ExpectInvalid(l.Validate(), "kept_tokens");
  l = Good();
  l.stages[1].kept_tokens = 16;  // fewer than one chunk of 32
  ExpectInvalid(l.Validate(), "kept_tokens");
  l = Good();
  l.stages[2].kept_tokens = 0;
  ExpectInvalid(l.Validate(), "kept_tokens");
}

TEST(LayerConfigTest, RefreshIntervalBounds) {
  LayerConfig l = Good();
  l.stages[2].refresh_interval = 0;
  ExpectInvalid(l.Validate(), "refresh_interval");
  l = Good();
  l.stages[0].refresh_interval = -3;
  ExpectInvalid(l.Validate(), "refresh_interval");
  // Stage 1 may not wait longer than the shrunk window (1024 - 256 = 768) between refreshes.
  l = Good();
  l.stages[0].refresh_interval = 768;
  EXPECT_TRUE(l.Validate().ok()) << l.Validate();
  l.stages[0].refresh_interval = 769;
  ExpectInvalid(l.Validate(), "refresh_interval");
}

TEST(LayerConfigTest, OtherFields) {
  LayerConfig l = Good();
  l.sink_tokens = 12;
  ExpectInvalid(l.Validate(), "sink_tokens");
  l = Good();
  l.sink_tokens = -8;
  ExpectInvalid(l.Validate(), "sink_tokens");
  l = Good();
  l.sink_tokens = 0;  // no sink is allowed
  EXPECT_TRUE(l.Validate().ok());
  l = Good();
  l.window_tokens = 256;  // must exceed the stage-1 chunk
  ExpectInvalid(l.Validate(), "window_tokens");
  l = Good();
  l.stages.clear();
  ExpectInvalid(l.Validate(), "stages");
  l = Good();
  l.query_block = 0;
  ExpectInvalid(l.Validate(), "query_block");
  l = Good();
  l.pool_stride = 0;
  ExpectInvalid(l.Validate(), "pool_stride");
  l = Good();
  l.pooled_stages = -1;
  ExpectInvalid(l.Validate(), "pooled_stages");
}

// ---- HipConfig::Validate ----

TEST(HipConfigValidateTest, DenseLayerOutOfRange) {
  HipConfig c = HipConfig::Make();
  ExpectInvalid(c.Validate(2), "dense_layers");  // layer 2 of a 2-layer model
  c.dense_layers = {0, 1};
  EXPECT_TRUE(c.Validate(2).ok());
  c.dense_layers = {-1};
  ExpectInvalid(c.Validate(4), "dense_layers");
  c.dense_layers = {};
  EXPECT_TRUE(c.Validate(1).ok());
}

TEST(HipConfigValidateTest, OverrideOutOfRangeAndBadOverride) {
  HipConfig c = HipConfig::Make();
  c.overrides[7] = c.default_layer;
  ExpectInvalid(c.Validate(4), "overrides: layer 7");
  c.overrides.clear();
  LayerConfig bad = c.default_layer;
  bad.stages[0].chunk_size = 100;
  c.overrides[3] = bad;
  const absl::Status s = c.Validate(4);
  ExpectInvalid(s, "layer 3");
  ExpectInvalid(s, "chunk_size");
}

TEST(HipConfigValidateTest, BadDefaultOrDenseLayerConfig) {
  HipConfig c = HipConfig::Make();
  c.default_layer.stages[2].kept_tokens = 2047;
  ExpectInvalid(c.Validate(4), "layer 3");
  c = HipConfig::Make();
  c.dense_layer.stages[0].refresh_interval = 0;
  ExpectInvalid(c.Validate(4), "layer 0");
}

}  // namespace
}  // namespace ihip::engine
