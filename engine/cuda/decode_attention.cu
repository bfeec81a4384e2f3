// Launchers of the split-K decode attention: argument checks, the workspace layout, the plan, and
// the one runtime -> compile-time dispatch. 16-bit and fp8 storage run the tensor-core kernel
// (kernels/decode_attention_mma.cuh: storage dtype x head dim x RoPE x fp32-or-16-bit output =
// 48 instantiations, each carrying only its own path (small code: a sparse block runs its
// kernel about once, from a cold instruction cache); the block's heads a runtime value padded
// to the MMA's 8; RoPE launches add a tile of shared memory for the low pieces of the rotated
// keys); fp32 storage runs the CUDA-core kernel (kernels/decode_attention.cuh: head dim x heads
// per block = 12; the output dtype and RoPE runtime switches there).
//
// The plan: a split is at most kStages tiles (all its copies in flight at once), so a sparse
// step of ~3.3K keys runs in splits of <= 128 keys per kv head and each block pays a few memory
// latencies, not one per step; short key lists are spread over a whole multiple of the SMs (one
// wave, every SM busy); long contexts take one wave of blocks (the occupancy of the instantiation
// times the SMs), every block streaming its share through the tile ring.

#include <algorithm>
#include <cstdint>

#include "engine/cuda/decode_attention.h"
#include "engine/cuda/kernels/decode_attention.cuh"
#include "engine/cuda/kernels/decode_attention_mma.cuh"

namespace ihip::engine::cuda {
namespace {

namespace da = decode_attention;
using KernelFn = void (*)(da::KernelParams);

// One instantiation: its entry point, dynamic shared memory (plus rope_smem_bytes in RoPE
// launches) and keys per tile.
struct KernelInfo {
  KernelFn fn = nullptr;
  int smem_bytes = 0;
  int rope_smem_bytes = 0;
  int tile_keys = 0;
};

constexpr size_t kAlign = 256;

size_t AlignUp(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// Workspace layout: partial (m, l) [splits][Hq] | acc [splits][Hq][D].
size_t MlBytes(int num_q_heads, int splits) {
  return AlignUp(size_t(splits) * num_q_heads * sizeof(float2));
}

// Query heads sharing one thread block: the largest of 8, 4, 2, 1 dividing the group.
int HeadsPerBlock(int group) {
  for (int h : {8, 4, 2, 1}) {
    if (group % h == 0) return h;
  }
  return 1;
}

template <ElemType kStore, int kHeadDim, int kHeads>
KernelInfo Info() {
  using Cfg = da::Config<kStore, kHeadDim, kHeads>;
  return {&da::DecodeAttentionKernel<kStore, kHeadDim, kHeads>,
          int(sizeof(da::SharedStorage<Cfg>)), 0, Cfg::kTile};
}

// The tensor-core instantiation of (RoPE, fp32 output); the plan asks for (false, false): the
// variants share the shared memory (RoPE adds rope_smem_bytes) and the register cap.
template <ElemType kStore, int kHeadDim>
KernelInfo MmaInfo(bool rope, bool precise) {
  using Cfg = da::MmaConfig<kStore, kHeadDim>;
  KernelFn fn = nullptr;
  if (rope) {
    fn = precise ? &da::DecodeAttentionMmaKernel<kStore, kHeadDim, true, true>
                 : &da::DecodeAttentionMmaKernel<kStore, kHeadDim, true, false>;
  } else {
    fn = precise ? &da::DecodeAttentionMmaKernel<kStore, kHeadDim, false, true>
                 : &da::DecodeAttentionMmaKernel<kStore, kHeadDim, false, false>;
  }
  return {fn, int(sizeof(da::SharedStorage<Cfg>)), Cfg::kLoBytes, Cfg::kTile};
}

template <ElemType kStore, int kHeadDim>
KernelInfo SelectHeads(int heads) {
  switch (heads) {
    case 1:
      return Info<kStore, kHeadDim, 1>();
    case 2:
      return Info<kStore, kHeadDim, 2>();
    case 4:
      return Info<kStore, kHeadDim, 4>();
    case 8:
      return Info<kStore, kHeadDim, 8>();
    default:
      return {};
  }
}

template <ElemType kStore>
KernelInfo SelectDim(int head_dim, int heads, bool rope, bool precise) {
  if constexpr (kStore == ElemType::kF32) {
    switch (head_dim) {
      case 64:
        return SelectHeads<kStore, 64>(heads);
      case 128:
        return SelectHeads<kStore, 128>(heads);
      case 256:
        return SelectHeads<kStore, 256>(heads);
      default:
        return {};
    }
  } else {
    switch (head_dim) {
      case 64:
        return MmaInfo<kStore, 64>(rope, precise);
      case 128:
        return MmaInfo<kStore, 128>(rope, precise);
      case 256:
        return MmaInfo<kStore, 256>(rope, precise);
      default:
        return {};
    }
  }
}

// The dispatch: fn null for an unsupported combination. `rope` and `precise` (fp32 output) pick
// the tensor-core variant (the CUDA-core kernel switches at run time).
KernelInfo SelectKernel(ElemType store, int head_dim, int heads, bool rope, bool precise) {
  switch (store) {
    case ElemType::kF32:
      return SelectDim<ElemType::kF32>(head_dim, heads, rope, precise);
    case ElemType::kF16:
      return SelectDim<ElemType::kF16>(head_dim, heads, rope, precise);
    case ElemType::kBF16:
      return SelectDim<ElemType::kBF16>(head_dim, heads, rope, precise);
    case ElemType::kF8E4M3:
      return SelectDim<ElemType::kF8E4M3>(head_dim, heads, rope, precise);
    case ElemType::kF8E5M2:
      return SelectDim<ElemType::kF8E5M2>(head_dim, heads, rope, precise);
  }
  return {};
}

// Allows the instantiation its dynamic shared memory (above the default 48 KiB; RoPE launches
// included) and asks for the largest shared-memory carveout (three blocks of ~73 KiB per SM).
// Not stream operations: legal while a stream is being captured.
cudaError_t AllowSmem(const KernelInfo& k) {
  if (k.fn == nullptr) return cudaErrorInvalidValue;
  const void* fn = reinterpret_cast<const void*>(k.fn);
  const cudaError_t err = cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               k.smem_bytes + k.rope_smem_bytes);
  if (err != cudaSuccess) return err;
  return cudaFuncSetAttribute(fn, cudaFuncAttributePreferredSharedMemoryCarveout,
                              cudaSharedmemCarveoutMaxShared);
}

int ElemBytes(ElemType t) {
  return t == ElemType::kF32 ? 4 : (t == ElemType::kF16 || t == ElemType::kBF16) ? 2 : 1;
}

bool ValidShape(int num_q_heads, int kv_heads, int head_dim) {
  return kv_heads > 0 && num_q_heads > 0 && num_q_heads % kv_heads == 0 &&
         (head_dim == 64 || head_dim == 128 || head_dim == 256);
}

int PageShift(int page_tokens) {
  for (int s = 0; s < 31; ++s) {
    if ((1 << s) == page_tokens) return s;
  }
  return -1;
}

// Checks `in` and fills the kernel's parameters; cudaErrorInvalidValue for bad arguments.
cudaError_t BuildKernelParams(const DecodeAttentionParams& in, da::KernelParams* out) {
  const DeviceKv& kv = in.kv;
  const bool out_ok = in.out_dtype == ElemType::kF32 || in.out_dtype == ElemType::kF16 ||
                      in.out_dtype == ElemType::kBF16;
  if (!ValidShape(in.num_q_heads, kv.kv_heads, kv.head_dim) || !out_ok || kv.pages == nullptr ||
      kv.page_tokens <= 0 || kv.page_tokens % 8 != 0 || in.step == nullptr || in.q == nullptr ||
      reinterpret_cast<uintptr_t>(in.q) % 8 != 0 ||
      in.out == nullptr || in.num_splits < 1 || in.num_splits > da::kMaxSplits ||
      (in.num_splits > 1 && in.workspace == nullptr) ||
      (!in.dense && (in.blocks == nullptr || in.num_blocks == nullptr || in.sink_tokens < 0 ||
                     in.window_tokens < 1))) {
    return cudaErrorInvalidValue;
  }
  da::KernelParams& p = *out;
  p.pages = kv.pages;
  p.page_tokens = kv.page_tokens;
  p.page_shift = PageShift(kv.page_tokens);
  p.kv_heads = kv.kv_heads;
  p.half_bytes = int64_t(kv.page_tokens) * kv.kv_heads * kv.head_dim * ElemBytes(kv.dtype);
  p.step = in.step;
  p.q = in.q;
  p.num_q_heads = in.num_q_heads;
  p.group = in.num_q_heads / kv.kv_heads;
  p.heads_per_block = HeadsPerBlock(p.group);
  p.dense = in.dense ? 1 : 0;
  p.blocks = in.blocks;
  p.num_blocks = in.num_blocks;
  p.sink_tokens = in.sink_tokens;
  p.window_tokens = in.window_tokens;
  p.inv_freq = in.rope.inv_freq;
  p.out = in.out;
  p.out_dtype = in.out_dtype;
  p.out_lse = in.out_lse;
  p.num_splits = in.num_splits;
  p.split_keys = in.dense ? 0 : std::max<int64_t>(0, in.split_keys);
  p.max_blocks = in.dense ? 0 : std::max(0, in.max_blocks);
  p.trace = in.trace;
  auto* ws = static_cast<uint8_t*>(in.workspace);
  p.partial_ml = reinterpret_cast<float2*>(ws);
  p.partial_acc =
      ws ? reinterpret_cast<float*>(ws + MlBytes(in.num_q_heads, in.num_splits)) : nullptr;
  return cudaSuccess;
}

}  // namespace

size_t DecodeAttentionWorkspaceBytes(int num_q_heads, int head_dim, int num_splits) {
  return MlBytes(num_q_heads, num_splits) +
         size_t(num_splits) * num_q_heads * head_dim * sizeof(float);
}

cudaError_t PlanDecodeAttention(int num_q_heads, int kv_heads, int head_dim, ElemType kv_dtype,
                                int64_t max_keys, int num_sms, DecodeAttentionPlan* plan) {
  if (!ValidShape(num_q_heads, kv_heads, head_dim) || num_sms < 1 || plan == nullptr) {
    return cudaErrorInvalidValue;
  }
  const int heads = HeadsPerBlock(num_q_heads / kv_heads);
  const KernelInfo k = SelectKernel(kv_dtype, head_dim, heads, false, false);
  cudaError_t err = AllowSmem(k);
  if (err != cudaSuccess) return err;
  int per_sm = 0;
  err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, reinterpret_cast<const void*>(k.fn),
                                                      da::kThreads, size_t(k.smem_bytes));
  if (err != cudaSuccess) return err;
  // One wave: every block resident at once, so no SM idles through a second, partial wave (the
  // occupancy of launches without RoPE; RoPE launches of the tensor-core kernel use a little
  // more shared memory). Short key lists: splits of at most kStages full tiles (all in flight
  // from the start), as many as make a whole multiple of the SMs busy, but no more than the
  // merge kernel loads at once (kMergeChunk; a second chunk is a second memory round trip).
  const int64_t head_groups = num_q_heads / heads;
  const int64_t wave = std::max<int64_t>(1, int64_t(per_sm) * num_sms / head_groups);
  const int64_t split_keys = int64_t(da::kStages) * k.tile_keys;
  int64_t splits = std::max<int64_t>(1, (max_keys + split_keys - 1) / split_keys);
  if (splits < wave) {
    const int64_t blocks = (splits * head_groups + num_sms - 1) / num_sms * num_sms;
    splits = std::min(wave, (blocks + head_groups - 1) / head_groups);
    splits = std::max<int64_t>(std::min<int64_t>(splits, da::kMergeChunk),
                               (max_keys + split_keys - 1) / split_keys);
  }
  plan->num_splits = int(std::clamp<int64_t>(std::min(wave, splits), 1, da::kMaxSplits));
  // Keys per split for sparse launches (DecodeAttentionParams::split_keys): equal shares of
  // max_keys, multiples of 8.
  plan->split_keys = ((max_keys + plan->num_splits - 1) / plan->num_splits + 7) / 8 * 8;
  plan->heads_per_block = heads;
  plan->workspace_bytes = DecodeAttentionWorkspaceBytes(num_q_heads, head_dim, plan->num_splits);
  return cudaSuccess;
}

cudaError_t LaunchDecodeAttention(const DecodeAttentionParams& params, cudaStream_t stream) {
  da::KernelParams kp;
  cudaError_t err = BuildKernelParams(params, &kp);
  if (err != cudaSuccess) return err;
  const int heads = HeadsPerBlock(kp.group);
  const KernelInfo k = SelectKernel(params.kv.dtype, params.kv.head_dim, heads,
                                    kp.inv_freq != nullptr, kp.out_dtype == ElemType::kF32);
  err = AllowSmem(k);
  if (err != cudaSuccess) return err;
  const dim3 grid(unsigned(kp.num_splits), unsigned(params.num_q_heads / heads));
  void* args[] = {&kp};
  const int smem = k.smem_bytes + (kp.inv_freq != nullptr ? k.rope_smem_bytes : 0);
  err = cudaLaunchKernel(reinterpret_cast<const void*>(k.fn), grid, dim3(da::kThreads), args,
                         size_t(smem), stream);
  if (err != cudaSuccess || kp.num_splits == 1) return err;
  // The merge, as a programmatic dependent: its blocks are scheduled while the attention grid
  // runs (that grid allows it at its start) and wait in griddepcontrol.wait for its completion
  // and memory, so the launch gap between the two kernels is hidden. Captures into graphs as a
  // programmatic edge.
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(unsigned(params.num_q_heads));
  cfg.blockDim = dim3(da::kThreads);
  cfg.dynamicSmemBytes = 0;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  switch (params.kv.head_dim) {
    case 64:
      return cudaLaunchKernelEx(&cfg, &da::MergeSplitsKernel<64>, kp);
    case 128:
      return cudaLaunchKernelEx(&cfg, &da::MergeSplitsKernel<128>, kp);
    default:
      return cudaLaunchKernelEx(&cfg, &da::MergeSplitsKernel<256>, kp);
  }
}

}  // namespace ihip::engine::cuda