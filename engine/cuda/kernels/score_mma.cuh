#pragma once

// Tensor-core scoring kernel of GPU pruning (engine/cuda/pruning.h, DESIGN §3.2): the same
// representative-token search as score_chunks.cuh, for 16-bit and fp8 keys with RoPE `none` or
// the relative style (f32 keys and the chunk-indexed style use ScoreChunksKernel).
//
// A warp advances kMmaSlots x 4 searches (4 chunks per slot, one query head) in lockstep. Each
// step loads the 8 probe rows of a slot as the 8 columns of an m16n8k16 B operand (column
// 2c + side = chunk c's left/right probe; lane (n = lane/4, t = lane%4) loads the contiguous
// quarter t of row n: 16-byte loads, 16 rows in flight per warp, no dependent page-table load:
// the pages a chunk spans are fetched once per chunk and shuffled). The A operand holds the
// block's queries: the dot product is exact-order-free in k, so k is permuted to match the
// contiguous quarters. Scores must stay fp32-accurate (the search compares probes), so every
// fp32 query is split into three 16-bit pieces hi + mid + lo (bf16: 24 mantissa bits, the whole
// fp32 value; f16: 33 bits over a smaller exponent range): keys are exact in the MMA type (fp8
// widens to f16 exactly), products are exact, accumulation is fp32.
//   packed (<= 4 queries): one M tile, row q + 4s = piece s of query q; the pieces of a query
//     sit in rows g, g + 8 of one lane and row g + 4 of the lane 16 away.
//   grouped (> 4): per 16 queries three M tiles (hi, mid, lo) accumulate into one C.
// Relative RoPE: side 0 (left probes) and side 1 (right probes) use differently rotated queries,
// so each step runs the MMAs once per side and keeps the matching columns.
//
// Grid: num_q_heads x ctas_per_head CTAs, head fastest (the heads of a GQA group read the same
// first probes at the same time: L2 reuse); a CTA keeps its head's query fragments in shared
// memory and its warps stride over warp tiles of kMmaSlots * 4 chunks. Grid y = query block
// (batched launches).

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>

#include "engine/cuda/kernels/score_chunks.cuh"

namespace ihip::engine::cuda::kernels {

inline constexpr int kMmaWarps = 8;
inline constexpr int kMmaThreads = kMmaWarps * 32;
inline constexpr int kMmaChainsPerSlot = 4;  // 8 B columns = 4 chunks x 2 probes
inline constexpr int kMmaPieces = 3;         // 16-bit pieces of an fp32 query
inline constexpr int kMmaPackedQueries = 4;  // at most this many queries: one packed M tile

constexpr bool MmaSupports(ElemType t) { return t != ElemType::kF32; }

using ScoreKernelFn = void (*)(ScoreParams);

// The one runtime -> compile-time dispatch of this family (engine/cuda/pruning_mma.cu): the
// kernel for (storage dtype, head dim 64/128/256); null when unsupported (f32).
ScoreKernelFn PickScoreMmaKernel(ElemType t, int head_dim);

// Bytes of a key row one lane loads (a quarter row).
constexpr int MmaSliceBytes(ElemType t, int head_dim) { return head_dim * ElemBytes(t) / 4; }

// Slots (4 chunks each) per warp: two, unless a quarter row exceeds 16 words as 16-bit values.
constexpr int MmaSlots(ElemType t, int head_dim) { return head_dim <= 128 ? 2 : 1; }

// M tiles per side for `num_q` queries.
constexpr int MmaTiles(int num_q) {
  return num_q <= kMmaPackedQueries ? 1 : kMmaPieces * ((num_q + 15) / 16);
}

// Dynamic shared memory of the kernel (both sides, so that one plan serves every RoPE mode):
// A fragments [2][tiles][D/16][32] uint4, then cos/sin [2 sides][2][D/2] floats.
constexpr int MmaSmemBytes(int num_q, int head_dim) {
  return 2 * MmaTiles(num_q) * (head_dim / 16) * 32 * 16 + 2 * 2 * (head_dim / 2) * 4;
}

// ---- 16-bit pieces and MMA ----

template <bool kBf16>
__device__ inline uint32_t HalfBits(float x) {
  if constexpr (kBf16) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(x));
  } else {
    return __half_as_ushort(__float2half_rn(x));
  }
}

template <bool kBf16>
__device__ inline float HalfToFloat(uint32_t b) {
  if constexpr (kBf16) {
    return __uint_as_float(b << 16);
  } else {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(b)));
  }
}

// Piece `s` of x = hi + mid + lo (each the rounding of what the earlier pieces left).
template <bool kBf16>
__device__ inline uint32_t Piece(float x, int s) {
  uint32_t b = HalfBits<kBf16>(x);
  for (int j = 0; j < s; ++j) {
    x = x - HalfToFloat<kBf16>(b);  // exact
    b = HalfBits<kBf16>(x);
  }
  return b;
}

// c += a (16x16 row) * b (16x8 col), fp32 accumulate.
template <bool kBf16>
__device__ inline void MmaStep(float (&c)[4], const uint4& a, uint32_t b0, uint32_t b1) {
  if constexpr (kBf16) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b0), "r"(b1));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b0), "r"(b1));
  }
}

// The 16-bit MMA operand pair (f16) of fp8 elements 2j, 2j + 1 of word w.
template <ElemType kType>
__device__ inline uint32_t Fp8PairToHalf2(uint32_t w, int j) {
  const uint32_t pair = (w >> (16 * j)) & 0xffffu;
  if constexpr (kType == ElemType::kF8E5M2) {  // E5M2 = the top byte of an fp16
    return ((pair & 0xffu) << 8) | ((pair & 0xff00u) << 16);
  } else {
    const __half2_raw h =
        __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(pair), __NV_E4M3);
    return uint32_t(h.x) | (uint32_t(h.y) << 16);
  }
}

// ---- Query fragments ----

// Query i of head h for `side`, element d, rotated as LoadSideQueries does (cs/sn: [2][D/2]).
template <int kHeadDim>
__device__ inline float SideQuery(const ScoreParams& p, int h, int i, int side, int d,
                                  const float* cs, const float* sn) {
  constexpr int kHalf = kHeadDim / 2;
  const float* q = QueriesOf(p) + (size_t(i) * p.num_q_heads + h) * kHeadDim;
  if (p.inv_freq == nullptr) return q[d];
  const int f = d < kHalf ? d : d - kHalf;
  const float c = cs[side * kHalf + f], s = sn[side * kHalf + f];
  const float x1 = q[f], x2 = q[f + kHalf];
  return d < kHalf ? __fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s))
                   : __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s));
}

// Packs the 16-bit A values of rows (g, g + 8) x elements (d0..d0+3) into the lane's fragment.
__device__ inline uint4 PackFragment(const uint32_t (&v)[8]) {
  return make_uint4(v[0] | (v[1] << 16), v[4] | (v[5] << 16), v[2] | (v[3] << 16),
                    v[6] | (v[7] << 16));
}

// Fills the A fragments [sides][tiles][D/16][32] (lane order) of head h; cs/sn receive the
// relative style's angles [2][D/2].
template <bool kBf16, int kHeadDim>
__device__ inline void BuildFragments(const ScoreParams& p, int h, int sides, int tiles,
                                      uint4* frag, float* cs, float* sn) {
  constexpr int kHalf = kHeadDim / 2, kSteps = kHeadDim / 16;
  if (p.inv_freq != nullptr) {  // relative style: side 0 at mw + 1, side 1 at mw
    for (int x = threadIdx.x; x < 2 * kHalf; x += blockDim.x) {
      const int side = x / kHalf, f = x % kHalf;
      RopeAngle(p.masking_window + 1 - side, p.inv_freq[f], cs + x, sn + x);
    }
    __syncthreads();
  }
  const bool packed = p.num_q <= kMmaPackedQueries;
  const int groups = packed ? 1 : tiles / kMmaPieces;
  const int total = sides * groups * kSteps * 32;
  for (int x = threadIdx.x; x < total; x += blockDim.x) {
    const int lane = x & 31, kc = (x >> 5) % kSteps;
    const int group = (x / (32 * kSteps)) % groups, side = x / (32 * kSteps * groups);
    const int g = lane >> 2, d0 = (lane & 3) * (kHeadDim / 4) + 4 * kc;
    uint32_t v[8];  // (row g, d0..d0+3), (row g + 8, d0..d0+3)
    if (packed) {   // row q + 4 * piece
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const int row = g + 8 * (e >> 2), i = row & 3, piece = row >> 2;
        v[e] = piece < kMmaPieces && i < p.num_q
                   ? Piece<kBf16>(SideQuery<kHeadDim>(p, h, i, side, d0 + (e & 3), cs, sn), piece)
                   : 0u;
      }
      frag[((side * tiles) * kSteps + kc) * 32 + lane] = PackFragment(v);
      continue;
    }
    float rest[8];  // what the pieces so far leave of each value
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const int i = 16 * group + g + 8 * (e >> 2);
      rest[e] = i < p.num_q ? SideQuery<kHeadDim>(p, h, i, side, d0 + (e & 3), cs, sn) : 0.0f;
    }
    for (int piece = 0; piece < kMmaPieces; ++piece) {
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        v[e] = HalfBits<kBf16>(rest[e]);
        rest[e] = rest[e] - HalfToFloat<kBf16>(v[e]);  // exact
      }
      const int tile = kMmaPieces * group + piece;
      frag[((side * tiles + tile) * kSteps + kc) * 32 + lane] = PackFragment(v);
    }
  }
  __syncthreads();
}

// ---- Searches ----

// One lane's search (chunk lane / 8 of its slot; all 8 lanes of a chunk hold the same state).
struct MmaChain {
  int l = 0, r = 0;  // remaining range [l, r)
  float best = -INFINITY;
  bool active = false;
  int first_page = 0;
  const uint8_t* page = nullptr;  // page first_page + lane % 8 of the chunk, if it spans <= 8
  bool cached = false;            // whether the chunk's pages are all in `page` of its 8 lanes
};

__device__ inline void StartChain(const ScoreParams& p, int index, int n, int limit,
                                  MmaChain& c) {
  c = MmaChain{};
  if (index < n) {
    c.l = CandidateLeft(p.cand, index);
    c.r = min(c.l + p.chunk_size, limit);
    c.active = c.l < c.r;
  }
  if (!c.active) return;
  const int P = p.kv.page_tokens;
  c.first_page = c.l / P;
  const int span = (c.r - 1) / P - c.first_page + 1;
  const int j = threadIdx.x & 7;
  c.cached = span <= 8;
  if (c.cached && j < span) c.page = p.kv.pages[c.first_page + j];
}

// Base address of token t's page for this lane's chain (warp-converged call).
__device__ inline const uint8_t* PageOf(const ScoreParams& p, const MmaChain& c, int t) {
  const int j = t / p.kv.page_tokens - c.first_page;
  const int src = (threadIdx.x & 24) | (j & 7);
  const auto shuffled = reinterpret_cast<const uint8_t*>(
      __shfl_sync(0xffffffffu, reinterpret_cast<unsigned long long>(c.page), src));
  if (!c.active || c.cached) return shuffled;
  return p.kv.pages[t / p.kv.page_tokens];
}

template <ElemType kType, int kHeadDim>
struct MmaLayout {
  static constexpr int kSlots = MmaSlots(kType, kHeadDim);
  static constexpr int kSliceBytes = MmaSliceBytes(kType, kHeadDim);
  static constexpr int kRawWords = kSliceBytes / 4;  // as loaded
  static constexpr int kWords = kHeadDim / 8;        // as 16-bit pairs (B registers)
  static constexpr int kSteps = kHeadDim / 16;
  static constexpr bool kBf16 = kType == ElemType::kBF16;
};

// Issues the loads of this lane's quarter of its probe row (zeros when the chain is done).
template <ElemType kType, int kHeadDim>
__device__ inline void LoadQuarter(const ScoreParams& p, const MmaChain& c, int kvh,
                                   uint32_t (&w)[MmaLayout<kType, kHeadDim>::kRawWords]) {
  using Lay = MmaLayout<kType, kHeadDim>;
  const int side = (threadIdx.x >> 2) & 1;
  const int t = c.active ? ProbeToken(Chain{c.l, c.r, 0, c.best, true}, side) : c.l;
  const uint8_t* page = PageOf(p, c, t);
#pragma unroll
  for (int i = 0; i < Lay::kRawWords; ++i) w[i] = 0;
  if (!c.active) return;
  const int slot = t - (t / p.kv.page_tokens) * p.kv.page_tokens;
  const uint8_t* src = page + (size_t(slot) * p.kv.kv_heads + kvh) * (kHeadDim * ElemBytes(kType)) +
                       (threadIdx.x & 3) * Lay::kSliceBytes;
#pragma unroll
  for (int i = 0; i < Lay::kRawWords / 4; ++i) {
    const uint4 v = __ldg(reinterpret_cast<const uint4*>(src) + i);
    w[4 * i] = v.x, w[4 * i + 1] = v.y, w[4 * i + 2] = v.z, w[4 * i + 3] = v.w;
  }
}

// The quarter row as B registers: word 2kc + j = elements 4kc + 2j, 4kc + 2j + 1 of the quarter
// (j = 0: k 2t..2t+1 of k-step kc, j = 1: k 2t+8..2t+9), fp8 widened to f16 exactly.
template <ElemType kType, int kHeadDim>
__device__ inline void ToBRegs(const uint32_t (&raw)[MmaLayout<kType, kHeadDim>::kRawWords],
                               uint32_t (&w)[MmaLayout<kType, kHeadDim>::kWords]) {
  using Lay = MmaLayout<kType, kHeadDim>;
#pragma unroll
  for (int i = 0; i < Lay::kWords; ++i) {
    if constexpr (ElemBytes(kType) == 2) {
      w[i] = raw[i];
    } else {
      w[i] = Fp8PairToHalf2<kType>(raw[i / 2], i % 2);
    }
  }
}

// Max over the queries of the probe scores: after the call lane c (< 4) holds chunk c's
// (left, right) probe scores of the slot in (*left, *right).
__device__ inline void ReduceQueries(float (&acc)[4], const ScoreParams& p, int group,
                                     float* left, float* right) {
  const int g = (threadIdx.x & 31) >> 2;
  float s0, s1;
  if (p.num_q <= kMmaPackedQueries) {  // rows g (+8) here, g + 4 in the lane 16 away
    s0 = acc[0] + acc[2];
    s1 = acc[1] + acc[3];
    s0 += __shfl_xor_sync(0xffffffffu, s0, 16);
    s1 += __shfl_xor_sync(0xffffffffu, s1, 16);
    const bool valid = (g & 3) < p.num_q;
    s0 = valid ? s0 : -INFINITY;
    s1 = valid ? s1 : -INFINITY;
  } else {
    const bool lo = 16 * group + g < p.num_q, hi = 16 * group + g + 8 < p.num_q;
    s0 = fmaxf(lo ? acc[0] : -INFINITY, hi ? acc[2] : -INFINITY);
    s1 = fmaxf(lo ? acc[1] : -INFINITY, hi ? acc[3] : -INFINITY);
  }
  *left = fmaxf(*left, s0);
  *right = fmaxf(*right, s1);
}

// One step of every search of the warp: loads, MMAs for each side and query group, reduction
// over queries, then Advance (score_chunks.cuh) per chain.
template <ElemType kType, int kHeadDim>
__device__ inline void MmaSearchStep(const ScoreParams& p, int kvh, int sides, int tiles,
                                     const uint4* frag, MmaChain (&ch)[MmaLayout<kType, kHeadDim>::kSlots]) {
  using Lay = MmaLayout<kType, kHeadDim>;
  constexpr int kSlots = Lay::kSlots;
  const int lane = threadIdx.x & 31;
  uint32_t raw[kSlots][Lay::kRawWords], w[kSlots][Lay::kWords];
  Unroll<kSlots>([&](auto s) { LoadQuarter<kType, kHeadDim>(p, ch[s], kvh, raw[s]); });
  Unroll<kSlots>([&](auto s) { ToBRegs<kType, kHeadDim>(raw[s], w[s]); });
  float left[kSlots], right[kSlots];
  Unroll<kSlots>([&](auto s) { left[s] = right[s] = -INFINITY; });
  const int tiles_per_group = p.num_q <= kMmaPackedQueries ? 1 : kMmaPieces;
  for (int side = 0; side < sides; ++side) {
    for (int t0 = 0; t0 < tiles; t0 += tiles_per_group) {
      float acc[kSlots][4] = {};
      for (int tile = t0; tile < t0 + tiles_per_group; ++tile) {
        const uint4* a = frag + ((side * tiles + tile) * Lay::kSteps) * 32 + lane;
#pragma unroll
        for (int kc = 0; kc < Lay::kSteps; ++kc) {
          const uint4 av = a[kc * 32];
          Unroll<kSlots>([&](auto s) {
            MmaStep<Lay::kBf16>(acc[s], av, w[s][2 * kc], w[s][2 * kc + 1]);
          });
        }
      }
      Unroll<kSlots>([&](auto s) {
        float l = -INFINITY, r = -INFINITY;
        ReduceQueries(acc[s], p, t0 / tiles_per_group, &l, &r);
        if (side == 0) left[s] = fmaxf(left[s], l);  // side 0 = the left probes' queries
        if (side == sides - 1) right[s] = fmaxf(right[s], r);
      });
    }
  }
  Unroll<kSlots>([&](auto s) {
#pragma unroll
    for (int o = 4; o < 32; o <<= 1) {
      left[s] = fmaxf(left[s], __shfl_xor_sync(0xffffffffu, left[s], o));
      right[s] = fmaxf(right[s], __shfl_xor_sync(0xffffffffu, right[s], o));
    }
    const int c = lane >> 3;  // lane c holds chunk c's columns 2c, 2c + 1
    const float ls = __shfl_sync(0xffffffffu, left[s], c);
    const float rs = __shfl_sync(0xffffffffu, right[s], c);
    if (!ch[s].active) return;
    Chain st{ch[s].l, ch[s].r, 0, ch[s].best, true};
    Advance(st, ls, rs);
    ch[s].l = st.l, ch[s].r = st.r, ch[s].best = st.best, ch[s].active = st.active;
  });
}

template <ElemType kType, int kHeadDim>
__global__ void __launch_bounds__(kMmaThreads, 3) ScoreChunksMmaKernel(const ScoreParams p) {
  using Lay = MmaLayout<kType, kHeadDim>;
  constexpr int kSlots = Lay::kSlots, kTile = kSlots * kMmaChainsPerSlot;
  extern __shared__ uint4 mma_smem[];
  const StepScalars* step = StepOf(p);
  const int n = CandidateCount(p.cand, step);
  const int warp_tiles = (n + kTile - 1) / kTile;
  const int ctas_per_head = int(gridDim.x) / p.num_q_heads;
  const int h = int(blockIdx.x) % p.num_q_heads, j = int(blockIdx.x) / p.num_q_heads;
  if (j * kMmaWarps >= warp_tiles) return;
  const int limit = ScanLimit(p, step);
  const int sides = p.inv_freq != nullptr ? 2 : 1;
  const int tiles = MmaTiles(p.num_q);
  uint4* frag = mma_smem;
  float* cs = reinterpret_cast<float*>(frag + 2 * tiles * Lay::kSteps * 32);
  BuildFragments<Lay::kBf16, kHeadDim>(p, h, sides, tiles, frag, cs, cs + kHeadDim);
  const int kvh = h / p.group, lane = threadIdx.x & 31;
  const int stride = ctas_per_head * kMmaWarps;
  for (int wt = j * kMmaWarps + int(threadIdx.x >> 5); wt < warp_tiles; wt += stride) {
    MmaChain ch[kSlots];
    Unroll<kSlots>([&](auto s) {
      StartChain(p, wt * kTile + s * kMmaChainsPerSlot + (lane >> 3), n, limit, ch[s]);
    });
    for (;;) {
      bool any = false;
      Unroll<kSlots>([&](auto s) { any |= ch[s].active; });
      if (!__any_sync(0xffffffffu, any)) break;
      MmaSearchStep<kType, kHeadDim>(p, kvh, sides, tiles, frag, ch);
    }
    Unroll<kSlots>([&](auto s) {
      const int index = wt * kTile + s * kMmaChainsPerSlot + (lane >> 3);
      if ((lane & 7) == 0 && index < n && ch[s].best > -INFINITY) {
        PublishScore(p, index, ch[s].best);
      }
    });
  }
}

}  // namespace ihip::engine::cuda::kernels
