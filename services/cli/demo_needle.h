#pragma once

// `ihip demo needle`: builds a long synthetic context with a planted needle for one
// Llama-3-8B-shaped layer, decodes one step with InfiniteHiP sparse attention and with dense
// attention in-process, and reports whether the needle was found, accuracy and both times.

namespace ihip::cli {

int RunDemoNeedle();  // reads the demo flags; returns the process exit code

}  // namespace ihip::cli
