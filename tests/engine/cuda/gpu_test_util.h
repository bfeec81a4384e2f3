#pragma once

// Helpers for tests labelled `gpu`: skip where no GPU is present (CI), check CUDA calls.

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include "engine/cuda/cuda_check.h"

// Skips the current test (reported as skipped) when this process cannot use a GPU.
#define IHIP_REQUIRE_GPU()                                                    \
  do {                                                                        \
    if (!::ihip::engine::cuda::GpuAvailable()) GTEST_SKIP() << "no CUDA GPU"; \
  } while (0)

// Fails the test (and returns) when a CUDA call fails.
#define IHIP_CUDA_ASSERT(call)                                                          \
  do {                                                                                  \
    const cudaError_t ihip_err_ = (call);                                               \
    ASSERT_EQ(ihip_err_, cudaSuccess) << #call << ": " << cudaGetErrorString(ihip_err_); \
  } while (0)
