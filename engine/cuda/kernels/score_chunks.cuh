#pragma once

// Scoring kernel of GPU pruning (engine/cuda/pruning.h, DESIGN §3.2/§3.4): the representative-
// token search of engine/cpu/representative_search.h for every (candidate chunk, query head),
// max-reduced over heads into one order-preserving uint32 key per chunk (atomicMax; 0 = inactive).
// Grid y = query block in batched launches (score_common.cuh).
//
// Work item = (tile of kChunksPerScoreCta chunks, query head); items are ordered head-fastest so
// the heads of one GQA group, which probe the same first tokens, run side by side (L2 reuse). A
// persistent grid loops over the items. Inside a warp, the two half-warps score the two probes of
// a step (half-warp 0 the left probe, 1 the right; lane j of a half holds elements
// [j*E, j*E + E) of the key row, E = D/16, one vector load), and each warp advances
// kScoreChains chunks at once so that several key rows are in flight per warp.
//
// RoPE (extend mode, DeviceRope::inv_freq set), as engine/cpu/pruning.cc's SideQueries:
//   relative:      side 0 uses R(mw + 1) q, side 1 R(mw) q (rotated once per work item);
//   chunk-indexed: both sides use R(P_i) q_i with P_i = min(pos_i, n + mw) and the key is
//                  rotated by R(c) (c = chunk index): R(P) q . R(c) k = R(P - c) q . k.
// Angles are pos * inv_freq reduced modulo 2*pi in double, cos/sin rounded to float, rotation in
// fp32 (engine/hip/rope.cc).

#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "engine/cuda/device_kv.h"
#include "engine/cuda/kernels/score_common.cuh"
#include "engine/cuda/kernels/select_chunks.cuh"

namespace ihip::engine::cuda::kernels {

inline constexpr int kScoreWarps = 8;
inline constexpr int kScoreThreads = kScoreWarps * 32;
inline constexpr int kScoreChains = 2;  // chunks one warp searches concurrently
inline constexpr int kChunksPerScoreCta = kScoreWarps * kScoreChains;
inline constexpr int kRopeRelative = 0;  // = pruning.h kPruneRopeRelative

// Resident CTAs per SM the score kernel is compiled for: 3 (<= 80 registers, 24 warps with two
// key rows each in flight) unless a lane's slice of the row needs more registers.
constexpr int ScoreMinCtasPerSm(ElemType t, int head_dim) {
  return head_dim == 256 || (head_dim == 128 && t == ElemType::kF32) ? 2 : 3;
}

struct ScoreParams {
  DeviceKv kv;
  const StepScalars* step = nullptr;  // device; p_min, kv_length
  StageCandidates cand;
  const float* q = nullptr;            // device [num_q][num_q_heads][D] fp32, scaled, pre-RoPE
  const int64_t* positions = nullptr;  // device [num_q] (chunk-indexed style)
  int num_q = 0;
  int num_q_heads = 0;
  int group = 1;  // Hq / Hkv
  int chunk_size = 0;
  int masking_window = 0;
  const double* inv_freq = nullptr;  // device [D/2]; null = RoPE none
  int rope_style = kRopeRelative;
  uint32_t* keys = nullptr;  // device [cand.capacity] per query block, zeroed before the launch
  SelectParams select;       // the stage's select (SelectChunksKernel)
  // Batched launches (score_common.cuh): elements between query blocks' step scalars, queries
  // and positions; keys are workspace slices cand.block_bytes apart.
  int step_stride = 0, q_stride = 0, positions_stride = 0;
};

__device__ inline const StepScalars* StepOf(const ScoreParams& p) {
  return AtBlock(p.step, p.step_stride);
}

__device__ inline const float* QueriesOf(const ScoreParams& p) {
  return AtBlock(p.q, p.q_stride);
}

// Scan limit of the query block: min(kv_length, p_min - masking_window + 1), at least 0.
__device__ inline int ScanLimit(const ScoreParams& p, const StepScalars* step) {
  const int64_t lim = min(step->kv_length, step->p_min - p.masking_window + 1);
  return int(lim < 0 ? 0 : lim);
}

// Records one chunk's best score for a head.
template <bool kByteOffset = false>
__device__ inline void PublishScore(const ScoreParams& p, int index, float best) {
  atomicMax(AtSlice<kByteOffset>(p.keys, p.cand.block_bytes) + index, ScoreKey(best));
}

// ---- Stages of the kernel ----

template <ElemType kType>
__device__ inline float WordToFloat(uint32_t w, int sub) {
  if constexpr (kType == ElemType::kF32) {
    return __uint_as_float(w);
  } else if constexpr (kType == ElemType::kBF16) {
    return __uint_as_float(((w >> (16 * sub)) & 0xffffu) << 16);
  } else if constexpr (kType == ElemType::kF16) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(w >> (16 * sub))));
  } else if constexpr (kType == ElemType::kF8E5M2) {  // E5M2 = the top byte of an fp16
    return __half2float(
        __ushort_as_half(static_cast<unsigned short>(((w >> (8 * sub)) & 0xff) << 8)));
  } else {
    const __half_raw h = __nv_cvt_fp8_to_halfraw(
        static_cast<__nv_fp8_storage_t>((w >> (8 * sub)) & 0xff), __NV_E4M3);
    return __half2float(__half(h));
  }
}

// kE elements of kType at `src` (aligned to their size) as floats, in vector loads.
template <ElemType kType, int kE>
__device__ inline void LoadRow(const uint8_t* src, float (&out)[kE]) {
  constexpr int kBytes = kE * ElemBytes(kType);
  static_assert(kBytes >= 4 && kBytes % 4 == 0, "row slice must be whole words");
  constexpr int kWords = kBytes / 4;
  uint32_t w[kWords];
  if constexpr (kBytes >= 16) {
#pragma unroll
    for (int i = 0; i < kBytes / 16; ++i) {
      const uint4 v = __ldg(reinterpret_cast<const uint4*>(src) + i);
      w[4 * i] = v.x, w[4 * i + 1] = v.y, w[4 * i + 2] = v.z, w[4 * i + 3] = v.w;
    }
  } else if constexpr (kBytes == 8) {
    const uint2 v = __ldg(reinterpret_cast<const uint2*>(src));
    w[0] = v.x, w[1] = v.y;
  } else {
    w[0] = __ldg(reinterpret_cast<const unsigned int*>(src));
  }
  constexpr int kPerWord = 4 / ElemBytes(kType);
#pragma unroll
  for (int e = 0; e < kE; ++e) out[e] = WordToFloat<kType>(w[e / kPerWord], e % kPerWord);
}

template <ElemType kType, int kHeadDim>
__device__ inline const uint8_t* KeySlice(const DeviceKv& kv, int t, int kvh, int sub) {
  constexpr int kRowBytes = kHeadDim * ElemBytes(kType);
  const int page = t / kv.page_tokens;
  const int slot = t - page * kv.page_tokens;
  return kv.pages[page] + (size_t(slot) * kv.kv_heads + kvh) * kRowBytes + sub * (kRowBytes / 16);
}

// cos/sin of pos * inv_freq, the angle reduced modulo 2*pi in double as engine/hip/rope.cc does,
// then rounded to float. sincospi (no Payne-Hanek slow path, hence no stack frame) of a / pi
// differs from cos(a) by about one double ulp, which changes the float result only when the
// value lies within ~1e-16 of a float rounding boundary.
__device__ inline void RopeAngle(int64_t pos, double inv_freq, float* c, float* s) {
  constexpr double kPi = 3.14159265358979323846;
  const double a = fmod(double(pos) * inv_freq, 2.0 * kPi);
  double sd, cd;
  sincospi(a / kPi, &sd, &cd);
  *c = float(cd);
  *s = float(sd);
}

// The work item's side queries into shared memory: qs[side][i][D] (one side unless relative).
template <int kHeadDim>
__device__ inline void LoadSideQueries(const ScoreParams& p, int h, int n, float* qs) {
  constexpr int kHalf = kHeadDim / 2;
  const bool relative = p.inv_freq != nullptr && p.rope_style == kRopeRelative;
  const int total = (relative ? 2 : 1) * p.num_q * kHalf;
  for (int x = threadIdx.x; x < total; x += blockDim.x) {
    const int f = x % kHalf;
    const int i = (x / kHalf) % p.num_q;
    const int side = x / (kHalf * p.num_q);
    const float* src = QueriesOf(p) + (size_t(i) * p.num_q_heads + h) * kHeadDim;
    float* dst = qs + (size_t(side) * p.num_q + i) * kHeadDim;
    const float x1 = src[f], x2 = src[f + kHalf];
    if (p.inv_freq == nullptr) {
      dst[f] = x1;
      dst[f + kHalf] = x2;
      continue;
    }
    const int64_t cap = int64_t(n) + p.masking_window;
      const int64_t* positions = AtBlock(p.positions, p.positions_stride);
    const int64_t pos =
        relative ? p.masking_window + 1 - side : (positions[i] < cap ? positions[i] : cap);
    float c, s;
    RopeAngle(pos, p.inv_freq[f], &c, &s);
    dst[f] = __fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s));
    dst[f + kHalf] = __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s));
  }
}

// Rotates this lane's key elements by the angles in cs/sn [D/2] (chunk-indexed style); the
// partner element of rotate-half sits 8 lanes away in the same half-warp.
template <int kE>
__device__ inline void RotateKey(float (&k)[kE], const float* cs, const float* sn, int sub) {
  const int f0 = (sub & 7) * kE;
#pragma unroll
  for (int e = 0; e < kE; ++e) {
    const float partner = __shfl_xor_sync(0xffffffffu, k[e], 8);
    const float c = cs[f0 + e], s = sn[f0 + e];
    k[e] = sub < 8 ? __fsub_rn(__fmul_rn(k[e], c), __fmul_rn(partner, s))
                   : __fadd_rn(__fmul_rn(k[e], c), __fmul_rn(partner, s));
  }
}

// Max over the queries of q_i . k for this half-warp's side (qside = [num_q][D] in smem).
template <int kHeadDim, int kE>
__device__ inline float ProbeScore(const float (&k)[kE], const float* qside, int num_q, int sub) {
  float best = -INFINITY;
  for (int i = 0; i < num_q; ++i) {
    const float4* qv = reinterpret_cast<const float4*>(qside + i * kHeadDim + sub * kE);
    float dot = 0.0f;
#pragma unroll
    for (int j = 0; j < kE / 4; ++j) {
      const float4 v = qv[j];
      dot = fmaf(v.x, k[4 * j], dot);
      dot = fmaf(v.y, k[4 * j + 1], dot);
      dot = fmaf(v.z, k[4 * j + 2], dot);
      dot = fmaf(v.w, k[4 * j + 3], dot);
    }
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
    best = fmaxf(best, dot);
  }
  return best;
}

// One chunk's search state for one head (warp-uniform).
struct Chain {
  int l = 0, r = 0;  // remaining range [l, r)
  int index = 0;     // candidate index
  float best = -INFINITY;
  bool active = false;
};

__device__ inline int ProbeToken(const Chain& c, int side) {
  if (c.r - c.l == 1) return c.l;  // last step: both probes on the one token
  const int mid = (c.l + c.r) / 2;
  return side ? (mid + c.r) / 2 : (c.l + mid) / 2;
}

// One step of representative_search.h given the two probe scores.
__device__ inline void Advance(Chain& c, float left, float right) {
  if (c.r - c.l == 1) {
    const float won = left > right ? left : right;
    if (won > c.best) c.best = won;
    c.active = false;
    return;
  }
  const int mid = (c.l + c.r) / 2;
  if (left > right) {  // the left half only if strictly higher
    c.r = mid;
    if (left > c.best) c.best = left;
  } else {
    c.l = mid;
    if (right > c.best) c.best = right;
  }
}

// Calls f(std::integral_constant<int, i>) for i < N: a guaranteed unroll, so that per-chain
// arrays indexed by i stay in registers.
template <int N, class F>
__device__ inline void Unroll(F&& f) {
  [&]<int... I>(std::integer_sequence<int, I...>) { (f(std::integral_constant<int, I>{}), ...); }
  (std::make_integer_sequence<int, N>{});
}

// This warp's kScoreChains chunks of the tile starting at `first`, for query head h.
// rot: this warp's [kScoreChains][2][D/2] angle table (chunk-indexed style), else null.
template <ElemType kType, int kHeadDim>
__device__ inline void SearchChunks(const ScoreParams& p, int first, int n, int h, int limit,
                                    const float* qs, int side_stride, float* rot) {
  constexpr int kE = kHeadDim / 16;
  constexpr int kHalf = kHeadDim / 2;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int side = lane >> 4, sub = lane & 15;
  const int kvh = h / p.group;
  const float* qside = qs + side * side_stride;
  Chain ch[kScoreChains];
  Unroll<kScoreChains>([&](auto c) {
    ch[c].index = first + c * kScoreWarps + warp;
    if (ch[c].index >= n) return;
    ch[c].l = CandidateLeft<true>(p.cand, ch[c].index);
    ch[c].r = min(ch[c].l + p.chunk_size, limit);
    ch[c].active = ch[c].l < ch[c].r;
    if (rot == nullptr || !ch[c].active) return;
    for (int f = lane; f < kHalf; f += 32) {
      RopeAngle(ch[c].index, p.inv_freq[f], rot + c * kHeadDim + f, rot + c * kHeadDim + kHalf + f);
    }
  });
  __syncwarp();
  for (;;) {
    bool any = false;
    Unroll<kScoreChains>([&](auto c) { any |= ch[c].active; });
    if (!any) break;
    float k[kScoreChains][kE];
    Unroll<kScoreChains>([&](auto c) {  // issue every chain's row load first
      if (!ch[c].active) return;
      const int t = ProbeToken(ch[c], side);
      LoadRow<kType, kE>(KeySlice<kType, kHeadDim>(p.kv, t, kvh, sub), k[c]);
    });
    Unroll<kScoreChains>([&](auto c) {
      if (!ch[c].active) return;
      if (rot != nullptr) RotateKey(k[c], rot + c * kHeadDim, rot + c * kHeadDim + kHalf, sub);
      const float mine = ProbeScore<kHeadDim>(k[c], qside, p.num_q, sub);
      const float other = __shfl_xor_sync(0xffffffffu, mine, 16);
      Advance(ch[c], side ? other : mine, side ? mine : other);
    });
  }
  Unroll<kScoreChains>([&](auto c) {
    if (lane == 0 && ch[c].index < n && ch[c].best > -INFINITY) {
      PublishScore<true>(p, ch[c].index, ch[c].best);
    }
  });
  __syncwarp();  // the angle table is rewritten by the next item
}

// Dynamic shared memory: side queries [sides][num_q][D] floats, then (chunk-indexed) the angle
// tables [kScoreWarps][kScoreChains][2][D/2] floats.
template <ElemType kType, int kHeadDim>
__global__ void __launch_bounds__(kScoreThreads, ScoreMinCtasPerSm(kType, kHeadDim))
    ScoreChunksKernel(const ScoreParams p) {
  extern __shared__ float4 score_smem4[];
  float* smem = reinterpret_cast<float*>(score_smem4);
  const StepScalars* step = StepOf(p);
  const int n = CandidateCount(p.cand, step);
  const int items = (n + kChunksPerScoreCta - 1) / kChunksPerScoreCta * p.num_q_heads;
  if (int(blockIdx.x) >= items) return;
  const int limit = ScanLimit(p, step);
  const bool rope = p.inv_freq != nullptr;
  const bool relative = rope && p.rope_style == kRopeRelative;
  const int side_stride = relative ? p.num_q * kHeadDim : 0;
  const int q_floats = (relative ? 2 : 1) * p.num_q * kHeadDim;
  float* rot =
      rope && !relative ? smem + q_floats + (threadIdx.x >> 5) * kScoreChains * kHeadDim : nullptr;
  for (int item = blockIdx.x; item < items; item += gridDim.x) {
    const int tile = item / p.num_q_heads;
    const int h = item - tile * p.num_q_heads;
    __syncthreads();  // the previous item's queries are no longer read
    LoadSideQueries<kHeadDim>(p, h, n, smem);
    __syncthreads();
    SearchChunks<kType, kHeadDim>(p, tile * kChunksPerScoreCta, n, h, limit, smem, side_stride,
                                  rot);
  }
}

// The select of a stage, one CTA of kThreads per query block (grid y), after its score kernel
// (a template so that every translation unit may include it).
template <int kThreads>
__global__ void __launch_bounds__(kThreads) SelectChunksKernel(const ScoreParams p) {
  extern __shared__ uint4 select_smem[];
  const int n = CandidateCount(p.cand, StepOf(p));
  SelectStage(p.select, p.cand, n, AtSlice(p.keys, p.cand.block_bytes),
              *reinterpret_cast<SelectShared*>(select_smem));
}

}  // namespace ihip::engine::cuda::kernels
