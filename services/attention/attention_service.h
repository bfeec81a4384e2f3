#pragma once

// AttentionService: ihip.v1.Attention over an engine::Engine (callback API). Engine work runs on
// the Executor, except small Attend and AttendStream requests (decode steps) while fewer than
// `inline_stream_slots` run that way: those are computed in the reaction itself, which saves the
// hand-off to a worker (a thread wake-up: 20–90 µs measured, a large share of a decode step's
// round trip); the bound keeps gRPC's callback threads free for everything else. Every request
// is validated against its sequence's ModelSpec before anything is appended (INVALID_ARGUMENT
// naming the field; NOT_FOUND for an unknown sequence); deadlines and cancellation reach the
// engine, which then appends nothing.
// Proto <-> engine conversion happens here and in conversions.cc only. Thread-safe.

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine/page_store.h"
#include "ihip/v1/attention.grpc.pb.h"
#include "services/attention/executor.h"
#include "services/attention/server_metrics.h"

namespace ihip::attention {

struct AttentionServiceOptions {
  int workers = 4;  // engine worker threads (requests computed at once)
  int64_t default_max_context = int64_t{1} << 22;  // for ModelSpec.max_context 0
  int max_items_per_request = 1024;
  int max_tokens_per_item = 65536;  // must not exceed the engine's
  int page_tokens = 64;             // the engine's KV page size (for kv_bytes)
  // Attend / AttendStream requests of at most inline_max_bytes (q, k, v of all items) computed
  // in the reaction, at most this many at once; 0 = every request goes through the workers.
  int inline_stream_slots = 2;
  size_t inline_max_bytes = 64 << 10;
};

class AttentionService final : public ihip::v1::Attention::CallbackService {
 public:
  AttentionService(const AttentionServiceOptions& options, engine::Engine* engine,
                   ServerMetrics* metrics);
  ~AttentionService() override;

  // Re-registers the sequences `store` holds (created before a restart) from the metadata kept
  // with them. Returns how many were recovered; unreadable ones are logged and skipped.
  int Recover(const std::vector<std::string>& ids, engine::PageStore* store);
  // After the page store came back (kvstore restart): drops the sequences it no longer holds
  // (Engine::Resync's answer).
  void DropLost(const std::vector<std::string>& lost);
  size_t sequences() const;

  grpc::ServerUnaryReactor* CreateSequence(grpc::CallbackServerContext* ctx,
                                           const ihip::v1::CreateSequenceRequest* req,
                                           ihip::v1::SequenceInfo* resp) override;
  grpc::ServerUnaryReactor* Attend(grpc::CallbackServerContext* ctx,
                                   const ihip::v1::AttendRequest* req,
                                   ihip::v1::AttendResponse* resp) override;
  grpc::ServerBidiReactor<ihip::v1::AttendRequest, ihip::v1::AttendResponse>* AttendStream(
      grpc::CallbackServerContext* ctx) override;
  grpc::ServerReadReactor<ihip::v1::AppendKVChunk>* AppendKV(
      grpc::CallbackServerContext* ctx, ihip::v1::AppendKVResponse* resp) override;
  grpc::ServerUnaryReactor* GetSequence(grpc::CallbackServerContext* ctx,
                                        const ihip::v1::GetSequenceRequest* req,
                                        ihip::v1::SequenceInfo* resp) override;
  grpc::ServerUnaryReactor* ListSequences(grpc::CallbackServerContext* ctx,
                                          const ihip::v1::ListSequencesRequest* req,
                                          ihip::v1::ListSequencesResponse* resp) override;
  grpc::ServerUnaryReactor* ReleaseSequence(grpc::CallbackServerContext* ctx,
                                            const ihip::v1::ReleaseSequenceRequest* req,
                                            ihip::v1::ReleaseSequenceResponse* resp) override;
  grpc::ServerUnaryReactor* SuspendSequence(grpc::CallbackServerContext* ctx,
                                            const ihip::v1::SuspendSequenceRequest* req,
                                            ihip::v1::SuspendSequenceResponse* resp) override;

  // The work behind the RPCs (on a worker thread). Public for the reactors.
  struct Work {
    const std::atomic<bool>* cancelled = nullptr;
    absl::Time deadline = absl::InfiniteFuture();
    absl::Duration engine_time;
  };
  absl::Status DoAttend(const ihip::v1::AttendRequest& req, ihip::v1::AttendResponse* resp,
                        Work* work);
  absl::Status DoAppend(const ihip::v1::AppendKVChunk& chunk, ihip::v1::AppendKVResponse* resp,
                        Work* work);
  Executor& executor() { return *executor_; }
  // True when `req` may run in the calling reaction (then call EndInline when done).
  bool TryInline(const ihip::v1::AttendRequest& req);
  void EndInline();
  ServerMetrics& metrics() { return *metrics_; }

 private:
  struct Entry {
    ihip::v1::CreateSequenceRequest request;  // as created, id filled in
    engine::ModelSpec model;
    bool suspended = false;
  };
  absl::StatusOr<engine::ModelSpec> Model(const std::string& id);
  absl::Status FillInfo(const std::string& id, ihip::v1::SequenceInfo* info);
  absl::Status DoCreate(const ihip::v1::CreateSequenceRequest& req, ihip::v1::SequenceInfo* info);
  // Runs `work` on the executor and finishes the unary reactor with its status.
  grpc::ServerUnaryReactor* Unary(grpc::CallbackServerContext* ctx, const char* method,
                                  std::function<absl::Status()> work);
  void MarkUsed(const std::string& id);

  const AttentionServiceOptions options_;
  engine::Engine* const engine_;
  ServerMetrics* const metrics_;
  std::unique_ptr<Executor> executor_;
  std::atomic<int> inline_running_{0};
  mutable std::mutex mu_;
  std::map<std::string, Entry> entries_;
};

}  // namespace ihip::attention
