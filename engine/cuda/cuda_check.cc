#include "engine/cuda/cuda_check.h"

#include "absl/strings/str_cat.h"

namespace ihip::engine::cuda {

bool IsStickyCudaError(cudaError_t err) {
  switch (err) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorHardwareStackError:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorAssert:
    case cudaErrorECCUncorrectable:
    case cudaErrorUnknown:
      return true;
    default:
      return false;
  }
}

absl::Status CudaStatus(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(IsStickyCudaError(err) ? "sticky CUDA error: " : "",
                                          what, ": ", cudaGetErrorName(err), " (",
                                          cudaGetErrorString(err), ")"));
}

bool GpuAvailable() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the non-sticky error so later probes start clean
    return false;
  }
  return n > 0;
}

}  // namespace ihip::engine::cuda
