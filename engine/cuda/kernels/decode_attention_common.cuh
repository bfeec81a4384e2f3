#pragma once

// Shared pieces of the decode attention kernels (kernels/decode_attention.cuh): the POD
// parameters, the compile-time shape of one instantiation, its shared memory, asynchronous
// copies, storage -> float conversions, RoPE and the key list (dense or SparseRuns).

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>

#include "engine/cuda/device_kv.h"

namespace ihip::engine::cuda::decode_attention {

inline constexpr int kThreads = 128;
inline constexpr int kWarps = kThreads / 32;
inline constexpr int kStages = 2;       // key tiles in flight per block (one being computed)
inline constexpr int kMaxSplits = 256;  // the merge kernel keeps a scale per split in smem
inline constexpr int kMergeChunk = 32;  // splits whose accumulators the merge loads at once
inline constexpr float kLog2e = 1.4426950408889634f;
inline constexpr float kLn2 = 0.6931471805599453f;

// Built by the launcher from DecodeAttentionParams; layouts beside each pointer.
struct KernelParams {
  const uint8_t* const* pages;  // device [num pages] page base addresses; a page holds K
                                // [page_tokens][kv_heads][D] then V (same layout), storage dtype
  int page_tokens;
  int page_shift;           // log2(page_tokens), or -1 when page_tokens is not a power of two
  int kv_heads;             // Hkv
  int64_t half_bytes;       // bytes of a page's K part (page_tokens * Hkv * D * element size)
  const StepScalars* step;  // device; position = p, anchor
  const float* q;           // device [Hq][D] fp32, scale folded in, pre-RoPE in extend mode
  int num_q_heads;          // Hq
  int group;                // Hq / Hkv
  int heads_per_block;      // query heads of one block (a divisor of group, <= 8)
  int dense;                // 1: keys [0, p]; 0: sparse key list
  const int64_t* blocks;    // sparse: device [*num_blocks] ascending 8-token block indices
  const int* num_blocks;    // sparse: device int
  int sink_tokens;
  int window_tokens;
  const double* inv_freq;  // device [D / 2], or null (`none` mode)
  void* out;               // device [Hq][D] in out_dtype
  ElemType out_dtype;      // kF32, kF16, kBF16
  float* out_lse;          // device [Hq] natural-log LSE, or null
  int num_splits;          // gridDim.x, <= kMaxSplits
  int64_t split_keys;      // sparse: keys per split when the key list fits, 0: equal shares
  int max_blocks;          // sparse: entries of `blocks` readable (speculative loads), or 0
  float2* partial_ml;      // device [num_splits][Hq]: (m in log2 units, l)
  float* partial_acc;      // device [num_splits][Hq][D]: unnormalized accumulators
  unsigned long long* trace;  // experiments: per-block phase timestamps, or null
};

// ---- Experiment trace (DecodeAttentionParams::trace) ----

enum TraceSlot : int {
  kTraceStartNs = 0,   // globaltimer at block start
  kTraceStart = 1,     // clock64 at block start, then the phases below
  kTraceKeySpace = 2,  // step scalars and block count loaded
  kTraceResolved = 3,  // first tiles' rows resolved and published, q staged
  kTraceArrived = 4,   // tile 0 in shared memory
  kTraceLoopEnd = 5,   // every tile computed
  kTraceStateEnd = 6,  // the warps' states merged
  kTracePartial = 7,   // partial written (split launches)
  kTraceEnd = 9,       // the block's last stamp
  kTraceEndNs = 10,    // globaltimer at block end
  kTraceSm = 12,
  kTraceTiles = 13,
  kTraceMerge = 14,    // 1 in the merge kernel's rows
};

// Compiled in only with -DIHIP_DECODE_TRACE (CMake option IHIP_DECODE_TRACE, experiment builds):
// the stamps add code to a kernel whose cost is partly its code size.
#ifdef IHIP_DECODE_TRACE
__device__ __forceinline__ unsigned long long* TraceRow(const KernelParams& p) {
  return p.trace + (uint64_t(blockIdx.y) * gridDim.x + blockIdx.x) * 16;
}

// Thread 0 records `slot` once `dep` is available (the branch on it waits for its load).
__device__ __forceinline__ void Stamp(const KernelParams& p, int slot, long long dep = 0) {
  if (p.trace == nullptr || threadIdx.x != 0) return;
  unsigned long long* row = TraceRow(p);
  if (dep == 0x7edcba9876543210ll) row[15] = 1;  // never: makes the stamp wait for `dep`
  unsigned long long t;
  if (slot == kTraceStartNs || slot == kTraceEndNs) {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  } else {
    t = clock64();
  }
  row[slot] = t;
}

// Thread 0 records a value (not a time).
__device__ __forceinline__ void StampValue(const KernelParams& p, int slot, unsigned long long v) {
  if (p.trace != nullptr && threadIdx.x == 0) TraceRow(p)[slot] = v;
}

__device__ __forceinline__ unsigned SmId() {
  unsigned id;
  asm volatile("mov.u32 %0, %%smid;" : "=r"(id));
  return id;
}

// The merge kernel's blocks (one per query head) record after the attention grid's rows:
// globaltimer in kTraceStartNs (after its wait) and kTraceEndNs, and kTraceMerge = 1.
__device__ __forceinline__ void MergeStamp(const KernelParams& p, int slot) {
  if (p.trace == nullptr || threadIdx.x != 0) return;
  const uint64_t attention_blocks = uint64_t(p.num_splits) * (p.num_q_heads / p.heads_per_block);
  unsigned long long* row = p.trace + (attention_blocks + blockIdx.x) * 16;
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  row[slot] = t;
  row[kTraceMerge] = 1;
}
#else
__device__ __forceinline__ void MergeStamp(const KernelParams&, int) {}
__device__ __forceinline__ void Stamp(const KernelParams&, int, long long = 0) {}
__device__ __forceinline__ void StampValue(const KernelParams&, int, unsigned long long) {}
__device__ __forceinline__ unsigned SmId() { return 0; }
#endif

template <ElemType kStore>
inline constexpr int kElemBytes = kStore == ElemType::kF32                                  ? 4
                                  : (kStore == ElemType::kF16 || kStore == ElemType::kBF16) ? 2
                                                                                            : 1;

constexpr int Min(int a, int b) { return a < b ? a : b; }
constexpr int Max(int a, int b) { return a > b ? a : b; }

// Compile-time shape of one instantiation.
//
// Copy layout: a tile is kTile consecutive entries of the key list (~32 KiB of K and V rows of
// one kv head); kCopyChunks threads copy one row in 16-byte pieces, so each thread moves the
// same chunk of kKeysPerThread rows of K and of V.
//
// Compute layout: kRowThreads threads ("slots") share one row; slot s holds kHalf elements of
// each half of the row ([s * kHalf, +kHalf) and the same + D/2), so the neox rotate-half pairs
// are thread-local. The 128 / kRowThreads token lanes take keys lane, lane + kLanes, ... of the
// tile. q and the accumulators (4 * kHeads * kHalf registers) are capped at 64 registers where
// the row allows, for three blocks per SM.
template <ElemType kStore, int kHeadDim, int kGroupHeads>
struct Config {
  static constexpr ElemType kStorage = kStore;
  static constexpr int kDim = kHeadDim;
  static constexpr int kHeads = kGroupHeads;
  static constexpr int kBytes = kElemBytes<kStore>;
  static constexpr int kRowBytes = kHeadDim * kBytes;
  // Tile and copy layout.
  static constexpr int kTile = Max(16, Min(128, 16384 / kRowBytes));
  static constexpr int kCopyChunks = kRowBytes / 16;
  static constexpr int kCopyRows = kThreads / kCopyChunks;  // rows per copy pass
  static constexpr int kKeysPerThread = kTile / kCopyRows;
  // Compute layout.
  static constexpr int kHalf =
      Max(Max(kHeadDim / 64, 4 / kBytes), Min(16 / kBytes, 16 / kGroupHeads));
  static constexpr int kRowThreads = kHeadDim / (2 * kHalf);
  static constexpr int kLanes = kThreads / kRowThreads;
  static constexpr int kKeysPerLane = kTile / kLanes;
  static constexpr int kChunkBytes = kHalf * kBytes;  // one thread's read per half row
  static constexpr int kChunkWords = kChunkBytes / 4;
  // Keys scored together: their kQkKeys * kHeads partial dot products are reduce-scattered
  // over the row's threads (about one shuffle per value instead of log2(kRowThreads)).
  static constexpr int kQkKeys = Min(kKeysPerLane, Max(1, kRowThreads / kGroupHeads));
  static constexpr int kQkValues = kQkKeys * kGroupHeads;
  static constexpr int kMinBlocks = 4 * kGroupHeads * kHalf <= 64 ? 3 : 2;

  static_assert(kRowThreads >= 1 && kRowThreads <= 32 && (kRowThreads & (kRowThreads - 1)) == 0);
  static_assert(kChunkBytes == 4 || kChunkBytes == 8 || kChunkBytes == 16);
  static_assert(kCopyChunks >= 1 && kCopyChunks <= kThreads && kTile % kCopyRows == 0);
  static_assert(kTile % kLanes == 0 && kTile % 8 == 0 && kKeysPerLane % kQkKeys == 0);
  static_assert((kQkValues & (kQkValues - 1)) == 0);
};

template <class Cfg>
struct SharedStorage {
  struct Tile {
    uint8_t k[Cfg::kTile][Cfg::kRowBytes];  // rows as stored; masked entries zero-filled
    uint8_t v[Cfg::kTile][Cfg::kRowBytes];
  };
  union {
    Tile ring[kStages];
    float cta_acc[kWarps][Cfg::kHeads][Cfg::kDim];  // per-warp accumulators of the block
  };
  struct {
    int64_t pos[kStages][Cfg::kTile];    // RoPE position of each entry; -1: masked
    alignas(16) float score[Cfg::kTile][Cfg::kHeads];  // logits (log2 units), then weights
  } tile;
  double inv_freq[Cfg::kDim / 2];  // RoPE frequencies (read per use: saves registers)
  float run_m[Cfg::kHeads];        // the block's running max (log2 units) per head
  float run_l[Cfg::kHeads];        // and sum of weights
  float corr[Cfg::kHeads];         // the current tile's rescale factor of the accumulators

};

// ---- Integer division ----

// a / b for a >= 0, b > 0: 32-bit division when both fit (always, in practice); the 64-bit one
// (a long instruction sequence) out of line, one copy per kernel instead of one per use.
__device__ __noinline__ int64_t DivSlow(int64_t a, int64_t b) { return a / b; }

__device__ __forceinline__ int64_t Div(int64_t a, int64_t b) {
  if (((a | b) >> 32) == 0) return int64_t(uint32_t(a) / uint32_t(b));
  return DivSlow(a, b);
}

// ---- Asynchronous copies ----

// 16-byte global -> shared copy; `bytes` 0 zero-fills the destination and reads nothing.
__device__ __forceinline__ void CopyAsync16(void* smem, const void* gmem, int bytes) {
  const uint32_t dst = uint32_t(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(gmem), "r"(bytes)
               : "memory");
}

__device__ __forceinline__ void CommitAsync() {
  asm volatile("cp.async.commit_group;" ::: "memory");
}

template <int kPending>
__device__ __forceinline__ void WaitAsync() {
  asm volatile("cp.async.wait_group %0;" ::"n"(kPending) : "memory");
}

// ---- Conversions ----

template <int kBytes>
__device__ __forceinline__ void ReadChunk(const void* smem, uint32_t (&w)[kBytes / 4]) {
  if constexpr (kBytes == 16) {
    const uint4 x = *static_cast<const uint4*>(smem);
    w[0] = x.x, w[1] = x.y, w[2] = x.z, w[3] = x.w;
  } else if constexpr (kBytes == 8) {
    const uint2 x = *static_cast<const uint2*>(smem);
    w[0] = x.x, w[1] = x.y;
  } else {
    w[0] = *static_cast<const uint32_t*>(smem);
  }
}

__device__ __forceinline__ float2 Fp8PairToFloat2(uint32_t bits16, __nv_fp8_interpretation_t t) {
  const __half2_raw raw = __nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t(bits16), t);
  return __half22float2(__half2(raw));
}

// Converts kN stored elements (packed little-endian in w) to float; fp8 and fp16 are exact.
template <ElemType kStore, int kN>
__device__ __forceinline__ void ToFloats(const uint32_t* w, float* out) {
#pragma unroll
  for (int i = 0; i < kN * kElemBytes<kStore> / 4; ++i) {
    if constexpr (kStore == ElemType::kF32) {
      out[i] = __uint_as_float(w[i]);
    } else if constexpr (kStore == ElemType::kBF16) {
      out[2 * i] = __uint_as_float(w[i] << 16);
      out[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    } else if constexpr (kStore == ElemType::kF16) {
      __half2_raw raw;
      raw.x = uint16_t(w[i] & 0xffffu);
      raw.y = uint16_t(w[i] >> 16);
      const float2 f = __half22float2(__half2(raw));
      out[2 * i] = f.x;
      out[2 * i + 1] = f.y;
    } else {
      constexpr __nv_fp8_interpretation_t kInterp =
          kStore == ElemType::kF8E4M3 ? __NV_E4M3 : __NV_E5M2;
      const float2 lo = Fp8PairToFloat2(w[i] & 0xffffu, kInterp);
      const float2 hi = Fp8PairToFloat2(w[i] >> 16, kInterp);
      out[4 * i] = lo.x;
      out[4 * i + 1] = lo.y;
      out[4 * i + 2] = hi.x;
      out[4 * i + 3] = hi.y;
    }
  }
}

// The thread's 2 * kHalf elements of row `row` in smem (its chunk of each half) as floats.
template <class Cfg>
__device__ __forceinline__ void RowToFloats(const uint8_t* row, int slot,
                                            float (&x)[2 * Cfg::kHalf]) {
  uint32_t w[2][Cfg::kChunkWords];
  ReadChunk<Cfg::kChunkBytes>(row + slot * Cfg::kChunkBytes, w[0]);
  ReadChunk<Cfg::kChunkBytes>(row + Cfg::kRowBytes / 2 + slot * Cfg::kChunkBytes, w[1]);
  ToFloats<Cfg::kStorage, Cfg::kHalf>(w[0], x);
  ToFloats<Cfg::kStorage, Cfg::kHalf>(w[1], x + Cfg::kHalf);
}

// ---- RoPE ----

// cos/sin of pos * inv_freq reduced modulo 2*pi in double (engine/hip/rope.cc's
// fmod(double(pos) * f, 2*pi)): the product is rounded once as on the CPU, reduced by
// multiples of double(2*pi)/4 with one fma (exact up to the last rounding), then the reduced
// angle (|r| <= pi/4) goes through fp32 minimax polynomials (Cephes sinf/cosf, ~1 ulp).
__device__ __forceinline__ void RopeCosSin(double pos, double inv_freq, float* c, float* s) {
  constexpr double kTwoOverPi = 0.63661977236758134308;
  constexpr double kPiOverTwo = 1.5707963267948966192;  // == double(2 * pi) / 4
  constexpr double kShifter = 6755399441055744.0;       // 1.5 * 2^52: rounds to an integer
  const double a = __dmul_rn(pos, inv_freq);
  const double shifted = __fma_rn(a, kTwoOverPi, kShifter);
  const int quadrant = __double2loint(shifted) & 3;
  const double k = __dsub_rn(shifted, kShifter);
  const float r = __double2float_rn(__fma_rn(-k, kPiOverTwo, a));
  const float z = r * r;
  const float sr =
      fmaf(fmaf(fmaf(-1.9515295891e-4f, z, 8.3321608736e-3f), z, -1.6666654611e-1f), z * r, r);
  const float cr =
      fmaf(fmaf(fmaf(2.443315711809948e-5f, z, -1.388731625493765e-3f), z, 4.166664568298827e-2f),
           z * z, fmaf(-0.5f, z, 1.0f));
  const bool swap = quadrant & 1;
  const float sn = swap ? cr : sr;
  const float cs = swap ? sr : cr;
  *s = (quadrant & 2) ? -sn : sn;
  *c = ((quadrant + 1) & 2) ? -cs : cs;
}

// Rotates the thread's kHalf pairs (x[e], x[kHalf + e]) of a row at position `pos`.
template <int kHalf>
__device__ __forceinline__ void Rotate(float* x, double pos, const double* freq) {
#pragma unroll
  for (int e = 0; e < kHalf; ++e) {
    float c, s;
    RopeCosSin(pos, freq[e], &c, &s);
    const float x1 = x[e], x2 = x[kHalf + e];
    x[e] = x1 * c - x2 * s;
    x[kHalf + e] = x2 * c + x1 * s;
  }
}

// ---- The key list ----

struct KeySpace {
  int64_t p = 0;
  int64_t total = 0;          // entries of the key list
  int64_t sink_end = 0;       // sink tokens [0, sink_end)
  int64_t selected_end = 0;   // sink_end + 8 * num_blocks
  int64_t window_begin = 0;   // window tokens [window_begin, p]
  int64_t selected_base = 0;  // position of selected slot 0
  int64_t sink = 0;
  const int64_t* blocks = nullptr;
  bool dense = true;

  // Entry v -> token t and RoPE position; false for a masked slot. `block`: the entry's selected
  // block when already loaded (the prologue's speculation), else -1.
  __device__ __forceinline__ bool Map(int64_t v, int64_t* t, int64_t* pos,
                                      int64_t block = -1) const {
    if (dense) {
      *t = v;
      *pos = v;
      return true;
    }
    if (v < sink_end) {
      *t = v;
      *pos = max(int64_t{0}, selected_base - sink + v);
      return true;
    }
    if (v < selected_end) {
      const int64_t slot = v - sink_end;  // 8 * m + j
      const int64_t b = block >= 0 ? block : __ldg(blocks + (slot >> 3));
      const int64_t tok = b * 8 + (slot & 7);
      *t = tok;
      *pos = max(int64_t{0}, selected_base + slot);
      return tok >= sink && tok < window_begin;
    }
    *t = window_begin + (v - selected_end);
    *pos = *t;
    return true;
  }
};

// engine/hip/mask.cc SparseRuns / DenseRuns, from the step's device scalars.
__device__ __forceinline__ KeySpace LoadKeySpace(const KernelParams& p) {
  KeySpace ks;
  ks.p = p.step->position;
  ks.dense = p.dense != 0;
  if (ks.dense) {
    ks.total = ks.p + 1;
    return ks;
  }
  const int64_t anchor = p.step->anchor;
  const int64_t nb = max(0, *p.num_blocks);
  ks.window_begin = max(int64_t{0}, min(ks.p, anchor) - p.window_tokens + 1);
  ks.sink = p.sink_tokens;
  ks.sink_end = min(ks.sink, ks.window_begin);
  ks.selected_end = ks.sink_end + 8 * nb;
  ks.selected_base = anchor - p.window_tokens - 8 * nb + 1;
  ks.blocks = p.blocks;
  ks.total = ks.selected_end + (ks.p + 1 - ks.window_begin);
  return ks;
}

// Entries [begin, end) of the key list for split `s`: `fixed` per split when the list fits
// (fixed > 0), else equal shares, multiples of 8.
__device__ __forceinline__ void SplitRange(int64_t total, int s, int splits, int64_t* begin,
                                           int64_t* end, int64_t fixed = 0) {
  const int64_t share = fixed > 0 && total <= fixed * splits
                            ? fixed
                            : (Div(total + splits - 1, splits) + 7) / 8 * 8;
  *begin = min(total, s * share);
  *end = min(total, *begin + share);
}

}  // namespace ihip::engine::cuda::decode_attention
