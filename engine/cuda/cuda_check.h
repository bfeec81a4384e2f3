#pragma once

// The one place where CUDA errors become absl::Status, and the GPU presence probe.

#include <cuda_runtime_api.h>

#include "absl/status/status.h"

namespace ihip::engine::cuda {

// OK for cudaSuccess; otherwise INTERNAL naming the call and CUDA's message. A sticky error
// (the context is unusable) is marked in the message: "sticky CUDA error".
absl::Status CudaStatus(cudaError_t err, const char* what);

// True when a CUDA device can be used by this process (driver present, at least one device).
bool GpuAvailable();

// True for errors after which the CUDA context is unusable (the process must exit).
bool IsStickyCudaError(cudaError_t err);
// True for a Status made by CudaStatus from such an error.
bool IsStickyCudaStatus(const absl::Status& s);

}  // namespace ihip::engine::cuda

#define IHIP_CUDA_RETURN_IF_ERROR(call)                                                   \
  do {                                                                                    \
    const cudaError_t ihip_cuda_err_ = (call);                                            \
    if (ihip_cuda_err_ != cudaSuccess) return ::ihip::engine::cuda::CudaStatus(ihip_cuda_err_, #call); \
  } while (0)
