#include "engine/cuda/device_memory.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "engine/cuda/cuda_check.h"

namespace ihip::engine::cuda {

template <bool kPinned>
void CudaBuffer<kPinned>::Free() {
  if (ptr_ != nullptr) kPinned ? cudaFreeHost(ptr_) : cudaFree(ptr_);
  ptr_ = nullptr;
  bytes_ = 0;
}

template <bool kPinned>
CudaBuffer<kPinned>::~CudaBuffer() {
  Free();
}

template <bool kPinned>
absl::Status CudaBuffer<kPinned>::Reserve(size_t bytes) {
  if (bytes <= bytes_) return absl::OkStatus();
  Free();
  const cudaError_t err = kPinned ? cudaMallocHost(&ptr_, bytes) : cudaMalloc(&ptr_, bytes);
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    ptr_ = nullptr;
    return absl::ResourceExhaustedError(absl::StrCat(
        kPinned ? "pinned host" : "GPU", " memory exhausted allocating ", bytes, " bytes"));
  }
  IHIP_CUDA_RETURN_IF_ERROR(err);
  bytes_ = bytes;
  return absl::OkStatus();
}

template class CudaBuffer<false>;
template class CudaBuffer<true>;

DevicePagePool::DevicePagePool(size_t page_bytes, int slab_pages,
                               std::atomic<int64_t>* budget_bytes)
    : page_bytes_(page_bytes), slab_pages_(std::max(1, slab_pages)), budget_(budget_bytes) {}

DevicePagePool::~DevicePagePool() {
  for (void* s : slabs_) cudaFree(s);
  budget_->fetch_add(int64_t(total_pages_ * page_bytes_));
}

absl::Status DevicePagePool::Allocate(int64_t n, std::vector<uint8_t*>* out) {
  std::lock_guard<std::mutex> lock(mu_);
  while (int64_t(free_.size()) < n) {
    const int64_t want = std::max<int64_t>(slab_pages_, n - int64_t(free_.size()));
    const int64_t bytes = want * int64_t(page_bytes_);
    if (budget_->fetch_sub(bytes) < bytes) {
      budget_->fetch_add(bytes);
      return absl::ResourceExhaustedError(absl::StrCat(
          "GPU KV memory exhausted: ", n, " more pages of ", page_bytes_,
          " bytes do not fit the CUDA backend's budget (--max_device_gib)"));
    }
    void* slab = nullptr;
    const cudaError_t err = cudaMalloc(&slab, size_t(bytes));
    if (err != cudaSuccess) {
      cudaGetLastError();
      budget_->fetch_add(bytes);
      return absl::ResourceExhaustedError(absl::StrCat(
          "GPU memory exhausted allocating ", bytes, " bytes of KV pages: ",
          cudaGetErrorString(err)));
    }
    slabs_.push_back(slab);
    total_pages_ += want;
    for (int64_t i = want - 1; i >= 0; --i) {
      free_.push_back(static_cast<uint8_t*>(slab) + size_t(i) * page_bytes_);
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    out->push_back(free_.back());
    free_.pop_back();
  }
  return absl::OkStatus();
}

void DevicePagePool::Free(const uint8_t* const* pages, size_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t i = 0; i < n; ++i) free_.push_back(const_cast<uint8_t*>(pages[i]));
}

int64_t DevicePagePool::pages_in_use() const {
  std::lock_guard<std::mutex> lock(mu_);
  return total_pages_ - int64_t(free_.size());
}

}  // namespace ihip::engine::cuda
