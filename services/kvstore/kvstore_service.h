#pragma once

// KvStoreService: the ihip.v1.KvStore admin/control gRPC service over a kvstore::Store (callback
// API). Requests that touch the disk (drop, suspend, compact) run on a worker thread, never
// inside a reaction. Thread-safe.

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

#include "ihip/v1/kvstore.grpc.pb.h"
#include "kvstore/disk_tier.h"
#include "kvstore/shm_segment.h"
#include "kvstore/store.h"
#include "kvstore/store_server.h"

namespace ihip::kvstore_service {

class KvStoreService final : public ihip::v1::KvStore::CallbackService {
 public:
  KvStoreService(kvstore::ShmSegment* segment, kvstore::Store* store,
                 kvstore::StoreServer* ring_server, kvstore::DiskTier* disk);
  ~KvStoreService() override;

  grpc::ServerUnaryReactor* Attach(grpc::CallbackServerContext* ctx,
                                   const ihip::v1::AttachRequest* req,
                                   ihip::v1::AttachResponse* resp) override;
  grpc::ServerUnaryReactor* Stats(grpc::CallbackServerContext* ctx,
                                  const ihip::v1::KvStoreStatsRequest* req,
                                  ihip::v1::KvStoreStats* resp) override;
  grpc::ServerUnaryReactor* ListSequences(grpc::CallbackServerContext* ctx,
                                          const ihip::v1::ListKvSequencesRequest* req,
                                          ihip::v1::ListKvSequencesResponse* resp) override;
  grpc::ServerUnaryReactor* DropSequence(grpc::CallbackServerContext* ctx,
                                         const ihip::v1::DropKvSequenceRequest* req,
                                         ihip::v1::DropKvSequenceResponse* resp) override;
  grpc::ServerUnaryReactor* SuspendSequence(grpc::CallbackServerContext* ctx,
                                            const ihip::v1::SuspendKvSequenceRequest* req,
                                            ihip::v1::SuspendKvSequenceResponse* resp) override;
  grpc::ServerUnaryReactor* Compact(grpc::CallbackServerContext* ctx,
                                    const ihip::v1::CompactRequest* req,
                                    ihip::v1::CompactResponse* resp) override;

 private:
  // Runs `work` on the worker thread, then finishes the reactor with its status.
  grpc::ServerUnaryReactor* Defer(grpc::CallbackServerContext* ctx,
                                  std::function<absl::Status()> work);
  void WorkerLoop();

  kvstore::ShmSegment* const segment_;
  kvstore::Store* const store_;
  kvstore::StoreServer* const ring_server_;
  kvstore::DiskTier* const disk_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  bool stopping_ = false;
  std::thread worker_;
};

}  // namespace ihip::kvstore_service
