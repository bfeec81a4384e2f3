#include "engine/cuda/cuda_engine.h"

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/cuda_layer.h"
#include "engine/status_macros.h"

namespace ihip::engine::cuda {

absl::Status CudaEngineOptions::Validate() const {
  if (device < 0) return absl::InvalidArgumentError("device must be >= 0");
  if (max_tokens_per_item < 1) {
    return absl::InvalidArgumentError("max_tokens_per_item must be >= 1");
  }
  if (page_tokens < 8 || page_tokens % 8 != 0) {
    return absl::InvalidArgumentError("page_tokens must be a positive multiple of 8");
  }
  if (slab_pages < 1) return absl::InvalidArgumentError("slab_pages must be >= 1");
  if (max_device_gib < 0) return absl::InvalidArgumentError("max_device_gib must be >= 0");
  if (streams < 1) return absl::InvalidArgumentError("streams must be >= 1");
  return absl::OkStatus();
}

bool CudaAvailable() { return GpuAvailable(); }

std::string DescribeDevice(int device) {
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
    cudaGetLastError();
    return absl::StrCat("CUDA device ", device, " (unreadable)");
  }
  return absl::StrFormat("%s, %d SMs, %.1f GiB, compute %d.%d", prop.name,
                         prop.multiProcessorCount, double(prop.totalGlobalMem) / (1 << 30),
                         prop.major, prop.minor);
}

namespace {

// Streams shared by concurrent requests (a step holds one while it runs).
class StreamPool {
 public:
  ~StreamPool() {
    for (cudaStream_t s : all_) cudaStreamDestroy(s);
  }
  absl::Status Init(int n) {
    for (int i = 0; i < n; ++i) {
      cudaStream_t s;
      IHIP_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
      all_.push_back(s);
      free_.push_back(s);
    }
    return absl::OkStatus();
  }
  cudaStream_t Acquire() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return !free_.empty(); });
    cudaStream_t s = free_.back();
    free_.pop_back();
    return s;
  }
  void Release(cudaStream_t s) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      free_.push_back(s);
    }
    cv_.notify_one();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<cudaStream_t> all_, free_;
};

class CudaEngine final : public PagedEngine, public LayerContext {
 public:
  CudaEngine(const CudaEngineOptions& options, PageStore* store)
      : PagedEngine(PagedEngineOptions{options.max_tokens_per_item, options.page_tokens}, store),
        options_(options) {}
  // The layers' GPU state points into the page pools and streams: free it first.
  ~CudaEngine() override { ReleaseBackendStates(); }

  absl::Status Init() {
    IHIP_CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
    IHIP_CUDA_RETURN_IF_ERROR(
        cudaDeviceGetAttribute(&num_sms_, cudaDevAttrMultiProcessorCount, options_.device));
    size_t free_bytes = 0, total_bytes = 0;
    IHIP_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_bytes, &total_bytes));
    const double budget = options_.max_device_gib > 0 ? options_.max_device_gib * (1 << 30)
                                                       : 0.9 * double(free_bytes);
    budget_bytes_ = int64_t(budget);
    return streams_.Init(options_.streams);
  }

  const char* backend_name() const override { return "cuda"; }

  absl::Status Health() const override {
    std::lock_guard<std::mutex> lock(fatal_mu_);
    return fatal_;
  }

  // LayerContext
  int device() const override { return options_.device; }
  int num_sms() const override { return num_sms_; }
  bool use_graphs() const override { return options_.use_graphs; }
  absl::StatusOr<DevicePagePool*> PagePool(size_t page_bytes) override {
    std::lock_guard<std::mutex> lock(pools_mu_);
    auto& pool = pools_[page_bytes];
    if (pool == nullptr) {
      pool = std::make_unique<DevicePagePool>(page_bytes, options_.slab_pages, &budget_bytes_);
    }
    return pool.get();
  }

 protected:
  absl::Status Compute(const Sequence& seq, LayerState& state, const LayerConfig& cfg, Step& step,
                       AttendResult* result) override {
    return Watch(ComputeOnDevice(seq, state, cfg, step, result));
  }
  absl::Status OnPinned(const Sequence& seq, int layer, LayerState& state) override {
    return Watch(UploadLayer(seq, state));
  }
  absl::Status OnWritten(const Sequence& seq, int layer, LayerState& state, int64_t position,
                         int num_tokens) override {
    return Watch(UploadTokens(seq, state, position, num_tokens));
  }

  void OnUnpinned(const Sequence& seq, int layer, LayerState& state) override {
    if (state.backend != nullptr) static_cast<CudaLayer*>(state.backend.get())->DropPages();
  }

 private:
  // Records a sticky CUDA error (Health() reports it from then on).
  absl::Status Watch(absl::Status s) {
    if (IsStickyCudaStatus(s)) {
      std::lock_guard<std::mutex> lock(fatal_mu_);
      if (fatal_.ok()) fatal_ = s;
    }
    return s;
  }

  absl::Status ComputeOnDevice(const Sequence& seq, LayerState& state, const LayerConfig& cfg,
                               Step& step, AttendResult* result) {
    IHIP_CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
    IHIP_ASSIGN_OR_RETURN(CudaLayer * layer, Layer(seq, state));
    IHIP_RETURN_IF_ERROR(layer->SyncLength(step.kv.length));
    StreamLease lease(&streams_);
    const LayerStep ls = MakeLayerStep(seq, cfg, step);
    if (step.options.mode == AttentionMode::kDense) {
      if (step.num_tokens == 1) return layer->DenseDecode(ls, lease.stream, result);
      return layer->Prefill(ls, /*dense=*/true, lease.stream, result);
    }
    if (step.num_tokens > 1) return layer->Prefill(ls, /*dense=*/false, lease.stream, result);
    int from = RefreshFrom(cfg, step);
    IHIP_RETURN_IF_ERROR(layer->SparseDecode(ls, from, &step.cache, lease.stream, result));
    result->refreshed_from_stage = from;
    return absl::OkStatus();
  }

  absl::Status UploadLayer(const Sequence& seq, LayerState& state) {
    IHIP_CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
    IHIP_ASSIGN_OR_RETURN(CudaLayer * cl, Layer(seq, state));
    return cl->Upload(state.pages.data(), 0, state.length.load());
  }

  absl::Status UploadTokens(const Sequence& seq, LayerState& state, int64_t position,
                            int num_tokens) {
    IHIP_CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
    IHIP_ASSIGN_OR_RETURN(CudaLayer * cl, Layer(seq, state));
    return cl->Upload(state.pages.data(), position, position + num_tokens);
  }

  struct StreamLease {
    explicit StreamLease(StreamPool* p) : pool(p), stream(p->Acquire()) {}
    ~StreamLease() { pool->Release(stream); }
    StreamPool* pool;
    cudaStream_t stream;
  };

  absl::StatusOr<CudaLayer*> Layer(const Sequence& seq, LayerState& state) {
    if (state.backend == nullptr) {
      auto layer = std::make_unique<CudaLayer>(this, seq.model, seq.geometry);
      IHIP_RETURN_IF_ERROR(layer->Init());
      state.backend = std::move(layer);
    }
    return static_cast<CudaLayer*>(state.backend.get());
  }

  LayerStep MakeLayerStep(const Sequence& seq, const LayerConfig& cfg, Step& step) {
    LayerStep ls;
    ls.cfg = &cfg;
    ls.position = step.position;
    ls.num_tokens = step.num_tokens;
    ls.kv_length = step.kv.length;
    ls.q = step.q.data();
    ls.o = step.o.data();
    ls.return_selected = step.options.return_selected;
    ls.interrupt = &step.interrupt;
    return ls;
  }

  const CudaEngineOptions options_;
  mutable std::mutex fatal_mu_;
  absl::Status fatal_;  // the first sticky CUDA error
  int num_sms_ = 0;
  std::atomic<int64_t> budget_bytes_{0};
  StreamPool streams_;
  std::mutex pools_mu_;
  std::map<size_t, std::unique_ptr<DevicePagePool>> pools_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Engine>> NewCudaEngine(const CudaEngineOptions& options,
                                                      PageStore* store) {
  IHIP_RETURN_IF_ERROR(options.Validate());
  if (!GpuAvailable()) return absl::UnavailableError("no CUDA GPU is usable by this process");
  auto engine = std::make_unique<CudaEngine>(options, store);
  IHIP_RETURN_IF_ERROR(engine->Init());
  return std::unique_ptr<Engine>(std::move(engine));
}

}  // namespace ihip::engine::cuda
