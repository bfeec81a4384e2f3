#pragma once

// Kernel templates of engine/cuda/decode_attention.h: split-K decode attention of one query over
// the attended keys of one (sequence, layer), read through the block table.
//
// Grid (num_splits, Hq / kHeads); 128 threads. Block (s, c) serves query heads
// [c * kHeads, (c + 1) * kHeads) (all of one kv head) over split s's contiguous share of the
// "key list": dense = tokens [0, p]; sparse = the sink tokens, then 8 slots per selected block
// (slots outside [sink, window_begin) are masked), then the window [window_begin, p].
//
// The share is walked in tiles of Config::kTile entries (~32 KiB of K and V), kStages tiles in
// flight. Issuing a tile resolves every address first (the thread's block indices, then its page
// pointers, all loads independent), then starts all its copies at once with cp.async into
// shared memory, K and V as two commit groups; masked or missing entries are zero-filled. So a
// sparse block of up to kStages tiles pays three dependent memory latencies before its bytes
// stream (step scalars, block indices, page pointers), whatever its key count. Each tile is then
// computed in three passes with barriers between them: scores (once K has landed; RoPE angles
// per key computed once and shared by the group's heads), the softmax of the tile against the
// block's running max (one warp per head), and the weighted sum of V (once V has landed). All
// lanes share the block's running max, so the epilogue (decode_attention_merge.cuh) only sums.

#include "engine/cuda/kernels/decode_attention_common.cuh"
#include "engine/cuda/kernels/decode_attention_merge.cuh"

namespace ihip::engine::cuda::decode_attention {

// ---- Issuing a tile ----

// One thread's rows of one tile: source of its chunk of each K row (null: masked or past the
// end; V is half_bytes further) and the RoPE positions (-1: masked).
template <class Cfg>
struct TileRows {
  const uint8_t* src[Cfg::kKeysPerThread];
  int64_t pos[Cfg::kKeysPerThread];
};

// Resolves the thread's rows of the tile starting at entry `first` (entries >= end are masked):
// all block-index loads, then all page-pointer loads, so the chain costs two latencies.
template <class Cfg>
__device__ __forceinline__ void ResolveRows(const KernelParams& p, const KeySpace& ks,
                                            int64_t first, int64_t end, int kv_head,
                                            TileRows<Cfg>& rows) {
  const int row0 = threadIdx.x / Cfg::kCopyChunks, chunk = threadIdx.x % Cfg::kCopyChunks;
  int64_t tok[Cfg::kKeysPerThread];
#pragma unroll
  for (int j = 0; j < Cfg::kKeysPerThread; ++j) {
    const int64_t v = first + row0 + j * Cfg::kCopyRows;
    int64_t t = 0, pos = 0;
    const bool valid = v < end && ks.Map(v, &t, &pos);
    tok[j] = valid ? t : -1;
    rows.pos[j] = valid ? pos : -1;
  }
#pragma unroll
  for (int j = 0; j < Cfg::kKeysPerThread; ++j) {
    rows.src[j] = nullptr;
    if (tok[j] < 0) continue;
    const int64_t page = p.page_shift >= 0 ? tok[j] >> p.page_shift : Div(tok[j], p.page_tokens);
    const int64_t in_page = tok[j] - page * p.page_tokens;
    const auto* base = reinterpret_cast<const uint8_t*>(
        __ldg(reinterpret_cast<const unsigned long long*>(p.pages) + page));
    rows.src[j] = base + (in_page * p.kv_heads + kv_head) * Cfg::kRowBytes + chunk * 16;
  }
}

// Starts the copies of `rows` into ring stage `stage` (K, then V: two commit groups) and records
// the positions.
template <class Cfg>
__device__ __forceinline__ void IssueRows(const KernelParams& p, const TileRows<Cfg>& rows,
                                          int stage, SharedStorage<Cfg>& sm) {
  const int row0 = threadIdx.x / Cfg::kCopyChunks, chunk = threadIdx.x % Cfg::kCopyChunks;
  auto& tile = sm.ring[stage];
  const void* any = p.pages;  // source of zero-filled copies (nothing is read)
#pragma unroll
  for (int j = 0; j < Cfg::kKeysPerThread; ++j) {
    const int key = row0 + j * Cfg::kCopyRows;
    const uint8_t* src = rows.src[j];
    CopyAsync16(&tile.k[key][chunk * 16], src ? src : any, src ? 16 : 0);
  }
  CommitAsync();
#pragma unroll
  for (int j = 0; j < Cfg::kKeysPerThread; ++j) {
    const int key = row0 + j * Cfg::kCopyRows;
    const uint8_t* src = rows.src[j];
    CopyAsync16(&tile.v[key][chunk * 16], src ? src + p.half_bytes : any, src ? 16 : 0);
  }
  CommitAsync();
  if (chunk == 0) {
#pragma unroll
    for (int j = 0; j < Cfg::kKeysPerThread; ++j) {
      sm.tile.pos[stage][row0 + j * Cfg::kCopyRows] = rows.pos[j];
    }
  }
}

// Issues tile `t` of the block (entries [begin + t * kTile, ...)) into its ring stage, or two
// empty commit groups past the last tile (the wait counts stay fixed).
template <class Cfg>
__device__ __forceinline__ void IssueTile(const KernelParams& p, const KeySpace& ks, int64_t begin,
                                          int64_t end, int t, int tiles, int kv_head,
                                          SharedStorage<Cfg>& sm) {
  if (t >= tiles) {
    CommitAsync();
    CommitAsync();
    return;
  }
  TileRows<Cfg> rows;
  ResolveRows<Cfg>(p, ks, begin + int64_t(t) * Cfg::kTile, end, kv_head, rows);
  IssueRows<Cfg>(p, rows, t % kStages, sm);
}

// The first kStages tiles: every address resolved together, then every copy started.
template <class Cfg>
__device__ __forceinline__ void IssueFirstTiles(const KernelParams& p, const KeySpace& ks,
                                                int64_t begin, int64_t end, int tiles,
                                                int kv_head, SharedStorage<Cfg>& sm) {
  TileRows<Cfg> rows[kStages];
#pragma unroll
  for (int t = 0; t < kStages; ++t) {
    ResolveRows<Cfg>(p, ks, begin + int64_t(t) * Cfg::kTile, end, kv_head, rows[t]);
  }
#pragma unroll
  for (int t = 0; t < kStages; ++t) {
    if (t < tiles) {
      IssueRows<Cfg>(p, rows[t], t, sm);
    } else {
      CommitAsync();
      CommitAsync();
    }
  }
}

// ---- Setup ----

template <class Cfg>
__device__ __forceinline__ void InitBlockState(const double* inv_freq, SharedStorage<Cfg>& sm) {
  if (inv_freq != nullptr) {
    for (int i = threadIdx.x; i < Cfg::kDim / 2; i += kThreads) sm.inv_freq[i] = inv_freq[i];
  }
  if (threadIdx.x < Cfg::kHeads) {
    sm.run_m[threadIdx.x] = -INFINITY;
    sm.run_l[threadIdx.x] = 0.0f;
  }
}

template <class Cfg>
__device__ __forceinline__ void LoadQuery(const KernelParams& p, int64_t pos, int head0, int slot,
                                          bool rope, const double* freq, HeadState<Cfg>& st) {
#pragma unroll
  for (int h = 0; h < Cfg::kHeads; ++h) {
    const float* row = p.q + int64_t(head0 + h) * Cfg::kDim + slot * Cfg::kHalf;
#pragma unroll
    for (int e = 0; e < Cfg::kHalf; ++e) {
      st.q[h][e] = row[e];
      st.q[h][Cfg::kHalf + e] = row[Cfg::kDim / 2 + e];
    }
    if (rope) Rotate<Cfg::kHalf>(st.q[h], double(pos), freq);
#pragma unroll
    for (int e = 0; e < 2 * Cfg::kHalf; ++e) {
      st.q[h][e] *= kLog2e;
      st.acc[h][e] = 0.0f;
    }
  }
}

// ---- Computing a tile ----

// Reduce-scatter of x[kN] over the kR threads of a row (xor offsets kR/2 .. 1): afterwards the
// thread holds the sums of values [first, first + max(kN / kR, 1)) in x[0..), first =
// slot * kN / kR (integer division: for kN < kR the last levels sum a single value).
template <int kR, int kN>
__device__ __forceinline__ void ReduceScatter(float (&x)[kN], int slot) {
  int n = kN;
#pragma unroll
  for (int off = kR / 2; off >= 1; off /= 2) {
    if (n > 1) {
      const bool upper = (slot & off) != 0;
      const int half = n / 2;
#pragma unroll
      for (int i = 0; i < kN / 2; ++i) {
        if (i < half) {
          const float send = upper ? x[i] : x[half + i];
          const float keep = upper ? x[half + i] : x[i];
          x[i] = keep + __shfl_xor_sync(0xffffffffu, send, off);
        }
      }
      n = half;
    } else {
      x[0] += __shfl_xor_sync(0xffffffffu, x[0], off);
    }
  }
}

// Pass 1: the scaled logits (log2 units) of the tile's keys for every head into sm.tile.score;
// -inf for masked entries.
template <class Cfg>
__device__ __forceinline__ void ScoreTile(SharedStorage<Cfg>& sm, int stage, int lane, int slot,
                                          bool rope, const double* freq,
                                          const HeadState<Cfg>& st) {
  constexpr int kR = Cfg::kRowThreads, kN = Cfg::kQkValues;
  constexpr int kKept = kN >= kR ? kN / kR : 1;     // values per thread after the reduction
  constexpr int kCopies = kN >= kR ? 1 : kR / kN;  // threads holding each value
  const int first = slot / kCopies * kKept;
  const bool writer = slot % kCopies == 0;
#pragma unroll
  for (int g = 0; g < Cfg::kKeysPerLane / Cfg::kQkKeys; ++g) {
    float part[kN];
#pragma unroll
    for (int j = 0; j < Cfg::kQkKeys; ++j) {
      const int key = lane + (g * Cfg::kQkKeys + j) * Cfg::kLanes;
      float k[2 * Cfg::kHalf];
      RowToFloats<Cfg>(sm.ring[stage].k[key], slot, k);
      if (rope) Rotate<Cfg::kHalf>(k, double(max(sm.tile.pos[stage][key], int64_t{0})), freq);
#pragma unroll
      for (int h = 0; h < Cfg::kHeads; ++h) {
        float dot = 0.0f;
#pragma unroll
        for (int e = 0; e < 2 * Cfg::kHalf; ++e) dot = fmaf(st.q[h][e], k[e], dot);
        part[j * Cfg::kHeads + h] = dot;
      }
    }
    ReduceScatter<kR, kN>(part, slot);
    if (!writer) continue;
#pragma unroll
    for (int i = 0; i < kKept; ++i) {
      const int idx = first + i, h = idx % Cfg::kHeads;
      const int key = lane + (g * Cfg::kQkKeys + idx / Cfg::kHeads) * Cfg::kLanes;
      sm.tile.score[key][h] = sm.tile.pos[stage][key] >= 0 ? part[i] : -INFINITY;
    }
  }
}

// Pass 2 (one warp per head): the tile's max, the new running max, the weights exp2(s - m)
// (in place of the logits), the running sum and the accumulators' rescale factor.
template <class Cfg>
__device__ __forceinline__ void SoftmaxTile(SharedStorage<Cfg>& sm) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int h = warp; h < Cfg::kHeads; h += kWarps) {
    float mt = -INFINITY;
    for (int k = lane; k < Cfg::kTile; k += 32) mt = fmaxf(mt, sm.tile.score[k][h]);
#pragma unroll
    for (int off = 16; off >= 1; off /= 2) mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, off));
    const float m_old = sm.run_m[h];
    const float m_new = fmaxf(m_old, mt);
    const float m_safe = m_new == -INFINITY ? 0.0f : m_new;  // nothing seen yet: all weights 0
    float l = 0.0f;
    for (int k = lane; k < Cfg::kTile; k += 32) {
      const float w = exp2f(sm.tile.score[k][h] - m_safe);
      sm.tile.score[k][h] = w;
      l += w;
    }
#pragma unroll
    for (int off = 16; off >= 1; off /= 2) l += __shfl_xor_sync(0xffffffffu, l, off);
    if (lane == 0) {
      const float c = exp2f(m_old - m_safe);
      sm.corr[h] = c;
      sm.run_l[h] = sm.run_l[h] * c + l;
      sm.run_m[h] = m_new;
    }
  }
}

// Pass 3: rescales the accumulators and adds the weighted values of the lane's keys (masked
// entries have weight 0 and zero-filled values).
template <class Cfg>
__device__ __forceinline__ void AccumulateTile(const SharedStorage<Cfg>& sm, int stage, int lane,
                                               int slot, HeadState<Cfg>& st) {
#pragma unroll
  for (int h = 0; h < Cfg::kHeads; ++h) {
    const float c = sm.corr[h];
#pragma unroll
    for (int e = 0; e < 2 * Cfg::kHalf; ++e) st.acc[h][e] *= c;
  }
#pragma unroll
  for (int j = 0; j < Cfg::kKeysPerLane; ++j) {
    const int key = lane + j * Cfg::kLanes;
    float v[2 * Cfg::kHalf];
    RowToFloats<Cfg>(sm.ring[stage].v[key], slot, v);
    float w[Cfg::kHeads];
    if constexpr (Cfg::kHeads % 4 == 0) {
#pragma unroll
      for (int h = 0; h < Cfg::kHeads; h += 4) {
        const float4 x = *reinterpret_cast<const float4*>(&sm.tile.score[key][h]);
        w[h] = x.x, w[h + 1] = x.y, w[h + 2] = x.z, w[h + 3] = x.w;
      }
    } else {
#pragma unroll
      for (int h = 0; h < Cfg::kHeads; ++h) w[h] = sm.tile.score[key][h];
    }
#pragma unroll
    for (int h = 0; h < Cfg::kHeads; ++h) {
#pragma unroll
      for (int e = 0; e < 2 * Cfg::kHalf; ++e) st.acc[h][e] = fmaf(w[h], v[e], st.acc[h][e]);
    }
  }
}

// ---- The kernel ----

template <ElemType kStore, int kHeadDim, int kHeads>
__global__ void __launch_bounds__(kThreads, (Config<kStore, kHeadDim, kHeads>::kMinBlocks))
    DecodeAttentionKernel(const __grid_constant__ KernelParams p) {
  using Cfg = Config<kStore, kHeadDim, kHeads>;
  extern __shared__ __align__(16) uint8_t smem_raw[];
  auto& sm = *reinterpret_cast<SharedStorage<Cfg>*>(smem_raw);
  const int slot = threadIdx.x % Cfg::kRowThreads;
  const int lane = threadIdx.x / Cfg::kRowThreads;
  const int head0 = blockIdx.y * kHeads;
  const int kv_head = head0 / p.group;
  const bool rope = p.inv_freq != nullptr;
  AllowDependents();

  const KeySpace ks = LoadKeySpace(p);
  int64_t begin, end;
  SplitRange(ks.total, blockIdx.x, p.num_splits, &begin, &end);
  const int tiles = int((end - begin + Cfg::kTile - 1) / Cfg::kTile);
  IssueFirstTiles<Cfg>(p, ks, begin, end, tiles, kv_head, sm);
  InitBlockState<Cfg>(p.inv_freq, sm);
  __syncthreads();
  const double* freq = sm.inv_freq + slot * Cfg::kHalf;  // this thread's kHalf frequencies
  HeadState<Cfg> st;
  LoadQuery<Cfg>(p, ks.p, head0, slot, rope, freq, st);

#pragma unroll 1
  for (int t = 0; t < tiles; ++t) {
    const int stage = t % kStages;
    WaitAsync<2 * kStages - 1>();  // this thread's K copies of tile t
    __syncthreads();               // everyone's
    ScoreTile<Cfg>(sm, stage, lane, slot, rope, freq, st);
    __syncthreads();
    SoftmaxTile<Cfg>(sm);
    WaitAsync<2 * kStages - 2>();  // V of tile t
    __syncthreads();
    AccumulateTile<Cfg>(sm, stage, lane, slot, st);
    __syncthreads();  // the stage is free again
    IssueTile<Cfg>(p, ks, begin, end, t + kStages, tiles, kv_head, sm);
  }
  WaitAsync<0>();
  __syncthreads();  // the ring is reused below

  StoreWarpState<Cfg>(st, slot, sm);
  __syncthreads();
  FinishBlock<Cfg>(p, head0, kHeads, sm);
}

}  // namespace ihip::engine::cuda::decode_attention
