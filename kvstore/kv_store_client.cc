#include "kvstore/kv_store_client.h"

#include <unistd.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "kvstore/futex.h"

namespace ihip::kvstore {

absl::Status KvStoreClientOptions::Validate() const {
  if (timeout <= absl::ZeroDuration()) return absl::InvalidArgumentError("timeout must be > 0");
  if (spin < 0) return absl::InvalidArgumentError("spin must be >= 0");
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<KvStoreClient>> KvStoreClient::Attach(
    const KvStoreClientOptions& o) {
  absl::Status valid = o.Validate();
  if (!valid.ok()) return valid;
  auto seg = ShmSegment::Attach(o.segment_name);
  if (!seg.ok()) return seg.status();
  SegmentHeader* h = (*seg)->header();
  if (h->server_state.load() != uint32_t(ServerState::kServing)) {
    return absl::UnavailableError(
        absl::StrCat("kvstore segment '", o.segment_name, "' is not being served"));
  }
  for (uint32_t i = 0; i < h->max_clients; ++i) {
    ClientEntry* c = (*seg)->client(i);
    uint32_t expected = uint32_t(ClientState::kFree);
    if (!c->state.compare_exchange_strong(expected, uint32_t(ClientState::kClaiming))) continue;
    c->pid.store(uint32_t(getpid()));
    c->pid_ns.store(PidNamespace());
    c->heartbeat_ns.store(MonotonicNanos());
    const uint64_t generation = c->generation.fetch_add(1) + 1;
    std::memset(c->name, 0, sizeof(c->name));
    std::memcpy(c->name, o.client_name.data(), std::min(o.client_name.size(), sizeof(c->name) - 1));
    for (Ring r : {(*seg)->request_ring(i), (*seg)->completion_ring(i)}) {
      Message m;
      while (r.TryPop(&m)) {
      }
    }
    c->state.store(uint32_t(ClientState::kAttached), std::memory_order_release);
    return std::unique_ptr<KvStoreClient>(new KvStoreClient(o, std::move(*seg), i, generation));
  }
  return absl::ResourceExhaustedError(
      absl::StrCat("all ", h->max_clients, " client slots of the kvstore are taken"));
}

KvStoreClient::KvStoreClient(const KvStoreClientOptions& o, std::unique_ptr<ShmSegment> seg,
                             uint32_t index, uint64_t generation)
    : options_(o),
      segment_(std::move(seg)),
      index_(index),
      epoch_(segment_->header()->server_epoch.load()),
      generation_(generation) {
  heartbeat_ = std::thread([this] { Heartbeat(); });
}

KvStoreClient::~KvStoreClient() {
  {
    std::lock_guard<std::mutex> lock(beat_mu_);
    stopping_ = true;
  }
  beat_cv_.notify_all();
  heartbeat_.join();
  if (!OwnsSlot()) return;  // reclaimed: the slot may belong to someone else now
  Message m{};
  m.op = uint32_t(Op::kDetach);
  absl::Status s = Call(&m);
  (void)s;  // a dead kvstore reclaims the slot by itself
}

bool KvStoreClient::connected() const {
  const SegmentHeader* h = segment_->header();
  return !broken_.load() && h->server_state.load() == uint32_t(ServerState::kServing) &&
         h->server_epoch.load() == epoch_ && OwnsSlot() &&
         !ProcessGone(h->server_pid.load(), h->server_pid_ns.load());
}

bool KvStoreClient::OwnsSlot() const {
  const ClientEntry* me = segment_->client(index_);
  return me->generation.load() == generation_ &&
         me->state.load() == uint32_t(ClientState::kAttached);
}

void KvStoreClient::Heartbeat() {
  const auto period = std::chrono::nanoseconds(segment_->header()->lease_ns / 4);
  std::unique_lock<std::mutex> lock(beat_mu_);
  while (!stopping_) {
    // Reclaimed: never keep another client's lease alive. Broken: stop, so that the kvstore
    // reclaims this slot (and its pins and uncommitted pages) when the lease runs out.
    if (!OwnsSlot() || broken_.load()) return;
    segment_->client(index_)->heartbeat_ns.store(MonotonicNanos());
    beat_cv_.wait_for(lock, period);
  }
}

absl::Status KvStoreClient::Call(Message* m, const void* payload, uint32_t payload_bytes,
                                 std::string* reply_payload) {
  std::lock_guard<std::mutex> lock(mu_);
  SegmentHeader* h = segment_->header();
  ClientEntry* me = segment_->client(index_);
  if (broken_ || h->server_state.load() != uint32_t(ServerState::kServing) ||
      h->server_epoch.load() != epoch_ || !OwnsSlot()) {
    broken_ = true;
    return absl::UnavailableError("kvstore connection lost; re-attach");
  }
  if (payload_bytes > h->mailbox_bytes) {
    return absl::InvalidArgumentError("request payload larger than the mailbox");
  }
  if (payload_bytes > 0) std::memcpy(segment_->mailbox(index_), payload, payload_bytes);
  m->mailbox_bytes = payload_bytes;
  m->request_id = next_request_++;
  Ring rq = segment_->request_ring(index_);
  Ring cq = segment_->completion_ring(index_);
  if (!rq.TryPush(*m)) return absl::UnavailableError("request ring full");
  RingDoorbell(&h->server_doorbell, &h->server_sleeping);
  // Wait in slices, so that a kvstore that died (kill -9) is noticed within one slice where its
  // pid can be checked; otherwise the timeout decides.
  const absl::Time deadline = absl::Now() + options_.timeout;
  bool done = false, gone = false;
  for (int spin = options_.spin; !done; spin = 0) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) break;
    done = WaitForDoorbell(
        &me->completion_doorbell, &me->client_sleeping,
        [&] {
          return !cq.empty() || h->server_state.load() != uint32_t(ServerState::kServing) ||
                 !OwnsSlot();
        },
        spin, std::min(left, absl::Milliseconds(100)));
    gone = !done && ProcessGone(h->server_pid.load(), h->server_pid_ns.load());
    if (gone) break;
  }
  Message reply;
  if (!done || !OwnsSlot() || !cq.TryPop(&reply)) {
    broken_ = true;
    return absl::UnavailableError(!OwnsSlot() ? "this client was reclaimed by the kvstore (lease "
                                                "expired); re-attach"
                                  : done      ? "kvstore stopped; re-attach"
                                  : gone      ? "kvstore process exited; re-attach"
                                              : "kvstore did not answer in time; re-attach");
  }
  if (reply.request_id != m->request_id) {
    broken_ = true;
    return absl::InternalError("kvstore completion out of order");
  }
  const uint32_t n = std::min<uint32_t>(reply.mailbox_bytes, uint32_t(h->mailbox_bytes));
  const char* box = reinterpret_cast<const char*>(segment_->mailbox(index_));
  *m = reply;
  const auto code = absl::StatusCode(reply.status);
  if (code != absl::StatusCode::kOk) return absl::Status(code, std::string(box, n));
  if (reply_payload != nullptr) reply_payload->assign(box, n);
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> KvStoreClient::CreateSequence(const std::string& id, uint32_t num_layers,
                                                       uint32_t page_bytes, uint32_t page_tokens,
                                                       const std::string& geometry,
                                                       const std::string& metadata) {
  SequenceSpec spec{};
  spec.num_layers = num_layers;
  spec.page_bytes = page_bytes;
  spec.page_tokens = page_tokens;
  spec.id_bytes = uint32_t(id.size());
  spec.metadata_bytes = uint32_t(metadata.size());
  std::memcpy(spec.geometry, geometry.data(), std::min(geometry.size(), sizeof(spec.geometry)));
  std::string payload(reinterpret_cast<const char*>(&spec), sizeof(spec));
  payload += id;
  payload += metadata;
  Message m{};
  m.op = uint32_t(Op::kCreateSequence);
  absl::Status s = Call(&m, payload.data(), uint32_t(payload.size()));
  if (!s.ok()) return s;
  return m.arg0;
}

absl::StatusOr<KvSequenceInfo> KvStoreClient::OpenSequence(const std::string& id) {
  Message m{};
  m.op = uint32_t(Op::kOpenSequence);
  std::string reply;
  absl::Status s = Call(&m, id.data(), uint32_t(id.size()), &reply);
  if (!s.ok()) return s;
  SequenceSpec spec;
  if (reply.size() < sizeof(spec)) return absl::InternalError("short open reply");
  std::memcpy(&spec, reply.data(), sizeof(spec));
  if (reply.size() != sizeof(spec) + 8ull * spec.num_layers + spec.metadata_bytes) {
    return absl::InternalError("open reply size mismatch");
  }
  KvSequenceInfo info;
  info.handle = m.arg0;
  info.num_layers = spec.num_layers;
  info.page_bytes = spec.page_bytes;
  info.page_tokens = spec.page_tokens;
  info.geometry.assign(reinterpret_cast<const char*>(spec.geometry), sizeof(spec.geometry));
  info.layer_lengths.resize(spec.num_layers);
  std::memcpy(info.layer_lengths.data(), reply.data() + sizeof(spec), 8ull * spec.num_layers);
  info.metadata = reply.substr(sizeof(spec) + 8ull * spec.num_layers);
  return info;
}

absl::Status KvStoreClient::DropSequence(uint64_t handle) {
  Message m{};
  m.op = uint32_t(Op::kDropSequence);
  m.sequence = handle;
  return Call(&m);
}

absl::Status KvStoreClient::SuspendSequence(uint64_t handle) {
  Message m{};
  m.op = uint32_t(Op::kSuspendSequence);
  m.sequence = handle;
  return Call(&m);
}

absl::Status KvStoreClient::SlotsToAddresses(const Message& reply, const std::string& payload,
                                             uint32_t expected,
                                             std::vector<std::byte*>* pages) const {
  if (payload.size() != 8ull * reply.count) return absl::InternalError("slot list size mismatch");
  if (reply.count != expected) {
    return absl::InternalError(
        absl::StrCat("kvstore returned ", reply.count, " slots, expected ", expected));
  }
  const uint64_t slots = segment_->header()->slot_count;
  pages->resize(reply.count);
  for (uint32_t i = 0; i < reply.count; ++i) {
    uint64_t slot;
    std::memcpy(&slot, payload.data() + 8ull * i, 8);
    if (slot >= slots) return absl::InternalError("slot out of range");
    (*pages)[i] = segment_->slot_data(slot);
  }
  return absl::OkStatus();
}

absl::Status KvStoreClient::Allocate(uint64_t handle, uint32_t layer, uint32_t count,
                                     uint64_t* first_page, std::vector<std::byte*>* pages,
                                     uint64_t expected_first) {
  Message m{};
  m.op = uint32_t(Op::kAllocate);
  m.sequence = handle;
  m.layer = layer;
  m.count = count;
  m.arg1 = expected_first;
  std::string reply;
  absl::Status s = Call(&m, nullptr, 0, &reply);
  if (!s.ok()) return s;
  *first_page = m.arg0;
  return SlotsToAddresses(m, reply, count, pages);
}

absl::Status KvStoreClient::Commit(uint64_t handle, uint32_t layer, uint64_t length) {
  Message m{};
  m.op = uint32_t(Op::kCommit);
  m.sequence = handle;
  m.layer = layer;
  m.arg0 = length;
  return Call(&m);
}

absl::Status KvStoreClient::Abort(uint64_t handle, uint32_t layer) {
  Message m{};
  m.op = uint32_t(Op::kAbort);
  m.sequence = handle;
  m.layer = layer;
  return Call(&m);
}

absl::Status KvStoreClient::Truncate(uint64_t handle, uint32_t layer, uint64_t length) {
  Message m{};
  m.op = uint32_t(Op::kTruncate);
  m.sequence = handle;
  m.layer = layer;
  m.arg0 = length;
  return Call(&m);
}

absl::Status KvStoreClient::Pin(uint64_t handle, uint32_t layer, uint64_t first, uint32_t count,
                                std::vector<std::byte*>* pages) {
  Message m{};
  m.op = uint32_t(Op::kPin);
  m.sequence = handle;
  m.layer = layer;
  m.arg0 = first;
  m.count = count;
  std::string reply;
  absl::Status s = Call(&m, nullptr, 0, &reply);
  if (!s.ok()) return s;
  return SlotsToAddresses(m, reply, count, pages);
}

absl::Status KvStoreClient::Unpin(uint64_t handle, uint32_t layer, uint64_t first, uint32_t count) {
  Message m{};
  m.op = uint32_t(Op::kUnpin);
  m.sequence = handle;
  m.layer = layer;
  m.arg0 = first;
  m.count = count;
  return Call(&m);
}

}  // namespace ihip::kvstore
