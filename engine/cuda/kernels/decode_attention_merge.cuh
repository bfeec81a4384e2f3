#pragma once

// Epilogue of the decode attention kernels (kernels/decode_attention.cuh): the block's token
// lanes and warps are summed (they share the block's running max), then the block writes o
// (one split) or its partial (m, l, acc); the last block of a head group to arrive merges the
// splits by log-sum-exp, reading the partial accumulators into shared memory with cp.async (one
// round trip per ring-full of splits) while it computes the splits' scales.

#include "engine/cuda/kernels/decode_attention_common.cuh"

namespace ihip::engine::cuda::decode_attention {

// Per-thread registers: q (rotated, times log2(e)) and the unnormalized accumulators over the
// lane's keys, both scaled relative to the block's running max (SharedStorage::run_m).
template <class Cfg>
struct HeadState {
  float q[Cfg::kHeads][2 * Cfg::kHalf];
  float acc[Cfg::kHeads][2 * Cfg::kHalf];
};

// Sums the token lanes of each warp (shuffles), then stores each warp's sum in smem.
template <class Cfg>
__device__ __forceinline__ void StoreWarpState(HeadState<Cfg>& st, int slot,
                                               SharedStorage<Cfg>& sm) {
#pragma unroll
  for (int off = Cfg::kRowThreads; off < 32; off *= 2) {
#pragma unroll
    for (int h = 0; h < Cfg::kHeads; ++h) {
#pragma unroll
      for (int e = 0; e < 2 * Cfg::kHalf; ++e) {
        st.acc[h][e] += __shfl_xor_sync(0xffffffffu, st.acc[h][e], off);
      }
    }
  }
  const int warp = threadIdx.x / 32;
  if (threadIdx.x % 32 >= Cfg::kRowThreads) return;  // lane 0's threads hold the warp's sum
#pragma unroll
  for (int h = 0; h < Cfg::kHeads; ++h) {
#pragma unroll
    for (int e = 0; e < Cfg::kHalf; ++e) {
      sm.cta_acc[warp][h][slot * Cfg::kHalf + e] = st.acc[h][e];
      sm.cta_acc[warp][h][Cfg::kDim / 2 + slot * Cfg::kHalf + e] = st.acc[h][Cfg::kHalf + e];
    }
  }
}

template <class Cfg>
__device__ __forceinline__ float SumWarps(const SharedStorage<Cfg>& sm, int h, int d) {
  float a = 0.0f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) a += sm.cta_acc[w][h][d];
  return a;
}

// Four consecutive outputs from element i (a multiple of 4).
__device__ __forceinline__ void StoreOut4(const KernelParams& p, int64_t i, float4 x) {
  switch (p.out_dtype) {
    case ElemType::kF32:
      *reinterpret_cast<float4*>(static_cast<float*>(p.out) + i) = x;
      break;
    case ElemType::kF16: {
      const __half2 a = __floats2half2_rn(x.x, x.y), b = __floats2half2_rn(x.z, x.w);
      *reinterpret_cast<__half2*>(static_cast<__half*>(p.out) + i) = a;
      *reinterpret_cast<__half2*>(static_cast<__half*>(p.out) + i + 2) = b;
      break;
    }
    default: {
      const __nv_bfloat162 a = __floats2bfloat162_rn(x.x, x.y);
      const __nv_bfloat162 b = __floats2bfloat162_rn(x.z, x.w);
      *reinterpret_cast<__nv_bfloat162*>(static_cast<__nv_bfloat16*>(p.out) + i) = a;
      *reinterpret_cast<__nv_bfloat162*>(static_cast<__nv_bfloat16*>(p.out) + i + 2) = b;
      break;
    }
  }
}

__device__ __forceinline__ float NaturalLse(float m, float l) {
  return l > 0.0f ? (m + log2f(l)) * kLn2 : -INFINITY;
}

// One split: the block's state is the answer. `heads` (<= Cfg::kHeads): the block's query heads.
template <class Cfg>
__device__ __forceinline__ void WriteOutput(const KernelParams& p, int head0, int heads,
                                            const SharedStorage<Cfg>& sm) {
  static_assert(Cfg::kDim % 4 == 0);
#pragma unroll 1
  for (int i = threadIdx.x; i < heads * Cfg::kDim / 4; i += kThreads) {
    const int h = i / (Cfg::kDim / 4), d = 4 * (i % (Cfg::kDim / 4));
    const float l = sm.run_l[h];
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    float4 a = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float4 x = *reinterpret_cast<const float4*>(&sm.cta_acc[w][h][d]);
      a.x += x.x, a.y += x.y, a.z += x.z, a.w += x.w;
    }
    StoreOut4(p, int64_t(head0 + h) * Cfg::kDim + d,
              make_float4(a.x * inv, a.y * inv, a.z * inv, a.w * inv));
  }
  if (p.out_lse != nullptr && threadIdx.x < heads) {
    p.out_lse[head0 + threadIdx.x] = NaturalLse(sm.run_m[threadIdx.x], sm.run_l[threadIdx.x]);
  }
}

template <class Cfg>
__device__ __forceinline__ void WritePartial(const KernelParams& p, int head0, int heads,
                                             const SharedStorage<Cfg>& sm) {
  const int64_t row0 = int64_t(blockIdx.x) * p.num_q_heads + head0;
#pragma unroll 1
  for (int i = threadIdx.x; i < heads * Cfg::kDim; i += kThreads) {
    const int h = i / Cfg::kDim, d = i % Cfg::kDim;
    __stcg(p.partial_acc + (row0 + h) * Cfg::kDim + d, SumWarps(sm, h, d));
    if (d == 0) __stcg(p.partial_ml + row0 + h, make_float2(sm.run_m[h], sm.run_l[h]));
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

// Per head: the max over splits, each split's scale (into smem) and the merged (m, l) (into
// run_m / run_l, no longer needed by this block).
template <class Cfg>
__device__ __forceinline__ void MergeSplitScales(const KernelParams& p, int head0, int heads,
                                                 SharedStorage<Cfg>& sm) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, splits = p.num_splits;
#pragma unroll 1
  for (int h = warp; h < heads; h += kWarps) {
    const float2* ml = p.partial_ml + head0 + h;
    float m = -INFINITY;
#pragma unroll 1
    for (int s = lane; s < splits; s += 32) m = fmaxf(m, __ldcg(ml + int64_t(s) * p.num_q_heads).x);
#pragma unroll
    for (int off = 16; off >= 1; off /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
    const float m_safe = m == -INFINITY ? 0.0f : m;
    float l = 0.0f;
#pragma unroll 1
    for (int s = lane; s < splits; s += 32) {
      const float2 x = __ldcg(ml + int64_t(s) * p.num_q_heads);
      const float c = exp2f(x.x - m_safe);
      sm.merge_scale[h][s] = c;
      l += x.y * c;
    }
#pragma unroll
    for (int off = 16; off >= 1; off /= 2) l += __shfl_xor_sync(0xffffffffu, l, off);
    if (lane == 0) {
      sm.run_m[h] = m;
      sm.run_l[h] = l;
    }
  }
}

// The last block: o = sum over splits of scale * acc / l. Each thread copies, then reads back,
// the same float4 columns of every split (no barrier between the copy and its use). The block's
// `heads` (<= Cfg::kHeads) use the first heads * kDim / 4 float4s of each buffer slot.
template <class Cfg>
__device__ __forceinline__ void MergeSplits(const KernelParams& p, int head0, int heads,
                                            SharedStorage<Cfg>& sm) {
  constexpr int kQuads = Cfg::kHeads * Cfg::kDim / 4;  // float4s of one split's head group (max)
  constexpr int kPerThread = (kQuads + kThreads - 1) / kThreads;
  constexpr int kRound = SharedStorage<Cfg>::kRingBytes / (kQuads * 16);  // splits per round
  static_assert(kRound >= 1);
  const int splits = p.num_splits;
  const float4* src = reinterpret_cast<const float4*>(p.partial_acc) + int64_t(head0) * Cfg::kDim / 4;
  const int64_t stride = int64_t(p.num_q_heads) * Cfg::kDim / 4;  // float4s per split
  float4* buf = reinterpret_cast<float4*>(&sm.ring[0]);
  const int quads = heads * Cfg::kDim / 4;
  float4 a[kPerThread];
#pragma unroll
  for (int j = 0; j < kPerThread; ++j) a[j] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 1
  for (int s0 = 0; s0 < splits; s0 += kRound) {
    const int n = min(kRound, splits - s0);
#pragma unroll 1
    for (int s = 0; s < n; ++s) {
#pragma unroll
      for (int j = 0; j < kPerThread; ++j) {
        const int i = threadIdx.x + j * kThreads;
        if (i < quads) CopyAsync16(buf + s * kQuads + i, src + (s0 + s) * stride + i, 16);
      }
    }
    CommitAsync();
    if (s0 == 0) {
      MergeSplitScales(p, head0, heads, sm);  // while the copies fly
      __syncthreads();
    }
    WaitAsync<0>();
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      const int i = threadIdx.x + j * kThreads;
      if (i >= quads) continue;
      const float* scale = sm.merge_scale[i / (Cfg::kDim / 4)] + s0;
#pragma unroll 2
      for (int s = 0; s < n; ++s) {
        const float4 x = buf[s * kQuads + i];
        const float c = scale[s];
        a[j].x = fmaf(c, x.x, a[j].x);
        a[j].y = fmaf(c, x.y, a[j].y);
        a[j].z = fmaf(c, x.z, a[j].z);
        a[j].w = fmaf(c, x.w, a[j].w);
      }
    }
  }
#pragma unroll
  for (int j = 0; j < kPerThread; ++j) {
    const int i = threadIdx.x + j * kThreads;
    if (i >= quads) continue;
    const int h = i / (Cfg::kDim / 4);
    const float l = sm.run_l[h];
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    StoreOut4(p, int64_t(head0) * Cfg::kDim + 4 * int64_t(i),
              make_float4(a[j].x * inv, a[j].y * inv, a[j].z * inv, a[j].w * inv));
  }
  if (p.out_lse != nullptr && threadIdx.x < heads) {
    p.out_lse[head0 + threadIdx.x] = NaturalLse(sm.run_m[threadIdx.x], sm.run_l[threadIdx.x]);
  }
}

// The block's state (in smem: run_m, run_l, cta_acc) -> o (one split), or its partial; the last
// block of the head group merges. One call site per kernel: inlined (out of line it measured
// larger, the call's register shuffling included).
template <class Cfg>
__device__ __forceinline__ void FinishBlock(const KernelParams& p, int head0, int heads,
                                            SharedStorage<Cfg>& sm) {
  if (p.num_splits == 1) {
    WriteOutput<Cfg>(p, head0, heads, sm);
    return;
  }
  WritePartial<Cfg>(p, head0, heads, sm);
  if (!ArriveLast<Cfg>(p, blockIdx.y, sm)) return;
  MergeSplits<Cfg>(p, head0, heads, sm);
}

}  // namespace ihip::engine::cuda::decode_attention
