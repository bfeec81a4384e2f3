#pragma once

// Definitions shared by the score and select stages of GPU pruning (engine/cuda/pruning.h):
// candidate lists, score keys, and how a batched launch finds one query block's buffers.
//
// Batched launches (LaunchRunStagesBatched): grid y = query block b; every per-block pointer is
// base + b * stride (AtBlock, strides in elements of the pointee), or, for the buffers in the
// workspace slices, base + b * block_bytes (AtSlice). b * stride < 2^31. A single run has
// gridDim.y 1 and every stride 0.

#include <cstdint>

#include "engine/cuda/device_kv.h"

namespace ihip::engine::cuda::kernels {

constexpr int ElemBytes(ElemType t) {
  return t == ElemType::kF32 ? 4 : (t == ElemType::kF16 || t == ElemType::kBF16) ? 2 : 1;
}

// This CTA's query block's element of a per-block array.
template <class T>
__device__ inline T* AtBlock(T* base, int stride) {
  return base + int(blockIdx.y) * stride;  // < 2^31 elements (LaunchRunStagesBatched checks)
}

// This CTA's query block's slice of a workspace buffer, slices `bytes` apart (a multiple of 256).
// Two spellings of one address: the search loops sit at their register cap (80), and ptxas
// keeps the tensor-core kernel spill-free with the first, the CUDA-core one with the second.
template <bool kByteOffset = false, class T>
__device__ inline T* AtSlice(T* base, int bytes) {
  if constexpr (kByteOffset) {
    return reinterpret_cast<T*>(reinterpret_cast<uintptr_t>(base) + int(blockIdx.y) * bytes);
  } else {
    return base + int(blockIdx.y) * (bytes / int(sizeof(T)));
  }
}

// Candidate chunks of one stage: an explicit ascending list, or the stage-1 grid
// left_j = grid_first + grid_step * j for left_j <= p_min - window (engine::Stage1Candidates).
struct StageCandidates {
  const int64_t* lefts = nullptr;  // device [capacity] per query block; null = the stage-1 grid
  const int* count = nullptr;      // device count of `lefts` per query block
  int capacity = 0;                // counts are clamped to it
  int grid_first = 0;              // sink tokens
  int grid_step = 0;               // stage-1 chunk size
  int window = 0;                  // window tokens
  int block_bytes = 0;             // batched: bytes between query blocks' lists and counts
};

// `step` is this query block's (already offset).
__device__ inline int CandidateCount(const StageCandidates& c, const StepScalars* step) {
  int64_t n;
  if (c.lefts != nullptr) {
    n = *AtSlice(c.count, c.block_bytes);
  } else {
    const int64_t last = step->p_min - c.window;
    n = last >= c.grid_first ? (last - c.grid_first) / c.grid_step + 1 : 0;
  }
  return int(n < 0 ? 0 : (n > c.capacity ? c.capacity : n));
}

template <bool kByteOffset = false>
__device__ inline int CandidateLeft(const StageCandidates& c, int i) {
  return c.lefts != nullptr ? int(AtSlice<kByteOffset>(c.lefts, c.block_bytes)[i])
                            : c.grid_first + c.grid_step * i;
}

// Order-preserving map of a float to uint32 (pruning.h ScoreFromKey is the inverse).
__device__ inline uint32_t ScoreKey(float s) {
  const uint32_t b = __float_as_uint(s);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

}  // namespace ihip::engine::cuda::kernels
