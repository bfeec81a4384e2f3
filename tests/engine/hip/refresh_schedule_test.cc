// The mask refresh schedule (DESIGN §3.3): at decode step s, the smallest stage i with
// s % n_refresh(i) == 0 is re-run (with every later stage); none matching = cached mask reused.

#include "engine/hip/refresh_schedule.h"

#include <array>
#include <map>

#include "engine/hip_config.h"
#include "gtest/gtest.h"

namespace ihip::engine {
namespace {

// Independent computation: stage 1 runs when 16 | s, else stage 2 when 8 | s, else stage 3 when
// 4 | s (paper), written out per preset from the literal intervals.
int Expected(int n1, int n2, int n3, int64_t s) {
  if (s % n1 == 0) return 1;
  if (s % n2 == 0) return 2;
  if (s % n3 == 0) return 3;
  return 0;
}

TEST(RefreshScheduleTest, MatchesEachPresetOver300Steps) {
  const std::map<RefreshPreset, std::array<int, 3>> presets = {
      {RefreshPreset::kPaper, {16, 8, 4}},
      {RefreshPreset::kFast, {32, 16, 8}},
      {RefreshPreset::kFlash, {96, 24, 8}},
  };
  for (HipPreset hp : {HipPreset::k3K, HipPreset::k5K}) {
    for (const auto& [preset, n] : presets) {
      const HipConfig c = HipConfig::Make(hp, preset);
      std::map<int, int> count;
      for (int64_t s = 0; s < 300; ++s) {
        const int want = Expected(n[0], n[1], n[2], s);
        ASSERT_EQ(StageToRefresh(c.default_layer.stages, s), want)
            << RefreshPresetName(preset) << " step " << s;
        ASSERT_EQ(StageToRefresh(c.dense_layer.stages, s), want);
        ++count[want];
      }
      // Step 0 (the first after prefill) runs every stage.
      EXPECT_EQ(StageToRefresh(c.default_layer.stages, 0), 1);
      // Counts over 300 steps, e.g. paper: 19 full runs, 19 from stage 2, 37 from stage 3.
      EXPECT_EQ(count[1], (299 / n[0]) + 1);
      EXPECT_EQ(count[1] + count[2], (299 / n[1]) + 1);
      EXPECT_EQ(count[1] + count[2] + count[3], (299 / n[2]) + 1);
    }
  }
}

TEST(RefreshScheduleTest, PaperPresetFirstSteps) {
  const auto stages = HipConfig::Make().default_layer.stages;
  const int want[] = {1, 0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 3, 0, 0, 0, 2};
  for (int s = 0; s < 25; ++s) EXPECT_EQ(StageToRefresh(stages, s), want[s]) << s;
}

TEST(RefreshScheduleTest, IntervalOneAlwaysRefreshes) {
  std::vector<StageSpec> stages = HipConfig::Make().default_layer.stages;
  stages[2].refresh_interval = 1;
  for (int s = 0; s < 50; ++s) EXPECT_NE(StageToRefresh(stages, s), 0);
  stages[0].refresh_interval = 1;
  for (int s = 0; s < 50; ++s) EXPECT_EQ(StageToRefresh(stages, s), 1);
}

}  // namespace
}  // namespace ihip::engine
