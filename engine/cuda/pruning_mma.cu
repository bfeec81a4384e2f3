// Instantiations of the tensor-core score kernel (kernels/score_mma.cuh), apart from pruning.cu
// so that the two kernel families compile in parallel.

#include "engine/cuda/kernels/score_mma.cuh"

namespace ihip::engine::cuda::kernels {
namespace {

template <int kHeadDim>
ScoreKernelFn MmaKernelForType(ElemType t) {
  switch (t) {
    case ElemType::kF16:
      return ScoreChunksMmaKernel<ElemType::kF16, kHeadDim>;
    case ElemType::kBF16:
      return ScoreChunksMmaKernel<ElemType::kBF16, kHeadDim>;
    case ElemType::kF8E4M3:
      return ScoreChunksMmaKernel<ElemType::kF8E4M3, kHeadDim>;
    case ElemType::kF8E5M2:
      return ScoreChunksMmaKernel<ElemType::kF8E5M2, kHeadDim>;
    case ElemType::kF32:
      break;
  }
  return nullptr;
}

}  // namespace

ScoreKernelFn PickScoreMmaKernel(ElemType t, int head_dim) {
  switch (head_dim) {
    case 64:
      return MmaKernelForType<64>(t);
    case 128:
      return MmaKernelForType<128>(t);
    case 256:
      return MmaKernelForType<256>(t);
  }
  return nullptr;
}

}  // namespace ihip::engine::cuda::kernels
