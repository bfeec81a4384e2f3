#include "engine/cuda/cuda_check.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace ihip::engine::cuda {
namespace {
constexpr char kStickyPrefix[] = "sticky CUDA error: ";
}  // namespace

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
  return absl::InternalError(absl::StrCat(IsStickyCudaError(err) ? kStickyPrefix : "",
                                          what, ": ", cudaGetErrorName(err), " (",
                                          cudaGetErrorString(err), ")"));
}

bool IsStickyCudaStatus(const absl::Status& s) {
  return !s.ok() && absl::StartsWith(s.message(), kStickyPrefix);
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
