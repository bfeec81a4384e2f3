#pragma once

// The CUDA backend's public face: CUDA-free (services include it). NewCudaEngine builds an Engine
// whose steps run on the GPU: pruning (engine/cuda/pruning.h), sparse and dense decode attention
// (decode_attention.h) and prefill attention (prefill_attention.h). The bookkeeping is
// PagedEngine's; the KV stays in the PageStore (the kvstore's pool, or in-process pages) and
// each pinned layer is mirrored in GPU memory in the same page layout, read through a device
// block table (DESIGN §4): appends write the page and the GPU copy; unpinning frees the copy.
// Thread-safe (see engine.h).

#include <memory>

#include "absl/status/statusor.h"
#include "engine/engine.h"
#include "engine/page_store.h"

namespace ihip::engine::cuda {

struct CudaEngineOptions {
  int device = 0;                   // CUDA device ordinal
  int max_tokens_per_item = 65536;  // T above this is INVALID_ARGUMENT
  int page_tokens = 64;             // tokens per KV page (DESIGN §4); the GPU copy uses the same
  int slab_pages = 64;              // GPU pages allocated per cudaMalloc (fewer, larger calls)
  double max_device_gib = 0;        // GPU memory the KV copies may take; 0 = 90% of free memory
  bool use_graphs = true;           // replay captured CUDA graphs for decode steps
  int streams = 16;                 // CUDA streams shared by concurrent requests
  absl::Status Validate() const;
};

// True when this process can use a CUDA GPU (driver present, at least one device).
bool CudaAvailable();

// A human-readable description of device `device` ("NVIDIA H200, 132 SMs, 139.8 GiB").
std::string DescribeDevice(int device);

// UNAVAILABLE when no GPU can be used; INVALID_ARGUMENT for bad options. `store` must outlive
// the engine.
absl::StatusOr<std::unique_ptr<Engine>> NewCudaEngine(const CudaEngineOptions& options,
                                                      PageStore* store);

}  // namespace ihip::engine::cuda
