#pragma once

// Kernel templates of engine/cuda/decode_attention.h: split-K decode attention of one query over
// the attended keys of one (sequence, layer), read through the block table.
//
// Grid (num_splits, Hq / kHeads); 128 threads. Block (s, c) serves query heads
// [c * kHeads, (c + 1) * kHeads) (all of one kv head) over split s's contiguous share of the
// "key list": dense = tokens [0, p]; sparse = the sink tokens, then 8 slots per selected block
// (slots outside [sink, window_begin) are masked), then the window [window_begin, p].
//
// Thread layout: kRowThreads threads read one token row (one kv head, D elements); thread `slot`
// holds kHalf elements of each half of the row ([slot * kHalf, +kHalf) and the same + D/2), so
// the neox rotate-half pairs are thread-local and each half is read with one coalesced load per
// thread. The 128 / kRowThreads token lanes each run their own online softmax (fp32, log2
// units) over kUnroll keys per step. Loads go global -> shared memory with cp.async into a ring
// private to each thread (kStages steps, kStages - 1 of them in flight while one is computed;
// a thread reads back only what it copied itself, so the loop needs no barrier). The lanes merge
// by shuffles, the warps through shared memory. With one split the block writes o directly;
// otherwise it writes its partial (m, l, acc) and the last block of its head group (atomic
// counter, reset by that block) merges the splits by log-sum-exp.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>

#include "engine/cuda/device_kv.h"

namespace ihip::engine::cuda::decode_attention {

inline constexpr int kThreads = 128;
inline constexpr int kWarps = kThreads / 32;
inline constexpr int kMaxSplits = 256;  // the merge keeps [kHeads][splits] scales in smem
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
  int* counters;           // device [Hq / kHeads] merge counters (zero between launches)
  float2* partial_ml;      // device [num_splits][Hq]: (m in log2 units, l)
  float* partial_acc;      // device [num_splits][Hq][D]: unnormalized accumulators
};

template <ElemType kStore>
inline constexpr int kElemBytes = kStore == ElemType::kF32                                  ? 4
                                  : (kStore == ElemType::kF16 || kStore == ElemType::kBF16) ? 2
                                                                                            : 1;

// Compile-time shape of one instantiation.
template <ElemType kStore, int kHeadDim, int kGroupHeads>
struct Config {
  static constexpr ElemType kStorage = kStore;
  static constexpr int kDim = kHeadDim;
  static constexpr int kHeads = kGroupHeads;
  static constexpr int kBytes = kElemBytes<kStore>;
  // Elements per thread and half: one load of up to 16 bytes, at most 8 elements, fewer for
  // big groups (q and the accumulators take 4 * kHeads * kHalf registers).
  static constexpr int kHalfCap = (32 / kHeads) < 8 ? (32 / kHeads) : 8;
  static constexpr int kHalf = (16 / kBytes) < kHalfCap ? (16 / kBytes) : kHalfCap;
  static constexpr int kRowThreads = kHeadDim / (2 * kHalf);
  static constexpr int kLanes = kThreads / kRowThreads;  // token lanes per block
  static constexpr int kUnroll = 2;                      // keys per lane per step
  static constexpr int kStep = kLanes * kUnroll;         // keys per block per step
  static constexpr int kChunkBytes = kHalf * kBytes;     // one thread's load per half row
  static constexpr int kChunkWords = kChunkBytes / 4;
  // Ring of ~512 bytes per thread: K and V, both halves, kUnroll keys per step.
  static constexpr int kStageBytes = kUnroll * 4 * kChunkBytes;
  static constexpr int kStages = 512 / kStageBytes < 2   ? 2
                                 : 512 / kStageBytes > 8 ? 8
                                                         : 512 / kStageBytes;
  static_assert(kRowThreads >= 1 && kRowThreads <= 32 && (kRowThreads & (kRowThreads - 1)) == 0);
  static_assert(kChunkBytes == 4 || kChunkBytes == 8 || kChunkBytes == 16);
};

template <class Cfg>
struct SharedStorage {
  union {
    struct {
      // [stage][u][chunk: K lo, K hi, V lo, V hi][thread] of kChunkBytes: conflict-free.
      uint8_t chunks[Cfg::kStages][Cfg::kUnroll][4][kThreads][Cfg::kChunkBytes];
      int64_t pos[Cfg::kStages][Cfg::kUnroll][kThreads];  // RoPE position; -1: masked
    } ring;
    struct {
      float acc[kWarps][Cfg::kHeads][Cfg::kDim];
      float m[kWarps][Cfg::kHeads];
      float l[kWarps][Cfg::kHeads];
    } cta;                                          // per-warp states of this block
    float scale[kWarps * Cfg::kHeads * Cfg::kDim];  // merge: [kHeads][num_splits]
  };
  double inv_freq[Cfg::kDim / 2];  // RoPE frequencies (read per use: saves registers)
  float merged_m[Cfg::kHeads];
  float merged_l[Cfg::kHeads];
  int is_last;
};

// ---- Loads and conversions ----

// Asynchronous global -> shared copy of one half-row chunk (L2 prefetch of 256 bytes).
template <int kBytes>
__device__ __forceinline__ void CopyChunkAsync(void* smem, const uint8_t* gmem) {
  const uint32_t dst = uint32_t(__cvta_generic_to_shared(smem));
  if constexpr (kBytes == 16) {
    asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16;" ::"r"(dst), "l"(gmem)
                 : "memory");
  } else {
    asm volatile("cp.async.ca.shared.global.L2::256B [%0], [%1], %2;" ::"r"(dst), "l"(gmem),
                 "n"(kBytes)
                 : "memory");
  }
}

__device__ __forceinline__ void CommitAsync() {
  asm volatile("cp.async.commit_group;" ::: "memory");
}

template <int kPending>
__device__ __forceinline__ void WaitAsync() {
  asm volatile("cp.async.wait_group %0;" ::"n"(kPending) : "memory");
}

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

  // Entry v -> token t and RoPE position; false for a masked slot.
  __device__ __forceinline__ bool Map(int64_t v, int64_t* t, int64_t* pos) const {
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
      const int64_t tok = __ldg(blocks + (slot >> 3)) * 8 + (slot & 7);
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
  const int64_t nb = *p.num_blocks;
  ks.window_begin = max(int64_t{0}, min(ks.p, anchor) - p.window_tokens + 1);
  ks.sink = p.sink_tokens;
  ks.sink_end = min(ks.sink, ks.window_begin);
  ks.selected_end = ks.sink_end + 8 * nb;
  ks.selected_base = anchor - p.window_tokens - 8 * nb + 1;
  ks.blocks = p.blocks;
  ks.total = ks.selected_end + (ks.p + 1 - ks.window_begin);
  return ks;
}

// ---- Per-thread state and the main loop's stages ----

template <class Cfg>
struct HeadState {
  float q[Cfg::kHeads][2 * Cfg::kHalf];    // rotated, times log2(e)
  float acc[Cfg::kHeads][2 * Cfg::kHalf];  // sum of weights * v over the lane's keys
  float m[Cfg::kHeads];                    // running max (log2 units)
  float l[Cfg::kHeads];                    // sum of weights
};

template <class Cfg>
struct KeyTile {
  uint32_t k[Cfg::kUnroll][2][Cfg::kChunkWords];
  uint32_t v[Cfg::kUnroll][2][Cfg::kChunkWords];
  int64_t pos[Cfg::kUnroll];
  bool valid[Cfg::kUnroll];
};

template <class Cfg>
__device__ __forceinline__ void LoadFrequencies(const double* inv_freq, SharedStorage<Cfg>& sm) {
  if (inv_freq == nullptr) return;
  for (int i = threadIdx.x; i < Cfg::kDim / 2; i += kThreads) sm.inv_freq[i] = inv_freq[i];
}

template <class Cfg>
__device__ __forceinline__ void LoadQuery(const KernelParams& p, int head0, int slot, bool rope,
                                          const double* freq, HeadState<Cfg>& st) {
#pragma unroll
  for (int h = 0; h < Cfg::kHeads; ++h) {
    const float* row = p.q + int64_t(head0 + h) * Cfg::kDim + slot * Cfg::kHalf;
#pragma unroll
    for (int e = 0; e < Cfg::kHalf; ++e) {
      st.q[h][e] = row[e];
      st.q[h][Cfg::kHalf + e] = row[Cfg::kDim / 2 + e];
    }
    if (rope) Rotate<Cfg::kHalf>(st.q[h], double(p.step->position), freq);
#pragma unroll
    for (int e = 0; e < 2 * Cfg::kHalf; ++e) {
      st.q[h][e] *= kLog2e;
      st.acc[h][e] = 0.0f;
    }
    st.m[h] = -INFINITY;
    st.l[h] = 0.0f;
  }
}

// Starts the copies of entries v, v + kLanes, ... (one per unroll step) below `end` into ring
// stage `stage` and records their positions (-1: masked or past the end); one commit group.
template <class Cfg>
__device__ __forceinline__ void IssueStage(const KernelParams& p, const KeySpace& ks, int64_t v,
                                           int64_t end, int kv_head, int slot, int stage,
                                           SharedStorage<Cfg>& sm) {
  constexpr int64_t kRowBytes = int64_t(Cfg::kDim) * Cfg::kBytes;
#pragma unroll
  for (int u = 0; u < Cfg::kUnroll; ++u) {
    int64_t t = 0, pos = 0;
    const bool valid = v + u * Cfg::kLanes < end && ks.Map(v + u * Cfg::kLanes, &t, &pos);
    sm.ring.pos[stage][u][threadIdx.x] = valid ? pos : -1;
    if (!valid) continue;
    const int64_t page = p.page_shift >= 0 ? t >> p.page_shift : t / p.page_tokens;
    const int64_t in_page = t - page * p.page_tokens;
    const auto* base = reinterpret_cast<const uint8_t*>(
        __ldg(reinterpret_cast<const unsigned long long*>(p.pages) + page));
    const uint8_t* row =
        base + (in_page * p.kv_heads + kv_head) * kRowBytes + slot * Cfg::kChunkBytes;
    auto& c = sm.ring.chunks[stage][u];
    CopyChunkAsync<Cfg::kChunkBytes>(c[0][threadIdx.x], row);
    CopyChunkAsync<Cfg::kChunkBytes>(c[1][threadIdx.x], row + kRowBytes / 2);
    CopyChunkAsync<Cfg::kChunkBytes>(c[2][threadIdx.x], row + p.half_bytes);
    CopyChunkAsync<Cfg::kChunkBytes>(c[3][threadIdx.x], row + p.half_bytes + kRowBytes / 2);
  }
  CommitAsync();
}

// Moves ring stage `stage` (complete) into registers; masked entries read as zeros.
template <class Cfg>
__device__ __forceinline__ void ReadStage(const SharedStorage<Cfg>& sm, int stage,
                                          KeyTile<Cfg>& tile) {
#pragma unroll
  for (int u = 0; u < Cfg::kUnroll; ++u) {
    tile.pos[u] = sm.ring.pos[stage][u][threadIdx.x];
    tile.valid[u] = tile.pos[u] >= 0;
    const auto& c = sm.ring.chunks[stage][u];
    ReadChunk<Cfg::kChunkBytes>(c[0][threadIdx.x], tile.k[u][0]);
    ReadChunk<Cfg::kChunkBytes>(c[1][threadIdx.x], tile.k[u][1]);
    ReadChunk<Cfg::kChunkBytes>(c[2][threadIdx.x], tile.v[u][0]);
    ReadChunk<Cfg::kChunkBytes>(c[3][threadIdx.x], tile.v[u][1]);
#pragma unroll
    for (int w = 0; w < Cfg::kChunkWords; ++w) {
      if (!tile.valid[u]) tile.k[u][0][w] = tile.k[u][1][w] = tile.v[u][0][w] = tile.v[u][1][w] = 0;
    }
  }
}

// Scaled logits (log2 units) of the tile's keys for every head; -inf for masked entries.
template <class Cfg>
__device__ __forceinline__ void ScoreTile(const KeyTile<Cfg>& tile, const HeadState<Cfg>& st,
                                          bool rope, const double* freq,
                                          float (&s)[Cfg::kHeads][Cfg::kUnroll]) {
#pragma unroll
  for (int u = 0; u < Cfg::kUnroll; ++u) {
    float k[2 * Cfg::kHalf];
    ToFloats<Cfg::kStorage, Cfg::kHalf>(tile.k[u][0], k);
    ToFloats<Cfg::kStorage, Cfg::kHalf>(tile.k[u][1], k + Cfg::kHalf);
    if (rope) Rotate<Cfg::kHalf>(k, double(tile.pos[u]), freq);
#pragma unroll
    for (int h = 0; h < Cfg::kHeads; ++h) {
      float dot = 0.0f;
#pragma unroll
      for (int e = 0; e < 2 * Cfg::kHalf; ++e) dot = fmaf(st.q[h][e], k[e], dot);
      s[h][u] = dot;
    }
  }
#pragma unroll
  for (int off = Cfg::kRowThreads / 2; off >= 1; off /= 2) {
#pragma unroll
    for (int h = 0; h < Cfg::kHeads; ++h) {
#pragma unroll
      for (int u = 0; u < Cfg::kUnroll; ++u) s[h][u] += __shfl_xor_sync(0xffffffffu, s[h][u], off);
    }
  }
#pragma unroll
  for (int u = 0; u < Cfg::kUnroll; ++u) {
#pragma unroll
    for (int h = 0; h < Cfg::kHeads; ++h) s[h][u] = tile.valid[u] ? s[h][u] : -INFINITY;
  }
}

// Online softmax update of every head with the tile's logits and values.
template <class Cfg>
__device__ __forceinline__ void AccumulateTile(const KeyTile<Cfg>& tile,
                                               float (&s)[Cfg::kHeads][Cfg::kUnroll],
                                               HeadState<Cfg>& st) {
#pragma unroll
  for (int h = 0; h < Cfg::kHeads; ++h) {
    float m_new = st.m[h];
#pragma unroll
    for (int u = 0; u < Cfg::kUnroll; ++u) m_new = fmaxf(m_new, s[h][u]);
    const float m_safe = m_new == -INFINITY ? 0.0f : m_new;  // nothing seen yet: all weights 0
    const float corr = exp2f(st.m[h] - m_safe);
    st.l[h] *= corr;
#pragma unroll
    for (int e = 0; e < 2 * Cfg::kHalf; ++e) st.acc[h][e] *= corr;
#pragma unroll
    for (int u = 0; u < Cfg::kUnroll; ++u) {
      s[h][u] = exp2f(s[h][u] - m_safe);
      st.l[h] += s[h][u];
    }
    st.m[h] = m_new;
  }
#pragma unroll
  for (int u = 0; u < Cfg::kUnroll; ++u) {
    float v[2 * Cfg::kHalf];
    ToFloats<Cfg::kStorage, Cfg::kHalf>(tile.v[u][0], v);
    ToFloats<Cfg::kStorage, Cfg::kHalf>(tile.v[u][1], v + Cfg::kHalf);
#pragma unroll
    for (int h = 0; h < Cfg::kHeads; ++h) {
#pragma unroll
      for (int e = 0; e < 2 * Cfg::kHalf; ++e) st.acc[h][e] = fmaf(s[h][u], v[e], st.acc[h][e]);
    }
  }
}

// ---- Merging: lanes (shuffles), warps (shared memory), splits (workspace) ----

// Merges (m_b, l_b) into (m, l); returns the factors for the accumulators (a * ca + b * cb).
__device__ __forceinline__ void MergeScales(float& m, float& l, float m_b, float l_b, float* ca,
                                            float* cb) {
  const float m_new = fmaxf(m, m_b);
  const float m_safe = m_new == -INFINITY ? 0.0f : m_new;
  *ca = exp2f(m - m_safe);
  *cb = exp2f(m_b - m_safe);
  l = l * *ca + l_b * *cb;
  m = m_new;
}

template <class Cfg>
__device__ __forceinline__ void MergeLanes(HeadState<Cfg>& st) {
#pragma unroll
  for (int off = Cfg::kRowThreads; off < 32; off *= 2) {
#pragma unroll
    for (int h = 0; h < Cfg::kHeads; ++h) {
      const float m_b = __shfl_xor_sync(0xffffffffu, st.m[h], off);
      const float l_b = __shfl_xor_sync(0xffffffffu, st.l[h], off);
      float ca, cb;
      MergeScales(st.m[h], st.l[h], m_b, l_b, &ca, &cb);
#pragma unroll
      for (int e = 0; e < 2 * Cfg::kHalf; ++e) {
        const float b = __shfl_xor_sync(0xffffffffu, st.acc[h][e], off);
        st.acc[h][e] = st.acc[h][e] * ca + b * cb;
      }
    }
  }
}

template <class Cfg>
__device__ __forceinline__ void StoreWarpState(const HeadState<Cfg>& st, int slot,
                                               SharedStorage<Cfg>& sm) {
  const int warp = threadIdx.x / 32;
  if (threadIdx.x % 32 >= Cfg::kRowThreads) return;  // lane 0's threads hold the warp's state
#pragma unroll
  for (int h = 0; h < Cfg::kHeads; ++h) {
#pragma unroll
    for (int e = 0; e < Cfg::kHalf; ++e) {
      sm.cta.acc[warp][h][slot * Cfg::kHalf + e] = st.acc[h][e];
      sm.cta.acc[warp][h][Cfg::kDim / 2 + slot * Cfg::kHalf + e] = st.acc[h][Cfg::kHalf + e];
    }
    if (slot == 0) {
      sm.cta.m[warp][h] = st.m[h];
      sm.cta.l[warp][h] = st.l[h];
    }
  }
}

// The block's (m, l, acc[d]) of head h, merged over its warps.
template <class Cfg>
__device__ __forceinline__ void CombineWarps(const SharedStorage<Cfg>& sm, int h, int d, float* m,
                                             float* l, float* a) {
  float mm = -INFINITY;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) mm = fmaxf(mm, sm.cta.m[w][h]);
  const float m_safe = mm == -INFINITY ? 0.0f : mm;
  float ll = 0.0f, aa = 0.0f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    const float c = exp2f(sm.cta.m[w][h] - m_safe);
    ll += sm.cta.l[w][h] * c;
    aa += sm.cta.acc[w][h][d] * c;
  }
  *m = mm;
  *l = ll;
  *a = aa;
}

__device__ __forceinline__ void StoreOut(const KernelParams& p, int64_t i, float x) {
  switch (p.out_dtype) {
    case ElemType::kF32:
      static_cast<float*>(p.out)[i] = x;
      break;
    case ElemType::kF16:
      static_cast<__half*>(p.out)[i] = __float2half_rn(x);
      break;
    default:
      static_cast<__nv_bfloat16*>(p.out)[i] = __float2bfloat16_rn(x);
      break;
  }
}

__device__ __forceinline__ float NaturalLse(float m, float l) {
  return l > 0.0f ? (m + log2f(l)) * kLn2 : -INFINITY;
}

// One split: the block's merged state is the answer.
template <class Cfg>
__device__ __forceinline__ void WriteOutput(const KernelParams& p, int head0,
                                            const SharedStorage<Cfg>& sm) {
  for (int i = threadIdx.x; i < Cfg::kHeads * Cfg::kDim; i += kThreads) {
    const int h = i / Cfg::kDim, d = i % Cfg::kDim;
    float m, l, a;
    CombineWarps(sm, h, d, &m, &l, &a);
    StoreOut(p, int64_t(head0 + h) * Cfg::kDim + d, l > 0.0f ? a / l : 0.0f);
    if (d == 0 && p.out_lse != nullptr) p.out_lse[head0 + h] = NaturalLse(m, l);
  }
}

template <class Cfg>
__device__ __forceinline__ void WritePartial(const KernelParams& p, int head0,
                                             const SharedStorage<Cfg>& sm) {
  const int64_t row0 = int64_t(blockIdx.x) * p.num_q_heads + head0;
  for (int i = threadIdx.x; i < Cfg::kHeads * Cfg::kDim; i += kThreads) {
    const int h = i / Cfg::kDim, d = i % Cfg::kDim;
    float m, l, a;
    CombineWarps(sm, h, d, &m, &l, &a);
    __stcg(p.partial_acc + (row0 + h) * Cfg::kDim + d, a);
    if (d == 0) __stcg(p.partial_ml + row0 + h, make_float2(m, l));
  }
}

// True in the last block of head group `g` to finish (which also resets the counter).
template <class Cfg>
__device__ __forceinline__ bool ArriveLast(const KernelParams& p, int g, SharedStorage<Cfg>& sm) {
  __threadfence();  // this thread's partial writes before the arrival
  __syncthreads();
  if (threadIdx.x == 0) {
    const int arrived = atomicAdd(p.counters + g, 1) + 1;
    sm.is_last = arrived == p.num_splits;
    if (sm.is_last) atomicExch(p.counters + g, 0);  // every block has arrived: ready to replay
  }
  __syncthreads();
  if (!sm.is_last) return false;
  __threadfence();  // the other blocks' partials after their arrival
  return true;
}

// Per head: the max over splits and each split's scale (into smem), and the merged l.
template <class Cfg>
__device__ __forceinline__ void MergeSplitScales(const KernelParams& p, int head0,
                                                 SharedStorage<Cfg>& sm) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, splits = p.num_splits;
  for (int h = warp; h < Cfg::kHeads; h += kWarps) {
    const float2* ml = p.partial_ml + head0 + h;
    float m = -INFINITY;
    for (int s = lane; s < splits; s += 32) m = fmaxf(m, __ldcg(ml + int64_t(s) * p.num_q_heads).x);
#pragma unroll
    for (int off = 16; off >= 1; off /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
    const float m_safe = m == -INFINITY ? 0.0f : m;
    float l = 0.0f;
    for (int s = lane; s < splits; s += 32) {
      const float2 x = __ldcg(ml + int64_t(s) * p.num_q_heads);
      const float c = exp2f(x.x - m_safe);
      sm.scale[h * splits + s] = c;
      l += x.y * c;
    }
#pragma unroll
    for (int off = 16; off >= 1; off /= 2) l += __shfl_xor_sync(0xffffffffu, l, off);
    if (lane == 0) {
      sm.merged_m[h] = m;
      sm.merged_l[h] = l;
    }
  }
  __syncthreads();
}

// The last block: o = sum over splits of scale * acc / l, four dims per thread.
template <class Cfg>
__device__ __forceinline__ void MergeSplits(const KernelParams& p, int head0,
                                            SharedStorage<Cfg>& sm) {
  MergeSplitScales(p, head0, sm);
  constexpr int kQuads = Cfg::kDim / 4;
  const int splits = p.num_splits;
  const int64_t stride = int64_t(p.num_q_heads) * kQuads;  // float4s per split
  for (int i = threadIdx.x; i < Cfg::kHeads * kQuads; i += kThreads) {
    const int h = i / kQuads, d4 = i % kQuads;
    const float4* src =
        reinterpret_cast<const float4*>(p.partial_acc) + int64_t(head0 + h) * kQuads + d4;
    float4 a = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 4
    for (int s = 0; s < splits; ++s) {
      const float4 x = __ldcg(src + s * stride);
      const float c = sm.scale[h * splits + s];
      a.x = fmaf(c, x.x, a.x);
      a.y = fmaf(c, x.y, a.y);
      a.z = fmaf(c, x.z, a.z);
      a.w = fmaf(c, x.w, a.w);
    }
    const float l = sm.merged_l[h];
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    const int64_t o = int64_t(head0 + h) * Cfg::kDim + 4 * d4;
    StoreOut(p, o, a.x * inv);
    StoreOut(p, o + 1, a.y * inv);
    StoreOut(p, o + 2, a.z * inv);
    StoreOut(p, o + 3, a.w * inv);
  }
  if (p.out_lse != nullptr && threadIdx.x < Cfg::kHeads) {
    p.out_lse[head0 + threadIdx.x] = NaturalLse(sm.merged_m[threadIdx.x], sm.merged_l[threadIdx.x]);
  }
}

// Entries [begin, end) of the key list for split `s`: equal shares, multiples of 8.
__device__ __forceinline__ void SplitRange(int64_t total, int s, int splits, int64_t* begin,
                                           int64_t* end) {
  const int64_t share = ((total + splits - 1) / splits + 7) / 8 * 8;
  *begin = min(total, s * share);
  *end = min(total, *begin + share);
}

// ---- The kernel ----

template <ElemType kStore, int kHeadDim, int kHeads>
__global__ void __launch_bounds__(kThreads)
    DecodeAttentionKernel(const __grid_constant__ KernelParams p) {
  using Cfg = Config<kStore, kHeadDim, kHeads>;
  constexpr int kStages = Cfg::kStages;
  extern __shared__ __align__(16) uint8_t smem_raw[];
  auto& sm = *reinterpret_cast<SharedStorage<Cfg>*>(smem_raw);
  const int slot = threadIdx.x % Cfg::kRowThreads;
  const int lane = threadIdx.x / Cfg::kRowThreads;
  const int head0 = blockIdx.y * kHeads;
  const int kv_head = head0 / p.group;
  const bool rope = p.inv_freq != nullptr;

  const KeySpace ks = LoadKeySpace(p);
  int64_t begin, end;
  SplitRange(ks.total, blockIdx.x, p.num_splits, &begin, &end);
#pragma unroll
  for (int i = 0; i < kStages - 1; ++i) {
    IssueStage<Cfg>(p, ks, begin + i * Cfg::kStep + lane, end, kv_head, slot, i, sm);
  }
  LoadFrequencies<Cfg>(p.inv_freq, sm);
  __syncthreads();
  const double* freq = sm.inv_freq + slot * Cfg::kHalf;  // this thread's kHalf frequencies
  HeadState<Cfg> st;
  LoadQuery<Cfg>(p, head0, slot, rope, freq, st);

  const int64_t steps = (end - begin + Cfg::kStep - 1) / Cfg::kStep;
  for (int64_t i = 0; i < steps; ++i) {
    const int64_t ahead = i + kStages - 1;
    IssueStage<Cfg>(p, ks, begin + ahead * Cfg::kStep + lane, end, kv_head, slot,
                    int(ahead % kStages), sm);
    WaitAsync<kStages - 1>();  // step i's copies have landed
    KeyTile<Cfg> tile;
    ReadStage<Cfg>(sm, int(i % kStages), tile);
    float s[kHeads][Cfg::kUnroll];
    ScoreTile<Cfg>(tile, st, rope, freq, s);
    AccumulateTile<Cfg>(tile, s, st);
  }
  WaitAsync<0>();
  __syncthreads();  // the ring is reused below

  MergeLanes<Cfg>(st);
  StoreWarpState<Cfg>(st, slot, sm);
  __syncthreads();
  if (p.num_splits == 1) {
    WriteOutput<Cfg>(p, head0, sm);
    return;
  }
  WritePartial<Cfg>(p, head0, sm);
  if (!ArriveLast<Cfg>(p, blockIdx.y, sm)) return;
  MergeSplits<Cfg>(p, head0, sm);
}

}  // namespace ihip::engine::cuda::decode_attention
