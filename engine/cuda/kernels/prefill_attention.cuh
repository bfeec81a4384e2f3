#pragma once

// Prefill attention kernels (DESIGN §3.5): flash attention on mma.sync m16n8k16 (bf16 operands,
// fp32 accumulation) over the keys of one query block, gathered from 8-token pieces of the KV
// pages. Included by prefill_attention.cu only.
//
// One CTA = one query block (64 queries) x kHeads query heads of one GQA group x one split of the
// key range; 4 warps per head, each owning 16 query rows. The keys a block attends are a list of
// "slots" (8-token blocks with a valid token range and a RoPE position): in sparse mode the sink
// slots, then the selected blocks, then the window's blocks (engine/hip/mask.cc SparseRuns); in
// dense mode every 8-token block up to the block's last query. Per key tile (kKeyTile keys =
// kSlots slots) the CTA:
//   1. cp.async-gathers the raw K/V rows (storage dtype) of the tile's slots into shared memory
//      (issued one tile ahead, so it overlaps the previous tile's MMAs);
//   2. converts them to bf16 tiles, rotating K in fp32 in `extend` mode (angle of a slot's first
//      position reduced modulo 2*pi in double, then per token advanced by angle addition with a
//      table of the angles of offsets 0..7), and zeroes keys outside the valid ranges;
//   3. S = Q K^T on tensor cores, causal / range masking (skipped when the whole tile is visible
//      to every query of the block), online softmax in the log2 domain, O += P V.
// With split-K the CTA writes its normalised partial output and log2-sum-exp, and
// MergeSplitsKernel combines the splits.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <climits>
#include <cstdint>

#include "engine/cuda/prefill_attention.h"

namespace ihip::engine::cuda::prefill {

constexpr int kQueryBlock = 64;
constexpr int kWarpsPerHead = kQueryBlock / 16;
constexpr float kLog2e = 1.4426950408889634f;

// Compile-time shape of one CTA.
template <int kHeadDim, int kHeads>
struct Tile {
  static constexpr int kKeyTile = kHeadDim == 256 ? 32 : 64;  // keys per step (smem, registers)
  static constexpr int kSlots = kKeyTile / 8;
  static constexpr int kRows = kQueryBlock * kHeads;  // query rows: head-major, 64 per head
  static constexpr int kWarps = kWarpsPerHead * kHeads;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kStride = kHeadDim + 8;  // bf16 per smem row: +16 bytes, no bank conflicts
  static constexpr int kHalf = kHeadDim / 2;
  static constexpr int kScoreTiles = kKeyTile / 8;   // n-tiles of S per warp
  static constexpr int kOutTiles = kHeadDim / 8;     // n-tiles of O per warp
  static constexpr bool kQInRegs = kHeadDim <= 128;  // D = 256: Q fragments re-read from smem
  static constexpr int kQFrags = kQInRegs ? kHeadDim / 16 : 1;
};

// Everything the kernels need, by value (__grid_constant__).
struct PrefillLaunch {
  PrefillAttentionParams p;
  int group = 1;                 // Hq / Hkv
  int head_groups = 1;           // CTAs per (query block, kv head): group / heads per CTA
  int num_query_blocks = 0;      // ceil(T / 64)
  int splits = 1;                // CTAs over the key range of one (query block, head group)
  int elem_shift = 1;            // log2 of the KV storage element size
  float* partial_o = nullptr;    // splits > 1: [splits][T][Hq][D] fp32, normalised partials
  float* partial_lse = nullptr;  // splits > 1: [splits][T][Hq] fp32, log2-sum-exp (-inf: empty)
};

// One 8-token block of the key list.
struct SlotInfo {
  const uint8_t* k_row = nullptr;  // K row of the block's first token for this CTA's kv head
  int64_t pos = 0;  // RoPE position of the block's first token before clamping: token d of
                    // the block sits at max(0, pos + d)
  int token = 0;    // first token of the block
  int lo = 0;       // tokens [token + lo, token + hi) are attended; lo == hi: none
  int hi = 0;
};

// Shared-memory layout (byte offsets); the raw staging area's size depends on the storage dtype.
template <int kHeadDim, int kHeads>
struct Layout {
  using T = Tile<kHeadDim, kHeads>;
  static constexpr size_t kQ = 0;                                       // bf16 [kRows][kStride]
  static constexpr size_t kK = kQ + size_t(T::kRows) * T::kStride * 2;  // bf16 [kKeyTile][kStride]
  static constexpr size_t kV = kK + size_t(T::kKeyTile) * T::kStride * 2;
  static constexpr size_t kOff = kV + size_t(T::kKeyTile) * T::kStride * 2;  // float2 [8][kHalf]
  static constexpr size_t kSlotCs = kOff + size_t(8) * T::kHalf * 8;  // float2 [kSlots][kHalf]
  static constexpr size_t kSlots = kSlotCs + size_t(T::kSlots) * T::kHalf * 8;  // [2][kSlots]
  static constexpr size_t kKeyTok = kSlots + 2 * T::kSlots * sizeof(SlotInfo);  // int [kKeyTile]
  static constexpr size_t kRaw = (kKeyTok + T::kKeyTile * 4 + 15) / 16 * 16;    // K then V, raw
  static constexpr size_t Bytes(int elem_size) {
    return kRaw + size_t(2) * T::kKeyTile * kHeadDim * elem_size;
  }
};

// ---- PTX wrappers ----

__device__ __forceinline__ uint32_t SmemAddr(const void* p) {
  return uint32_t(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void CpAsync16(uint32_t dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src) : "memory");
}

__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }

__device__ __forceinline__ void CpAsyncWaitAll() {
  asm volatile("cp.async.wait_all;\n" ::: "memory");
}

__device__ __forceinline__ void LdMatrixX4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

__device__ __forceinline__ void LdMatrixX4Trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

// c += a (16x16, row) * b (16x8, col), bf16 in, fp32 accumulate.
__device__ __forceinline__ void Mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                    uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t PackBf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// ---- element conversion ----

// Eight consecutive elements of type `dt` at `src` (aligned to their size) as floats.
__device__ __forceinline__ void LoadEight(const uint8_t* src, ElemType dt, float (&x)[8]) {
  switch (dt) {
    case ElemType::kF32: {
      const float4 a = reinterpret_cast<const float4*>(src)[0];
      const float4 b = reinterpret_cast<const float4*>(src)[1];
      x[0] = a.x, x[1] = a.y, x[2] = a.z, x[3] = a.w, x[4] = b.x, x[5] = b.y, x[6] = b.z;
      x[7] = b.w;
      return;
    }
    case ElemType::kF16:
    case ElemType::kBF16: {
      const uint4 u = *reinterpret_cast<const uint4*>(src);
      const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float2 f = dt == ElemType::kF16
                             ? __half22float2(*reinterpret_cast<const __half2*>(&w[i]))
                             : __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w[i]));
        x[2 * i] = f.x, x[2 * i + 1] = f.y;
      }
      return;
    }
    default: {  // FP8 (exact in fp16)
      const uint2 u = *reinterpret_cast<const uint2*>(src);
      const uint32_t w[2] = {u.x, u.y};
      const __nv_fp8_interpretation_t kind = dt == ElemType::kF8E4M3 ? __NV_E4M3 : __NV_E5M2;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const __nv_fp8x2_storage_t pair = __nv_fp8x2_storage_t(w[i / 2] >> (16 * (i % 2)));
        const __half2 h(__nv_cvt_fp8x2_to_halfraw2(pair, kind));
        const float2 f = __half22float2(h);
        x[2 * i] = f.x, x[2 * i + 1] = f.y;
      }
      return;
    }
  }
}

// Rounds eight floats to bf16 and stores them (16 bytes, aligned) at `dst` (shared memory).
__device__ __forceinline__ void StoreEight(__nv_bfloat16* dst, const float (&x)[8]) {
  uint4 u;
  u.x = PackBf16(x[0], x[1]), u.y = PackBf16(x[2], x[3]), u.z = PackBf16(x[4], x[5]);
  u.w = PackBf16(x[6], x[7]);
  *reinterpret_cast<uint4*>(dst) = u;
}

// Stores out[idx], out[idx + 1] (idx even) in the wire dtype.
__device__ __forceinline__ void StorePair(void* out, int64_t idx, float a, float b, ElemType t) {
  if (t == ElemType::kF32) {
    *reinterpret_cast<float2*>(static_cast<float*>(out) + idx) = make_float2(a, b);
  } else if (t == ElemType::kF16) {
    *reinterpret_cast<__half2*>(static_cast<__half*>(out) + idx) = __floats2half2_rn(a, b);
  } else {
    *reinterpret_cast<__nv_bfloat162*>(static_cast<__nv_bfloat16*>(out) + idx) =
        __floats2bfloat162_rn(a, b);
  }
}

// ---- RoPE ----

// (cos, sin) of pos * inv_freq: the angle is reduced modulo 2*pi in double (the double nearest
// 2*pi, as engine/hip/rope.cc's fmod; the reduction is exact to ~1 ulp), then cos/sin of the
// reduced angle r (|r| <= pi) in fp32 as sincospi(r / pi): a few fp32 ulp from the CPU's double
// cos/sin rounded to float, far below the bf16 rounding of the rotated keys.
__device__ __forceinline__ float2 RopeAngle(int64_t pos, double inv_freq) {
  constexpr double kTwoPi = 6.283185307179586;
  constexpr double kInvPi = 0.3183098861837907;
  const double a = double(pos) * inv_freq;
  const double r = fma(-rint(a * (1.0 / kTwoPi)), kTwoPi, a);
  float s, c;
  sincospif(float(r * kInvPi), &s, &c);
  return make_float2(c, s);
}

// Angle addition: (cos, sin) of a + b.
__device__ __forceinline__ float2 AddAngles(float2 a, float2 b) {
  return make_float2(a.x * b.x - a.y * b.y, a.y * b.x + a.x * b.y);
}

// Rotates the pair halves x1 = x[i], x2 = x[i + D/2] (engine/hip/rope.cc RotateWith).
__device__ __forceinline__ void RotatePairs(float (&x1)[8], float (&x2)[8], const float2 (&cs)[8]) {
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    const float a = x1[e], b = x2[e];
    x1[e] = a * cs[e].x - b * cs[e].y;
    x2[e] = b * cs[e].x + a * cs[e].y;
  }
}

// ---- the key list of a query block ----

struct BlockGeometry {
  int64_t p_min = 0, p_last = 0;  // first and last query position of the block
  int64_t window_begin = 0, sink_end = 0, selected_base = 0;
  const int64_t* blocks = nullptr;  // the block's selected blocks
  int count = 0;
  int sink_slots = 0;
  int64_t window_first = 0;  // 8-token block of the first window slot
  int num_slots = 0;
};

__host__ __device__ inline BlockGeometry MakeGeometry(const PrefillAttentionParams& p, int qb) {
  BlockGeometry g;
  g.p_min = p.position + int64_t(qb) * kQueryBlock;
  g.p_last = min(g.p_min + kQueryBlock - 1, p.position + p.num_tokens - 1);
  if (p.dense) {
    g.num_slots = int(g.p_last / 8 + 1);
    return g;
  }
  g.count = min(max(p.block_counts[qb], 0), p.max_blocks);
  g.blocks = p.blocks + int64_t(qb) * p.max_blocks;
  g.window_begin = max(int64_t{0}, g.p_min - p.window_tokens + 1);
  g.sink_end = min(int64_t(p.sink_tokens), g.window_begin);
  g.selected_base = g.p_min - p.window_tokens - 8 * int64_t(g.count) + 1;
  g.sink_slots = int((g.sink_end + 7) / 8);
  g.window_first = g.window_begin / 8;
  g.num_slots = g.sink_slots + g.count + int(g.p_last / 8 - g.window_first + 1);
  return g;
}

// Slot s of the block's key list (SparseRuns / DenseRuns in 8-token pieces).
__host__ __device__ inline SlotInfo MakeSlot(const PrefillLaunch& L, const BlockGeometry& g,
                                             int kvh, int s) {
  const PrefillAttentionParams& p = L.p;
  SlotInfo si;
  if (s >= g.num_slots) return si;
  int64_t token, lo, hi;
  if (p.dense) {
    token = 8 * int64_t(s), si.pos = token, lo = 0, hi = g.p_last + 1;
  } else if (s < g.sink_slots) {
    token = 8 * int64_t(s), si.pos = g.selected_base - p.sink_tokens + token;
    lo = 0, hi = g.sink_end;
  } else if (s < g.sink_slots + g.count) {
    const int m = s - g.sink_slots;
    token = 8 * g.blocks[m], si.pos = g.selected_base + 8 * int64_t(m);
    lo = p.sink_tokens, hi = g.window_begin;
  } else {
    token = 8 * (g.window_first + (s - g.sink_slots - g.count)), si.pos = token;
    lo = g.window_begin, hi = g.p_last + 1;
  }
  si.lo = int(min(max(lo - token, int64_t{0}), int64_t{8}));
  si.hi = int(min(max(hi - token, int64_t{0}), int64_t{8}));
  if (si.hi <= si.lo) {
    si.lo = si.hi = 0;  // nothing attended: never read (the block index may be anything)
    return si;
  }
  si.token = int(token);
  const DeviceKv& kv = p.kv;
  const size_t head_bytes = size_t(kv.head_dim) << L.elem_shift;
  si.k_row = kv.pages[token / kv.page_tokens] +
             size_t(token % kv.page_tokens) * kv.kv_heads * head_bytes + kvh * head_bytes;
  return si;
}

// ---- stages of the main kernel ----

// Q rows into shared memory: rotated at their true positions (extend), times log2(e), bf16;
// rows past T are zero. Also the angle table of offsets 0..7.
template <int kHeadDim, int kHeads>
__device__ __forceinline__ void PrepareQueries(const PrefillLaunch& L, int qb, int head0,
                                               uint8_t* smem) {
  using T = Tile<kHeadDim, kHeads>;
  using Ly = Layout<kHeadDim, kHeads>;
  const PrefillAttentionParams& p = L.p;
  auto* qs = reinterpret_cast<__nv_bfloat16*>(smem + Ly::kQ);
  constexpr int kChunks = T::kHalf / 8;
  for (int it = threadIdx.x; it < T::kRows * kChunks; it += T::kThreads) {
    const int r = it / kChunks, i0 = (it % kChunks) * 8;
    const int t = qb * kQueryBlock + r % kQueryBlock;
    float x1[8] = {}, x2[8] = {};
    if (t < p.num_tokens) {
      const float* q = p.q + (int64_t(t) * p.num_q_heads + head0 + r / kQueryBlock) * kHeadDim;
      LoadEight(reinterpret_cast<const uint8_t*>(q + i0), ElemType::kF32, x1);
      LoadEight(reinterpret_cast<const uint8_t*>(q + T::kHalf + i0), ElemType::kF32, x2);
      if (p.rope.inv_freq != nullptr) {
        float2 cs[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) cs[e] = RopeAngle(p.position + t, p.rope.inv_freq[i0 + e]);
        RotatePairs(x1, x2, cs);
      }
#pragma unroll
      for (int e = 0; e < 8; ++e) x1[e] *= kLog2e, x2[e] *= kLog2e;
    }
    StoreEight(qs + r * T::kStride + i0, x1);
    StoreEight(qs + r * T::kStride + T::kHalf + i0, x2);
  }
  if (p.rope.inv_freq == nullptr) return;
  auto* off = reinterpret_cast<float2*>(smem + Ly::kOff);
  for (int it = threadIdx.x; it < 8 * T::kHalf; it += T::kThreads) {
    const float2 cs = RopeAngle(it / T::kHalf, p.rope.inv_freq[it % T::kHalf]);
    off[it] = cs;
  }
}

// Issues the cp.async copies of the raw K and V rows of a tile's attended tokens.
template <int kHeadDim, int kHeads>
__device__ __forceinline__ void IssueTileLoads(const PrefillLaunch& L, const SlotInfo* slots,
                                               uint8_t* raw) {
  using T = Tile<kHeadDim, kHeads>;
  const int es = L.elem_shift;
  const int head_bytes = kHeadDim << es;
  const int chunk_shift = es + (kHeadDim == 64 ? 6 : kHeadDim == 128 ? 7 : 8) - 4;
  const size_t row_bytes = size_t(L.p.kv.kv_heads) * head_bytes;
  const size_t half_bytes = row_bytes * L.p.kv.page_tokens;
  const int per_kv = T::kKeyTile << chunk_shift;
  for (int c = threadIdx.x; c < 2 * per_kv; c += T::kThreads) {
    const int which = c >= per_kv ? 1 : 0;  // 0: K, 1: V
    const int rem = c - which * per_kv;
    const int key = rem >> chunk_shift, ch = rem & ((1 << chunk_shift) - 1);
    const SlotInfo& si = slots[key / 8];
    const int d = key % 8;
    if (d < si.lo || d >= si.hi) continue;
    const uint8_t* src = si.k_row + d * row_bytes + which * half_bytes + ch * 16;
    CpAsync16(SmemAddr(raw + (which * T::kKeyTile + key) * head_bytes + ch * 16), src);
  }
}

// Per tile, before the conversion: the keys' tokens for masking (INT_MAX: not attended), the
// slots' base angles, and the next tile's slots. Returns whether this thread's key (if any) is
// visible to every query of the block.
template <int kHeadDim, int kHeads>
__device__ __forceinline__ bool PrepareTile(const PrefillLaunch& L, const BlockGeometry& g, int kvh,
                                            int next_tile, int buf, uint8_t* smem) {
  using T = Tile<kHeadDim, kHeads>;
  using Ly = Layout<kHeadDim, kHeads>;
  auto* slots = reinterpret_cast<SlotInfo*>(smem + Ly::kSlots);
  const int tid = threadIdx.x;
  bool visible = true;
  if (tid < T::kKeyTile) {
    const SlotInfo& si = slots[buf * T::kSlots + tid / 8];
    const int d = tid % 8;
    const int tok = d >= si.lo && d < si.hi ? si.token + d : INT_MAX;
    reinterpret_cast<int*>(smem + Ly::kKeyTok)[tid] = tok;
    visible = tok <= g.p_min;
  } else if (tid < T::kKeyTile + T::kSlots && next_tile >= 0) {
    const int s = tid - T::kKeyTile;
    slots[(buf ^ 1) * T::kSlots + s] = MakeSlot(L, g, kvh, next_tile * T::kSlots + s);
  }
  const double* inv_freq = L.p.rope.inv_freq;
  if (inv_freq == nullptr) return visible;
  auto* slot_cs = reinterpret_cast<float2*>(smem + Ly::kSlotCs);
  for (int it = tid; it < T::kSlots * T::kHalf; it += T::kThreads) {
    const SlotInfo& si = slots[buf * T::kSlots + it / T::kHalf];
    if (si.hi > si.lo) slot_cs[it] = RopeAngle(max(int64_t{0}, si.pos), inv_freq[it % T::kHalf]);
  }
  return visible;
}

// Raw tile -> bf16 K and V tiles; K rotated in `extend` mode; keys not attended are zero.
template <int kHeadDim, int kHeads>
__device__ __forceinline__ void ConvertTile(const PrefillLaunch& L, int buf, uint8_t* smem) {
  using T = Tile<kHeadDim, kHeads>;
  using Ly = Layout<kHeadDim, kHeads>;
  const ElemType dt = L.p.kv.dtype;
  const int es = L.elem_shift;
  const uint8_t* raw = smem + Ly::kRaw;
  const int* key_tok = reinterpret_cast<const int*>(smem + Ly::kKeyTok);
  auto* k_tile = reinterpret_cast<__nv_bfloat16*>(smem + Ly::kK);
  const bool rope = L.p.rope.inv_freq != nullptr;
  constexpr int kChunks = kHeadDim / 8, kPerKv = T::kKeyTile * kChunks;
  for (int it = threadIdx.x + (rope ? kPerKv : 0); it < 2 * kPerKv; it += T::kThreads) {
    const int which = it / kPerKv, key = (it % kPerKv) / kChunks, i0 = (it % kChunks) * 8;
    float x[8] = {};
    if (key_tok[key] != INT_MAX) {
      LoadEight(raw + (size_t((which * T::kKeyTile + key) * kHeadDim + i0) << es), dt, x);
    }
    StoreEight(k_tile + (which * T::kKeyTile + key) * T::kStride + i0, x);  // V follows K
  }
  if (!rope) return;
  const auto* slots = reinterpret_cast<const SlotInfo*>(smem + Ly::kSlots) + buf * T::kSlots;
  const auto* slot_cs = reinterpret_cast<const float2*>(smem + Ly::kSlotCs);
  const auto* off = reinterpret_cast<const float2*>(smem + Ly::kOff);
  constexpr int kHalfChunks = T::kHalf / 8;
  for (int it = threadIdx.x; it < T::kKeyTile * kHalfChunks; it += T::kThreads) {
    const int key = it / kHalfChunks, i0 = (it % kHalfChunks) * 8;
    float x1[8] = {}, x2[8] = {};
    if (key_tok[key] != INT_MAX) {
      const SlotInfo& si = slots[key / 8];
      const int64_t base = max(int64_t{0}, si.pos);
      const int d = int(max(int64_t{0}, si.pos + key % 8) - base);  // 0..7
      LoadEight(raw + (size_t(key * kHeadDim + i0) << es), dt, x1);
      LoadEight(raw + (size_t(key * kHeadDim + T::kHalf + i0) << es), dt, x2);
      float2 cs[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        cs[e] = AddAngles(slot_cs[(key / 8) * T::kHalf + i0 + e], off[d * T::kHalf + i0 + e]);
      }
      RotatePairs(x1, x2, cs);
    }
    StoreEight(k_tile + key * T::kStride + i0, x1);
    StoreEight(k_tile + key * T::kStride + T::kHalf + i0, x2);
  }
}

// Online-softmax state of one thread: rows g and g + 8 of its warp (g = lane / 4).
template <int kHeadDim>
struct RowState {
  float o[kHeadDim / 8][4];
  float m[2];
  float l[2];  // partial sums over this thread's columns (reduced over the quad at the end)
  int pos[2];  // query positions (rows past T: the block's last query)
};

// s = Q K^T for this warp's 16 rows and the tile's keys (log2 units).
template <int kHeadDim, int kHeads>
__device__ __forceinline__ void ScoreTile(const uint32_t (&qf)[Tile<kHeadDim, kHeads>::kQFrags][4],
                                          const uint8_t* smem,
                                          float (&s)[Tile<kHeadDim, kHeads>::kScoreTiles][4]) {
  using T = Tile<kHeadDim, kHeads>;
  using Ly = Layout<kHeadDim, kHeads>;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const uint32_t k_base = SmemAddr(smem + Ly::kK);
  const uint32_t q_base = SmemAddr(smem + Ly::kQ);
#pragma unroll
  for (int n = 0; n < T::kScoreTiles; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
  for (int ks = 0; ks < kHeadDim / 16; ++ks) {
    uint32_t a[4];
    if constexpr (T::kQInRegs) {
      a[0] = qf[ks][0], a[1] = qf[ks][1], a[2] = qf[ks][2], a[3] = qf[ks][3];
    } else {
      const int row = warp * 16 + lane % 8 + 8 * ((lane / 8) % 2);
      LdMatrixX4(a, q_base + (row * T::kStride + ks * 16 + 8 * (lane / 16)) * 2);
    }
#pragma unroll
    for (int np = 0; np < T::kScoreTiles / 2; ++np) {
      uint32_t b[4];
      const int key = np * 16 + lane % 8 + 8 * (lane / 16);
      LdMatrixX4(b, k_base + (key * T::kStride + ks * 16 + 8 * ((lane / 8) % 2)) * 2);
      Mma(s[2 * np], a, b[0], b[1]);
      Mma(s[2 * np + 1], a, b[2], b[3]);
    }
  }
}

// Causal and range mask: -inf where the key's token is after the row's query (or not attended).
template <int kScoreTiles>
__device__ __forceinline__ void MaskScores(float (&s)[kScoreTiles][4], const int* key_tok,
                                           const int (&pos)[2]) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int n = 0; n < kScoreTiles; ++n) {
    const int2 tok = *reinterpret_cast<const int2*>(key_tok + n * 8 + 2 * (lane % 4));
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      if ((e % 2 ? tok.y : tok.x) > pos[e / 2]) s[n][e] = -INFINITY;
    }
  }
}

// Online softmax: s becomes P = 2^(s - m); O and l rescaled to the new running max.
template <int kHeadDim, int kScoreTiles>
__device__ __forceinline__ void UpdateSoftmax(float (&s)[kScoreTiles][4], RowState<kHeadDim>& st) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float mx = -INFINITY;
#pragma unroll
    for (int n = 0; n < kScoreTiles; ++n) mx = fmaxf(mx, fmaxf(s[n][2 * r], s[n][2 * r + 1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float m_new = fmaxf(st.m[r], mx);
    const float base = m_new == -INFINITY ? 0.0f : m_new;  // a row with nothing visible yet
    const float scale = exp2f(st.m[r] - base);
    st.m[r] = m_new;
    float sum = 0.0f;
#pragma unroll
    for (int n = 0; n < kScoreTiles; ++n) {
      s[n][2 * r] = exp2f(s[n][2 * r] - base);
      s[n][2 * r + 1] = exp2f(s[n][2 * r + 1] - base);
      sum += s[n][2 * r] + s[n][2 * r + 1];
    }
    st.l[r] = st.l[r] * scale + sum;
#pragma unroll
    for (int d = 0; d < kHeadDim / 8; ++d) st.o[d][2 * r] *= scale, st.o[d][2 * r + 1] *= scale;
  }
}

// O += P V (P from the score registers, rounded to bf16).
template <int kHeadDim, int kHeads>
__device__ __forceinline__ void AccumulatePv(
    const float (&s)[Tile<kHeadDim, kHeads>::kScoreTiles][4], const uint8_t* smem,
    RowState<kHeadDim>& st) {
  using T = Tile<kHeadDim, kHeads>;
  using Ly = Layout<kHeadDim, kHeads>;
  const int lane = threadIdx.x % 32;
  const uint32_t v_base = SmemAddr(smem + Ly::kV);
#pragma unroll
  for (int kk = 0; kk < T::kKeyTile / 16; ++kk) {
    const uint32_t a[4] = {
        PackBf16(s[2 * kk][0], s[2 * kk][1]), PackBf16(s[2 * kk][2], s[2 * kk][3]),
        PackBf16(s[2 * kk + 1][0], s[2 * kk + 1][1]), PackBf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
    const int key = kk * 16 + lane % 8 + 8 * ((lane / 8) % 2);
#pragma unroll
    for (int dp = 0; dp < kHeadDim / 16; ++dp) {
      uint32_t b[4];
      LdMatrixX4Trans(b, v_base + (key * T::kStride + dp * 16 + 8 * (lane / 16)) * 2);
      Mma(st.o[2 * dp], a, b[0], b[1]);
      Mma(st.o[2 * dp + 1], a, b[2], b[3]);
    }
  }
}

// Final output of this thread's rows: out directly, or the split's partial and log2-sum-exp.
template <int kHeadDim>
__device__ __forceinline__ void WriteRows(const PrefillLaunch& L, RowState<kHeadDim>& st, int qb,
                                          int head, int split) {
  const PrefillAttentionParams& p = L.p;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float l = st.l[r];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const int t = qb * kQueryBlock + (warp % kWarpsPerHead) * 16 + lane / 4 + 8 * r;
    if (t >= p.num_tokens) continue;
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    const int64_t row = int64_t(t) * p.num_q_heads + head;
    if (L.splits == 1) {
#pragma unroll
      for (int n = 0; n < kHeadDim / 8; ++n) {
        StorePair(p.out, row * kHeadDim + n * 8 + 2 * (lane % 4), st.o[n][2 * r] * inv,
                  st.o[n][2 * r + 1] * inv, p.out_dtype);
      }
      continue;
    }
    const int64_t srow = int64_t(split) * p.num_tokens * p.num_q_heads + row;
#pragma unroll
    for (int n = 0; n < kHeadDim / 8; ++n) {
      *reinterpret_cast<float2*>(L.partial_o + srow * kHeadDim + n * 8 + 2 * (lane % 4)) =
          make_float2(st.o[n][2 * r] * inv, st.o[n][2 * r + 1] * inv);
    }
    if (lane % 4 == 0) L.partial_lse[srow] = l > 0.0f ? st.m[r] + log2f(l) : -INFINITY;
  }
}

// ---- kernels ----

// Grid: (query blocks, Hkv * head_groups, splits); Tile::kThreads threads; Layout::Bytes smem.
template <int kHeadDim, int kHeads>
__global__ void __launch_bounds__(Tile<kHeadDim, kHeads>::kThreads, 1)
    PrefillAttentionKernel(const __grid_constant__ PrefillLaunch L) {
  using T = Tile<kHeadDim, kHeads>;
  using Ly = Layout<kHeadDim, kHeads>;
  extern __shared__ __align__(16) uint8_t smem[];
  const int qb = L.num_query_blocks - 1 - int(blockIdx.x);  // longest (dense) blocks first
  const int kvh = int(blockIdx.y) / L.head_groups;
  const int head0 = kvh * L.group + (int(blockIdx.y) % L.head_groups) * kHeads;
  const int split = int(blockIdx.z);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const BlockGeometry g = MakeGeometry(L.p, qb);
  const int num_tiles = (g.num_slots + T::kSlots - 1) / T::kSlots;
  const int per_split = (num_tiles + L.splits - 1) / L.splits;
  const int tile_begin = min(num_tiles, split * per_split);
  const int tile_end = min(num_tiles, tile_begin + per_split);
  auto* slots = reinterpret_cast<SlotInfo*>(smem + Ly::kSlots);
  uint8_t* raw = smem + Ly::kRaw;

  PrepareQueries<kHeadDim, kHeads>(L, qb, head0, smem);
  if (threadIdx.x < T::kSlots && tile_begin < tile_end) {
    slots[threadIdx.x] = MakeSlot(L, g, kvh, tile_begin * T::kSlots + threadIdx.x);
  }
  __syncthreads();
  if (tile_begin < tile_end) IssueTileLoads<kHeadDim, kHeads>(L, slots, raw);
  CpAsyncCommit();

  uint32_t qf[T::kQFrags][4];
  if constexpr (T::kQInRegs) {
    const uint32_t q_base = SmemAddr(smem + Ly::kQ);
    const int row = warp * 16 + lane % 8 + 8 * ((lane / 8) % 2);
#pragma unroll
    for (int ks = 0; ks < T::kQFrags; ++ks) {
      LdMatrixX4(qf[ks], q_base + (row * T::kStride + ks * 16 + 8 * (lane / 16)) * 2);
    }
  }
  RowState<kHeadDim> st;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    st.m[r] = -INFINITY, st.l[r] = 0.0f;
    const int64_t t = (warp % kWarpsPerHead) * 16 + lane / 4 + 8 * r;
    st.pos[r] = int(min(g.p_min + t, g.p_last));
#pragma unroll
    for (int d = 0; d < kHeadDim / 8; ++d) st.o[d][2 * r] = st.o[d][2 * r + 1] = 0.0f;
  }

  for (int j = tile_begin; j < tile_end; ++j) {
    const int buf = (j - tile_begin) & 1;
    CpAsyncWaitAll();
    __syncthreads();  // raw tile j and its slots landed; every warp is done with tile j - 1
    const bool visible =
        PrepareTile<kHeadDim, kHeads>(L, g, kvh, j + 1 < tile_end ? j + 1 : -1, buf, smem);
    const bool unmasked = __syncthreads_and(visible) != 0;
    ConvertTile<kHeadDim, kHeads>(L, buf, smem);
    __syncthreads();  // bf16 tiles ready; the raw buffer is free
    if (j + 1 < tile_end) IssueTileLoads<kHeadDim, kHeads>(L, slots + (buf ^ 1) * T::kSlots, raw);
    CpAsyncCommit();

    float s[T::kScoreTiles][4];
    ScoreTile<kHeadDim, kHeads>(qf, smem, s);
    if (!unmasked) {
      MaskScores<T::kScoreTiles>(s, reinterpret_cast<const int*>(smem + Ly::kKeyTok), st.pos);
    }
    UpdateSoftmax<kHeadDim, T::kScoreTiles>(s, st);
    AccumulatePv<kHeadDim, kHeads>(s, smem, st);
  }
  CpAsyncWaitAll();
  WriteRows<kHeadDim>(L, st, qb, head0 + warp / kWarpsPerHead, split);
}

// Combines the splits of each (query, head) row: out = sum_s w_s o_s / sum_s w_s with
// w_s = 2^(lse_s - max lse). One warp per row; grid covers T * Hq rows.
__global__ void MergeSplitsKernel(const __grid_constant__ PrefillLaunch L) {
  const PrefillAttentionParams& p = L.p;
  const int64_t rows = int64_t(p.num_tokens) * p.num_q_heads;
  const int64_t row = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= rows) return;
  const int lane = threadIdx.x % 32, D = p.kv.head_dim;
  float m = -INFINITY;
  for (int s = 0; s < L.splits; ++s) m = fmaxf(m, L.partial_lse[s * rows + row]);
  for (int d = 2 * lane; d < D; d += 64) {
    float a = 0.0f, b = 0.0f, den = 0.0f;
    for (int s = 0; s < L.splits; ++s) {
      const float lse = L.partial_lse[s * rows + row];
      const float w = lse == -INFINITY ? 0.0f : exp2f(lse - m);
      const float2 o = *reinterpret_cast<const float2*>(L.partial_o + (s * rows + row) * D + d);
      den += w, a += w * o.x, b += w * o.y;
    }
    const float inv = den > 0.0f ? 1.0f / den : 0.0f;
    StorePair(p.out, row * D + d, a * inv, b * inv, p.out_dtype);
  }
}

}  // namespace ihip::engine::cuda::prefill
