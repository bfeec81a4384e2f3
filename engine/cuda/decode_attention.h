#pragma once

// Split-K (flash-decoding) attention of ONE query token of one (sequence, layer) on the GPU
// (DESIGN §3.5), dense (keys [0, p] at their true positions: the GPU oracle and the honest dense
// baseline) or sparse (the key set and RoPE positions of engine/hip/mask.h SparseRuns). The
// query heads of one GQA group share a thread block and the keys it loads; each split takes a
// contiguous share of the attended keys and writes a partial (m, l, acc); a second kernel,
// launched as a programmatic dependent (PDL), merges the splits by log-sum-exp. 16-bit and fp8
// storage run on tensor cores (mma.sync; q, rotated keys and, for fp32 output, the softmax
// weights carried as two 16-bit pieces, so fp32 output stays within ~1e-5 of fp32 arithmetic;
// 16-bit output rounds the weights to 16 bits once); fp32 storage on CUDA cores.
//
// Plan once per shape (PlanDecodeAttention), then launch as often as needed: the launch
// allocates nothing, never synchronizes, and reads everything that changes between decode steps
// (p, anchor, the selected blocks and their count) from device memory, so a captured CUDA graph
// replays with new values. One workspace serves one launch at a time.
// Thread-safe: the functions hold no state.

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "engine/cuda/device_kv.h"

namespace ihip::engine::cuda {

struct DecodeAttentionParams {
  DeviceKv kv;                        // keys [0, p] readable through the block table (pre-RoPE)
  const StepScalars* step = nullptr;  // device; reads `position` (p) and `anchor` (sparse)
  const float* q = nullptr;           // device [Hq][D] fp32, 8-byte aligned, softmax scale folded
                                      // in; pre-RoPE in extend mode (rotated at p by the kernel)
  int num_q_heads = 32;               // Hq; a multiple of kv.kv_heads
  bool dense = true;                  // true: keys [0, p]; false: SparseRuns(p, anchor, blocks)
  const int64_t* blocks = nullptr;    // sparse: device [*num_blocks] ascending 8-token blocks
  const int* num_blocks = nullptr;    // sparse: device int
  int sink_tokens = 256;              // sparse: LayerConfig::sink_tokens
  int window_tokens = 1024;           // sparse: LayerConfig::window_tokens
  DeviceRope rope;                    // inv_freq null: `none` mode
  void* out = nullptr;                // device [Hq][D] in out_dtype
  ElemType out_dtype = ElemType::kBF16;  // kF32, kF16 or kBF16
  float* out_lse = nullptr;              // device [Hq], nullable: natural-log log-sum-exp of the
                                         // scaled logits of the attended keys
  void* workspace = nullptr;             // device, >= DecodeAttentionWorkspaceBytes(Hq, D, splits);
                                         // may be null when num_splits == 1
  int num_splits = 1;                    // >= 1, normally DecodeAttentionPlan::num_splits
  // Sparse, optional (16-bit and fp8 storage): the plan's split_keys and the capacity of
  // `blocks`. With both set, split s takes entries [s * split_keys, +split_keys) whenever the
  // step's key list fits (else equal shares) and loads its first selected blocks together with
  // the step scalars: one memory round trip less before its KV copies start.
  int64_t split_keys = 0;
  int max_blocks = 0;
  // Experiments only (cuda_decode_bench --trace): device [blocks][kTraceSlots] u64, each block's
  // globaltimer at start/end and clock64 at its phases (layout: kernels/decode_attention_mma.cuh
  // TraceSlot). Null in production: the kernel then records nothing.
  unsigned long long* trace = nullptr;
};

inline constexpr int kDecodeTraceSlots = 16;

struct DecodeAttentionPlan {
  int num_splits = 1;          // thread blocks per head group
  int64_t split_keys = 0;      // keys per split over max_keys (sparse launches' split_keys)
  int heads_per_block = 1;     // query heads sharing one thread block (a divisor of the group)
  size_t workspace_bytes = 0;  // for num_splits
};

// Chooses the split count for `max_keys` attended keys (dense: the longest context; sparse:
// sink + 8 * block capacity + window): one wave of thread blocks on `num_sms` SMs (from the
// kernel's occupancy); short key lists get splits of at most two key tiles (16-bit and fp8
// storage: 128 keys; a split's whole share is then loaded at once), as many as fill a whole
// multiple of the SMs. Errors: cudaErrorInvalidValue
// for a shape the kernels do not support (head_dim not 64/128/256, Hq not a multiple of Hkv).
cudaError_t PlanDecodeAttention(int num_q_heads, int kv_heads, int head_dim, ElemType kv_dtype,
                                int64_t max_keys, int num_sms, DecodeAttentionPlan* plan);

// Workspace bytes for `num_splits` splits: per split and query head the partial (m, l) and
// accumulator [D]. A workspace sized for S splits serves any launch with
// num_splits <= S.
size_t DecodeAttentionWorkspaceBytes(int num_q_heads, int head_dim, int num_splits);


// Enqueues the attention on `stream`. Group sizes Hq/Hkv of 1, 2, 4 and 8 share each kv head's
// keys across the whole group in one thread block; any other group runs in sub-groups of the
// largest of 8, 4, 2, 1 dividing it (correct, but each sub-group reads the keys again).
// Errors: cudaErrorInvalidValue for bad arguments (null pointers, unsupported shape, storage or
// output dtype, page_tokens not a positive multiple of 8), or the launch's own error.
cudaError_t LaunchDecodeAttention(const DecodeAttentionParams& params, cudaStream_t stream);

}  // namespace ihip::engine::cuda
