#pragma once

// RAII device and pinned-host buffers, and the pool of GPU KV pages behind the CUDA backend's
// per-layer KV copies. Host code (no kernels).

#include <cuda_runtime_api.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

#include "absl/status/status.h"

namespace ihip::engine::cuda {

// A device (kPinned false) or page-locked host (kPinned true: asynchronous copies and copies
// captured in graphs) allocation that only grows; contents are undefined after a reallocation.
template <bool kPinned>
class CudaBuffer {
 public:
  CudaBuffer() = default;
  CudaBuffer(const CudaBuffer&) = delete;
  CudaBuffer& operator=(const CudaBuffer&) = delete;
  ~CudaBuffer();
  // Makes the buffer hold at least `bytes`; RESOURCE_EXHAUSTED when the memory is short.
  absl::Status Reserve(size_t bytes);
  void* get() const { return ptr_; }
  template <class T>
  T* as() const { return static_cast<T*>(ptr_); }
  size_t bytes() const { return bytes_; }

 private:
  void Free();
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};
using DeviceBuffer = CudaBuffer<false>;
using PinnedBuffer = CudaBuffer<true>;

// GPU pages of one size, carved from slabs of `slab_pages` pages; freed pages are reused. Every
// pool of an engine draws on one byte budget. Thread-safe.
class DevicePagePool {
 public:
  DevicePagePool(size_t page_bytes, int slab_pages, std::atomic<int64_t>* budget_bytes);
  DevicePagePool(const DevicePagePool&) = delete;
  DevicePagePool& operator=(const DevicePagePool&) = delete;
  ~DevicePagePool();

  // Appends `n` pages to `out`; RESOURCE_EXHAUSTED (nothing taken) when the budget or the GPU's
  // memory is short.
  absl::Status Allocate(int64_t n, std::vector<uint8_t*>* out);
  void Free(const uint8_t* const* pages, size_t n);
  size_t page_bytes() const { return page_bytes_; }
  int64_t pages_in_use() const;

 private:
  const size_t page_bytes_;
  const int slab_pages_;
  std::atomic<int64_t>* const budget_;
  mutable std::mutex mu_;
  std::vector<void*> slabs_;
  std::vector<uint8_t*> free_;
  int64_t total_pages_ = 0;
};

}  // namespace ihip::engine::cuda
