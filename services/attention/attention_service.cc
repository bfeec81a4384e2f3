#include "services/attention/attention_service.h"

#include <atomic>
#include <cctype>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "services/attention/conversions.h"
#include "services/common/log.h"
#include "services/common/status_util.h"

namespace ihip::attention {
namespace {

constexpr char kLog[] = "ihip-server";
using ihip::v1::AttendRequest;
using ihip::v1::AttendResponse;

std::string NewSequenceId() {
  static std::mt19937_64 rng{std::random_device{}()};
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  char buf[24];
  std::snprintf(buf, sizeof(buf), "seq-%016llx", static_cast<unsigned long long>(rng()));
  return buf;
}

absl::Time DeadlineOf(grpc::CallbackServerContext* ctx) {
  const auto d = ctx->deadline();
  if (d == std::chrono::system_clock::time_point::max()) return absl::InfiniteFuture();
  return absl::FromChrono(d);
}

void SetTiming(AttendResponse* resp, absl::Duration queue, absl::Duration engine,
               absl::Duration total) {
  auto us = [](absl::Duration d) { return uint64_t(absl::ToInt64Microseconds(d)); };
  resp->mutable_timing()->set_queue_us(us(queue));
  resp->mutable_timing()->set_engine_us(us(engine));
  resp->mutable_timing()->set_total_us(us(total));
}

absl::Status Annotate(const absl::Status& s, const std::string& where) {
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat(where, ": ", s.message()));
}

// Unary reactor that records cancellation for the engine.
class UnaryReactor : public grpc::ServerUnaryReactor {
 public:
  void OnCancel() override { cancelled.store(true); }
  void OnDone() override { delete this; }
  std::atomic<bool> cancelled{false};
};

}  // namespace

AttentionService::AttentionService(const AttentionServiceOptions& options, engine::Engine* engine,
                                   ServerMetrics* metrics)
    : options_(options),
      engine_(engine),
      metrics_(metrics),
      executor_(
          std::make_unique<Executor>(options.workers, metrics->queue_length, metrics->running)) {}

AttentionService::~AttentionService() { executor_.reset(); }

bool AttentionService::TryInline(const ihip::v1::AttendRequest& req) {
  if (options_.inline_stream_slots <= 0) return false;
  size_t bytes = 0;
  for (const auto& item : req.items()) bytes += item.q().size() + item.k().size() + item.v().size();
  if (bytes > options_.inline_max_bytes) return false;
  int running = inline_running_.load();
  do {
    if (running >= options_.inline_stream_slots) return false;
  } while (!inline_running_.compare_exchange_weak(running, running + 1));
  if (metrics_->running != nullptr) metrics_->running->Increment();
  return true;
}

void AttentionService::EndInline() {
  if (metrics_->running != nullptr) metrics_->running->Decrement();
  inline_running_.fetch_sub(1);
}

size_t AttentionService::sequences() const {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_.size();
}

int AttentionService::Recover(const std::vector<std::string>& ids, engine::PageStore* store) {
  int recovered = 0;
  for (const std::string& id : ids) {
    auto stored = store->OpenSequence(id);
    ihip::v1::CreateSequenceRequest req;
    absl::Status s = stored.status();
    if (s.ok() && !req.ParseFromString(stored->metadata)) {
      s = absl::DataLossError("its metadata is not a CreateSequenceRequest");
    }
    absl::StatusOr<engine::ModelSpec> model;
    absl::StatusOr<engine::HipConfig> config;
    if (s.ok()) model = ModelSpecFromProto(req.model(), options_.default_max_context);
    if (s.ok()) s = model.status();
    if (s.ok()) config = HipConfigFromProto(req.config(), model->num_layers);
    if (s.ok()) s = config.status();
    if (s.ok()) s = engine_->RecoverSequence(id, *model, *config);
    if (!s.ok()) {
      services::LogWarning(kLog, "sequence '", id, "' not recovered: ", s.ToString());
      continue;
    }
    std::lock_guard<std::mutex> lock(mu_);
    entries_[id] = Entry{req, *model, false};
    ++recovered;
  }
  metrics_->active_sequences->Set(double(sequences()));
  return recovered;
}

void AttentionService::DropLost(const std::vector<std::string>& lost) {
  for (const std::string& id : lost) {
    (void)engine_->ReleaseSequence(id);  // the store no longer has it: only the engine's state
    std::lock_guard<std::mutex> lock(mu_);
    entries_.erase(id);
    metrics_->active_sequences->Set(double(entries_.size()));
    services::LogWarning(kLog, "sequence '", id, "' is gone from the restarted kvstore");
  }
}

grpc::ServerUnaryReactor* AttentionService::Unary(grpc::CallbackServerContext* ctx,
                                                  const char* method,
                                                  std::function<absl::Status()> work) {
  auto* reactor = new UnaryReactor();
  const absl::Time t0 = absl::Now();
  executor_->Submit([this, reactor, method, work = std::move(work), t0] {
    const absl::Time t1 = absl::Now();
    absl::Status s = reactor->cancelled.load() ? absl::CancelledError("cancelled") : work();
    const absl::Time t2 = absl::Now();
    if (!s.ok() && s.code() != absl::StatusCode::kNotFound) {
      services::LogWarning(kLog, method, ": ", s.ToString());
    }
    metrics_->OnRequest(method, s.code(), t1 - t0, t2 - t1, t2 - t0);
    reactor->Finish(services::ToGrpc(s));
  });
  return reactor;
}

absl::StatusOr<engine::ModelSpec> AttentionService::Model(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(id);
  if (it == entries_.end())
    return absl::NotFoundError(absl::StrCat("sequence '", id, "' not found"));
  return it->second.model;
}

void AttentionService::MarkUsed(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  if (auto it = entries_.find(id); it != entries_.end()) it->second.suspended = false;
}

absl::Status AttentionService::FillInfo(const std::string& id, ihip::v1::SequenceInfo* info) {
  auto seq = engine_->GetSequence(id);
  if (!seq.ok()) return seq.status();
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(id);
  if (it == entries_.end())
    return absl::NotFoundError(absl::StrCat("sequence '", id, "' not found"));
  info->set_sequence_id(id);
  *info->mutable_model() = ModelSpecToProto(it->second.model);
  *info->mutable_config() = it->second.request.config();
  uint64_t tokens = 0;
  for (int64_t len : seq->layer_lengths) {
    info->add_layer_lengths(uint64_t(len));
    tokens += uint64_t(len);
  }
  info->set_state(it->second.suspended ? ihip::v1::SequenceInfo::STATE_SUSPENDED
                                       : ihip::v1::SequenceInfo::STATE_ACTIVE);
  const engine::ModelSpec& m = it->second.model;
  info->set_kv_bytes(tokens * 2 * uint64_t(m.num_kv_heads) * uint64_t(m.head_dim) *
                     engine::DTypeSize(m.kv_dtype));
  return absl::OkStatus();
}

absl::Status AttentionService::DoCreate(const ihip::v1::CreateSequenceRequest& in,
                                        ihip::v1::SequenceInfo* info) {
  ihip::v1::CreateSequenceRequest req = in;
  if (req.sequence_id().empty()) req.set_sequence_id(NewSequenceId());
  if (req.sequence_id().size() > 256) {
    return absl::InvalidArgumentError("sequence_id must have at most 256 bytes");
  }
  for (char ch : req.sequence_id()) {
    if (!(std::isalnum(static_cast<unsigned char>(ch)) || ch == '-' || ch == '_' || ch == '.' ||
          ch == ':')) {
      return absl::InvalidArgumentError(
          "sequence_id may contain only letters, digits, '-', '_', '.' and ':'");
    }
  }
  auto model = ModelSpecFromProto(req.model(), options_.default_max_context);
  if (!model.ok()) return model.status();
  auto config = HipConfigFromProto(req.config(), model->num_layers);
  if (!config.ok()) return config.status();
  // Store (and report) the dense layers in effect, not "absent".
  req.mutable_config()->mutable_dense_layers()->clear_layers();
  for (int l : config->dense_layers) req.mutable_config()->mutable_dense_layers()->add_layers(l);
  std::string metadata;
  req.SerializeToString(&metadata);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (entries_.count(req.sequence_id())) {
      return absl::AlreadyExistsError(
          absl::StrCat("sequence '", req.sequence_id(), "' already exists"));
    }
  }
  absl::Status s = engine_->CreateSequence(req.sequence_id(), *model, *config, metadata);
  if (!s.ok()) return s;
  {
    std::lock_guard<std::mutex> lock(mu_);
    entries_[req.sequence_id()] = Entry{req, *model, false};
    metrics_->active_sequences->Set(double(entries_.size()));
  }
  services::LogInfo(kLog, "created sequence '", req.sequence_id(), "' (", model->num_layers,
                    " layers, Hq ", model->num_q_heads, ", Hkv ", model->num_kv_heads, ", D ",
                    model->head_dim, ")");
  return FillInfo(req.sequence_id(), info);
}

grpc::ServerUnaryReactor* AttentionService::CreateSequence(
    grpc::CallbackServerContext* ctx, const ihip::v1::CreateSequenceRequest* req,
    ihip::v1::SequenceInfo* resp) {
  return Unary(ctx, "CreateSequence", [this, req, resp] { return DoCreate(*req, resp); });
}

absl::Status AttentionService::DoAttend(const AttendRequest& req, AttendResponse* resp,
                                        Work* work) {
  resp->set_request_id(req.request_id());
  if (req.items_size() > options_.max_items_per_request) {
    return absl::InvalidArgumentError(absl::StrCat("a request holds at most ",
                                                   options_.max_items_per_request, " items, got ",
                                                   req.items_size()));
  }
  // Validate every item before anything is appended.
  std::map<std::pair<std::string, uint32_t>, int64_t> next;  // expected position per layer
  std::map<std::string, engine::ModelSpec> models;
  for (int i = 0; i < req.items_size(); ++i) {
    const ihip::v1::AttendItem& it = req.items(i);
    const std::string where = absl::StrCat("items[", i, "]");
    if (!models.count(it.sequence_id())) {
      auto m = Model(it.sequence_id());
      if (!m.ok()) return Annotate(m.status(), where);
      models[it.sequence_id()] = *m;
    }
    const engine::ModelSpec& m = models[it.sequence_id()];
    if (it.layer() >= uint32_t(m.num_layers)) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ".layer ", it.layer(), " is out of range [0, ", m.num_layers, ")"));
    }
    if (it.num_tokens() < 1 || it.num_tokens() > uint32_t(options_.max_tokens_per_item)) {
      return absl::InvalidArgumentError(absl::StrCat(where, ".num_tokens must be in [1, ",
                                                     options_.max_tokens_per_item, "], got ",
                                                     it.num_tokens()));
    }
    const size_t es = engine::DTypeSize(m.dtype);
    const size_t q_bytes = size_t(it.num_tokens()) * m.num_q_heads * m.head_dim * es;
    const size_t kv_bytes = size_t(it.num_tokens()) * m.num_kv_heads * m.head_dim * es;
    if (it.q().size() != q_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ".q has ", it.q().size(), " bytes; expected T x Hq x D x ", es, " = ",
                       it.num_tokens(), " x ", m.num_q_heads, " x ", m.head_dim, " x ", es, " = ",
                       q_bytes, " (", engine::DTypeName(m.dtype), ")"));
    }
    if (it.k().size() != kv_bytes || it.v().size() != kv_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ".", it.k().size() != kv_bytes ? "k" : "v", " has ",
                       it.k().size() != kv_bytes ? it.k().size() : it.v().size(),
                       " bytes; expected T x Hkv x D x ", es, " = ", kv_bytes));
    }
    if (it.mode() != ihip::v1::ATTENTION_MODE_UNSPECIFIED &&
        it.mode() != ihip::v1::ATTENTION_MODE_SPARSE &&
        it.mode() != ihip::v1::ATTENTION_MODE_DENSE) {
      return absl::InvalidArgumentError(absl::StrCat(where, ".mode has an unknown value"));
    }
    const auto key = std::make_pair(it.sequence_id(), it.layer());
    if (!next.count(key)) {
      auto info = engine_->GetSequence(it.sequence_id());
      if (!info.ok()) return Annotate(info.status(), where);
      if (it.layer() >= info->layer_lengths.size()) {  // the id was reused meanwhile
        return absl::FailedPreconditionError(
            absl::StrCat(where, ": sequence '", it.sequence_id(), "' changed; retry"));
      }
      next[key] = info->layer_lengths[it.layer()];
    }
    if (int64_t(it.position()) != next[key]) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ".position ", it.position(), " does not follow layer ", it.layer(),
                       " of '", it.sequence_id(), "', which has ", next[key], " tokens"));
    }
    next[key] += it.num_tokens();
    if (next[key] > m.max_context) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": tokens up to ", next[key],
                                                     " exceed the sequence's max_context ",
                                                     m.max_context));
    }
  }
  // Run them. A failure here (capacity, deadline, cancellation) leaves the earlier items applied
  // and this one not; the status names the item.
  for (int i = 0; i < req.items_size(); ++i) {
    const ihip::v1::AttendItem& it = req.items(i);
    const engine::ModelSpec& m = models[it.sequence_id()];
    ihip::v1::AttendResult* result = resp->add_results();
    std::string* o = result->mutable_o();
    o->resize(size_t(it.num_tokens()) * m.num_q_heads * m.head_dim * engine::DTypeSize(m.dtype));
    engine::AttendItem e;
    e.sequence = it.sequence_id();
    e.layer = int(it.layer());
    e.position = int64_t(it.position());
    e.num_tokens = int(it.num_tokens());
    e.q = it.q().data();
    e.k = it.k().data();
    e.v = it.v().data();
    e.out = o->data();
    e.options.mode = it.mode() == ihip::v1::ATTENTION_MODE_DENSE ? engine::AttentionMode::kDense
                                                                 : engine::AttentionMode::kSparse;
    e.options.return_selected = it.return_selected_blocks();
    e.options.deadline = work->deadline;
    e.options.cancelled = work->cancelled;
    engine::AttendResult r;
    const absl::Time t0 = absl::Now();
    absl::Status s = engine_->Attend(e, &r);
    work->engine_time += absl::Now() - t0;
    if (!s.ok()) {
      // Undo the items already applied, newest first: the request changes nothing.
      for (int j = i - 1; j >= 0; --j) {
        const ihip::v1::AttendItem& done = req.items(j);
        absl::Status undo =
            engine_->Truncate(done.sequence_id(), int(done.layer()), int64_t(done.position()));
        if (!undo.ok()) {
          services::LogError(kLog, "could not undo items[", j, "] after items[", i,
                             "] failed: ", undo.ToString());
        }
      }
      resp->clear_results();
      return Annotate(s, absl::StrCat("items[", i, "]"));
    }
    MarkUsed(it.sequence_id());
    metrics_->OnAppend(it.num_tokens());
    metrics_->OnAttend(it.num_tokens(), r.attended_keys, r.refreshed_from_stage,
                       it.num_tokens() == 1 && e.options.mode == engine::AttentionMode::kSparse);
    result->set_refreshed_from_stage(uint32_t(r.refreshed_from_stage));
    result->set_attended_keys(uint64_t(r.attended_keys));
    for (const engine::MaskInfo& mask : r.masks) {
      ihip::v1::SelectedBlocks* sb = result->add_selected_blocks();
      sb->set_query_offset(uint32_t(mask.query_offset));
      sb->set_num_queries(uint32_t(mask.num_queries));
      for (int64_t b : mask.blocks) sb->add_blocks(uint64_t(b));
    }
  }
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* AttentionService::Attend(grpc::CallbackServerContext* ctx,
                                                   const AttendRequest* req, AttendResponse* resp) {
  auto* reactor = new UnaryReactor();
  const absl::Time t0 = absl::Now();
  const absl::Time deadline = DeadlineOf(ctx);
  auto run = [this, reactor, req, resp, t0, deadline] {
    const absl::Time t1 = absl::Now();
    Work work;
    work.cancelled = &reactor->cancelled;
    work.deadline = deadline;
    absl::Status s = DoAttend(*req, resp, &work);
    const absl::Time t2 = absl::Now();
    SetTiming(resp, t1 - t0, work.engine_time, t2 - t0);
    if (!s.ok()) {
      services::LogWarning(kLog, "Attend request ", req->request_id(), ": ", s.ToString());
    }
    metrics_->OnRequest("Attend", s.code(), t1 - t0, work.engine_time, t2 - t0);
    reactor->Finish(services::ToGrpc(s));
  };
  if (TryInline(*req)) {  // a decode step: no hand-off to a worker
    run();
    EndInline();
    return reactor;
  }
  executor_->Submit(std::move(run));
  return reactor;
}

namespace {

// One request at a time per stream, in order: read, compute on the executor, write, read again.
// A failed request ends the stream with its status.
class StreamReactor : public grpc::ServerBidiReactor<AttendRequest, AttendResponse> {
 public:
  StreamReactor(AttentionService* service, grpc::CallbackServerContext* ctx)
      : service_(service), deadline_(DeadlineOf(ctx)) {
    StartRead(&req_);
  }
  void OnReadDone(bool ok) override {
    if (!ok) {  // the client closed its side
      Finish(grpc::Status::OK);
      return;
    }
    const absl::Time t0 = absl::Now();
    AttentionService* const service = service_;
    if (service->TryInline(req_)) {  // a decode step: no hand-off to a worker
      Process(t0);
      service->EndInline();
      return;
    }
    service_->executor().Submit([this, t0] { Process(t0); });
  }
  // Computes req_ and writes its response (or ends the stream with the error).
  void Process(absl::Time t0) {
    const absl::Time t1 = absl::Now();
    resp_.Clear();
    AttentionService::Work work;
    work.cancelled = &cancelled_;
    work.deadline = deadline_;
    absl::Status s = cancelled_.load() ? absl::CancelledError("cancelled")
                                       : service_->DoAttend(req_, &resp_, &work);
    const absl::Time t2 = absl::Now();
    SetTiming(&resp_, t1 - t0, work.engine_time, t2 - t0);
    service_->metrics().OnRequest("AttendStream", s.code(), t1 - t0, work.engine_time, t2 - t0);
    if (!s.ok()) {
      services::LogWarning("ihip-server", "AttendStream request ", req_.request_id(), ": ",
                           s.ToString());
      Finish(services::ToGrpc(s));
      return;
    }
    StartWrite(&resp_);
  }
  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "stream closed"));
      return;
    }
    StartRead(&req_);
  }
  void OnCancel() override { cancelled_.store(true); }
  void OnDone() override { delete this; }

 private:
  AttentionService* const service_;
  const absl::Time deadline_;
  std::atomic<bool> cancelled_{false};
  AttendRequest req_;
  AttendResponse resp_;
};

class AppendReactor : public grpc::ServerReadReactor<ihip::v1::AppendKVChunk> {
 public:
  AppendReactor(AttentionService* service, grpc::CallbackServerContext* ctx,
                ihip::v1::AppendKVResponse* resp)
      : service_(service), deadline_(DeadlineOf(ctx)), resp_(resp), start_(absl::Now()) {
    StartRead(&chunk_);
  }
  void OnReadDone(bool ok) override {
    if (!ok) {  // the client half-closed — or the call was cancelled
      const absl::StatusCode code =
          cancelled_.load() ? absl::StatusCode::kCancelled : absl::StatusCode::kOk;
      service_->metrics().OnRequest("AppendKV", code, absl::ZeroDuration(), engine_time_,
                                    absl::Now() - start_);
      Finish(code == absl::StatusCode::kOk
                 ? grpc::Status::OK
                 : grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
      return;
    }
    service_->executor().Submit([this] {
      AttentionService::Work work;
      work.cancelled = &cancelled_;
      work.deadline = deadline_;
      absl::Status s = cancelled_.load() ? absl::CancelledError("cancelled")
                                         : service_->DoAppend(chunk_, resp_, &work);
      engine_time_ += work.engine_time;
      if (!s.ok()) {
        // Chunks are applied as they arrive: say how much of the stream went in.
        s = absl::Status(s.code(), absl::StrCat(s.message(), " (this chunk appended nothing; ",
                                                resp_->tokens_appended(),
                                                " tokens of earlier chunks of the stream were "
                                                "appended)"));
        service_->metrics().OnRequest("AppendKV", s.code(), absl::ZeroDuration(), engine_time_,
                                      absl::Now() - start_);
        services::LogWarning("ihip-server", "AppendKV: ", s.ToString());
        Finish(services::ToGrpc(s));
        return;
      }
      StartRead(&chunk_);
    });
  }
  void OnCancel() override { cancelled_.store(true); }
  void OnDone() override { delete this; }

 private:
  AttentionService* const service_;
  const absl::Time deadline_;
  ihip::v1::AppendKVResponse* const resp_;
  const absl::Time start_;
  absl::Duration engine_time_;
  std::atomic<bool> cancelled_{false};
  ihip::v1::AppendKVChunk chunk_;
};

}  // namespace

grpc::ServerBidiReactor<AttendRequest, AttendResponse>* AttentionService::AttendStream(
    grpc::CallbackServerContext* ctx) {
  return new StreamReactor(this, ctx);
}

absl::Status AttentionService::DoAppend(const ihip::v1::AppendKVChunk& c,
                                        ihip::v1::AppendKVResponse* resp, Work* work) {
  auto m = Model(c.sequence_id());
  if (!m.ok()) return m.status();
  if (c.layer() >= uint32_t(m->num_layers)) {
    return absl::InvalidArgumentError(
        absl::StrCat("chunk.layer ", c.layer(), " is out of range [0, ", m->num_layers, ")"));
  }
  if (c.num_tokens() < 1 || c.num_tokens() > uint32_t(options_.max_tokens_per_item)) {
    return absl::InvalidArgumentError(absl::StrCat("chunk.num_tokens must be in [1, ",
                                                   options_.max_tokens_per_item, "], got ",
                                                   c.num_tokens()));
  }
  const size_t kv_bytes =
      size_t(c.num_tokens()) * m->num_kv_heads * m->head_dim * engine::DTypeSize(m->dtype);
  if (c.k().size() != kv_bytes || c.v().size() != kv_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "chunk.", c.k().size() != kv_bytes ? "k" : "v", " has ",
        c.k().size() != kv_bytes ? c.k().size() : c.v().size(), " bytes; expected T x Hkv x D x ",
        engine::DTypeSize(m->dtype), " = ", kv_bytes));
  }
  auto info = engine_->GetSequence(c.sequence_id());
  if (!info.ok()) return info.status();
  if (c.layer() >= info->layer_lengths.size()) {
    return absl::FailedPreconditionError(
        absl::StrCat("sequence '", c.sequence_id(), "' changed; retry"));
  }
  if (int64_t(c.position()) != info->layer_lengths[c.layer()]) {
    return absl::InvalidArgumentError(
        absl::StrCat("chunk.position ", c.position(), " does not follow layer ", c.layer(), " of '",
                     c.sequence_id(), "', which has ", info->layer_lengths[c.layer()], " tokens"));
  }
  if (absl::Now() > work->deadline) return absl::DeadlineExceededError("deadline exceeded");
  if (work->cancelled != nullptr && work->cancelled->load())
    return absl::CancelledError("cancelled");
  const absl::Time t0 = absl::Now();
  absl::Status s = engine_->AppendKv(c.sequence_id(), int(c.layer()), int64_t(c.position()),
                                     int(c.num_tokens()), c.k().data(), c.v().data());
  work->engine_time += absl::Now() - t0;
  if (!s.ok()) return s;
  MarkUsed(c.sequence_id());
  metrics_->OnAppend(c.num_tokens());
  resp->set_tokens_appended(resp->tokens_appended() + c.num_tokens());
  info = engine_->GetSequence(c.sequence_id());
  if (info.ok()) {
    resp->clear_layer_lengths();
    for (int64_t len : info->layer_lengths) resp->add_layer_lengths(uint64_t(len));
  }
  return absl::OkStatus();
}

grpc::ServerReadReactor<ihip::v1::AppendKVChunk>* AttentionService::AppendKV(
    grpc::CallbackServerContext* ctx, ihip::v1::AppendKVResponse* resp) {
  return new AppendReactor(this, ctx, resp);
}

grpc::ServerUnaryReactor* AttentionService::GetSequence(grpc::CallbackServerContext* ctx,
                                                        const ihip::v1::GetSequenceRequest* req,
                                                        ihip::v1::SequenceInfo* resp) {
  return Unary(ctx, "GetSequence",
               [this, req, resp] { return FillInfo(req->sequence_id(), resp); });
}

grpc::ServerUnaryReactor* AttentionService::ListSequences(grpc::CallbackServerContext* ctx,
                                                          const ihip::v1::ListSequencesRequest* req,
                                                          ihip::v1::ListSequencesResponse* resp) {
  return Unary(ctx, "ListSequences", [this, req, resp]() -> absl::Status {
    std::vector<std::string> ids;  // in id order, after the page token
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto it = entries_.upper_bound(req->page_token()); it != entries_.end(); ++it) {
        ids.push_back(it->first);
      }
    }
    const size_t limit = req->page_size() == 0 ? ids.size() : req->page_size();
    for (size_t i = 0; i < ids.size() && i < limit; ++i) {
      ihip::v1::SequenceInfo info;
      if (FillInfo(ids[i], &info).ok()) *resp->add_sequences() = std::move(info);
    }
    if (limit < ids.size()) resp->set_next_page_token(ids[limit - 1]);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* AttentionService::ReleaseSequence(
    grpc::CallbackServerContext* ctx, const ihip::v1::ReleaseSequenceRequest* req,
    ihip::v1::ReleaseSequenceResponse* resp) {
  return Unary(ctx, "ReleaseSequence", [this, req]() -> absl::Status {
    absl::Status s = engine_->ReleaseSequence(req->sequence_id());
    std::lock_guard<std::mutex> lock(mu_);
    if (!s.ok() &&
        !(s.code() == absl::StatusCode::kNotFound && entries_.count(req->sequence_id()))) {
      return s;
    }
    entries_.erase(req->sequence_id());
    metrics_->active_sequences->Set(double(entries_.size()));
    services::LogInfo(kLog, "released sequence '", req->sequence_id(), "'");
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* AttentionService::SuspendSequence(
    grpc::CallbackServerContext* ctx, const ihip::v1::SuspendSequenceRequest* req,
    ihip::v1::SuspendSequenceResponse* resp) {
  return Unary(ctx, "SuspendSequence", [this, req]() -> absl::Status {
    absl::Status s = engine_->SuspendSequence(req->sequence_id());
    if (!s.ok()) return s;
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = entries_.find(req->sequence_id()); it != entries_.end()) {
      it->second.suspended = true;
    }
    return absl::OkStatus();
  });
}

}  // namespace ihip::attention
