#pragma once

// `ihip demo needle`: builds a long synthetic context with a planted needle (engine/synthetic)
// for one Llama-3-8B-shaped layer, decodes its last token with InfiniteHiP sparse attention and
// reports whether the needle's block was selected, top-k and mass recall, the output error
// against dense attention (computed locally from the synthetic data) and the times.
//
// By default it runs against ihip-server over gRPC (RunDemoNeedle in commands.h); with
// --in_process it runs the CPU engine inside this process instead.

#include <cstdint>

#include "engine/hip_config.h"
#include "engine/synthetic/synthetic_data.h"

namespace ihip::cli {

constexpr int kDemoLayer = 16;                   // default --layer of the demo
constexpr int64_t kDemoDefaultContext = 131072;  // default --context of the demo

int64_t DemoContext();         // --context, or the default when it is 0
int RunDemoNeedleInProcess();  // returns the process exit code
// The demo's synthetic context (--seed, --margin; the layer's sink and window), with a
// progress bar. Shared by both modes.
engine::synthetic::SyntheticData BuildDemoContext(int64_t context, const engine::LayerConfig& cfg);

}  // namespace ihip::cli
