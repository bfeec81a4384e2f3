#pragma once

// Plain structs shared by the CUDA backend's launchers and kernels (host and device code):
// how a kernel finds one (sequence, layer)'s KV on the GPU, the per-step scalars it reads from
// device memory, and the device form of the mask cache. No CUDA headers, no engine classes:
// kernels know nothing above them.
//
// Graph rule: everything that changes from one decode step to the next (positions, lengths,
// counts) is read by the kernels from device memory (StepScalars, counts written by earlier
// kernels), never passed by value, so that a captured step replays with new values after one
// small host-to-device copy of the StepScalars.

#include <cstdint>

namespace ihip::engine::cuda {

// Storage / wire element types; the values equal engine::DType's (kF32, kF16, kBF16, kF8E4M3,
// kF8E5M2).
enum class ElemType : int { kF32 = 0, kF16 = 1, kBF16 = 2, kF8E4M3 = 3, kF8E5M2 = 4 };

// One (sequence, layer)'s KV on the device, read through a block table (DESIGN §4 page layout):
// page i holds tokens [i * page_tokens, (i + 1) * page_tokens): first K laid out
// [page_tokens][kv_heads][head_dim], then V with the same layout, in `dtype`. Any 8-token block
// is contiguous inside one page (page_tokens is a multiple of 8).
struct DeviceKv {
  const uint8_t* const* pages = nullptr;  // device array [>= ceil(length / page_tokens)] of device
                                          // page base addresses
  int page_tokens = 64;
  int kv_heads = 8;
  int head_dim = 128;
  ElemType dtype = ElemType::kBF16;
};

// Per-step scalars, in device memory.
struct StepScalars {
  int64_t position = 0;   // first query position of the item (decode: p)
  int64_t kv_length = 0;  // keys stored, the item's own tokens included (decode: p + 1)
  int64_t p_min = 0;      // pruning: first query position of the query block being masked
  int64_t anchor = 0;     // attention: the mask's anchor (MaskCache::anchor, SparseRuns' p_min)
};

// RoPE for `extend` mode: neox rotate-half, angle(pos, i) = pos * inv_freq[i] reduced modulo 2*pi
// in double precision, then cos/sin (fp32 rotation), as engine/hip/rope.h on the CPU.
struct DeviceRope {
  const double* inv_freq = nullptr;  // device [head_dim / 2]; null = `none` mode (never rotate)
};

// The device form of MaskCache (engine/hip/mask.h) for one (sequence, layer): candidate chunks
// of each stage after the first, and the final 8-token blocks. Arrays are ascending; counts are
// device ints written by the pruning kernels.
struct DeviceMask {
  static constexpr int kMaxStages = 4;
  int64_t* stage_inputs[kMaxStages] = {};  // [s] = left tokens of stage s's candidates (s >= 1)
  int* stage_input_counts = nullptr;       // device [kMaxStages]
  int64_t* blocks = nullptr;               // selected 8-token blocks (block b = tokens [8b, 8b+8))
  int* num_blocks = nullptr;               // device int
  int stage_capacity[kMaxStages] = {};     // allocated entries of stage_inputs[s]
  int block_capacity = 0;                  // allocated entries of blocks
};

}  // namespace ihip::engine::cuda
