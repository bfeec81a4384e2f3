#include "kvstore/store.h"

#include <algorithm>
#include <cstring>
#include <set>

#include "absl/strings/str_cat.h"

namespace ihip::kvstore {
namespace {

constexpr uint32_t kManifestMagic = 0x314d4849;  // "IHM1"
constexpr size_t kMaxIdBytes = 256;
constexpr size_t kMaxMetadataBytes = 64 << 10;

void PutU32(std::string* s, uint32_t v) { s->append(reinterpret_cast<const char*>(&v), 4); }
void PutU64(std::string* s, uint64_t v) { s->append(reinterpret_cast<const char*>(&v), 8); }

class Reader {
 public:
  explicit Reader(const std::string& s) : s_(s) {}
  bool U32(uint32_t* v) { return Bytes(v, 4); }
  bool U64(uint64_t* v) { return Bytes(v, 8); }
  bool Bytes(void* out, size_t n) {
    if (pos_ + n > s_.size()) return false;
    std::memcpy(out, s_.data() + pos_, n);
    pos_ += n;
    return true;
  }
  bool done() const { return pos_ == s_.size(); }

 private:
  const std::string& s_;
  size_t pos_ = 0;
};

}  // namespace

absl::Status StoreOptions::Validate() const {
  if (!(low_watermark > 0 && low_watermark <= high_watermark && high_watermark <= 1.0)) {
    return absl::InvalidArgumentError(
        "watermarks must satisfy 0 < low_watermark <= high_watermark <= 1");
  }
  if (spill_batch < 1) return absl::InvalidArgumentError("spill_batch must be >= 1");
  return absl::OkStatus();
}

Store::Store(const StoreOptions& options, ShmSegment* segment, DiskTier* disk)
    : options_(options), segment_(segment), disk_(disk) {
  const uint64_t n = segment_->header()->slot_count;
  free_slots_.reserve(n);
  for (uint64_t s = n; s-- > 0;) free_slots_.push_back(s);  // hand out low slots first
  client_pins_.resize(segment_->header()->max_clients);
  stats_.slots_total = n;
  stats_.slot_bytes = segment_->header()->slot_bytes;
}

std::string Store::EncodeManifest(const Sequence& s) {
  std::string out;
  PutU32(&out, kManifestMagic);
  PutU64(&out, s.handle);
  PutU32(&out, uint32_t(s.id.size()));
  out += s.id;
  PutU32(&out, s.spec.num_layers);
  PutU32(&out, s.spec.page_bytes);
  PutU32(&out, s.spec.page_tokens);
  out.append(reinterpret_cast<const char*>(s.spec.geometry), sizeof(s.spec.geometry));
  for (const Layer& l : s.layers) PutU64(&out, l.length);
  PutU32(&out, uint32_t(s.metadata.size()));
  out += s.metadata;
  return out;
}

absl::StatusOr<std::unique_ptr<Store::Sequence>> Store::DecodeManifest(const std::string& bytes) {
  Reader r(bytes);
  auto s = std::make_unique<Sequence>();
  uint32_t magic = 0, id_bytes = 0;
  if (!r.U32(&magic) || magic != kManifestMagic || !r.U64(&s->handle) || !r.U32(&id_bytes) ||
      id_bytes > kMaxIdBytes) {
    return absl::DataLossError("corrupt sequence manifest header");
  }
  s->id.resize(id_bytes);
  if (!r.Bytes(s->id.data(), id_bytes) || !r.U32(&s->spec.num_layers) ||
      !r.U32(&s->spec.page_bytes) || !r.U32(&s->spec.page_tokens) ||
      !r.Bytes(s->spec.geometry, sizeof(s->spec.geometry)) || s->spec.page_tokens == 0) {
    return absl::DataLossError("corrupt sequence manifest body");
  }
  s->spec.id_bytes = id_bytes;
  s->geometry.assign(reinterpret_cast<const char*>(s->spec.geometry), sizeof(s->spec.geometry));
  s->layers.resize(s->spec.num_layers);
  for (Layer& l : s->layers) {
    if (!r.U64(&l.length)) return absl::DataLossError("corrupt sequence manifest lengths");
    const uint64_t pages = (l.length + s->spec.page_tokens - 1) / s->spec.page_tokens;
    l.pages.resize(pages);
    for (Page& p : l.pages) p.on_disk = true;
  }
  uint32_t metadata_bytes = 0;
  if (!r.U32(&metadata_bytes) || metadata_bytes > kMaxMetadataBytes) {
    return absl::DataLossError("corrupt sequence manifest metadata");
  }
  s->metadata.resize(metadata_bytes);
  if (!r.Bytes(s->metadata.data(), metadata_bytes)) {
    return absl::DataLossError("corrupt sequence manifest metadata");
  }
  s->spec.metadata_bytes = metadata_bytes;
  if (!r.done()) return absl::DataLossError("trailing bytes in sequence manifest");
  return s;
}

absl::Status Store::Recover() {
  std::lock_guard<std::mutex> lock(mu_);
  if (disk_ == nullptr || !options_.durable) return absl::OkStatus();
  auto manifests = disk_->ListManifests();
  if (!manifests.ok()) return manifests.status();
  for (const auto& [handle, bytes] : *manifests) {
    auto seq = DecodeManifest(bytes);
    if (!seq.ok()) {
      return absl::DataLossError(
          absl::StrCat("manifest of sequence ", handle, ": ", seq.status().message()));
    }
    next_handle_ = std::max(next_handle_, (*seq)->handle + 1);
    by_id_[(*seq)->id] = (*seq)->handle;
    sequences_[(*seq)->handle] = std::move(*seq);
  }
  return absl::OkStatus();
}

absl::StatusOr<Store::Sequence*> Store::Find(uint64_t handle) const {
  auto it = sequences_.find(handle);
  if (it == sequences_.end()) {
    return absl::NotFoundError(absl::StrCat("unknown sequence handle ", handle));
  }
  return it->second.get();
}

absl::StatusOr<Store::Sequence*> Store::FindLayer(uint64_t handle, uint32_t layer) const {
  auto s = Find(handle);
  if (!s.ok()) return s;
  if (layer >= (*s)->layers.size()) {
    return absl::OutOfRangeError(absl::StrCat("layer ", layer, " out of range [0, ",
                                              (*s)->layers.size(), ") of sequence '", (*s)->id,
                                              "'"));
  }
  return s;
}

absl::StatusOr<uint64_t> Store::CreateSequence(const std::string& id, const SequenceSpec& spec,
                                               const std::string& geometry,
                                               const std::string& metadata) {
  if (metadata.size() > kMaxMetadataBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("sequence metadata must not exceed ", kMaxMetadataBytes, " bytes"));
  }
  if (id.empty() || id.size() > kMaxIdBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("sequence id must have 1 to ", kMaxIdBytes, " bytes"));
  }
  if (spec.num_layers < 1 || spec.num_layers > 4096) {
    return absl::InvalidArgumentError("num_layers must be in [1, 4096]");
  }
  if (spec.page_tokens < 1) return absl::InvalidArgumentError("page_tokens must be >= 1");
  if (spec.page_bytes < 1 || spec.page_bytes > segment_->header()->slot_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_bytes ", spec.page_bytes,
                     " must be in [1, slot_bytes = ", segment_->header()->slot_bytes, "]"));
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (by_id_.count(id)) {
    return absl::AlreadyExistsError(absl::StrCat("sequence '", id, "' already exists"));
  }
  auto s = std::make_unique<Sequence>();
  s->handle = next_handle_++;
  s->id = id;
  s->spec = spec;
  s->spec.id_bytes = uint32_t(id.size());
  std::memset(s->spec.geometry, 0, sizeof(s->spec.geometry));
  std::memcpy(s->spec.geometry, geometry.data(),
              std::min(geometry.size(), sizeof(s->spec.geometry)));
  s->geometry.assign(reinterpret_cast<const char*>(s->spec.geometry), sizeof(s->spec.geometry));
  s->metadata = metadata;
  s->spec.metadata_bytes = uint32_t(metadata.size());
  s->layers.resize(spec.num_layers);
  const uint64_t handle = s->handle;
  if (options_.durable) {
    const std::string manifest = EncodeManifest(*s);
    absl::Status w = disk_->Write({}, handle, &manifest);
    if (!w.ok()) return w;
  }
  by_id_[id] = handle;
  sequences_[handle] = std::move(s);
  return handle;
}

SequenceSummary Store::Summarize(const Sequence& s) const {
  SequenceSummary out;
  out.handle = s.handle;
  out.id = s.id;
  out.num_layers = s.spec.num_layers;
  out.page_bytes = s.spec.page_bytes;
  out.page_tokens = s.spec.page_tokens;
  out.geometry = s.geometry;
  out.metadata = s.metadata;
  out.suspended = s.suspended;
  for (const Layer& l : s.layers) {
    out.layer_lengths.push_back(l.length);
    for (const Page& p : l.pages) {
      if (p.slot >= 0) {
        ++out.pages_resident;
      } else if (p.on_disk) {
        ++out.pages_disk_only;
      }
    }
  }
  return out;
}

absl::StatusOr<SequenceSummary> Store::OpenSequence(const std::string& id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = by_id_.find(id);
  if (it == by_id_.end()) return absl::NotFoundError(absl::StrCat("sequence '", id, "' not found"));
  return Summarize(*sequences_.at(it->second));
}

absl::StatusOr<SequenceSummary> Store::GetSequence(uint64_t handle) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto s = Find(handle);
  if (!s.ok()) return s.status();
  return Summarize(**s);
}

absl::StatusOr<uint64_t> Store::FindSequence(const std::string& id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = by_id_.find(id);
  if (it == by_id_.end()) return absl::NotFoundError(absl::StrCat("sequence '", id, "' not found"));
  return it->second;
}

void Store::PublishSlot(uint64_t slot, const PageRef& ref, const Page& p) {
  SlotEntry* e = segment_->slot_entry(slot);
  e->sequence = ref.handle;
  e->layer = ref.layer;
  e->page = uint32_t(ref.page);
  e->pins = p.pins;
  e->state = uint32_t(SlotState::kResident);
}

void Store::PinPage(uint32_t client, const PageRef& ref, Page& p) {
  if (p.in_lru) {
    lru_.erase(p.lru);
    p.in_lru = false;
  }
  ++p.pins;
  ++client_pins_[client][ref];
  if (p.slot >= 0) segment_->slot_entry(uint64_t(p.slot))->pins = p.pins;
}

void Store::UnpinPage(const PageRef& ref, Page& p) {
  --p.pins;
  if (p.slot >= 0) segment_->slot_entry(uint64_t(p.slot))->pins = p.pins;
  if (p.pins == 0 && p.slot >= 0) {
    p.lru = lru_.insert(lru_.end(), ref);
    p.in_lru = true;
  }
}

void Store::FreePage(const PageRef& ref, Page& p) {
  if (p.in_lru) {
    lru_.erase(p.lru);
    p.in_lru = false;
  }
  if (p.slot >= 0) {
    *segment_->slot_entry(uint64_t(p.slot)) = SlotEntry{};
    free_slots_.push_back(uint64_t(p.slot));
    p.slot = -1;
  }
  for (auto& pins : client_pins_) pins.erase(ref);
  p.pins = 0;
}

absl::Status Store::SpillTo(uint64_t target_used) {
  const uint64_t total = stats_.slots_total;
  while (total - free_slots_.size() > target_used && !lru_.empty()) {
    // Take a batch of the least recently used idle pages; write those the disk lacks.
    std::vector<PageRef> batch;
    std::vector<DiskTier::PageWrite> writes;
    for (auto it = lru_.begin(); it != lru_.end() && batch.size() < options_.spill_batch &&
                                 total - free_slots_.size() - batch.size() > target_used;
         ++it) {
      Sequence& s = *sequences_.at(it->handle);
      Page& p = s.layers[it->layer].pages[it->page];
      if (p.dirty || !p.on_disk) {
        if (disk_ == nullptr) continue;  // cannot leave the host tier
        writes.push_back({{it->handle, it->layer, uint32_t(it->page)},
                          segment_->slot_data(uint64_t(p.slot)),
                          s.spec.page_bytes});
      }
      batch.push_back(*it);
    }
    if (batch.empty()) break;
    if (!writes.empty()) {
      // Spilled pages of a non-durable store are a cache: no write-ahead log.
      absl::Status w = disk_->Write(writes, 0, nullptr, options_.durable);
      if (!w.ok()) return w;
    }
    for (const PageRef& ref : batch) {
      Sequence& s = *sequences_.at(ref.handle);
      Page& p = s.layers[ref.layer].pages[ref.page];
      lru_.erase(p.lru);
      p.in_lru = false;
      *segment_->slot_entry(uint64_t(p.slot)) = SlotEntry{};
      free_slots_.push_back(uint64_t(p.slot));
      p.slot = -1;
      p.on_disk = true;
      p.dirty = false;
      ++stats_.spills;
    }
    for (const auto& w : writes) stats_.spill_bytes += w.bytes;
  }
  return absl::OkStatus();
}

void Store::MaybeSpill() {
  const uint64_t total = stats_.slots_total;
  const uint64_t used = total - free_slots_.size();
  if (double(used) > options_.high_watermark * double(total)) {
    // Best effort: a failure here leaves pages resident; TakeSlot reports it when it matters.
    absl::Status s = SpillTo(uint64_t(options_.low_watermark * double(total)));
    (void)s;
  }
}

absl::StatusOr<uint64_t> Store::TakeSlot() {
  if (free_slots_.empty()) {
    const uint64_t total = stats_.slots_total;
    absl::Status s =
        SpillTo(std::min<uint64_t>(total - 1, uint64_t(options_.low_watermark * double(total))));
    if (!s.ok()) return s;
  }
  if (free_slots_.empty()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("host tier full: all ", stats_.slots_total, " page slots are pinned",
                     disk_ == nullptr ? " or hold pages that cannot spill (no disk tier)" : ""));
  }
  const uint64_t slot = free_slots_.back();
  free_slots_.pop_back();
  return slot;
}

absl::Status Store::Persist(const Sequence& s, uint32_t layer, uint64_t first_page,
                            uint64_t end_page) {
  std::vector<DiskTier::PageWrite> writes;
  for (uint64_t i = first_page; i < end_page; ++i) {
    const Page& p = s.layers[layer].pages[i];
    if (p.slot < 0) continue;  // not resident: disk already has it
    writes.push_back(
        {{s.handle, layer, uint32_t(i)}, segment_->slot_data(uint64_t(p.slot)), s.spec.page_bytes});
  }
  const std::string manifest = EncodeManifest(s);
  absl::Status w = disk_->Write(writes, s.handle, &manifest);
  if (!w.ok()) return w;
  for (const auto& pw : writes) stats_.write_through_bytes += pw.bytes;
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> Store::Allocate(uint32_t client, uint64_t handle, uint32_t layer,
                                         uint32_t count, std::vector<uint64_t>* slots,
                                         uint64_t expected_first) {
  if (client >= client_pins_.size()) return absl::InvalidArgumentError("bad client index");
  if (count < 1) return absl::InvalidArgumentError("allocate needs count >= 1");
  std::lock_guard<std::mutex> lock(mu_);
  auto s = FindLayer(handle, layer);
  if (!s.ok()) return s.status();
  Layer& l = (*s)->layers[layer];
  if (expected_first != kAnyPage && expected_first != l.pages.size()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "layer ", layer, " of '", (*s)->id, "' has ", l.pages.size(),
        " pages; the client expected ", expected_first,
        " (uncommitted pages of a client that is gone are freed when its lease ends)"));
  }
  slots->clear();
  for (uint32_t i = 0; i < count; ++i) {
    auto slot = TakeSlot();
    if (!slot.ok()) {
      for (uint64_t taken : *slots) free_slots_.push_back(taken);
      slots->clear();
      return slot.status();
    }
    slots->push_back(*slot);
  }
  const uint64_t first = l.pages.size();
  l.writer = int32_t(client);
  for (uint32_t i = 0; i < count; ++i) {
    l.pages.emplace_back();
    Page& p = l.pages.back();
    p.slot = int64_t((*slots)[i]);
    p.dirty = true;
    const PageRef ref{handle, layer, first + i};
    PinPage(client, ref, p);
    PublishSlot((*slots)[i], ref, p);
  }
  (*s)->suspended = false;
  MaybeSpill();
  return first;
}

absl::Status Store::Commit(uint64_t handle, uint32_t layer, uint64_t length) {
  std::lock_guard<std::mutex> lock(mu_);
  auto s = FindLayer(handle, layer);
  if (!s.ok()) return s.status();
  Sequence& seq = **s;
  Layer& l = seq.layers[layer];
  const uint64_t capacity = uint64_t(l.pages.size()) * seq.spec.page_tokens;
  if (length < l.length || length > capacity) {
    return absl::FailedPreconditionError(absl::StrCat("commit of length ", length, " outside [",
                                                      l.length, ", ", capacity, "] of layer ",
                                                      layer, " of '", seq.id, "'"));
  }
  if (length == l.length) return absl::OkStatus();
  const uint64_t old = l.length;
  const uint64_t first_page = old / seq.spec.page_tokens;
  const uint64_t end_page = (length + seq.spec.page_tokens - 1) / seq.spec.page_tokens;
  for (uint64_t i = first_page; i < end_page; ++i) {
    if (l.pages[i].slot < 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "commit covers page ", i, " of layer ", layer, " of '", seq.id,
          "', which left the host tier: write while pinned and commit before unpinning"));
    }
  }
  l.length = length;
  if (options_.durable) {
    absl::Status w = Persist(seq, layer, first_page, end_page);
    if (!w.ok()) {
      l.length = old;
      return w;
    }
    for (uint64_t i = first_page; i < end_page; ++i) {
      l.pages[i].on_disk = true;
      l.pages[i].dirty = false;
    }
  } else {
    for (uint64_t i = first_page; i < end_page; ++i) l.pages[i].dirty = true;
  }
  return absl::OkStatus();
}

absl::Status Store::Abort(uint64_t handle, uint32_t layer) {
  std::lock_guard<std::mutex> lock(mu_);
  auto s = FindLayer(handle, layer);
  if (!s.ok()) return s.status();
  Layer& l = (*s)->layers[layer];
  const uint64_t keep = (*s)->committed_pages(layer);
  for (uint64_t i = keep; i < l.pages.size(); ++i) FreePage({handle, layer, i}, l.pages[i]);
  l.pages.resize(std::min<uint64_t>(keep, l.pages.size()));
  return absl::OkStatus();
}

absl::Status Store::Truncate(uint64_t handle, uint32_t layer, uint64_t length) {
  std::lock_guard<std::mutex> lock(mu_);
  auto s = FindLayer(handle, layer);
  if (!s.ok()) return s.status();
  Sequence& seq = **s;
  Layer& l = seq.layers[layer];
  if (length > l.length) {
    return absl::FailedPreconditionError(
        absl::StrCat("truncate to ", length, " past the ", l.length, " committed tokens"));
  }
  const uint64_t old = l.length;
  l.length = length;
  if (options_.durable) {
    absl::Status w = Persist(seq, layer, 0, 0);  // the manifest only
    if (!w.ok()) {
      l.length = old;
      return w;
    }
  }
  const uint64_t keep = seq.committed_pages(layer);
  for (uint64_t i = keep; i < l.pages.size(); ++i) FreePage({handle, layer, i}, l.pages[i]);
  l.pages.resize(std::min<uint64_t>(keep, l.pages.size()));
  return absl::OkStatus();
}

absl::Status Store::Pin(uint32_t client, uint64_t handle, uint32_t layer, uint64_t first,
                        uint32_t count, std::vector<uint64_t>* slots) {
  if (client >= client_pins_.size()) return absl::InvalidArgumentError("bad client index");
  std::lock_guard<std::mutex> lock(mu_);
  auto s = FindLayer(handle, layer);
  if (!s.ok()) return s.status();
  Sequence& seq = **s;
  Layer& l = seq.layers[layer];
  if (first + count > l.pages.size() || first + count < first) {
    return absl::OutOfRangeError(absl::StrCat("pages [", first, ", ", first + count,
                                              ") out of range [0, ", l.pages.size(), ") of layer ",
                                              layer, " of '", seq.id, "'"));
  }
  std::vector<uint64_t> missing;
  for (uint64_t i = first; i < first + count; ++i) {
    const Page& p = l.pages[i];
    if (p.slot >= 0) continue;
    if (!p.on_disk || disk_ == nullptr) {
      return absl::DataLossError(absl::StrCat("page ", i, " of layer ", layer, " of '", seq.id,
                                              "' is neither resident nor on disk"));
    }
    missing.push_back(i);
  }
  // Pin what is resident first, so that making room for the rest cannot evict it.
  auto undo = [&](uint64_t end) {
    for (uint64_t i = first; i < end; ++i) {
      const PageRef r{handle, layer, i};
      if (l.pages[i].slot < 0) continue;
      if (--client_pins_[client][r] == 0) client_pins_[client].erase(r);
      UnpinPage(r, l.pages[i]);
    }
  };
  for (uint64_t i = first; i < first + count; ++i) {
    if (l.pages[i].slot >= 0) PinPage(client, {handle, layer, i}, l.pages[i]);
  }
  // Fetch the spilled pages back, several reads in flight.
  std::vector<uint64_t> taken;
  std::vector<PageKey> keys;
  std::vector<void*> outs;
  absl::Status status;
  for (uint64_t i : missing) {
    auto slot = TakeSlot();
    if (!slot.ok()) {
      status = slot.status();
      break;
    }
    taken.push_back(*slot);
    keys.push_back({handle, layer, uint32_t(i)});
    outs.push_back(segment_->slot_data(*slot));
  }
  if (status.ok())
    status =
        disk_ != nullptr ? disk_->ReadPages(keys, outs, seq.spec.page_bytes) : absl::OkStatus();
  if (!status.ok()) {  // all or nothing
    for (uint64_t slot : taken) free_slots_.push_back(slot);
    undo(first + count);
    return status;
  }
  for (size_t k = 0; k < missing.size(); ++k) {
    Page& p = l.pages[missing[k]];
    p.slot = int64_t(taken[k]);
    PinPage(client, {handle, layer, missing[k]}, p);
    ++stats_.fetch_backs;
    stats_.fetch_back_bytes += seq.spec.page_bytes;
  }
  slots->clear();
  for (uint64_t i = first; i < first + count; ++i) {
    Page& p = l.pages[i];
    PublishSlot(uint64_t(p.slot), {handle, layer, i}, p);
    slots->push_back(uint64_t(p.slot));
  }
  seq.suspended = false;
  MaybeSpill();
  return absl::OkStatus();
}

absl::Status Store::Unpin(uint32_t client, uint64_t handle, uint32_t layer, uint64_t first,
                          uint32_t count) {
  if (client >= client_pins_.size()) return absl::InvalidArgumentError("bad client index");
  std::lock_guard<std::mutex> lock(mu_);
  auto s = FindLayer(handle, layer);
  if (!s.ok()) return s.status();
  Layer& l = (*s)->layers[layer];
  if (first + count > l.pages.size() || first + count < first) {
    return absl::OutOfRangeError(absl::StrCat("unpin of pages [", first, ", ", first + count,
                                              ") out of range [0, ", l.pages.size(), ")"));
  }
  auto& mine = client_pins_[client];
  for (uint64_t i = first; i < first + count; ++i) {  // check first: all or nothing
    auto it = mine.find({handle, layer, i});
    if (it == mine.end() || it->second == 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("page ", i, " of layer ", layer, " is not pinned by this client"));
    }
  }
  for (uint64_t i = first; i < first + count; ++i) {
    const PageRef ref{handle, layer, i};
    auto it = mine.find(ref);
    if (--it->second == 0) mine.erase(it);
    UnpinPage(ref, l.pages[i]);
  }
  return absl::OkStatus();
}

void Store::ReleaseClient(uint32_t client) {
  if (client >= client_pins_.size()) return;
  std::lock_guard<std::mutex> lock(mu_);
  // Uncommitted pages this client allocated go (an append that never committed), pinned or not.
  std::set<std::pair<uint64_t, uint32_t>> aborted;
  for (const auto& [handle, seq] : sequences_) {
    for (uint32_t layer = 0; layer < seq->layers.size(); ++layer) {
      const Layer& l = seq->layers[layer];
      if (l.writer == int32_t(client) && l.pages.size() > seq->committed_pages(layer)) {
        aborted.insert({handle, layer});
      }
    }
  }
  for (const auto& [handle, layer] : aborted) {
    Sequence& s = *sequences_.at(handle);
    Layer& l = s.layers[layer];
    const uint64_t keep = s.committed_pages(layer);
    for (uint64_t i = keep; i < l.pages.size(); ++i) FreePage({handle, layer, i}, l.pages[i]);
    l.pages.resize(std::min<uint64_t>(keep, l.pages.size()));
  }
  for (const auto& [ref, n] : client_pins_[client]) {
    auto s = sequences_.find(ref.handle);
    if (s == sequences_.end() || ref.page >= s->second->layers[ref.layer].pages.size()) continue;
    Page& p = s->second->layers[ref.layer].pages[ref.page];
    for (uint32_t k = 0; k < n; ++k) UnpinPage(ref, p);
  }
  client_pins_[client].clear();
}

absl::Status Store::DropSequence(uint64_t handle) {
  std::lock_guard<std::mutex> lock(mu_);
  auto s = Find(handle);
  if (!s.ok()) return s.status();
  Sequence& seq = **s;
  for (uint32_t layer = 0; layer < seq.layers.size(); ++layer) {
    auto& pages = seq.layers[layer].pages;
    for (uint64_t i = 0; i < pages.size(); ++i) FreePage({handle, layer, i}, pages[i]);
  }
  absl::Status d = disk_ != nullptr ? disk_->DeleteSequence(handle) : absl::OkStatus();
  by_id_.erase(seq.id);
  sequences_.erase(handle);
  return d;
}

absl::Status Store::SuspendSequence(uint64_t handle) {
  std::lock_guard<std::mutex> lock(mu_);
  auto s = Find(handle);
  if (!s.ok()) return s.status();
  if (disk_ == nullptr) {
    return absl::FailedPreconditionError("suspend needs a disk tier (--rocksdb_path)");
  }
  Sequence& seq = **s;
  std::vector<PageRef> leaving;
  for (uint32_t layer = 0; layer < seq.layers.size(); ++layer) {
    auto& pages = seq.layers[layer].pages;
    const uint64_t committed = seq.committed_pages(layer);
    for (uint64_t i = 0; i < std::min<uint64_t>(committed, pages.size()); ++i) {
      const Page& p = pages[i];
      if (p.slot >= 0 && p.pins == 0) leaving.push_back({handle, layer, i});
    }
  }
  // In batches of spill_batch pages, as spills: one batch for a whole sequence would be a
  // WriteBatch (and a memtable, flushed on one thread) of the sequence's size: on the H200
  // machine a 1.6 GiB suspend spilled at a third of the disk's rate. A failed batch leaves its
  // pages and the later ones resident (the sequence stays active; the written ones are on disk).
  std::vector<DiskTier::PageWrite> writes;
  for (size_t b = 0; b < leaving.size(); b += options_.spill_batch) {
    const size_t e = std::min<size_t>(leaving.size(), b + options_.spill_batch);
    writes.clear();
    for (size_t k = b; k < e; ++k) {
      const PageRef& ref = leaving[k];
      const Page& p = seq.layers[ref.layer].pages[ref.page];
      if (p.dirty || !p.on_disk) {
        writes.push_back({{handle, ref.layer, uint32_t(ref.page)},
                          segment_->slot_data(uint64_t(p.slot)),
                          seq.spec.page_bytes});
      }
    }
    if (!writes.empty()) {
      absl::Status w = disk_->Write(writes, 0, nullptr, options_.durable);
      if (!w.ok()) return w;
    }
    for (size_t k = b; k < e; ++k) {
      const PageRef& ref = leaving[k];
      Page& p = seq.layers[ref.layer].pages[ref.page];
      FreePage(ref, p);
      p.on_disk = true;
      p.dirty = false;
      ++stats_.spills;
    }
    for (const auto& w : writes) stats_.spill_bytes += w.bytes;
  }
  seq.suspended = true;
  return absl::OkStatus();
}

StoreStats Store::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  StoreStats st = stats_;
  st.slots_used = st.slots_total - free_slots_.size();
  st.sequences = sequences_.size();
  for (const auto& [h, s] : sequences_) {
    for (const Layer& l : s->layers) {
      for (const Page& p : l.pages) {
        if (p.pins > 0) ++st.pages_pinned;
        if (p.on_disk) ++st.pages_on_disk;
        if (p.on_disk && p.slot < 0) ++st.pages_disk_only;
      }
    }
  }
  return st;
}

std::vector<SequenceSummary> Store::List() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<SequenceSummary> out;
  for (const auto& [h, s] : sequences_) out.push_back(Summarize(*s));
  std::sort(out.begin(), out.end(),
            [](const SequenceSummary& a, const SequenceSummary& b) { return a.id < b.id; });
  return out;
}

absl::Status Store::CheckConsistency() const {
  std::lock_guard<std::mutex> lock(mu_);
  const uint64_t total = stats_.slots_total;
  std::vector<uint8_t> owner(total, 0);
  for (uint64_t s : free_slots_) {
    if (s >= total || owner[s]) return absl::InternalError("free list corrupt");
    owner[s] = 1;
  }
  uint64_t idle = 0;
  std::map<PageRef, uint32_t> pins;
  for (const auto& c : client_pins_) {
    for (const auto& [ref, n] : c) pins[ref] += n;
  }
  for (const auto& [h, s] : sequences_) {
    for (uint32_t layer = 0; layer < s->layers.size(); ++layer) {
      const Layer& l = s->layers[layer];
      if (l.length > l.pages.size() * s->spec.page_tokens) {
        return absl::InternalError("layer length past its pages");
      }
      for (uint64_t i = 0; i < l.pages.size(); ++i) {
        const Page& p = l.pages[i];
        const PageRef ref{h, layer, i};
        const uint32_t want = pins.count(ref) ? pins[ref] : 0;
        if (p.pins != want) {
          return absl::InternalError(absl::StrCat("page pins ", p.pins, " != client pins ", want));
        }
        if (p.slot >= 0) {
          if (uint64_t(p.slot) >= total || owner[p.slot]) {
            return absl::InternalError("slot owned twice");
          }
          owner[p.slot] = 1;
          const SlotEntry* e = segment_->slot_entry(uint64_t(p.slot));
          if (e->sequence != h || e->layer != layer || e->page != i) {
            return absl::InternalError("slot table disagrees with the store");
          }
          if (p.in_lru != (p.pins == 0)) return absl::InternalError("LRU membership wrong");
          idle += p.in_lru;
        } else if (p.in_lru || (!p.on_disk && i < s->committed_pages(layer))) {
          return absl::InternalError("committed page neither resident nor on disk");
        }
      }
    }
  }
  for (uint64_t s = 0; s < total; ++s) {
    if (!owner[s]) return absl::InternalError(absl::StrCat("slot ", s, " leaked"));
  }
  if (idle != lru_.size()) return absl::InternalError("LRU size wrong");
  return absl::OkStatus();
}

}  // namespace ihip::kvstore
