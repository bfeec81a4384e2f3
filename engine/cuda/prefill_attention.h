#pragma once

// Prefill attention on the GPU (DESIGN §3.1, §3.4, §3.5): the T queries of one prefill chunk of
// one (sequence, layer), block-sparse (each query block of 64 attends its sink, its selected
// 8-token blocks and its window, with the StreamingLLM renumbering of positions in RoPE `extend`
// mode: engine/hip/mask.h SparseRuns) or dense (every key up to the query, true positions; the
// baseline and the oracle). Tensor cores (bf16 operands, fp32 accumulation), flash-attention
// online softmax, split-K over the key range with a log-sum-exp merge when the chunk alone cannot
// fill the GPU. Launched eagerly once per chunk: the scalars are passed by value. A launch only
// reads its inputs and writes `out` (and `workspace`); concurrent launches need their own
// workspaces. Alignment: page base addresses, q and out 16-byte aligned (cp.async and vector
// loads); a page's rows are then aligned since head_dim * element size is a multiple of 16.

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "engine/cuda/device_kv.h"

namespace ihip::engine::cuda {

struct PrefillAttentionParams {
  DeviceKv kv;               // the (sequence, layer)'s KV; the chunk's own keys already appended
  int64_t kv_length = 0;     // keys stored; >= position + num_tokens (checked)
  int64_t position = 0;      // position of the first query; position + num_tokens < 2^31
  int num_tokens = 0;        // T (0: nothing to do)
  int num_q_heads = 0;       // Hq, a multiple of kv.kv_heads; q head h reads kv head h / group
  const float* q = nullptr;  // device [T][Hq][D] fp32, softmax scale folded in, before RoPE in
                             // `extend` mode (rotated here at the query's true position)
  bool dense = false;        // true: keys [0, p] at true positions; blocks/counts unused
  const int64_t* blocks = nullptr;    // device [num_query_blocks][max_blocks]: block b's selected
                                      // 8-token blocks (block i = tokens [8i, 8i + 8)), ascending
  const int* block_counts = nullptr;  // device [num_query_blocks]: valid entries of each row
  int max_blocks = 0;                 // row stride of `blocks` (counts are clamped to it)
  int query_block = 64;               // queries sharing one block list; only 64 is supported
  int sink_tokens = 256;              // LayerConfig::sink_tokens
  int window_tokens = 1024;           // LayerConfig::window_tokens
  DeviceRope rope;                    // inv_freq null: `none` mode
  void* out = nullptr;                // device [T][Hq][D] in out_dtype (every element written)
  ElemType out_dtype = ElemType::kBF16;  // kF32, kF16 or kBF16
  void* workspace = nullptr;  // device, PrefillAttentionWorkspaceBytes(*this) bytes, 16-aligned
  int sm_count = 132;         // multiprocessors of the device (cudaDevAttrMultiProcessorCount):
                              // sets the split-K factor, so keep it equal for both calls below
};

// Number of query blocks of a chunk: ceil(num_tokens / query_block) (rows of blocks/counts).
inline int PrefillQueryBlocks(const PrefillAttentionParams& p) {
  return p.query_block > 0 ? (p.num_tokens + p.query_block - 1) / p.query_block : 0;
}

// Device bytes `workspace` must hold for these params (0 when the chunk fills the GPU without
// split-K). Depends on the shapes, num_tokens, position (dense) or max_blocks (sparse), and
// sm_count; not on any device data.
size_t PrefillAttentionWorkspaceBytes(const PrefillAttentionParams& p);

// Enqueues the attention on `stream`. cudaErrorInvalidValue for unsupported shapes (head_dim not
// 64/128/256, Hq not a multiple of Hkv, query_block != 64, page_tokens not a multiple of 8,
// kv_length too short, missing pointers or workspace); otherwise the launch's error.
cudaError_t LaunchPrefillAttention(const PrefillAttentionParams& p, cudaStream_t stream);

}  // namespace ihip::engine::cuda
