#pragma once

// The tensor-core decode attention kernel (16-bit and fp8 storage; see
// kernels/decode_attention_mma_common.cuh for the formulation and precision). Grid
// (num_splits, Hq / heads_per_block), 128 threads; block (s, c) serves query heads
// [c * heads, (c + 1) * heads) over split s's share of the key list, like the CUDA-core kernel.
//
// Per tile of 64 entries: the addresses of the tile kStages ahead are resolved first, one entry
// per thread of the first 64 (its block index, then its page pointer; the loads fly while this
// tile is computed, then the rows are published in shared memory for the copying threads), the
// tile's arrival is awaited, fp8 tiles are converted to f16 and RoPE keys rotated (fp32) in a
// staging pass, each warp scores, softmaxes and accumulates its 16 keys with MMAs, and the freed
// stage receives the copies of the tile kStages ahead. RoPE and fp32 output are template
// parameters (each instantiation carries one path) and the loops over tiles and staging chunks
// stay rolled: a sparse block runs about two tiles, its code once from a cold instruction cache.

#include "engine/cuda/kernels/decode_attention_mma_common.cuh"

namespace ihip::engine::cuda::decode_attention {

// ---- Issuing a tile ----

// Entry `v` of the key list -> its K row (null: masked or past `end`; V is half_bytes further)
// and RoPE position (-1: masked). One thread resolves one entry: the key's chunk threads read
// the result from shared memory, so the code holds one address chain, not one per chunk row.
struct KeyRow {
  const uint8_t* src = nullptr;
  int pos = -1;
};

template <class Cfg>
__device__ __forceinline__ KeyRow ResolveKey(const KernelParams& p, const KeySpace& ks, int64_t v,
                                             int64_t end, int kv_head, int64_t block = -1) {
  KeyRow r;
  int64_t tok = 0, pos = 0;
  if (v >= end || !ks.Map(v, &tok, &pos, block)) return r;
  const int64_t page = p.page_shift >= 0 ? tok >> p.page_shift : Div(tok, p.page_tokens);
  const int64_t in_page = tok - page * p.page_tokens;
  const auto* base = reinterpret_cast<const uint8_t*>(
      __ldg(reinterpret_cast<const unsigned long long*>(p.pages) + page));
  r.src = base + (in_page * p.kv_heads + kv_head) * Cfg::kRawRowBytes;
  r.pos = int(pos);
  return r;
}

// Publishes a resolved entry of tile `t` (key `key`) for IssueMmaTile (after a barrier).
template <class Cfg>
__device__ __forceinline__ void StoreKeyRow(const KeyRow& r, int t, int key,
                                            SharedStorage<Cfg>& sm) {
  sm.tile.src[t % kStages][key] = r.src;
  sm.tile.pos[t % 3][key] = r.pos;
}

// Starts the copies of tile `t` (K and V, one commit group) from its published rows: each
// thread copies the same 16-byte chunk of kKeysPerThread rows.
template <class Cfg>
__device__ __forceinline__ void IssueMmaTile(const KernelParams& p, int t,
                                             SharedStorage<Cfg>& sm) {
  const int row0 = threadIdx.x / Cfg::kCopyChunks, chunk = threadIdx.x % Cfg::kCopyChunks;
  auto& tile = sm.ring[t % kStages];
  const uint8_t* const* rows = sm.tile.src[t % kStages];
  const void* any = p.pages;  // source of zero-filled copies (nothing is read)
#pragma unroll 2
  for (int j = 0; j < Cfg::kKeysPerThread; ++j) {
    const int key = row0 + j * Cfg::kCopyRows;
    const int off = Cfg::kFp8 ? key * Cfg::kRawRowBytes + chunk * 16 : Swizzled<Cfg>(key, chunk);
    const uint8_t* src = rows[key];
    const int bytes = src ? 16 : 0;
    src = src ? src + chunk * 16 : static_cast<const uint8_t*>(any);
    CopyAsync16(tile.k + off, src, bytes);
    CopyAsync16(tile.v + off, bytes ? src + p.half_bytes : src, bytes);
  }
  CommitAsync();
}

// ---- Setup ----

// q in two steps, so that its loads fly with the step scalars': LoadQuery at the kernel's start
// (each thread dims d, d + 1 of both halves of its items' rows, rows >= heads zero), then
// StoreQuery (inv_freq into smem, q rotated at p, times log2(e), as hi / lo 16-bit pieces into
// sm.tile.q).
template <class Cfg>
struct QueryRegs {
  static constexpr int kHalf = Cfg::kDim / 2;
  static constexpr int kItems = (Cfg::kHeads * kHalf / 2 + kThreads - 1) / kThreads;
  float2 x[kItems], y[kItems];
};

template <class Cfg>
__device__ __forceinline__ QueryRegs<Cfg> LoadQuery(const KernelParams& p, int head0, int heads) {
  using R = QueryRegs<Cfg>;
  R r;
#pragma unroll
  for (int it = 0; it < R::kItems; ++it) {
    const int i = threadIdx.x + it * kThreads;
    const int h = i / (R::kHalf / 2), d = 2 * (i % (R::kHalf / 2));
    r.x[it] = r.y[it] = make_float2(0.0f, 0.0f);
    if (i < Cfg::kHeads * R::kHalf / 2 && h < heads) {
      const float* row = p.q + int64_t(head0 + h) * Cfg::kDim;
      r.x[it] = *reinterpret_cast<const float2*>(row + d);
      r.y[it] = *reinterpret_cast<const float2*>(row + R::kHalf + d);
    }
  }
  return r;
}

template <class Cfg, bool kRope>
__device__ __forceinline__ void StoreQuery(const KernelParams& p, int64_t pos,
                                           const QueryRegs<Cfg>& r, SharedStorage<Cfg>& sm) {
  using R = QueryRegs<Cfg>;
  if constexpr (kRope) {
    for (int i = threadIdx.x; i < Cfg::kDim / 2; i += kThreads) sm.inv_freq[i] = p.inv_freq[i];
  }
#pragma unroll
  for (int it = 0; it < R::kItems; ++it) {
    const int i = threadIdx.x + it * kThreads;
    if (i >= Cfg::kHeads * R::kHalf / 2) break;
    const int h = i / (R::kHalf / 2), d = 2 * (i % (R::kHalf / 2));
    float x[2] = {r.x[it].x, r.x[it].y}, y[2] = {r.y[it].x, r.y[it].y};
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      if constexpr (kRope) {
        float c, s;
        RopeCosSin(double(pos), p.inv_freq[d + e], &c, &s);
        const float x1 = x[e], x2 = y[e];
        x[e] = x1 * c - x2 * s;
        y[e] = x2 * c + x1 * s;
      }
      x[e] *= kLog2e;
      y[e] *= kLog2e;
    }
    uint32_t hi, lo;
    Split2<Cfg::kBf16>(x[0], x[1], &hi, &lo);
    *reinterpret_cast<uint32_t*>(&sm.tile.q[0][h][2 * d]) = hi;
    *reinterpret_cast<uint32_t*>(&sm.tile.q[1][h][2 * d]) = lo;
    Split2<Cfg::kBf16>(y[0], y[1], &hi, &lo);
    *reinterpret_cast<uint32_t*>(&sm.tile.q[0][h][2 * (R::kHalf + d)]) = hi;
    *reinterpret_cast<uint32_t*>(&sm.tile.q[1][h][2 * (R::kHalf + d)]) = lo;
  }
}

// The B fragments of q for k-step `kk`: {hi b0, hi b1, lo b0, lo b1}.
template <class Cfg>
__device__ __forceinline__ void LoadQFrag(const SharedStorage<Cfg>& sm, int kk,
                                          uint32_t (&f)[4]) {
  const int lane = threadIdx.x % 32, j = lane / 8;
  LdMatrixX4(f, SmemAddr(&sm.tile.q[j >> 1][lane % 8][(2 * kk + (j & 1)) * 16]));
}

// ---- The staging pass: fp8 -> f16, RoPE ----

// 8 elements of a raw row (16-bit swizzled or fp8 plain) starting at element 8 * c, as floats.
template <class Cfg>
__device__ __forceinline__ void RawToFloats(const uint8_t* tile, int key, int c, float (&x)[8]) {
  uint32_t w[4];
  if constexpr (Cfg::kFp8) {
    const uint2 u = *reinterpret_cast<const uint2*>(tile + key * Cfg::kRawRowBytes + 8 * c);
    w[0] = u.x, w[1] = u.y;
  } else {
    const uint4 u = *reinterpret_cast<const uint4*>(tile + Swizzled<Cfg>(key, c));
    w[0] = u.x, w[1] = u.y, w[2] = u.z, w[3] = u.w;
  }
  ToFloats<Cfg::kStorage, 8>(w, x);
}

// fp8 rows of the tile -> f16 rows (exact) into `dst` (swizzled).
template <class Cfg>
__device__ __forceinline__ void ConvertFp8(const uint8_t* src, uint8_t* dst) {
  constexpr __nv_fp8_interpretation_t kInterp =
      Cfg::kStorage == ElemType::kF8E4M3 ? __NV_E4M3 : __NV_E5M2;
#pragma unroll 2
  for (int u = threadIdx.x; u < Cfg::kTile * Cfg::kChunks; u += kThreads) {
    const int key = u / Cfg::kChunks, c = u % Cfg::kChunks;
    const uint2 w = *reinterpret_cast<const uint2*>(src + key * Cfg::kRawRowBytes + 8 * c);
    uint32_t h[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const uint32_t bits = ((i < 2 ? w.x : w.y) >> (16 * (i & 1))) & 0xffffu;
      const __half2_raw r = __nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t(bits), kInterp);
      h[i] = uint32_t(r.x) | (uint32_t(r.y) << 16);
    }
    *reinterpret_cast<uint4*>(dst + Swizzled<Cfg>(key, c)) = make_uint4(h[0], h[1], h[2], h[3]);
  }
}

// RoPE: rotates the tile's keys at their positions in fp32 and writes the 16-bit hi pieces to
// `dst` and the lo pieces to `lo` (both swizzled; dst may be the source tile itself).
template <class Cfg>
__device__ __forceinline__ void RotateKeys(const SharedStorage<Cfg>& sm, const uint8_t* src,
                                           const int* pos, uint8_t* dst, uint8_t* lo) {
  constexpr int kHalfChunks = Cfg::kChunks / 2;
#pragma unroll 1
  for (int u = threadIdx.x; u < Cfg::kTile * kHalfChunks; u += kThreads) {
    const int key = u / kHalfChunks, c = u % kHalfChunks;
    float x[8], y[8];
    RawToFloats<Cfg>(src, key, c, x);
    RawToFloats<Cfg>(src, key, c + kHalfChunks, y);
    const double at = double(max(pos[key], 0));
    uint32_t hx[4], lx[4], hy[4], ly[4];
#pragma unroll
    for (int e = 0; e < 8; e += 2) {
      float xr[2], yr[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        float cs, sn;
        RopeCosSin(at, sm.inv_freq[8 * c + e + i], &cs, &sn);
        xr[i] = x[e + i] * cs - y[e + i] * sn;
        yr[i] = y[e + i] * cs + x[e + i] * sn;
      }
      Split2<Cfg::kBf16>(xr[0], xr[1], &hx[e / 2], &lx[e / 2]);
      Split2<Cfg::kBf16>(yr[0], yr[1], &hy[e / 2], &ly[e / 2]);
    }
    const int ox = Swizzled<Cfg>(key, c), oy = Swizzled<Cfg>(key, c + kHalfChunks);
    *reinterpret_cast<uint4*>(dst + ox) = make_uint4(hx[0], hx[1], hx[2], hx[3]);
    *reinterpret_cast<uint4*>(dst + oy) = make_uint4(hy[0], hy[1], hy[2], hy[3]);
    *reinterpret_cast<uint4*>(lo + ox) = make_uint4(lx[0], lx[1], lx[2], lx[3]);
    *reinterpret_cast<uint4*>(lo + oy) = make_uint4(ly[0], ly[1], ly[2], ly[3]);
  }
}

// ---- Computing a tile (one warp, its 16 keys) ----

// Per-thread state: the online softmax of heads 2 * (lane % 4) + {0, 1} (max in log2 units,
// partial sum over this thread's keys) and O^T fragments (dims 16 i + lane / 4 + {0, 8}).
template <class Cfg>
struct MmaState {
  float m[2];
  float l[2];
  float acc[Cfg::kSteps][4];
};

// S^T of the warp's 16 keys: c0, c1 = key lane / 4, c2, c3 = key lane / 4 + 8 (heads 2t, 2t+1).
// The hi x hi products and the lo corrections accumulate in independent MMA chains, each split
// over even and odd k-steps (4 chains of kSteps / 2: the MMA's latency, not its issue, bounds a
// tile's scoring).
template <class Cfg, bool kRope>
__device__ __forceinline__ void ScoreKeys(const SharedStorage<Cfg>& sm, const uint8_t* kt,
                                          const uint8_t* klo, const uint32_t (*qf)[4],
                                          float (&s)[4]) {
  const int lane = threadIdx.x % 32, j = lane / 8;
  const int row = (threadIdx.x / 32) * 16 + (j & 1) * 8 + lane % 8;
  float acc[4][4] = {};  // hi even, hi odd, lo even, lo odd
#pragma unroll
  for (int kk = 0; kk < Cfg::kSteps; ++kk) {
    uint32_t q[4];
    if constexpr (Cfg::kQInRegs) {
#pragma unroll
      for (int i = 0; i < 4; ++i) q[i] = qf[kk][i];
    } else {
      LoadQFrag<Cfg>(sm, kk, q);
    }
    const int off = Swizzled<Cfg>(row, 2 * kk + (j >> 1));
    uint32_t a[4];
    LdMatrixX4(a, SmemAddr(kt + off));
    Mma<Cfg::kBf16>(acc[kk & 1], a, q[0], q[1]);
    Mma<Cfg::kBf16>(acc[2 + (kk & 1)], a, q[2], q[3]);
    if constexpr (kRope) {
      LdMatrixX4(a, SmemAddr(klo + off));
      Mma<Cfg::kBf16>(acc[2 + (kk & 1)], a, q[0], q[1]);
    }
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) s[i] = (acc[0][i] + acc[1][i]) + (acc[2][i] + acc[3][i]);
}

template <class Cfg, bool kRope, bool kPrecise>
__device__ __forceinline__ void ComputeKeys(const SharedStorage<Cfg>& sm, const uint8_t* kt,
                                            const uint8_t* vt, const uint8_t* klo,
                                            const int* pos, const uint32_t (*qf)[4],
                                            MmaState<Cfg>& st) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4;
  float s[4];
  ScoreKeys<Cfg, kRope>(sm, kt, klo, qf, s);
  if (pos[warp * 16 + g] < 0) s[0] = s[1] = -INFINITY;
  if (pos[warp * 16 + g + 8] < 0) s[2] = s[3] = -INFINITY;

  // Online softmax of heads 2t, 2t + 1 over the warp's keys (lanes of equal t).
  float p[4];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float mt = fmaxf(s[h], s[h + 2]);
#pragma unroll
    for (int off = 4; off < 32; off *= 2) mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, off));
    const float m_new = fmaxf(st.m[h], mt);
    const float m_safe = m_new == -INFINITY ? 0.0f : m_new;  // nothing seen yet: weights 0
    const float corr = exp2f(st.m[h] - m_safe);
    st.m[h] = m_new;
    p[h] = exp2f(s[h] - m_safe);
    p[h + 2] = exp2f(s[h + 2] - m_safe);
    st.l[h] = fmaf(st.l[h], corr, p[h] + p[h + 2]);
#pragma unroll
    for (int i = 0; i < Cfg::kSteps; ++i) {
      st.acc[i][h] *= corr;
      st.acc[i][h + 2] *= corr;
    }
  }

  // P^T as B fragments: keys 2t, 2t + 1 (+ 8) of head g.
  uint32_t hi0, hi1, lo0 = 0, lo1 = 0;
  if constexpr (kPrecise) {
    Split2<Cfg::kBf16>(p[0], p[1], &hi0, &lo0);
    Split2<Cfg::kBf16>(p[2], p[3], &hi1, &lo1);
    lo0 = Transpose8x8(lo0);
    lo1 = Transpose8x8(lo1);
  } else {
    hi0 = Pack2<Cfg::kBf16>(p[0], p[1]);
    hi1 = Pack2<Cfg::kBf16>(p[2], p[3]);
  }
  hi0 = Transpose8x8(hi0);
  hi1 = Transpose8x8(hi1);

  const int j = lane / 8, row = warp * 16 + (j >> 1) * 8 + lane % 8;
#pragma unroll
  for (int i = 0; i < Cfg::kSteps; ++i) {
    uint32_t a[4];
    LdMatrixX4Trans(a, SmemAddr(vt + Swizzled<Cfg>(row, 2 * i + (j & 1))));
    Mma<Cfg::kBf16>(st.acc[i], a, hi0, hi1);
    if constexpr (kPrecise) Mma<Cfg::kBf16>(st.acc[i], a, lo0, lo1);
  }
}

// ---- Epilogue: the warps' states -> the block's (run_m, run_l, cta_acc) ----

template <class Cfg>
__device__ __forceinline__ void StoreMmaState(MmaState<Cfg>& st, SharedStorage<Cfg>& sm) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, h0 = 2 * (lane % 4);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
#pragma unroll
    for (int off = 4; off < 32; off *= 2) st.l[h] += __shfl_xor_sync(0xffffffffu, st.l[h], off);
  }
  if (g == 0) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      sm.warp_m[warp][h0 + h] = st.m[h];
      sm.warp_l[warp][h0 + h] = st.l[h];
    }
  }
  __syncthreads();
  float scale[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float m = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) m = fmaxf(m, sm.warp_m[w][h0 + h]);
    scale[h] = exp2f(st.m[h] - (m == -INFINITY ? 0.0f : m));
  }
#pragma unroll
  for (int i = 0; i < Cfg::kSteps; ++i) {
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      sm.cta_acc[warp][h0 + (r & 1)][16 * i + g + 8 * (r >> 1)] = st.acc[i][r] * scale[r & 1];
    }
  }
  if (threadIdx.x < Cfg::kHeads) {
    const int h = threadIdx.x;
    float m = -INFINITY, l = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) m = fmaxf(m, sm.warp_m[w][h]);
    const float m_safe = m == -INFINITY ? 0.0f : m;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) l += sm.warp_l[w][h] * exp2f(sm.warp_m[w][h] - m_safe);
    sm.run_m[h] = m;
    sm.run_l[h] = l;
  }
}

// ---- The kernel ----

// kRope: keys rotated at their positions (params.inv_freq non-null); kPrecise: fp32 output (P
// as two 16-bit pieces). One instantiation per combination, so each carries only its own path.
template <ElemType kStore, int kHeadDim, bool kRope, bool kPrecise>
__global__ void __launch_bounds__(kThreads, (MmaConfig<kStore, kHeadDim>::kMinBlocks))
    DecodeAttentionMmaKernel(const __grid_constant__ KernelParams p) {
  using Cfg = MmaConfig<kStore, kHeadDim>;
  static_assert(kStages * Cfg::kTile <= kThreads);  // the first tiles: one entry per thread
  extern __shared__ __align__(16) uint8_t smem_raw[];
  auto& sm = *reinterpret_cast<SharedStorage<Cfg>*>(smem_raw);
  uint8_t* const k_lo = smem_raw + sizeof(SharedStorage<Cfg>);  // RoPE launches only
  Stamp(p, kTraceStartNs);
  Stamp(p, kTraceStart);
  AllowDependents();
  const int heads = p.heads_per_block;
  const int head0 = blockIdx.y * heads;
  const int kv_head = head0 / p.group;
  const QueryRegs<Cfg> qr = LoadQuery<Cfg>(p, head0, heads);  // in flight with the scalars

  // Sparse launches with split_keys: the first entries' selected blocks are loaded together
  // with the step scalars, for the split's range when the key list fits and starts with the full
  // sink (every step but those of a context shorter than sink + window).
  const bool speculate = p.split_keys > 0 && p.max_blocks > 0 && !p.dense;
  const int64_t spec_begin = int64_t(blockIdx.x) * p.split_keys;
  int64_t spec_block = -1;
  if (speculate && threadIdx.x < kStages * Cfg::kTile) {
    const int64_t slot = spec_begin + threadIdx.x - p.sink_tokens;
    if (slot >= 0 && (slot >> 3) < p.max_blocks) spec_block = __ldg(p.blocks + (slot >> 3));
  }
  const KeySpace ks = LoadKeySpace(p);
  int64_t begin, end;
  SplitRange(ks.total, blockIdx.x, p.num_splits, &begin, &end, speculate ? p.split_keys : 0);
  const int tiles = int((end - begin + Cfg::kTile - 1) / Cfg::kTile);
  Stamp(p, kTraceKeySpace, tiles);
  StoreQuery<Cfg, kRope>(p, ks.p, qr, sm);
  if (threadIdx.x < kStages * Cfg::kTile) {
    const int t = threadIdx.x / Cfg::kTile, key = threadIdx.x % Cfg::kTile;
    const bool hit = speculate && begin == spec_begin && ks.sink_end == p.sink_tokens;
    StoreKeyRow<Cfg>(
        ResolveKey<Cfg>(p, ks, begin + threadIdx.x, end, kv_head, hit ? spec_block : -1), t, key,
        sm);
  }
  __syncthreads();
  Stamp(p, kTraceResolved);
#pragma unroll 1
  for (int t = 0; t < kStages; ++t) {
    if (t < tiles) {
      IssueMmaTile<Cfg>(p, t, sm);
    } else {
      CommitAsync();
    }
  }
  uint32_t qf[Cfg::kQInRegs ? Cfg::kSteps : 1][4];
  if constexpr (Cfg::kQInRegs) {
#pragma unroll
    for (int kk = 0; kk < Cfg::kSteps; ++kk) LoadQFrag<Cfg>(sm, kk, qf[kk]);
  }
  MmaState<Cfg> st;
#pragma unroll
  for (int h = 0; h < 2; ++h) st.m[h] = -INFINITY, st.l[h] = 0.0f;
#pragma unroll
  for (int i = 0; i < Cfg::kSteps; ++i) {
#pragma unroll
    for (int r = 0; r < 4; ++r) st.acc[i][r] = 0.0f;
  }

#pragma unroll 1
  for (int t = 0; t < tiles; ++t) {
    // Tile t + kStages: one entry per thread of the first kTile, in flight during this tile.
    const bool more = t + kStages < tiles;
    const bool resolver = more && threadIdx.x < Cfg::kTile;
    KeyRow next;
    if (resolver) {
      next = ResolveKey<Cfg>(p, ks, begin + int64_t(t + kStages) * Cfg::kTile + threadIdx.x, end,
                             kv_head);
    }
    WaitAsync<kStages - 1>();  // this thread's copies of tile t
    __syncthreads();           // everyone's
    if (t == 0) Stamp(p, kTraceArrived);
    auto& raw = sm.ring[t % kStages];
    const int* pos = sm.tile.pos[t % 3];
    uint8_t* kt = Cfg::kFp8 ? sm.conv : raw.k;
    uint8_t* vt = Cfg::kFp8 ? sm.conv + Cfg::kTile * Cfg::kRowBytes : raw.v;
    if constexpr (Cfg::kFp8 || kRope) {
      if constexpr (Cfg::kFp8) ConvertFp8<Cfg>(raw.v, vt);
      if constexpr (kRope) {
        RotateKeys<Cfg>(sm, raw.k, pos, kt, k_lo);
      } else {
        ConvertFp8<Cfg>(raw.k, kt);
      }
      __syncthreads();
    }
    ComputeKeys<Cfg, kRope, kPrecise>(sm, kt, vt, k_lo, pos, qf, st);
    if (resolver) StoreKeyRow<Cfg>(next, t + kStages, threadIdx.x, sm);
    __syncthreads();  // the stage (and the staging buffers) are free again; tile t + kStages's
                      // rows are published
    if (more) {
      IssueMmaTile<Cfg>(p, t + kStages, sm);
    } else {
      CommitAsync();
    }
  }
  WaitAsync<0>();
  __syncthreads();  // the ring is reused below
  Stamp(p, kTraceLoopEnd);

  StoreMmaState<Cfg>(st, sm);
  __syncthreads();
  Stamp(p, kTraceStateEnd);
  FinishBlock<Cfg>(p, head0, heads, sm);
  Stamp(p, kTraceEnd);
  Stamp(p, kTraceEndNs);
  StampValue(p, kTraceSm, SmId());
  StampValue(p, kTraceTiles, tiles);
}

}  // namespace ihip::engine::cuda::decode_attention
