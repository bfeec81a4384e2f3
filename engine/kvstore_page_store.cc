#include "engine/kvstore_page_store.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"

namespace ihip::engine {
namespace {

constexpr uint32_t kGeometryMagic = 0x31474849;  // "IHG1"

}  // namespace

std::string KvStorePageStore::EncodeGeometry(const PageGeometry& g) {
  uint32_t words[5] = {kGeometryMagic, uint32_t(g.page_tokens), uint32_t(g.kv_heads),
                       uint32_t(g.head_dim), uint32_t(g.dtype)};
  return std::string(reinterpret_cast<const char*>(words), sizeof(words));
}

absl::StatusOr<PageGeometry> KvStorePageStore::DecodeGeometry(const std::string& bytes) {
  uint32_t words[5];
  if (bytes.size() < sizeof(words)) return absl::DataLossError("short page geometry");
  std::memcpy(words, bytes.data(), sizeof(words));
  if (words[0] != kGeometryMagic || words[4] > uint32_t(DType::kF8E5M2)) {
    return absl::DataLossError("not an engine page geometry");
  }
  PageGeometry g{int(words[1]), int(words[2]), int(words[3]), DType(words[4])};
  IHIP_RETURN_IF_ERROR(g.Validate());
  return g;
}

void KvStorePageStore::Reattach(kvstore::KvStoreClient* client) {
  std::lock_guard<std::mutex> lock(mu_);
  client_ = client;
  entries_.clear();
}

absl::StatusOr<KvStorePageStore::Entry*> KvStorePageStore::Find(const SequenceId& id) {
  if (auto it = entries_.find(id); it != entries_.end()) return &it->second;
  // Created by an earlier process (ihip-server restarted): the kvstore has its manifest.
  IHIP_ASSIGN_OR_RETURN(kvstore::KvSequenceInfo info, client_->OpenSequence(id));
  IHIP_ASSIGN_OR_RETURN(PageGeometry g, DecodeGeometry(info.geometry));
  Entry e;
  e.handle = info.handle;
  e.geometry = g;
  for (uint64_t len : info.layer_lengths) e.lengths.push_back(int64_t(len));
  e.metadata = info.metadata;
  return &(entries_[id] = std::move(e));
}

absl::Status KvStorePageStore::CreateSequence(const SequenceId& id, int num_layers,
                                              const PageGeometry& g, const std::string& metadata) {
  IHIP_RETURN_IF_ERROR(g.Validate());
  std::lock_guard<std::mutex> lock(mu_);
  IHIP_ASSIGN_OR_RETURN(uint64_t handle, client_->CreateSequence(
                                             id, uint32_t(num_layers), uint32_t(g.page_bytes()),
                                             uint32_t(g.page_tokens), EncodeGeometry(g), metadata));
  Entry e;
  e.handle = handle;
  e.geometry = g;
  e.lengths.assign(num_layers, 0);
  e.metadata = metadata;
  entries_[id] = std::move(e);
  return absl::OkStatus();
}

absl::StatusOr<PageStore::StoredSequence> KvStorePageStore::OpenSequence(const SequenceId& id) {
  std::lock_guard<std::mutex> lock(mu_);
  IHIP_ASSIGN_OR_RETURN(Entry * e, Find(id));
  StoredSequence out;
  out.num_layers = int(e->lengths.size());
  out.geometry = e->geometry;
  out.lengths = e->lengths;
  out.metadata = e->metadata;
  return out;
}

absl::Status KvStorePageStore::SuspendSequence(const SequenceId& id) {
  std::lock_guard<std::mutex> lock(mu_);
  IHIP_ASSIGN_OR_RETURN(Entry * e, Find(id));
  return client_->SuspendSequence(e->handle);
}

absl::Status KvStorePageStore::DropSequence(const SequenceId& id) {
  std::lock_guard<std::mutex> lock(mu_);
  IHIP_ASSIGN_OR_RETURN(Entry * e, Find(id));
  IHIP_RETURN_IF_ERROR(client_->DropSequence(e->handle));
  entries_.erase(id);
  return absl::OkStatus();
}

absl::Status KvStorePageStore::Allocate(const SequenceId& id, int layer, int64_t count,
                                        std::vector<std::byte*>* pages, int64_t first) {
  std::lock_guard<std::mutex> lock(mu_);
  IHIP_ASSIGN_OR_RETURN(Entry * e, Find(id));
  uint64_t got_first = 0;
  IHIP_RETURN_IF_ERROR(client_->Allocate(e->handle, uint32_t(layer), uint32_t(count), &got_first,
                                         pages, first >= 0 ? uint64_t(first) : kvstore::kAnyPage));
  e->pages += count;
  return absl::OkStatus();
}

absl::Status KvStorePageStore::Commit(const SequenceId& id, int layer, int64_t length) {
  std::lock_guard<std::mutex> lock(mu_);
  IHIP_ASSIGN_OR_RETURN(Entry * e, Find(id));
  IHIP_RETURN_IF_ERROR(client_->Commit(e->handle, uint32_t(layer), uint64_t(length)));
  if (layer >= 0 && layer < int(e->lengths.size())) e->lengths[layer] = length;
  return absl::OkStatus();
}

absl::Status KvStorePageStore::Abort(const SequenceId& id, int layer) {
  std::lock_guard<std::mutex> lock(mu_);
  IHIP_ASSIGN_OR_RETURN(Entry * e, Find(id));
  return client_->Abort(e->handle, uint32_t(layer));
}

absl::Status KvStorePageStore::Truncate(const SequenceId& id, int layer, int64_t length) {
  std::lock_guard<std::mutex> lock(mu_);
  IHIP_ASSIGN_OR_RETURN(Entry * e, Find(id));
  IHIP_RETURN_IF_ERROR(client_->Truncate(e->handle, uint32_t(layer), uint64_t(length)));
  if (layer >= 0 && layer < int(e->lengths.size())) e->lengths[layer] = length;
  return absl::OkStatus();
}

absl::StatusOr<int64_t> KvStorePageStore::Length(const SequenceId& id, int layer) {
  std::lock_guard<std::mutex> lock(mu_);
  IHIP_ASSIGN_OR_RETURN(Entry * e, Find(id));
  if (layer < 0 || layer >= int(e->lengths.size())) {
    return absl::OutOfRangeError(absl::StrCat("layer ", layer, " out of range"));
  }
  return e->lengths[layer];
}

absl::Status KvStorePageStore::Pin(const SequenceId& id, int layer, int64_t first, int64_t count,
                                   std::vector<std::byte*>* pages) {
  std::lock_guard<std::mutex> lock(mu_);
  IHIP_ASSIGN_OR_RETURN(Entry * e, Find(id));
  return client_->Pin(e->handle, uint32_t(layer), uint64_t(first), uint32_t(count), pages);
}

absl::Status KvStorePageStore::Unpin(const SequenceId& id, int layer, int64_t first,
                                     int64_t count) {
  std::lock_guard<std::mutex> lock(mu_);
  IHIP_ASSIGN_OR_RETURN(Entry * e, Find(id));
  return client_->Unpin(e->handle, uint32_t(layer), uint64_t(first), uint32_t(count));
}

int64_t KvStorePageStore::BytesUsed() const {
  std::lock_guard<std::mutex> lock(mu_);
  int64_t bytes = 0;
  for (const auto& [id, e] : entries_) bytes += e.pages * int64_t(e.geometry.page_bytes());
  return bytes;
}

}  // namespace ihip::engine
