#include "kvstore/store_server.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "kvstore/futex.h"

namespace ihip::kvstore {

StoreServer::StoreServer(const StoreServerOptions& options, ShmSegment* segment, Store* store)
    : options_(options), segment_(segment), store_(store) {}

StoreServer::~StoreServer() { Stop(); }

void StoreServer::Start() {
  SegmentHeader* h = segment_->header();
  h->server_epoch.fetch_add(1);
  h->server_pid.store(uint32_t(getpid()));
  h->server_pid_ns.store(PidNamespace());
  h->server_state.store(uint32_t(ServerState::kServing));
  thread_ = std::thread([this] { Loop(); });
}

void StoreServer::Stop() {
  if (!thread_.joinable()) return;
  stop_.store(true);
  SegmentHeader* h = segment_->header();
  h->server_state.store(uint32_t(ServerState::kStopped));
  h->server_doorbell.fetch_add(1);
  FutexWakeAll(&h->server_doorbell);
  thread_.join();
  // Wake clients waiting for completions: they see the stopped state and give up.
  for (uint32_t i = 0; i < h->max_clients; ++i) {
    ClientEntry* c = segment_->client(i);
    c->completion_doorbell.fetch_add(1);
    FutexWakeAll(&c->completion_doorbell);
  }
}

bool StoreServer::AnyRequest() const {
  const SegmentHeader* h = segment_->header();
  for (uint32_t i = 0; i < h->max_clients; ++i) {
    if (segment_->client(i)->state.load(std::memory_order_acquire) ==
            uint32_t(ClientState::kAttached) &&
        !segment_->request_ring(i).empty()) {
      return true;
    }
  }
  return false;
}

void StoreServer::Loop() {
  SegmentHeader* h = segment_->header();
  const absl::Duration lease_check = absl::Nanoseconds(h->lease_ns / 4);
  absl::Time next_check = absl::Now() + lease_check;
  while (!stop_.load()) {
    bool served = false;
    uint32_t attached = 0;
    for (uint32_t i = 0; i < h->max_clients; ++i) {
      if (segment_->client(i)->state.load(std::memory_order_acquire) !=
          uint32_t(ClientState::kAttached)) {
        continue;
      }
      ++attached;
      Ring ring = segment_->request_ring(i);
      Message m;
      while (!stop_.load() && ring.TryPop(&m)) {
        served = true;
        Serve(i, m);
      }
    }
    attached_.store(attached);
    if (absl::Now() >= next_check) {
      CheckLeases();
      next_check = absl::Now() + lease_check;
    }
    if (!served) {
      WaitForDoorbell(
          &h->server_doorbell, &h->server_sleeping, [this] { return stop_.load() || AnyRequest(); },
          options_.spin, std::max(next_check - absl::Now(), absl::Milliseconds(1)));
    }
  }
}

void StoreServer::Reply(uint32_t client, Message reply, const absl::Status& status,
                        uint32_t bytes) {
  reply.status = uint32_t(status.code());
  reply.mailbox_bytes = bytes;
  if (!status.ok()) {  // the message travels in the mailbox
    const std::string msg(status.message());
    const size_t n = std::min<size_t>(msg.size(), segment_->header()->mailbox_bytes);
    std::memcpy(segment_->mailbox(client), msg.data(), n);
    reply.mailbox_bytes = uint32_t(n);
  }
  Ring ring = segment_->completion_ring(client);
  if (!ring.TryPush(reply)) {  // the client does not read its completions: it is broken
    Reclaim(client, "completion ring full");
    return;
  }
  ClientEntry* c = segment_->client(client);
  RingDoorbell(&c->completion_doorbell, &c->client_sleeping);
}

void StoreServer::Serve(uint32_t client, const Message& req) {
  const absl::Time t0 = absl::Now();
  const SegmentHeader* h = segment_->header();
  std::byte* box = segment_->mailbox(client);
  const uint64_t box_bytes = h->mailbox_bytes;
  Message reply{};
  reply.op = req.op;
  reply.request_id = req.request_id;
  reply.sequence = req.sequence;
  reply.layer = req.layer;
  absl::Status status;
  uint32_t out_bytes = 0;
  std::vector<uint64_t> slots;
  if (req.mailbox_bytes > box_bytes) {
    status = absl::InvalidArgumentError("corrupt request: payload larger than the mailbox");
  } else {
    switch (Op(req.op)) {
      case Op::kCreateSequence: {
        SequenceSpec spec;
        if (req.mailbox_bytes < sizeof(spec)) {
          status = absl::InvalidArgumentError("corrupt request: short create payload");
          break;
        }
        std::memcpy(&spec, box, sizeof(spec));
        if (sizeof(spec) + uint64_t(spec.id_bytes) + spec.metadata_bytes != req.mailbox_bytes) {
          status = absl::InvalidArgumentError("corrupt request: create payload size mismatch");
          break;
        }
        const char* payload = reinterpret_cast<const char*>(box) + sizeof(spec);
        const std::string id(payload, spec.id_bytes);
        const std::string metadata(payload + spec.id_bytes, spec.metadata_bytes);
        auto handle = store_->CreateSequence(
            id, spec,
            std::string(reinterpret_cast<const char*>(spec.geometry), sizeof(spec.geometry)),
            metadata);
        status = handle.status();
        if (handle.ok()) reply.arg0 = *handle;
        break;
      }
      case Op::kOpenSequence: {
        const std::string id(reinterpret_cast<const char*>(box), req.mailbox_bytes);
        auto info = store_->OpenSequence(id);
        status = info.status();
        if (!info.ok()) break;
        SequenceSpec spec{};
        spec.num_layers = info->num_layers;
        spec.page_bytes = info->page_bytes;
        spec.page_tokens = info->page_tokens;
        spec.id_bytes = uint32_t(id.size());
        std::memcpy(spec.geometry, info->geometry.data(),
                    std::min(info->geometry.size(), sizeof(spec.geometry)));
        spec.metadata_bytes = uint32_t(info->metadata.size());
        const size_t need = sizeof(spec) + 8 * info->layer_lengths.size() + info->metadata.size();
        if (need > box_bytes) {
          status = absl::ResourceExhaustedError("sequence manifest larger than the mailbox");
          break;
        }
        std::memcpy(box, &spec, sizeof(spec));
        std::memcpy(box + sizeof(spec), info->layer_lengths.data(), 8 * info->layer_lengths.size());
        std::memcpy(box + sizeof(spec) + 8 * info->layer_lengths.size(), info->metadata.data(),
                    info->metadata.size());
        reply.arg0 = info->handle;
        out_bytes = uint32_t(need);
        break;
      }
      case Op::kDropSequence:
        status = store_->DropSequence(req.sequence);
        break;
      case Op::kSuspendSequence:
        status = store_->SuspendSequence(req.sequence);
        break;
      case Op::kAllocate:
      case Op::kPin: {
        if (uint64_t(req.count) * 8 > box_bytes) {
          status = absl::InvalidArgumentError("too many pages in one request for the mailbox");
          break;
        }
        if (Op(req.op) == Op::kAllocate) {
          auto first =
              store_->Allocate(client, req.sequence, req.layer, req.count, &slots, req.arg1);
          status = first.status();
          if (first.ok()) reply.arg0 = *first;
        } else {
          status = store_->Pin(client, req.sequence, req.layer, req.arg0, req.count, &slots);
          reply.arg0 = req.arg0;
        }
        if (status.ok()) {
          std::memcpy(box, slots.data(), 8 * slots.size());
          out_bytes = uint32_t(8 * slots.size());
          reply.count = uint32_t(slots.size());
        }
        break;
      }
      case Op::kCommit:
        status = store_->Commit(req.sequence, req.layer, req.arg0);
        break;
      case Op::kAbort:
        status = store_->Abort(req.sequence, req.layer);
        break;
      case Op::kTruncate:
        status = store_->Truncate(req.sequence, req.layer, req.arg0);
        break;
      case Op::kUnpin:
        status = store_->Unpin(client, req.sequence, req.layer, req.arg0, req.count);
        break;
      case Op::kDetach:
        store_->ReleaseClient(client);
        Reply(client, reply, absl::OkStatus(), 0);
        segment_->client(client)->state.store(uint32_t(ClientState::kFree));
        if (options_.on_client) options_.on_client(client, "detached");
        return;
      default:
        status =
            absl::InvalidArgumentError("corrupt request: unknown op " + std::to_string(req.op));
    }
  }
  Reply(client, reply, status, out_bytes);
  if (options_.on_request) options_.on_request(Op(req.op), status.code(), absl::Now() - t0);
}

void StoreServer::CheckLeases() {
  const SegmentHeader* h = segment_->header();
  const uint64_t now = MonotonicNanos();
  claiming_seen_.resize(h->max_clients, {0, 0});
  for (uint32_t i = 0; i < h->max_clients; ++i) {
    ClientEntry* c = segment_->client(i);
    const uint32_t state = c->state.load();
    if (state == uint32_t(ClientState::kClaiming)) {
      auto& [generation, since] = claiming_seen_[i];
      if (since == 0 || generation != c->generation.load()) {
        claiming_seen_[i] = {c->generation.load(), now};
      } else if (now - since > h->lease_ns) {
        claiming_seen_[i] = {0, 0};
        Reclaim(i, "died while attaching");
      }
      continue;
    }
    claiming_seen_[i] = {0, 0};
    if (state != uint32_t(ClientState::kAttached)) continue;
    const uint64_t beat = c->heartbeat_ns.load();
    if (ProcessGone(c->pid.load(), c->pid_ns.load())) {
      Reclaim(i, "process gone");
    } else if (now > beat && now - beat > h->lease_ns) {
      Reclaim(i, "lease expired");
    }
  }
}

void StoreServer::Reclaim(uint32_t client, const char* why) {
  ClientEntry* c = segment_->client(client);
  c->state.store(uint32_t(ClientState::kReclaiming));
  store_->ReleaseClient(client);
  Ring rq = segment_->request_ring(client);
  Message m;
  while (rq.TryPop(&m)) {
  }
  if (options_.on_client) options_.on_client(client, why);
  c->state.store(uint32_t(ClientState::kFree));
}

}  // namespace ihip::kvstore
