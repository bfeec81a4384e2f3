#include "engine/paged_engine.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "engine/hip/dtype_convert.h"
#include "engine/hip/refresh_schedule.h"
#include "engine/status_macros.h"

namespace ihip::engine {


absl::Status PagedEngineOptions::Validate() const {
  if (max_tokens_per_item < 1) {
    return absl::InvalidArgumentError("max_tokens_per_item must be >= 1");
  }
  if (page_tokens < 8 || page_tokens % 8 != 0) {
    return absl::InvalidArgumentError("page_tokens must be a positive multiple of 8");
  }
  return absl::OkStatus();
}

PagedEngine::PagedEngine(const PagedEngineOptions& options, PageStore* store)
    : options_(options), store_(store) {}

PagedEngine::~PagedEngine() = default;

int PagedEngine::RefreshFrom(const LayerConfig& cfg, const Step& step) {
  if (!step.cache.valid) return 1;  // nothing cached yet: run every stage
  if (step.options.refresh != kRefreshBySchedule) return step.options.refresh;
  return StageToRefresh(cfg.stages, step.cache.decode_step);
}

void PagedEngine::ReleaseBackendStates() {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [id, seq] : sequences_) {
    for (auto& layer : seq->layers) {
      std::lock_guard<std::mutex> layer_lock(layer->mu);
      layer->backend.reset();
    }
  }
}

absl::StatusOr<std::shared_ptr<PagedEngine::Sequence>> PagedEngine::NewSequence(
    const SequenceId& id, const ModelSpec& model, const HipConfig& config) const {
  if (id.empty()) return absl::InvalidArgumentError("sequence_id must not be empty");
  IHIP_RETURN_IF_ERROR(model.Validate());
  IHIP_RETURN_IF_ERROR(config.Validate(model.num_layers));
  auto seq = std::make_shared<Sequence>();
  seq->id = id;
  seq->model = model;
  seq->config = config;
  seq->geometry =
      PageGeometry{options_.page_tokens, model.num_kv_heads, model.head_dim, model.kv_dtype};
  if (model.rope.mode == RopeMode::kExtend) {
    seq->rope = std::make_unique<Rope>(model.rope, model.head_dim);
  }
  for (int l = 0; l < model.num_layers; ++l) seq->layers.push_back(std::make_unique<LayerState>());
  return seq;
}

absl::Status PagedEngine::CreateSequence(const SequenceId& id, const ModelSpec& model,
                                       const HipConfig& config, const std::string& metadata) {
  IHIP_ASSIGN_OR_RETURN(std::shared_ptr<Sequence> seq, NewSequence(id, model, config));
  {
    // Reserve the id; the store's round trip (a RocksDB write when durable) happens without
    // holding the map's lock, so requests on other sequences do not wait for it.
    std::lock_guard<std::mutex> lock(mu_);
    if (sequences_.count(id) || creating_.count(id)) {
      return absl::AlreadyExistsError(absl::StrCat("sequence '", id, "' already exists"));
    }
    creating_.insert(id);
  }
  const absl::Status created =
      store_->CreateSequence(id, model.num_layers, seq->geometry, metadata);
  std::lock_guard<std::mutex> lock(mu_);
  creating_.erase(id);
  if (!created.ok()) return created;
  sequences_[id] = std::move(seq);
  return absl::OkStatus();
}

absl::Status PagedEngine::RecoverSequence(const SequenceId& id, const ModelSpec& model,
                                        const HipConfig& config) {
  IHIP_ASSIGN_OR_RETURN(std::shared_ptr<Sequence> seq, NewSequence(id, model, config));
  IHIP_ASSIGN_OR_RETURN(PageStore::StoredSequence stored, store_->OpenSequence(id));
  if (stored.num_layers != model.num_layers ||
      stored.geometry.page_tokens != options_.page_tokens ||
      stored.geometry.kv_heads != model.num_kv_heads ||
      stored.geometry.head_dim != model.head_dim || stored.geometry.dtype != model.kv_dtype) {
    return absl::FailedPreconditionError(
        absl::StrCat("stored sequence '", id, "' does not match the model it is recovered with"));
  }
  for (int l = 0; l < model.num_layers; ++l) {
    seq->layers[l]->length = stored.lengths[l];
    seq->layers[l]->pinned = false;  // pinned on first use
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (sequences_.count(id) || creating_.count(id)) {
    return absl::AlreadyExistsError(absl::StrCat("sequence '", id, "' already exists"));
  }
  sequences_[id] = std::move(seq);
  return absl::OkStatus();
}

absl::Status PagedEngine::EnsurePinned(const Sequence& seq, int layer, LayerState& state) {
  state.last_used = absl::Now();
  if (state.pinned) return absl::OkStatus();
  const int64_t n = (state.length + seq.geometry.page_tokens - 1) / seq.geometry.page_tokens;
  std::vector<std::byte*> pages;
  if (n > 0) IHIP_RETURN_IF_ERROR(store_->Pin(seq.id, layer, 0, n, &pages));
  state.pages = std::move(pages);
  state.pinned = true;
  return OnPinned(seq, layer, state);
}

absl::Status PagedEngine::UnpinLayer(const Sequence& seq, int layer, LayerState& state) {
  if (!state.pinned) return absl::OkStatus();
  if (!state.pages.empty()) {
    IHIP_RETURN_IF_ERROR(store_->Unpin(seq.id, layer, 0, int64_t(state.pages.size())));
  }
  state.pages.clear();
  state.pinned = false;
  OnUnpinned(seq, layer, state);
  return absl::OkStatus();
}

absl::Status PagedEngine::SuspendSequence(const SequenceId& id) {
  IHIP_ASSIGN_OR_RETURN(std::shared_ptr<Sequence> seq, Find(id));
  for (int l = 0; l < int(seq->layers.size()); ++l) {
    LayerState& state = *seq->layers[l];
    std::lock_guard<std::mutex> lock(state.mu);
    if (seq->released) return absl::NotFoundError(absl::StrCat("sequence '", id, "' not found"));
    IHIP_RETURN_IF_ERROR(UnpinLayer(*seq, l, state));
  }
  return store_->SuspendSequence(id);
}

int PagedEngine::UnpinIdle(absl::Duration idle) {
  std::vector<std::shared_ptr<Sequence>> all;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [id, seq] : sequences_) all.push_back(seq);
  }
  const absl::Time now = absl::Now();
  int unpinned = 0;
  for (const auto& seq : all) {
    for (int l = 0; l < int(seq->layers.size()); ++l) {
      LayerState& state = *seq->layers[l];
      std::unique_lock<std::mutex> lock(state.mu, std::try_to_lock);  // busy layers are in use
      if (!lock.owns_lock() || seq->released || !state.pinned || now - state.last_used < idle) {
        continue;
      }
      if (UnpinLayer(*seq, l, state).ok()) ++unpinned;
    }
  }
  return unpinned;
}

std::vector<SequenceId> PagedEngine::Resync() {
  std::vector<std::shared_ptr<Sequence>> all;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [id, seq] : sequences_) all.push_back(seq);
  }
  std::vector<SequenceId> lost;
  for (const auto& seq : all) {
    std::vector<std::unique_lock<std::mutex>> locks;
    for (auto& layer : seq->layers) locks.emplace_back(layer->mu);
    if (seq->released) continue;
    auto stored = store_->OpenSequence(seq->id);
    for (size_t l = 0; l < seq->layers.size(); ++l) {
      LayerState& state = *seq->layers[l];
      state.pages.clear();
      state.pinned = false;
      state.cache = MaskCache{};
      OnUnpinned(*seq, int(l), state);
      if (stored.ok() && l < stored->lengths.size()) state.length = stored->lengths[l];
    }
    if (!stored.ok() && stored.status().code() == absl::StatusCode::kNotFound) {
      lost.push_back(seq->id);
    }
  }
  return lost;
}

EngineStats PagedEngine::Stats() const {
  std::vector<std::shared_ptr<Sequence>> all;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [id, seq] : sequences_) all.push_back(seq);
  }
  EngineStats st;
  st.sequences = int64_t(all.size());
  for (const auto& seq : all) {
    for (const auto& layer : seq->layers) {
      const int64_t length = layer->length.load();
      ++st.layers;
      st.pinned_layers += layer->pinned.load() && length > 0;
      st.tokens += length;
    }
  }
  return st;
}

absl::Status PagedEngine::ReleaseSequence(const SequenceId& id) {
  IHIP_ASSIGN_OR_RETURN(std::shared_ptr<Sequence> seq, Find(id));
  // Take every layer's lock (in order; requests hold one at a time): work in flight finishes,
  // work that already found the sequence sees `released` and leaves the pages alone.
  std::vector<std::unique_lock<std::mutex>> locks;
  for (auto& layer : seq->layers) locks.emplace_back(layer->mu);
  if (seq->released) return absl::NotFoundError(absl::StrCat("sequence '", id, "' not found"));
  // Drop the KV first: if the store fails (kvstore away), the sequence stays whole and the
  // release can be retried. A store that no longer has it (a restarted kvstore) is fine.
  absl::Status dropped = store_->DropSequence(id);
  if (!dropped.ok() && dropped.code() != absl::StatusCode::kNotFound) return dropped;
  seq->released = true;
  std::lock_guard<std::mutex> lock(mu_);
  if (auto it = sequences_.find(id); it != sequences_.end() && it->second == seq) {
    sequences_.erase(it);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<PagedEngine::Sequence>> PagedEngine::Find(const SequenceId& id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sequences_.find(id);
  if (it == sequences_.end()) {
    return absl::NotFoundError(absl::StrCat("sequence '", id, "' not found"));
  }
  return it->second;
}

absl::StatusOr<SequenceInfo> PagedEngine::GetSequence(const SequenceId& id) const {
  IHIP_ASSIGN_OR_RETURN(std::shared_ptr<Sequence> seq, Find(id));
  SequenceInfo info{seq->id, seq->model, seq->config, {}};
  // Lengths are atomic: no waiting behind work in flight on the layers.
  for (auto& layer : seq->layers) info.layer_lengths.push_back(layer->length.load());
  return info;
}

std::vector<SequenceId> PagedEngine::ListSequences() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<SequenceId> ids;
  for (const auto& [id, unused] : sequences_) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  return ids;
}

absl::Status PagedEngine::CheckShape(const Sequence& seq, int layer, int num_tokens,
                                   int64_t position) const {
  const ModelSpec& m = seq.model;
  if (layer < 0 || layer >= m.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer ", layer, " is out of range [0, ", m.num_layers, ")"));
  }
  if (num_tokens < 1 || num_tokens > options_.max_tokens_per_item) {
    return absl::InvalidArgumentError(absl::StrCat(
        "num_tokens must be in [1, ", options_.max_tokens_per_item, "], got ", num_tokens));
  }
  if (position < 0 || position > m.max_context - num_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokens [", position, ", ", position + num_tokens,
                     ") exceed the sequence's max_context ", m.max_context));
  }
  return absl::OkStatus();
}

absl::Status PagedEngine::WriteKv(const Sequence& seq, int layer, LayerState& state, int64_t position,
                                int T, const void* k, const void* v) {
  if (k == nullptr || v == nullptr) return absl::InvalidArgumentError("k and v are required");
  const PageGeometry& g = seq.geometry;
  const int64_t need_pages = (position + T + g.page_tokens - 1) / g.page_tokens;
  if (need_pages > int64_t(state.pages.size())) {
    std::vector<std::byte*> fresh;
    IHIP_RETURN_IF_ERROR(store_->Allocate(seq.id, layer, need_pages - int64_t(state.pages.size()),
                                          &fresh, int64_t(state.pages.size())));
    state.pages.insert(state.pages.end(), fresh.begin(), fresh.end());
  }
  const size_t row = size_t(g.kv_heads) * g.head_dim;
  const size_t wire_row_bytes = row * DTypeSize(seq.model.dtype);
  for (int i = 0; i < T; ++i) {
    const int64_t t = position + i;
    std::byte* dst = state.pages[t / g.page_tokens] + size_t(t % g.page_tokens) * g.row_bytes();
    Convert(seq.model.dtype, static_cast<const std::byte*>(k) + i * wire_row_bytes, g.dtype, dst,
            row);
    Convert(seq.model.dtype, static_cast<const std::byte*>(v) + i * wire_row_bytes, g.dtype,
            dst + g.half_bytes(), row);
  }
  return OnWritten(seq, layer, state, position, T);
}

absl::Status PagedEngine::CommitOrAbort(const Sequence& seq, int layer, LayerState& state,
                                      int64_t length, absl::Status status) {
  if (status.ok()) status = store_->Commit(seq.id, layer, length);
  if (status.ok()) {
    state.length = length;
    return status;
  }
  // Give back what this append allocated; the committed tokens are untouched.
  const int64_t keep = (state.length + seq.geometry.page_tokens - 1) / seq.geometry.page_tokens;
  state.pages.resize(std::min<int64_t>(keep, int64_t(state.pages.size())));
  absl::Status abort = store_->Abort(seq.id, layer);
  (void)abort;  // the original error is the one to report
  return status;
}

absl::Status PagedEngine::Truncate(const SequenceId& id, int layer, int64_t length) {
  IHIP_ASSIGN_OR_RETURN(std::shared_ptr<Sequence> seq, Find(id));
  if (layer < 0 || layer >= seq->model.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " is out of range"));
  }
  LayerState& state = *seq->layers[layer];
  std::lock_guard<std::mutex> lock(state.mu);
  if (seq->released) return absl::NotFoundError(absl::StrCat("sequence '", id, "' not found"));
  if (length < 0 || length > state.length) {
    return absl::InvalidArgumentError(absl::StrCat("truncate of layer ", layer, " to ", length,
                                                   " tokens; it has ", state.length.load()));
  }
  IHIP_RETURN_IF_ERROR(store_->Truncate(id, layer, length));
  state.length = length;
  const int64_t keep = (length + seq->geometry.page_tokens - 1) / seq->geometry.page_tokens;
  if (state.pinned) state.pages.resize(std::min<int64_t>(keep, int64_t(state.pages.size())));
  state.cache = MaskCache{};
  return absl::OkStatus();
}

absl::Status PagedEngine::AppendKv(const SequenceId& id, int layer, int64_t position, int num_tokens,
                                 const void* k, const void* v) {
  IHIP_ASSIGN_OR_RETURN(std::shared_ptr<Sequence> seq, Find(id));
  IHIP_RETURN_IF_ERROR(CheckShape(*seq, layer, num_tokens, position));
  LayerState& state = *seq->layers[layer];
  std::lock_guard<std::mutex> lock(state.mu);
  if (seq->released) return absl::NotFoundError(absl::StrCat("sequence '", id, "' not found"));
  IHIP_RETURN_IF_ERROR(EnsurePinned(*seq, layer, state));
  if (position != state.length) {
    return absl::InvalidArgumentError(absl::StrCat("position ", position, " does not follow layer ",
                                                   layer, "'s ", state.length.load(),
                                                   " stored tokens (appends must be contiguous)"));
  }
  absl::Status s = WriteKv(*seq, layer, state, position, num_tokens, k, v);
  IHIP_RETURN_IF_ERROR(CommitOrAbort(*seq, layer, state, position + num_tokens, s));
  state.cache = MaskCache{};  // next decode step runs every stage
  return absl::OkStatus();
}

absl::Status PagedEngine::Attend(const AttendItem& item, AttendResult* result) {
  IHIP_ASSIGN_OR_RETURN(std::shared_ptr<Sequence> seq, Find(item.sequence));
  IHIP_RETURN_IF_ERROR(CheckShape(*seq, item.layer, item.num_tokens, item.position));
  if (item.q == nullptr || item.out == nullptr) {
    return absl::InvalidArgumentError("q and out are required");
  }
  const ModelSpec& m = seq->model;
  const bool append = item.options.append;
  const int T = item.num_tokens;
  const int N = int(seq->config.ForLayer(item.layer).stages.size());
  if (item.options.refresh < kRefreshBySchedule || item.options.refresh > N) {
    return absl::InvalidArgumentError(
        absl::StrCat("refresh override must be in [-1, ", N, "], got ", item.options.refresh));
  }
  LayerState& state = *seq->layers[item.layer];
  std::lock_guard<std::mutex> lock(state.mu);
  if (seq->released) {
    return absl::NotFoundError(absl::StrCat("sequence '", item.sequence, "' not found"));
  }
  IHIP_RETURN_IF_ERROR(EnsurePinned(*seq, item.layer, state));
  if (append && item.position != state.length) {
    return absl::InvalidArgumentError(
        absl::StrCat("position ", item.position, " does not follow layer ", item.layer, "'s ",
                     state.length.load(), " stored tokens (appends must be contiguous)"));
  }
  if (!append && item.position > state.length - T) {
    return absl::InvalidArgumentError(absl::StrCat(
        "evaluation of positions [", item.position, ", ", item.position + T, ") needs their KV; ",
        "layer ", item.layer, " has ", state.length.load(), " tokens"));
  }
  *result = AttendResult{};
  if (append) {
    absl::Status s = WriteKv(*seq, item.layer, state, item.position, T, item.k, item.v);
    if (!s.ok()) return CommitOrAbort(*seq, item.layer, state, state.length, s);
  }
  Step step;
  step.layer = item.layer;
  step.position = item.position;
  step.num_tokens = T;
  step.kv =
      KvView{state.pages.data(), append ? state.length + T : state.length.load(), seq->geometry};
  step.q.resize(size_t(T) * m.num_q_heads * m.head_dim);
  ToFloat(m.dtype, item.q, step.q.size(), step.q.data());
  for (float& x : step.q) x *= m.scale();
  step.o.resize(step.q.size());
  step.cache = state.cache;
  step.options = item.options;
  step.interrupt = Interrupt{item.options.deadline, item.options.cancelled};

  const LayerConfig& cfg = seq->config.ForLayer(item.layer);
  absl::Status s = Compute(*seq, state, cfg, step, result);
  if (s.ok()) FromFloat(m.dtype, step.o.data(), step.o.size(), item.out);
  if (!append) return s;
  IHIP_RETURN_IF_ERROR(CommitOrAbort(*seq, item.layer, state, state.length + T, s));
  if (item.options.mode == AttentionMode::kSparse && T == 1) {
    state.cache = std::move(step.cache);
    ++state.cache.decode_step;
  } else {
    // A prefill, or tokens appended by dense attention: the next sparse decode step is s = 0
    // and runs every stage.
    state.cache = MaskCache{};
  }
  return absl::OkStatus();
}

}  // namespace ihip::engine
