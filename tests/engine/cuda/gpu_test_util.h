#pragma once

// Helpers for tests labelled `gpu`: skip where no GPU is present (CI), check CUDA calls.

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <random>

#include "engine/cuda/cuda_check.h"

// Skips the current test (reported as skipped) when this process cannot use a GPU.
#define IHIP_REQUIRE_GPU()                                                    \
  do {                                                                        \
    if (!::ihip::engine::cuda::GpuAvailable()) GTEST_SKIP() << "no CUDA GPU"; \
  } while (0)

namespace ihip::engine::testing {

// A seed for fresh random data each run (tests print it on failure).
inline uint64_t FreshSeed() {
  return (uint64_t(std::random_device{}()) << 32) ^ std::random_device{}() ^
         uint64_t(std::chrono::steady_clock::now().time_since_epoch().count());
}

}  // namespace ihip::engine::testing

// Fails the test (and returns) when a CUDA call fails.
#define IHIP_CUDA_ASSERT(call)                                                          \
  do {                                                                                  \
    const cudaError_t ihip_err_ = (call);                                               \
    ASSERT_EQ(ihip_err_, cudaSuccess) << #call << ": " << cudaGetErrorString(ihip_err_); \
  } while (0)
