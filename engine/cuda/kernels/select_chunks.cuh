#pragma once

// Select stage of GPU pruning (engine/cuda/pruning.h, DESIGN §3.2), one CTA per query block
// (SelectChunksKernel in kernels/score_chunks.cuh, after the stage's score kernel): keeps
// the top kept_chunks active candidates of the stage (as cpu::TopChunks: higher score first,
// then lower token index; all active ones when there are fewer), in ascending order, then writes
// the next stage's candidates (engine::SplitChunks: realign to the stage's grid, dedup, split) or
// the final 8-token blocks (engine::ChunksToBlocks: ascending, dedup).
//
// Top-k without sorting: a radix select over the uint32 score keys (up to 4 passes of 8 bits, a
// 256-bin shared histogram, warp-aggregated atomics) finds the threshold key T and how many keys
// equal to T are kept (the first ones in index order, i.e. the lowest token indices, since
// candidate lists are ascending); one block scan then compacts the kept candidates in index
// order, which is already ascending. The keys are read from L2 once into shared memory (up to
// SelectParams::cached_keys; beyond that every pass reads them from L2). Works for any CTA size
// that is a multiple of 32, up to 1024.

#include <climits>
#include <cstdint>

#include "engine/cuda/kernels/score_common.cuh"

namespace ihip::engine::cuda::kernels {

inline constexpr int kSelectThreads = 1024;
inline constexpr int kSelectCachedKeys = 8192;  // at most 32 KB of shared memory

struct SelectParams {
  int kept_chunks = 0;      // chunks to keep
  int chunk_size = 0;       // this stage's chunk size
  int next_chunk_size = 0;  // the next stage's; 0 after the last stage (blocks)
  int sink = 0;             // grid origin for realignment
  int64_t* kept = nullptr;  // workspace [kept_capacity] per query block: kept lefts, ascending
  int kept_capacity = 0;
  int64_t* out = nullptr;    // device [out_capacity] per query block: next candidates or blocks
  int* out_count = nullptr;  // device, per query block
  int out_capacity = 0;
  int cached_keys = 0;       // keys the shared-memory cache holds (SelectSmemBytes)
  // Batched: kept is a workspace slice (StageCandidates::block_bytes apart); elements between
  // query blocks' outputs and counts.
  int out_stride = 0, out_count_stride = 0;
};

// Shared memory of the select: this header, then the key cache.
struct SelectShared {
  int hist[256];
  unsigned long long warp_sums[32];
  int total, digit, above, bin;
};

constexpr int SelectSmemBytes(int cached_keys) {
  return int((sizeof(SelectShared) + 15) / 16 * 16) + 4 * cached_keys;
}

__device__ inline uint32_t* SelectKeyCache(SelectShared& sh) {
  return reinterpret_cast<uint32_t*>(reinterpret_cast<char*>(&sh) +
                                     (sizeof(SelectShared) + 15) / 16 * 16);
}

struct Threshold {
  uint32_t key;  // keys > key are kept
  int needed;    // and the first `needed` keys == key in index order
};

// Exclusive prefix sum over the CTA; *total receives the sum of all v.
__device__ inline unsigned long long BlockExclusiveScan(unsigned long long v, SelectShared& sh,
                                                        unsigned long long* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  unsigned long long x = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const unsigned long long y = __shfl_up_sync(0xffffffffu, x, o);
    if (lane >= o) x += y;
  }
  if (lane == 31) sh.warp_sums[warp] = x;
  __syncthreads();
  const int warps = int(blockDim.x) >> 5;
  if (warp == 0) {
    unsigned long long s = lane < warps ? sh.warp_sums[lane] : 0ull;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const unsigned long long y = __shfl_up_sync(0xffffffffu, s, o);
      if (lane >= o) s += y;
    }
    sh.warp_sums[lane] = s;  // inclusive over warps
  }
  __syncthreads();
  const unsigned long long before = (warp > 0 ? sh.warp_sums[warp - 1] : 0ull) + x - v;
  *total = sh.warp_sums[warps - 1];
  __syncthreads();  // warp_sums is reused by the next scan
  return before;
}

// Histogram of the next 8-bit digit of the active keys whose higher digits equal `prefix`.
__device__ inline void DigitHistogram(const uint32_t* keys, int n, int pass, uint32_t prefix,
                                      int* hist) {
  const int shift = 24 - 8 * pass;
  for (int base = 0; base < n; base += blockDim.x) {
    const int i = base + threadIdx.x;
    const uint32_t key = i < n ? keys[i] : 0u;
    const bool valid = key != 0u && (pass == 0 || (key >> (shift + 8)) == prefix);
    const uint32_t digit = valid ? (key >> shift) & 0xffu : 0x100u;
    const unsigned peers = __match_any_sync(0xffffffffu, digit);
    if (valid && int(threadIdx.x & 31) == __ffs(peers) - 1) atomicAdd(hist + digit, __popc(peers));
  }
}

// Warp 0: the digit whose bin holds the remaining-th largest key (bins above it hold fewer than
// `remaining` keys); writes digit, the count above it, its bin count and the histogram total.
__device__ inline void PickDigit(int remaining, SelectShared& sh) {
  const int lane = threadIdx.x;
  int local = 0;
#pragma unroll
  for (int b = 0; b < 8; ++b) local += sh.hist[8 * lane + b];
  int incl = local;  // sum over lanes >= lane
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int y = __shfl_down_sync(0xffffffffu, incl, o);
    if (lane + o < 32) incl += y;
  }
  if (lane == 0) sh.total = incl;
  int above = incl - local;
  if (above >= remaining || above + local < remaining) return;
  for (int b = 7; b >= 0; --b) {
    const int c = sh.hist[8 * lane + b];
    if (above + c >= remaining) {
      sh.digit = 8 * lane + b;
      sh.above = above;
      sh.bin = c;
      return;
    }
    above += c;
  }
}

// The threshold keeping exactly min(K, active) keys (the same in every thread).
__device__ inline Threshold FindThreshold(const uint32_t* keys, int n, int k, SelectShared& sh) {
  if (k <= 0) return {0xffffffffu, 0};
  if (k >= n) return {1u, INT_MAX};  // every active key
  uint32_t prefix = 0;
  int remaining = k;
  for (int pass = 0; pass < 4; ++pass) {
    for (int b = threadIdx.x; b < 256; b += blockDim.x) sh.hist[b] = 0;
    __syncthreads();
    DigitHistogram(keys, n, pass, prefix, sh.hist);
    __syncthreads();
    if (threadIdx.x < 32) PickDigit(remaining, sh);
    __syncthreads();
    if (pass == 0 && sh.total <= remaining) return {1u, INT_MAX};
    prefix = (prefix << 8) | uint32_t(sh.digit);
    remaining -= sh.above;
    if (sh.bin == remaining) return {prefix << (24 - 8 * pass), INT_MAX};
  }
  return {prefix, remaining};
}

// Writes the kept candidates' lefts, in index order, to p.kept; returns how many.
__device__ inline int CompactKept(const SelectParams& p, const StageCandidates& cand,
                                  const uint32_t* keys, int n, Threshold th, SelectShared& sh) {
  const int per = (n + int(blockDim.x) - 1) / int(blockDim.x);
  const int begin = min(n, int(threadIdx.x) * per), end = min(n, begin + per);
  unsigned above = 0, equal = 0;
  for (int i = begin; i < end; ++i) {
    const uint32_t key = keys[i];
    above += key > th.key;
    equal += key == th.key;
  }
  unsigned long long total;
  const unsigned long long before =
      BlockExclusiveScan((static_cast<unsigned long long>(above) << 32) | equal, sh, &total);
  int a = int(before >> 32), e = int(before & 0xffffffffu);
  for (int i = begin; i < end; ++i) {
    const uint32_t key = keys[i];
    const bool keep = key > th.key || (key == th.key && e < th.needed);
    const int pos = a + min(e, th.needed);
    if (keep && pos < p.kept_capacity) p.kept[pos] = CandidateLeft(cand, i);
    a += key > th.key;
    e += key == th.key;
  }
  return min(int(total >> 32) + min(int(total & 0xffffffffu), th.needed), p.kept_capacity);
}

// Outputs of kept chunk i: `count` values first, first + step, ...
struct Span {
  int64_t first, step, count;
};

__device__ inline Span OutputSpan(const SelectParams& p, int i) {
  const int64_t x = p.kept[i];
  const int64_t size = p.chunk_size;
  if (p.next_chunk_size == 0) {  // 8-token blocks, minus those of the previous (lower) chunk
    const int64_t start = x / 8, end = x / 8 + size / 8;
    const int64_t prev_end = i > 0 ? p.kept[i - 1] / 8 + size / 8 : start;
    const int64_t b0 = max(start, prev_end);
    return {b0, 1, end > b0 ? end - b0 : 0};
  }
  auto align = [&](int64_t left) { return p.sink + size * ((left - p.sink) / size); };
  const int64_t a = align(x);
  const bool unique = i == 0 || align(p.kept[i - 1]) != a;
  return {a, p.next_chunk_size, unique ? size / p.next_chunk_size : 0};
}

// SplitChunks / ChunksToBlocks of the `kept` ascending lefts into p.out and *p.out_count.
__device__ inline void ExpandKept(const SelectParams& p, int kept, SelectShared& sh) {
  const int per = (kept + int(blockDim.x) - 1) / int(blockDim.x);
  const int begin = min(kept, int(threadIdx.x) * per), end = min(kept, begin + per);
  unsigned long long mine = 0;
  for (int i = begin; i < end; ++i) mine += OutputSpan(p, i).count;
  unsigned long long total;
  int64_t pos = int64_t(BlockExclusiveScan(mine, sh, &total));
  for (int i = begin; i < end; ++i) {
    const Span s = OutputSpan(p, i);
    for (int64_t j = 0; j < s.count; ++j, ++pos) {
      if (pos < p.out_capacity) p.out[pos] = s.first + j * s.step;
    }
  }
  if (threadIdx.x == 0)
    *p.out_count = int(total < unsigned(p.out_capacity) ? total : p.out_capacity);
}

// The select of one query block by the whole CTA: `keys` (L2, complete) [n] of candidates `cand`.
__device__ inline void SelectStage(SelectParams p, const StageCandidates& cand, int n,
                                   const uint32_t* keys, SelectShared& sh) {
  p.kept = AtSlice(p.kept, cand.block_bytes);
  p.out = AtBlock(p.out, p.out_stride);
  p.out_count = AtBlock(p.out_count, p.out_count_stride);
  if (n <= p.cached_keys) {
    uint32_t* cache = SelectKeyCache(sh);
    for (int i = threadIdx.x; i < n; i += blockDim.x) cache[i] = __ldcg(keys + i);
    __syncthreads();
    keys = cache;
  }
  const Threshold th = FindThreshold(keys, n, p.kept_chunks, sh);
  const int kept = CompactKept(p, cand, keys, n, th, sh);
  __syncthreads();  // p.kept is read across threads below
  ExpandKept(p, kept, sh);
}

}  // namespace ihip::engine::cuda::kernels
