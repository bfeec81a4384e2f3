#include "engine/in_memory_page_store.h"

#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"

namespace ihip::engine {

absl::Status InMemoryPageStore::CreateSequence(const SequenceId& id, int num_layers,
                                               const PageGeometry& g, const std::string& metadata) {
  IHIP_RETURN_IF_ERROR(g.Validate());
  std::lock_guard<std::mutex> lock(mu_);
  if (sequences_.count(id)) {
    return absl::AlreadyExistsError(absl::StrCat("sequence '", id, "' already exists"));
  }
  Sequence& s = sequences_[id];
  s.geometry = g;
  s.layers.resize(num_layers);
  s.metadata = metadata;
  return absl::OkStatus();
}

absl::StatusOr<PageStore::StoredSequence> InMemoryPageStore::OpenSequence(const SequenceId& id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sequences_.find(id);
  if (it == sequences_.end()) {
    return absl::NotFoundError(absl::StrCat("sequence '", id, "' not found"));
  }
  StoredSequence out;
  out.num_layers = int(it->second.layers.size());
  out.geometry = it->second.geometry;
  for (const Layer& l : it->second.layers) out.lengths.push_back(l.length);
  out.metadata = it->second.metadata;
  return out;
}

absl::Status InMemoryPageStore::SuspendSequence(const SequenceId& id) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!sequences_.count(id)) {
    return absl::NotFoundError(absl::StrCat("sequence '", id, "' not found"));
  }
  return absl::OkStatus();  // one tier only: nothing moves
}

absl::Status InMemoryPageStore::DropSequence(const SequenceId& id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sequences_.find(id);
  if (it == sequences_.end()) {
    return absl::NotFoundError(absl::StrCat("sequence '", id, "' not found"));
  }
  for (const Layer& l : it->second.layers) {
    bytes_used_ -= int64_t(l.pages.size() * it->second.geometry.page_bytes());
  }
  sequences_.erase(it);
  return absl::OkStatus();
}

absl::StatusOr<InMemoryPageStore::Layer*> InMemoryPageStore::FindLayer(const SequenceId& id,
                                                                       int layer) {
  auto it = sequences_.find(id);
  if (it == sequences_.end()) {
    return absl::NotFoundError(absl::StrCat("sequence '", id, "' not found"));
  }
  if (layer < 0 || layer >= int(it->second.layers.size())) {
    return absl::OutOfRangeError(
        absl::StrCat("layer ", layer, " out of range [0, ", it->second.layers.size(), ")"));
  }
  return &it->second.layers[layer];
}

absl::Status InMemoryPageStore::Allocate(const SequenceId& id, int layer, int64_t count,
                                         std::vector<std::byte*>* pages, int64_t first) {
  std::lock_guard<std::mutex> lock(mu_);
  IHIP_ASSIGN_OR_RETURN(Layer * l, FindLayer(id, layer));
  if (first >= 0 && first != int64_t(l->pages.size())) {
    return absl::FailedPreconditionError(absl::StrCat("layer ", layer, " has ", l->pages.size(),
                                                      " pages, the caller expected ", first));
  }
  const size_t page_bytes = sequences_[id].geometry.page_bytes();
  const int64_t need = count * int64_t(page_bytes);
  if (capacity_bytes_ > 0 && bytes_used_ + need > capacity_bytes_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("KV capacity exhausted: ", count, " pages (", need, " bytes) requested, ",
                     capacity_bytes_ - bytes_used_, " bytes free of ", capacity_bytes_));
  }
  pages->clear();
  for (int64_t i = 0; i < count; ++i) {
    // Value-initialised: pages hold zeros until written, never stale bytes.
    l->pages.push_back(Page{std::make_unique<std::byte[]>(page_bytes)});
    pages->push_back(l->pages.back().bytes.get());
  }
  bytes_used_ += need;
  return absl::OkStatus();
}

absl::Status InMemoryPageStore::Commit(const SequenceId& id, int layer, int64_t length) {
  std::lock_guard<std::mutex> lock(mu_);
  IHIP_ASSIGN_OR_RETURN(Layer * l, FindLayer(id, layer));
  const int64_t page_tokens = sequences_[id].geometry.page_tokens;
  if (length < l->length || length > int64_t(l->pages.size()) * page_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("commit of length ", length, " outside [",
                                                   l->length, ", ", l->pages.size() * page_tokens,
                                                   "]"));
  }
  l->length = length;
  return absl::OkStatus();
}

absl::Status InMemoryPageStore::Abort(const SequenceId& id, int layer) {
  std::lock_guard<std::mutex> lock(mu_);
  IHIP_ASSIGN_OR_RETURN(Layer * l, FindLayer(id, layer));
  const PageGeometry& g = sequences_[id].geometry;
  const size_t keep = size_t((l->length + g.page_tokens - 1) / g.page_tokens);
  if (l->pages.size() > keep) {
    bytes_used_ -= int64_t((l->pages.size() - keep) * g.page_bytes());
    l->pages.resize(keep);
  }
  return absl::OkStatus();
}

absl::Status InMemoryPageStore::Truncate(const SequenceId& id, int layer, int64_t length) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    IHIP_ASSIGN_OR_RETURN(Layer * l, FindLayer(id, layer));
    if (length < 0 || length > l->length) {
      return absl::FailedPreconditionError("truncate past the committed length");
    }
    l->length = length;
  }
  return Abort(id, layer);  // frees the pages past the new length
}

absl::StatusOr<int64_t> InMemoryPageStore::Length(const SequenceId& id, int layer) {
  std::lock_guard<std::mutex> lock(mu_);
  IHIP_ASSIGN_OR_RETURN(Layer * l, FindLayer(id, layer));
  return l->length;
}

absl::Status InMemoryPageStore::Pin(const SequenceId& id, int layer, int64_t first, int64_t count,
                                    std::vector<std::byte*>* pages) {
  std::lock_guard<std::mutex> lock(mu_);
  IHIP_ASSIGN_OR_RETURN(Layer * l, FindLayer(id, layer));
  if (first < 0 || count < 0 || first + count > int64_t(l->pages.size())) {
    return absl::OutOfRangeError(absl::StrCat("pages [", first, ", ", first + count,
                                              ") out of range [0, ", l->pages.size(), ")"));
  }
  pages->clear();
  for (int64_t i = first; i < first + count; ++i) pages->push_back(l->pages[i].bytes.get());
  return absl::OkStatus();
}

absl::Status InMemoryPageStore::Unpin(const SequenceId& id, int layer, int64_t first,
                                      int64_t count) {
  std::lock_guard<std::mutex> lock(mu_);
  IHIP_ASSIGN_OR_RETURN(Layer * l, FindLayer(id, layer));
  if (first < 0 || count < 0 || first + count > int64_t(l->pages.size())) {
    return absl::OutOfRangeError("unpin of pages out of range");
  }
  return absl::OkStatus();
}

int64_t InMemoryPageStore::BytesUsed() const {
  std::lock_guard<std::mutex> lock(mu_);
  return bytes_used_;
}

}  // namespace ihip::engine
