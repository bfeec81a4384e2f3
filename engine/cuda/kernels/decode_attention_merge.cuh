#pragma once

// Epilogue of the decode attention kernels (kernels/decode_attention.cuh): the block's token
// lanes and warps are summed (they share the block's running max), then the block writes o
// (one split) or its partial (m, l, acc). Split launches are followed by MergeSplitsKernel, a
// kernel of its own launched as a programmatic dependent (PDL): one block per query head merges
// the splits by log-sum-exp, all loads of a head in flight at once. (The last block of a head
// group used to merge: on the H200 its serial loop over 32 splits took 3.5 us, after an arrival
// counter that cost every block ~0.7 us.)

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
  static_assert(Cfg::kDim % 4 == 0);
  // float4s: one or two per thread for the usual shapes.
#pragma unroll 1
  for (int i = threadIdx.x; i < heads * Cfg::kDim / 4; i += kThreads) {
    const int h = i / (Cfg::kDim / 4), d = 4 * (i % (Cfg::kDim / 4));
    float4 a = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float4 x = *reinterpret_cast<const float4*>(&sm.cta_acc[w][h][d]);
      a.x += x.x, a.y += x.y, a.z += x.z, a.w += x.w;
    }
    __stcg(reinterpret_cast<float4*>(p.partial_acc + (row0 + h) * Cfg::kDim + d), a);
  }
  if (threadIdx.x < heads) {
    const int h = threadIdx.x;
    __stcg(p.partial_ml + row0 + h, make_float2(sm.run_m[h], sm.run_l[h]));
  }
}

// The block's state (in smem: run_m, run_l, cta_acc) -> o (one split), or its partial (merged
// by MergeSplitsKernel). One call site per kernel: inlined.
template <class Cfg>
__device__ __forceinline__ void FinishBlock(const KernelParams& p, int head0, int heads,
                                            SharedStorage<Cfg>& sm) {
  if (p.num_splits == 1) {
    WriteOutput<Cfg>(p, head0, heads, sm);
    return;
  }
  WritePartial<Cfg>(p, head0, heads, sm);
  Stamp(p, kTracePartial);
}

// Lets the launch's merge kernel (a programmatic dependent) be scheduled while this grid runs;
// it waits for this grid's completion and memory (griddepcontrol.wait) before reading.
__device__ __forceinline__ void AllowDependents() {
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
}

__device__ __forceinline__ void StoreOut1(const KernelParams& p, int64_t i, float x) {
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

// The split merge: grid (Hq), kThreads threads; block h merges query head h over the launch's
// splits. The (m, l) of every split and the first kChunk splits' accumulators are loaded at once
// (one memory round trip), then o = sum_s 2^(m_s - m) acc_s / sum_s 2^(m_s - m) l_s. The chunk
// loop holds the only copy of the loads (the kernel runs from a cold instruction cache).
template <int kDim>
__global__ void __launch_bounds__(kThreads) MergeSplitsKernel(const __grid_constant__ KernelParams p) {
  constexpr int kPer = (kDim + kThreads - 1) / kThreads;  // dims per thread
  constexpr int kChunk = kMergeChunk;
  constexpr int kMlPer = kMaxSplits / kThreads;           // (m, l) pairs per thread
  static_assert(kMaxSplits % kThreads == 0);
  __shared__ float scale[kMaxSplits];
  __shared__ float warp_red[kWarps];
  asm volatile("griddepcontrol.wait;" ::: "memory");  // the attention grid's partials
  MergeStamp(p, kTraceStartNs);
  const int h = blockIdx.x, splits = p.num_splits, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const float* acc_base = p.partial_acc + int64_t(h) * kDim;
  const int64_t stride = int64_t(p.num_q_heads) * kDim;  // floats per split

  float2 ml[kMlPer];
#pragma unroll
  for (int i = 0; i < kMlPer; ++i) {
    const int s = threadIdx.x + i * kThreads;
    ml[i] = s < splits ? __ldcg(p.partial_ml + int64_t(s) * p.num_q_heads + h)
                       : make_float2(-INFINITY, 0.0f);
  }
  float m = -INFINITY, l = 0.0f;
  float o[kPer];
#pragma unroll
  for (int e = 0; e < kPer; ++e) o[e] = 0.0f;
#pragma unroll 1
  for (int s0 = 0; s0 < splits; s0 += kChunk) {
    float acc[kChunk][kPer];
#pragma unroll
    for (int c = 0; c < kChunk; ++c) {
#pragma unroll
      for (int e = 0; e < kPer; ++e) {
        const int d = threadIdx.x + e * kThreads;
        acc[c][e] = s0 + c < splits && d < kDim
                        ? __ldcg(acc_base + int64_t(s0 + c) * stride + d)
                        : 0.0f;
      }
    }
    if (s0 == 0) {
      // The block's max, then each split's scale and the total weight (while the loads fly).
#pragma unroll
      for (int i = 0; i < kMlPer; ++i) m = fmaxf(m, ml[i].x);
#pragma unroll
      for (int off = 16; off >= 1; off /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
      if (lane == 0) warp_red[warp] = m;
      __syncthreads();
      m = warp_red[0];
#pragma unroll
      for (int w = 1; w < kWarps; ++w) m = fmaxf(m, warp_red[w]);
      const float m_safe = m == -INFINITY ? 0.0f : m;
#pragma unroll
      for (int i = 0; i < kMlPer; ++i) {
        const int s = threadIdx.x + i * kThreads;
        if (s < splits) {
          const float c = exp2f(ml[i].x - m_safe);
          scale[s] = c;
          l += ml[i].y * c;
        }
      }
#pragma unroll
      for (int off = 16; off >= 1; off /= 2) l += __shfl_xor_sync(0xffffffffu, l, off);
      __syncthreads();  // everyone has read warp_red (the max)
      if (lane == 0) warp_red[warp] = l;
      __syncthreads();  // the sums and every scale
      l = 0.0f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) l += warp_red[w];
    }
#pragma unroll
    for (int c = 0; c < kChunk; ++c) {
      if (s0 + c < splits) {
        const float w = scale[s0 + c];
#pragma unroll
        for (int e = 0; e < kPer; ++e) o[e] = fmaf(w, acc[c][e], o[e]);
      }
    }
  }
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
  for (int e = 0; e < kPer; ++e) {
    const int d = threadIdx.x + e * kThreads;
    if (d < kDim) StoreOut1(p, int64_t(h) * kDim + d, o[e] * inv);
  }
  if (p.out_lse != nullptr && threadIdx.x == 0) p.out_lse[h] = NaturalLse(m, l);
  MergeStamp(p, kTraceEndNs);
}

}  // namespace ihip::engine::cuda::decode_attention
