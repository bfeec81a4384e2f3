#include "engine/cuda/cuda_layer.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/prefill_attention.h"
#include "engine/hip/rope.h"
#include "engine/status_macros.h"

namespace ihip::engine::cuda {
namespace {

constexpr int64_t kMinPlanCapacity = int64_t{1} << 16;

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

int64_t NextPow2(int64_t x) {
  int64_t p = 1;
  while (p < x) p <<= 1;
  return p;
}

}  // namespace

PruneConfig ToPruneConfig(const LayerConfig& cfg) {
  PruneConfig pc;
  pc.sink_tokens = cfg.sink_tokens;
  pc.window_tokens = cfg.window_tokens;
  pc.num_stages = int(cfg.stages.size());
  pc.pooled_stages = cfg.pooled_stages;
  for (int s = 0; s < pc.num_stages && s < DeviceMask::kMaxStages; ++s) {
    pc.stages[s] = PruneStagePOD{cfg.stages[s].chunk_size, cfg.stages[s].kept_chunks()};
  }
  pc.rope_style = cfg.prune_rope_style == PruneRopeStyle::kChunkIndexed ? kPruneRopeChunkIndexed
                                                                        : kPruneRopeRelative;
  return pc;
}

CudaLayer::CudaLayer(LayerContext* ctx, const ModelSpec& model, const PageGeometry& geometry)
    : ctx_(ctx), model_(model), geometry_(geometry) {}

CudaLayer::~CudaLayer() {
  DropGraphs();
  DropPages();
}

absl::Status CudaLayer::Init() {
  IHIP_ASSIGN_OR_RETURN(pool_, ctx_->PagePool(geometry_.page_bytes()));
  table_capacity_ = CeilDiv(model_.max_context, geometry_.page_tokens);
  IHIP_RETURN_IF_ERROR(table_.Reserve(size_t(table_capacity_) * sizeof(uint8_t*)));
  if (model_.rope.mode == RopeMode::kExtend) {
    const std::vector<double> f = RopeInverseFrequencies(model_.rope, model_.head_dim);
    IHIP_RETURN_IF_ERROR(inv_freq_.Reserve(f.size() * sizeof(double)));
    IHIP_CUDA_RETURN_IF_ERROR(
        cudaMemcpy(inv_freq_.get(), f.data(), f.size() * sizeof(double), cudaMemcpyHostToDevice));
  }
  const size_t qo_bytes = size_t(model_.num_q_heads) * model_.head_dim * sizeof(float);
  IHIP_RETURN_IF_ERROR(d_q_.Reserve(qo_bytes));
  IHIP_RETURN_IF_ERROR(d_o_.Reserve(qo_bytes));
  IHIP_RETURN_IF_ERROR(d_step_.Reserve(sizeof(StepScalars)));
  IHIP_RETURN_IF_ERROR(d_pos_.Reserve(sizeof(int64_t)));
  IHIP_RETURN_IF_ERROR(h_q_.Reserve(qo_bytes));
  IHIP_RETURN_IF_ERROR(h_o_.Reserve(qo_bytes));
  IHIP_RETURN_IF_ERROR(h_step_.Reserve(sizeof(StepScalars)));
  IHIP_RETURN_IF_ERROR(h_pos_.Reserve(sizeof(int64_t)));
  return h_num_blocks_.Reserve(sizeof(int));
}

DeviceKv CudaLayer::Kv() const {
  DeviceKv kv;
  kv.pages = table_.as<const uint8_t* const>();
  kv.page_tokens = geometry_.page_tokens;
  kv.kv_heads = geometry_.kv_heads;
  kv.head_dim = geometry_.head_dim;
  kv.dtype = ElemType(int(geometry_.dtype));
  return kv;
}

DeviceRope CudaLayer::Rope() const { return DeviceRope{inv_freq_.as<const double>()}; }

DecodeAttentionParams CudaLayer::AttentionParams(bool dense, void* workspace, int splits) const {
  DecodeAttentionParams ap;
  ap.kv = Kv();
  ap.step = d_step_.as<const StepScalars>();
  ap.q = d_q_.as<const float>();
  ap.num_q_heads = model_.num_q_heads;
  ap.dense = dense;
  ap.rope = Rope();
  ap.out = d_o_.get();
  ap.out_dtype = ElemType::kF32;
  ap.workspace = workspace;
  ap.num_splits = splits;
  return ap;
}

absl::Status CudaLayer::Upload(std::byte* const* host_pages, int64_t begin, int64_t end) {
  if (end <= begin) return absl::OkStatus();
  const int64_t P = geometry_.page_tokens;
  const int64_t need = CeilDiv(end, P);
  if (need > table_capacity_) {
    return absl::InvalidArgumentError(absl::StrCat("KV of ", end, " tokens exceeds max_context"));
  }
  if (need > int64_t(pages_.size())) {
    const size_t old = pages_.size();
    IHIP_RETURN_IF_ERROR(pool_->Allocate(need - int64_t(old), &pages_));
    IHIP_CUDA_RETURN_IF_ERROR(cudaMemcpy(table_.as<uint8_t*>() + old, pages_.data() + old,
                                         (pages_.size() - old) * sizeof(uint8_t*),
                                         cudaMemcpyHostToDevice));
  }
  const size_t row = geometry_.row_bytes();
  const size_t half = geometry_.half_bytes();
  for (int64_t t = begin; t < end;) {
    const int64_t page = t / P;
    const int64_t stop = std::min(end, (page + 1) * P);
    const size_t offset = size_t(t % P) * row;
    const size_t bytes = size_t(stop - t) * row;
    const std::byte* src = host_pages[page];
    IHIP_CUDA_RETURN_IF_ERROR(
        cudaMemcpy(pages_[page] + offset, src + offset, bytes, cudaMemcpyHostToDevice));
    IHIP_CUDA_RETURN_IF_ERROR(cudaMemcpy(pages_[page] + half + offset, src + half + offset, bytes,
                                         cudaMemcpyHostToDevice));
    t = stop;
  }
  return absl::OkStatus();
}

void CudaLayer::DropPages() {
  // The device mask stays valid: it holds token indices, not page contents (the host cache says
  // whether it is current; Resync resets that).
  if (!pages_.empty()) pool_->Free(pages_.data(), pages_.size());
  pages_.clear();
}

absl::Status CudaLayer::SyncLength(int64_t kv_length) const {
  if (int64_t(pages_.size()) * geometry_.page_tokens < kv_length) {
    return absl::InternalError(absl::StrCat("the GPU copy of the layer holds ", pages_.size(),
                                            " pages, fewer than its ", kv_length, " tokens"));
  }
  return absl::OkStatus();
}

void CudaLayer::DropGraphs() {
  for (cudaGraphExec_t& g : graphs_) {
    if (g != nullptr) cudaGraphExecDestroy(g);
    g = nullptr;
  }
}

absl::StatusOr<const PrunePlan*> CudaLayer::PlanFor(const LayerConfig& cfg, int num_pooled,
                                                    int num_full, int64_t kv_length) {
  if (kv_length > plan_capacity_) {
    plans_.clear();
    decode_plan_ = nullptr;
    DropGraphs();
    plan_capacity_ =
        std::min(model_.max_context, std::max(kMinPlanCapacity, NextPow2(kv_length)));
  }
  auto it = plans_.find({num_pooled, num_full});
  if (it == plans_.end()) {
    PrunePlan plan;
    IHIP_CUDA_RETURN_IF_ERROR(PlanPrune(ToPruneConfig(cfg), model_.num_q_heads,
                                        model_.num_kv_heads, model_.head_dim,
                                        ElemType(int(geometry_.dtype)), num_pooled, num_full,
                                        plan_capacity_, &plan));
    it = plans_.emplace(std::make_pair(num_pooled, num_full), plan).first;
    IHIP_RETURN_IF_ERROR(EnsureMask(it->second));
  }
  return &it->second;
}

absl::Status CudaLayer::EnsureMask(const PrunePlan& plan) {
  bool moved = false;
  auto reserve = [&](DeviceBuffer& b, size_t bytes) -> absl::Status {
    void* before = b.get();
    IHIP_RETURN_IF_ERROR(b.Reserve(bytes));
    moved |= b.get() != before;
    return absl::OkStatus();
  };
  const int N = plan.cfg.num_stages;
  for (int s = 1; s < N; ++s) {
    IHIP_RETURN_IF_ERROR(reserve(mask_stage_[s], size_t(plan.max_candidates[s]) * 8));
    mask_.stage_inputs[s] = mask_stage_[s].as<int64_t>();
    mask_.stage_capacity[s] = int(mask_stage_[s].bytes() / 8);
  }
  IHIP_RETURN_IF_ERROR(reserve(mask_counts_, DeviceMask::kMaxStages * sizeof(int)));
  IHIP_RETURN_IF_ERROR(reserve(mask_blocks_, size_t(plan.block_capacity) * 8));
  IHIP_RETURN_IF_ERROR(reserve(mask_num_blocks_, sizeof(int)));
  IHIP_RETURN_IF_ERROR(reserve(prune_ws_, plan.workspace_bytes));
  mask_.stage_input_counts = mask_counts_.as<int>();
  mask_.blocks = mask_blocks_.as<int64_t>();
  mask_.num_blocks = mask_num_blocks_.as<int>();
  mask_.block_capacity = int(mask_blocks_.bytes() / 8);
  IHIP_RETURN_IF_ERROR(h_blocks_.Reserve(mask_blocks_.bytes()));
  if (moved) {
    DropGraphs();
    mask_valid_ = false;
  }
  return absl::OkStatus();
}

absl::Status CudaLayer::EnsureDecode(const LayerConfig& cfg, int64_t kv_length) {
  IHIP_ASSIGN_OR_RETURN(const PrunePlan* plan, PlanFor(cfg, 1, 1, kv_length));
  if (plan == decode_plan_) return absl::OkStatus();
  decode_plan_ = plan;
  DropGraphs();
  // The window reaches back to the anchor's window (engine/hip/mask.h): between stage-1 refreshes
  // a step attends up to refresh_interval more keys than at the refresh. Planning for them keeps
  // the attention's fixed shares (and its speculative block loads) on every such step.
  const int64_t lag = cfg.stages.empty() ? 0 : std::max(0, cfg.stages[0].refresh_interval);
  const int64_t max_keys = int64_t(cfg.sink_tokens) + 8 * int64_t(plan->block_capacity) +
                           cfg.window_tokens + std::max<int64_t>(8, lag);
  IHIP_CUDA_RETURN_IF_ERROR(PlanDecodeAttention(model_.num_q_heads, model_.num_kv_heads,
                                                model_.head_dim, ElemType(int(geometry_.dtype)),
                                                max_keys, ctx_->num_sms(), &attn_plan_));
  IHIP_RETURN_IF_ERROR(attn_ws_.Reserve(std::max<size_t>(attn_plan_.workspace_bytes, 256)));
  return absl::OkStatus();
}

absl::Status CudaLayer::RecordDecode(int from, cudaStream_t s) {
  const size_t qo_bytes = size_t(model_.num_q_heads) * model_.head_dim * sizeof(float);
  IHIP_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(d_q_.get(), h_q_.get(), qo_bytes, cudaMemcpyHostToDevice, s));
  IHIP_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(d_step_.get(), h_step_.get(), sizeof(StepScalars),
                                            cudaMemcpyHostToDevice, s));
  IHIP_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(d_pos_.get(), h_pos_.get(), sizeof(int64_t), cudaMemcpyHostToDevice, s));
  if (from > 0) {
    PruneParams pp;
    pp.kv = Kv();
    pp.step = d_step_.as<const StepScalars>();
    pp.pooled_q = pp.full_q = d_q_.as<const float>();
    pp.pooled_positions = pp.full_positions = d_pos_.as<const int64_t>();
    pp.rope = Rope();
    pp.mask = mask_;
    pp.workspace = prune_ws_.get();
    IHIP_CUDA_RETURN_IF_ERROR(LaunchRunStages(*decode_plan_, pp, from - 1, s));
  }
  DecodeAttentionParams ap = AttentionParams(/*dense=*/false, attn_ws_.get(),
                                             attn_plan_.num_splits);
  ap.blocks = mask_.blocks;
  ap.num_blocks = mask_.num_blocks;
  ap.sink_tokens = decode_plan_->cfg.sink_tokens;
  ap.window_tokens = decode_plan_->cfg.window_tokens;
  ap.split_keys = attn_plan_.split_keys;
  ap.max_blocks = mask_.block_capacity;
  IHIP_CUDA_RETURN_IF_ERROR(LaunchDecodeAttention(ap, s));
  IHIP_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(h_o_.get(), d_o_.get(), qo_bytes, cudaMemcpyDeviceToHost, s));
  IHIP_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(h_num_blocks_.get(), mask_.num_blocks, sizeof(int),
                                            cudaMemcpyDeviceToHost, s));
  IHIP_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(h_blocks_.get(), mask_.blocks,
                                            size_t(mask_.block_capacity) * 8,
                                            cudaMemcpyDeviceToHost, s));
  return absl::OkStatus();
}

absl::Status CudaLayer::RunDecode(int from, cudaStream_t s) {
  if (!ctx_->use_graphs()) return RecordDecode(from, s);
  cudaGraphExec_t& exec = graphs_[from];
  if (exec == nullptr) {
    IHIP_CUDA_RETURN_IF_ERROR(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    const absl::Status recorded = RecordDecode(from, s);
    cudaGraph_t graph = nullptr;
    const cudaError_t ended = cudaStreamEndCapture(s, &graph);
    if (!recorded.ok()) {
      if (graph != nullptr) cudaGraphDestroy(graph);
      return recorded;
    }
    IHIP_CUDA_RETURN_IF_ERROR(ended);
    const cudaError_t inst = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    if (inst != cudaSuccess) exec = nullptr;
    IHIP_CUDA_RETURN_IF_ERROR(inst);
  }
  IHIP_CUDA_RETURN_IF_ERROR(cudaGraphLaunch(exec, s));
  return absl::OkStatus();
}

absl::Status CudaLayer::Finish(cudaStream_t s) {
  IHIP_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(s));
  return absl::OkStatus();
}

absl::Status CudaLayer::SparseDecode(const LayerStep& step, int from, MaskCache* cache,
                                     cudaStream_t s, AttendResult* result) {
  const LayerConfig& cfg = *step.cfg;
  IHIP_RETURN_IF_ERROR(EnsureDecode(cfg, step.kv_length));
  if (!mask_valid_ || !cache->valid) from = 1;
  const int64_t p = step.position;
  const int64_t anchor = from == 1 ? p : cache->anchor;
  *h_step_.as<StepScalars>() = StepScalars{p, step.kv_length, p, anchor};
  *h_pos_.as<int64_t>() = p;
  const size_t q_floats = size_t(model_.num_q_heads) * model_.head_dim;
  std::memcpy(h_q_.get(), step.q, q_floats * sizeof(float));
  mask_valid_ = false;  // until the step completes
  IHIP_RETURN_IF_ERROR(RunDecode(from, s));
  IHIP_RETURN_IF_ERROR(Finish(s));
  std::memcpy(step.o, h_o_.get(), q_floats * sizeof(float));
  const int nb = std::clamp(*h_num_blocks_.as<int>(), 0, mask_.block_capacity);
  cache->blocks.assign(h_blocks_.as<int64_t>(), h_blocks_.as<int64_t>() + nb);
  cache->valid = true;
  cache->anchor = anchor;
  mask_valid_ = true;
  const std::vector<KeyRun> runs = SparseRuns(p, anchor, cfg, cache->blocks);
  result->attended_keys = CountKeys(runs);
  result->refreshed_from_stage = from;
  if (step.return_selected) result->masks.push_back(MaskInfo{0, 1, cache->blocks, {}});
  return absl::OkStatus();
}

absl::Status CudaLayer::DenseDecode(const LayerStep& step, cudaStream_t s, AttendResult* result) {
  const int64_t p = step.position;
  DecodeAttentionPlan plan;
  IHIP_CUDA_RETURN_IF_ERROR(PlanDecodeAttention(model_.num_q_heads, model_.num_kv_heads,
                                                model_.head_dim, ElemType(int(geometry_.dtype)),
                                                p + 1, ctx_->num_sms(), &plan));
  const size_t ws_bytes = std::max<size_t>(plan.workspace_bytes, 256);
  IHIP_RETURN_IF_ERROR(dense_ws_.Reserve(ws_bytes));
  const size_t q_floats = size_t(model_.num_q_heads) * model_.head_dim;
  std::memcpy(h_q_.get(), step.q, q_floats * sizeof(float));
  *h_step_.as<StepScalars>() = StepScalars{p, step.kv_length, p, p};
  // The decode graphs read h_step_/h_q_ only while they run, under this layer's lock: reusing the
  // staging buffers here is safe.
  IHIP_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(d_q_.get(), h_q_.get(), q_floats * sizeof(float),
                                            cudaMemcpyHostToDevice, s));
  IHIP_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(d_step_.get(), h_step_.get(), sizeof(StepScalars),
                                            cudaMemcpyHostToDevice, s));
  const DecodeAttentionParams ap =
      AttentionParams(/*dense=*/true, dense_ws_.get(), plan.num_splits);
  IHIP_CUDA_RETURN_IF_ERROR(LaunchDecodeAttention(ap, s));
  IHIP_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(h_o_.get(), d_o_.get(), q_floats * sizeof(float),
                                            cudaMemcpyDeviceToHost, s));
  IHIP_RETURN_IF_ERROR(Finish(s));
  std::memcpy(step.o, h_o_.get(), q_floats * sizeof(float));
  result->attended_keys = p + 1;
  return absl::OkStatus();
}

}  // namespace ihip::engine::cuda
