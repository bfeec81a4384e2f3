#pragma once

// Shared pieces of the tensor-core decode attention kernel (kernels/decode_attention_mma.cuh):
// its compile-time shape, shared memory and the MMA fragment helpers.
//
// The tensor-core kernel of engine/cuda/decode_attention.h for 16-bit and fp8 storage (fp32 storage
// keeps the CUDA-core kernel of decode_attention.cuh). Same grid, key list, split shares,
// asynchronous gather and epilogue as that kernel; what differs is the arithmetic:
//
// Per kv head the group's query heads (1..8, padded to 8) are the N dimension of mma.sync
// m16n8k16 (fp32 accumulation), as FlashInfer does for GQA decode:
//   S^T[16 keys x 8 heads]  = K[16 keys x D] . Q^T[D x 8 heads]       (D / 16 MMAs)
//   O^T[D x 8 heads]       += V^T[D x 16 keys] . P^T[16 keys x 8 heads] (D / 16 MMAs)
// K is the A operand as stored (ldmatrix), V^T comes from ldmatrix.trans, and the S^T
// accumulator fragment becomes the B operand P^T with one movmatrix.trans per 8 keys. The O^T
// fragment holds the same two heads per thread as the S^T fragment, so the online softmax
// rescale is thread-local.
//
// Tiles are 64 keys; each of the 4 warps owns 16 keys of every tile and runs its own online
// softmax (max, sum and O^T in registers); the warps are merged once at the end. A tile costs
// one barrier for its arrival, one (fp8 conversion / RoPE) staging pass when needed, and one to
// free its ring stage. Tiles in shared memory are rows of 16-byte chunks, chunk c of row r at
// c ^ (r & 7) (conflict-free ldmatrix).
//
// Precision: operands are bf16 for bf16 storage and f16 otherwise (fp8 converts exactly to f16).
// q and RoPE-rotated keys are split into two 16-bit pieces (hi + lo, ~16 significant bits; the
// lo x lo product is dropped), so the logits are within ~1e-5 relative of fp32 ones. P is
// rounded to 16 bits for 16-bit output (standard flash-attention practice); for fp32 output
// ("precise") it is split too and the PV MMAs repeated for the lo piece, which keeps split-K
// against one split, and sparse-with-every-block against dense, equal to ~1e-5.

#include "engine/cuda/kernels/decode_attention_common.cuh"
#include "engine/cuda/kernels/decode_attention_merge.cuh"

namespace ihip::engine::cuda::decode_attention {

template <ElemType kStore, int kHeadDim>
struct MmaConfig {
  static constexpr ElemType kStorage = kStore;
  static constexpr int kDim = kHeadDim;
  static constexpr int kHeads = 8;  // the MMA's N: the block's query heads, padded
  static constexpr bool kBf16 = kStore == ElemType::kBF16;  // else f16 operands
  static constexpr bool kFp8 = kElemBytes<kStore> == 1;
  static constexpr int kTile = 64;  // 16 keys per warp
  static constexpr int kRawRowBytes = kHeadDim * kElemBytes<kStore>;  // as copied
  static constexpr int kRowBytes = 2 * kHeadDim;                      // 16-bit, swizzled
  static constexpr int kChunks = kRowBytes / 16;
  static constexpr int kCopyChunks = kRawRowBytes / 16;
  static constexpr int kCopyRows = kThreads / kCopyChunks;
  static constexpr int kKeysPerThread = kTile / kCopyRows;
  static constexpr int kSteps = kHeadDim / 16;     // k-steps of QK^T = m-tiles of PV
  static constexpr bool kQInRegs = kHeadDim <= 128;  // else q fragments are re-read from smem
  static constexpr int kQRowBytes = kRowBytes + 16;  // padded rows
  static constexpr int kLoBytes = kTile * kRowBytes;  // RoPE: low pieces of the rotated keys
  static constexpr int kConvBytes = kFp8 ? 2 * kTile * kRowBytes : 16;
  static constexpr int kMinBlocks = kHeadDim <= 128 ? 3 : 1;  // smem allows 3 (D 128)
  static_assert(kChunks >= 8 && kCopyChunks >= 1 && kTile % kCopyRows == 0);
  static_assert(kTile == 16 * kWarps);
};

template <ElemType kStore, int kHeadDim>
struct SharedStorage<MmaConfig<kStore, kHeadDim>> {
  using Cfg = MmaConfig<kStore, kHeadDim>;
  struct Tile {
    alignas(16) uint8_t k[Cfg::kTile * Cfg::kRawRowBytes];  // 16-bit: swizzled; fp8: plain rows
    alignas(16) uint8_t v[Cfg::kTile * Cfg::kRawRowBytes];
  };
  union {
    Tile ring[kStages];
    // Per-warp accumulators, rescaled to run_m; rows padded by 4 floats so that the warps'
    // fragment stores (8 dims x 4 head pairs per instruction) hit 32 distinct banks.
    float cta_acc[kWarps][Cfg::kHeads][Cfg::kDim + 4];
  };
  alignas(16) uint8_t conv[Cfg::kConvBytes];  // fp8: the tile's K then V as 16-bit rows
  struct {
    alignas(16) uint8_t q[2][Cfg::kHeads][Cfg::kQRowBytes];  // hi, lo pieces of q * log2(e)
    int pos[3][Cfg::kTile];  // RoPE position per entry, -1: masked (slot = tile % 3)
    const uint8_t* src[kStages][Cfg::kTile];  // K row per entry, null: masked (tile % kStages)
  } tile;
  double inv_freq[Cfg::kDim / 2];
  float warp_m[kWarps][Cfg::kHeads];
  float warp_l[kWarps][Cfg::kHeads];
  float run_m[Cfg::kHeads];
  float run_l[Cfg::kHeads];

};

// ---- Fragments ----

__device__ __forceinline__ uint32_t SmemAddr(const void* p) {
  return uint32_t(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void LdMatrixX4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

__device__ __forceinline__ void LdMatrixX4Trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

__device__ __forceinline__ uint32_t Transpose8x8(uint32_t x) {
  uint32_t y;
  asm("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;" : "=r"(y) : "r"(x));
  return y;
}

// d += a . b (m16n8k16, fp32 accumulators).
template <bool kBf16>
__device__ __forceinline__ void Mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                    uint32_t b1) {
  if constexpr (kBf16) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Two floats as a 16-bit pair (x in the low half), rounded to nearest, and back.
template <bool kBf16>
__device__ __forceinline__ uint32_t Pack2(float x, float y) {
  if constexpr (kBf16) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(x, y);
    return *reinterpret_cast<const uint32_t*>(&h);
  } else {
    const __half2 h = __floats2half2_rn(x, y);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
}

template <bool kBf16>
__device__ __forceinline__ float2 Unpack2(uint32_t w) {
  if constexpr (kBf16) {
    return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xffff0000u));
  } else {
    return __half22float2(*reinterpret_cast<const __half2*>(&w));
  }
}

// hi = (x, y) rounded; lo = the remainders rounded.
template <bool kBf16>
__device__ __forceinline__ void Split2(float x, float y, uint32_t* hi, uint32_t* lo) {
  *hi = Pack2<kBf16>(x, y);
  const float2 h = Unpack2<kBf16>(*hi);
  *lo = Pack2<kBf16>(x - h.x, y - h.y);
}

// Byte offset of 16-byte chunk `chunk` of row `row` in a swizzled 16-bit tile.
template <class Cfg>
__device__ __forceinline__ int Swizzled(int row, int chunk) {
  return row * Cfg::kRowBytes + ((chunk ^ (row & 7)) << 4);
}

}  // namespace ihip::engine::cuda::decode_attention
