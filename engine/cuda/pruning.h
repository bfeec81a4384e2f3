#pragma once

// Hierarchical pruning on the GPU (DESIGN §3.2–3.4): the device equivalent of cpu::RunStages for
// one query block of one (sequence, layer). Stages from_stage..N-1 run as a fixed sequence of
// kernels with no host synchronisation: grids and by-value parameters come from a PrunePlan sized
// for a maximum KV length; everything that changes per step (p_min, kv_length, candidate counts)
// is read from device memory, so a captured CUDA graph replays with new StepScalars. Selects
// exactly the chunks cpu::RunStages selects on data without near-ties (fp32 dot products are
// summed in a different order). Launchers are thread-safe; one workspace per concurrent launch.
//
// Per stage s: the score kernel scores every candidate chunk [l, min(l + L, limit)) with the
// representative-token search for every query head (max over the block's queries, then over
// heads), limit = min(kv_length, p_min - masking_window + 1); the select kernel keeps the top
// kept_chunks active chunks (higher score first, then lower token index), sorts them, and writes
// either the next stage's candidates (SplitChunks) or the final 8-token blocks (ChunksToBlocks).
// LaunchRunStagesBatched runs many query blocks (a prefill chunk) in the same few launches
// (grid y = query block).
//
// Capacities the caller allocates in DeviceMask (checked by LaunchRunStages):
//   stage_capacity[s] >= plan.max_candidates[s] for 1 <= s < num_stages
//   block_capacity    >= plan.block_capacity
// and a workspace of plan.workspace_bytes (256-byte aligned).

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>

#include "engine/cuda/device_kv.h"

namespace ihip::engine::cuda {

// engine::PruneRopeStyle as an int (device code sees no engine headers).
inline constexpr int kPruneRopeRelative = 0;
inline constexpr int kPruneRopeChunkIndexed = 1;

struct PruneStagePOD {
  int chunk_size = 256;   // tokens per chunk; power of two >= 8, <= the previous stage's
  int kept_chunks = 128;  // chunks kept after the stage (StageSpec::kept_chunks())
};

// The pruning part of engine::LayerConfig.
struct PruneConfig {
  int sink_tokens = 256;
  int window_tokens = 1024;
  int num_stages = 0;     // 1..DeviceMask::kMaxStages
  int pooled_stages = 2;  // stages < pooled_stages score with the pooled queries
  PruneStagePOD stages[DeviceMask::kMaxStages];
  int rope_style = kPruneRopeRelative;  // used only when DeviceRope::inv_freq is set

  int masking_window() const { return window_tokens - stages[0].chunk_size; }
};

// Sizes and launch shapes for one (config, model shape, maximum KV length).
struct PrunePlan {
  PruneConfig cfg;
  int num_q_heads = 0;
  int kv_heads = 0;
  int head_dim = 0;
  ElemType dtype = ElemType::kBF16;
  int num_pooled = 0;  // queries scoring stages < pooled_stages
  int num_full = 0;    // queries scoring later stages
  int64_t max_kv_length = 0;
  int max_candidates[DeviceMask::kMaxStages] = {};  // capacity of stage s's candidate list
  int kept_capacity[DeviceMask::kMaxStages] = {};   // min(kept_chunks, max_candidates)
  int block_capacity = 0;                           // final 8-token blocks
  int score_grid[DeviceMask::kMaxStages] = {};      // persistent CTAs of the CUDA-core score
                                                    // kernel (f32 keys, chunk-indexed RoPE)
  int score_smem[DeviceMask::kMaxStages] = {};      // its dynamic shared memory (bytes)
  int mma_grid[DeviceMask::kMaxStages] = {};        // CTAs of the tensor-core score kernel
                                                    // (num_q_heads x CTAs per head); 0 = unused
  int mma_smem[DeviceMask::kMaxStages] = {};        // its dynamic shared memory (bytes)
  int score_resident[DeviceMask::kMaxStages] = {};  // CTAs of each kernel resident on the whole
  int mma_resident[DeviceMask::kMaxStages] = {};    // device (batched launches share them out)
  int cached_keys[DeviceMask::kMaxStages] = {};     // score keys the select caches in smem
  int select_smem[DeviceMask::kMaxStages] = {};     // the select kernel's dynamic smem (bytes)
  size_t keys_offset[DeviceMask::kMaxStages] = {};  // workspace: uint32 score keys per stage
  size_t kept_offset[DeviceMask::kMaxStages] = {};  // workspace: int64 kept lefts per stage
  size_t workspace_bytes = 0;
  // A batched run's workspace holds one slice of batch_block_bytes per query block: the layout
  // above, then the stage inputs (int64 [max_candidates[s]] at batch_inputs_offset[s], s >= 1)
  // and their counts (int [kMaxStages] at batch_counts_offset).
  size_t batch_inputs_offset[DeviceMask::kMaxStages] = {};
  size_t batch_counts_offset = 0;
  size_t batch_block_bytes = 0;
};

struct PruneParams {
  DeviceKv kv;                                // keys read through the block table
  const StepScalars* step = nullptr;          // device; reads p_min and kv_length
  const float* pooled_q = nullptr;            // device [num_pooled][Hq][D] fp32, scale folded
                                              // in, before RoPE
  const int64_t* pooled_positions = nullptr;  // device [num_pooled] (chunk-indexed style)
  const float* full_q = nullptr;              // device [num_full][Hq][D], as pooled_q
  const int64_t* full_positions = nullptr;    // device [num_full]
  DeviceRope rope;                            // inv_freq null: RoPE `none`
  DeviceMask mask;                            // stage inputs (s >= 1) and final blocks
  void* workspace = nullptr;                  // device [plan.workspace_bytes]
};

// Validates the config and shape (cudaErrorInvalidValue when unsupported: head_dim 64/128/256,
// Hq a multiple of Hkv, chunk sizes, max_kv_length < 2^30) and sizes everything. Queries the
// current device for occupancy and sets the score kernel's shared-memory limit.
cudaError_t PlanPrune(const PruneConfig& cfg, int num_q_heads, int kv_heads, int head_dim,
                      ElemType dtype, int num_pooled, int num_full, int64_t max_kv_length,
                      PrunePlan* plan);

// Runs stages from_stage..num_stages-1 on `stream`. Stage 0 takes the stage-1 grid implied by
// step->p_min; a later from_stage takes mask.stage_inputs[from_stage] (count in
// mask.stage_input_counts[from_stage]). Writes mask.stage_inputs[s] + counts for the stages after
// from_stage, and mask.blocks + *mask.num_blocks. Requires kv_length <= plan.max_kv_length
// (counts beyond a capacity are clamped to it). Graph-capturable.
cudaError_t LaunchRunStages(const PrunePlan& plan, const PruneParams& params, int from_stage,
                            cudaStream_t stream);

// Query blocks pruned together (a prefill chunk), each as LaunchRunStages from stage 0 with its
// own step scalars and queries: block b reads step[b], pooled_q + b * pooled_q_stride, ... and
// writes its final 8-token blocks to blocks + b * blocks_stride and their count to
// block_counts[b]. Every block has the plan's num_pooled and num_full queries. The stage inputs
// are scratch inside the workspace.
struct PruneBatchParams {
  DeviceKv kv;
  const StepScalars* step = nullptr;          // device [num_query_blocks]
  const float* pooled_q = nullptr;            // device, per block [num_pooled][Hq][D] fp32
  int64_t pooled_q_stride = 0;                // floats between blocks
  const int64_t* pooled_positions = nullptr;  // device, per block [num_pooled]
  int64_t pooled_positions_stride = 0;        // entries between blocks
  const float* full_q = nullptr;              // device, per block [num_full][Hq][D] fp32
  int64_t full_q_stride = 0;
  const int64_t* full_positions = nullptr;  // device, per block [num_full]
  int64_t full_positions_stride = 0;
  DeviceRope rope;
  int64_t* blocks = nullptr;      // device [num_query_blocks][blocks_stride]
  int blocks_stride = 0;          // >= plan.block_capacity
  int* block_counts = nullptr;    // device [num_query_blocks]
  int num_query_blocks = 0;       // 1..65535; batch workspace and every stride x blocks < 2^31
  void* workspace = nullptr;      // device [PruneBatchWorkspaceBytes], 256-byte aligned
};

size_t PruneBatchWorkspaceBytes(const PrunePlan& plan, int num_query_blocks);

// Prunes every query block of `params` on `stream` (one memset, then a score and a select kernel
// per stage for the whole batch); the same blocks as LaunchRunStages per block.
// Graph-capturable.
cudaError_t LaunchRunStagesBatched(const PrunePlan& plan, const PruneBatchParams& params,
                                   cudaStream_t stream);

// The scores of one stage alone (as cpu::ScoreChunks): candidates `lefts` (device, ascending;
// null = the stage-1 grid implied by step->p_min) with device count `count` (null with null
// lefts; at most plan.max_candidates[stage]); writes `keys` [plan.max_candidates[stage]]
// (zeroed first), decoded by ScoreFromKey. params.mask is not used.
cudaError_t LaunchScoreChunks(const PrunePlan& plan, const PruneParams& params, int stage,
                              const int64_t* lefts, const int* count, uint32_t* keys,
                              cudaStream_t stream);

// Score keys: an order-preserving map of the fp32 score (0 = inactive chunk).
inline float ScoreFromKey(uint32_t key) {
  if (key == 0) return -std::numeric_limits<float>::infinity();
  const uint32_t bits = (key & 0x80000000u) ? (key & 0x7fffffffu) : ~key;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

}  // namespace ihip::engine::cuda
