#include "services/kvstore/kvstore_service.h"

#include "absl/strings/str_cat.h"
#include "services/common/status_util.h"

namespace ihip::kvstore_service {

KvStoreService::KvStoreService(kvstore::ShmSegment* segment, kvstore::Store* store,
                               kvstore::StoreServer* ring_server, kvstore::DiskTier* disk)
    : segment_(segment), store_(store), ring_server_(ring_server), disk_(disk) {
  worker_ = std::thread([this] { WorkerLoop(); });
}

KvStoreService::~KvStoreService() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  worker_.join();
}

void KvStoreService::WorkerLoop() {
  for (;;) {
    std::function<void()> job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, and every queued job ran
      job = std::move(queue_.front());
      queue_.pop_front();
    }
    job();
  }
}

grpc::ServerUnaryReactor* KvStoreService::Defer(grpc::CallbackServerContext* ctx,
                                                std::function<absl::Status()> work) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  std::lock_guard<std::mutex> lock(mu_);
  queue_.push_back(
      [reactor, work = std::move(work)] { reactor->Finish(services::ToGrpc(work())); });
  cv_.notify_one();
  return reactor;
}

grpc::ServerUnaryReactor* KvStoreService::Attach(grpc::CallbackServerContext* ctx,
                                                 const ihip::v1::AttachRequest* req,
                                                 ihip::v1::AttachResponse* resp) {
  const kvstore::SegmentHeader* h = segment_->header();
  resp->set_segment_name(segment_->name());
  resp->set_layout_version(h->layout_version);
  resp->set_segment_bytes(h->segment_bytes);
  resp->set_max_clients(h->max_clients);
  resp->set_lease_ms(h->lease_ns / 1000000);
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* KvStoreService::Stats(grpc::CallbackServerContext* ctx,
                                                const ihip::v1::KvStoreStatsRequest* req,
                                                ihip::v1::KvStoreStats* resp) {
  const kvstore::StoreStats s = store_->Stats();
  resp->set_pages_total(s.slots_total);
  resp->set_pages_used(s.slots_used);
  resp->set_pages_pinned(s.pages_pinned);
  resp->set_pages_on_disk(s.pages_on_disk);
  resp->set_page_bytes(s.slot_bytes);
  resp->set_sequences(s.sequences);
  resp->set_clients(ring_server_->attached_clients());
  resp->set_spills(s.spills);
  resp->set_fetch_backs(s.fetch_backs);
  resp->set_pages_disk_only(s.pages_disk_only);
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* KvStoreService::ListSequences(grpc::CallbackServerContext* ctx,
                                                        const ihip::v1::ListKvSequencesRequest* req,
                                                        ihip::v1::ListKvSequencesResponse* resp) {
  for (const kvstore::SequenceSummary& s : store_->List()) {
    ihip::v1::KvSequence* out = resp->add_sequences();
    out->set_sequence_id(s.id);
    out->set_pages_host(s.pages_resident);
    out->set_pages_disk(s.pages_disk_only);
    out->set_suspended(s.suspended);
    for (uint64_t len : s.layer_lengths) out->add_layer_lengths(len);
  }
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* KvStoreService::DropSequence(grpc::CallbackServerContext* ctx,
                                                       const ihip::v1::DropKvSequenceRequest* req,
                                                       ihip::v1::DropKvSequenceResponse* resp) {
  return Defer(ctx, [this, id = req->sequence_id()]() -> absl::Status {
    auto handle = store_->FindSequence(id);
    if (!handle.ok()) return handle.status();
    return store_->DropSequence(*handle);
  });
}

grpc::ServerUnaryReactor* KvStoreService::SuspendSequence(
    grpc::CallbackServerContext* ctx, const ihip::v1::SuspendKvSequenceRequest* req,
    ihip::v1::SuspendKvSequenceResponse* resp) {
  return Defer(ctx, [this, id = req->sequence_id()]() -> absl::Status {
    auto handle = store_->FindSequence(id);
    if (!handle.ok()) return handle.status();
    return store_->SuspendSequence(*handle);
  });
}

grpc::ServerUnaryReactor* KvStoreService::Compact(grpc::CallbackServerContext* ctx,
                                                  const ihip::v1::CompactRequest* req,
                                                  ihip::v1::CompactResponse* resp) {
  return Defer(ctx, [this]() -> absl::Status {
    if (disk_ == nullptr) return absl::FailedPreconditionError("no disk tier (--rocksdb_path)");
    return disk_->Compact();
  });
}

}  // namespace ihip::kvstore_service
