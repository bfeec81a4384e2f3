#include "services/cli/attention_client.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "services/common/status_util.h"

namespace ihip::cli {
namespace {

// Larger than any message the CLI sends or expects (chunks are capped well below it).
constexpr int kMaxMessageBytes = 64 << 20;

}  // namespace

absl::Status RpcError(const std::string& rpc, const grpc::Status& s, const std::string& address) {
  const absl::Status a = services::FromGrpc(s);
  if (a.ok()) return a;
  std::string msg = absl::StrCat(rpc, " failed: ", absl::StatusCodeToString(a.code()), ": ",
                                 std::string(a.message()));
  if (a.code() == absl::StatusCode::kUnavailable) {
    absl::StrAppend(&msg, " (is ihip-server running at ", address, "? see --server)");
  } else if (a.code() == absl::StatusCode::kDeadlineExceeded) {
    absl::StrAppend(&msg, " (raise --deadline_s for long calls)");
  } else if (a.code() == absl::StatusCode::kResourceExhausted &&
             s.error_message().find("message larger") != std::string::npos) {
    absl::StrAppend(&msg, " (lower --chunk_kib)");
  }
  return absl::Status(a.code(), msg);
}

AttentionClient::AttentionClient(const std::string& address, absl::Duration deadline)
    : address_(address), deadline_(deadline) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxMessageBytes);
  args.SetMaxSendMessageSize(kMaxMessageBytes);
  channel_ = grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
  stub_ = v1::Attention::NewStub(channel_);
}

void AttentionClient::Prepare(grpc::ClientContext* context) const {
  context->set_deadline(std::chrono::system_clock::now() +
                        std::chrono::microseconds(absl::ToInt64Microseconds(deadline_)));
}

absl::StatusOr<v1::SequenceInfo> AttentionClient::CreateSequence(
    const v1::CreateSequenceRequest& request) {
  grpc::ClientContext ctx;
  Prepare(&ctx);
  v1::SequenceInfo info;
  grpc::Status s = stub_->CreateSequence(&ctx, request, &info);
  if (!s.ok()) return RpcError("CreateSequence", s, address_);
  return info;
}

absl::StatusOr<v1::SequenceInfo> AttentionClient::GetSequence(const std::string& id) {
  grpc::ClientContext ctx;
  Prepare(&ctx);
  v1::GetSequenceRequest req;
  req.set_sequence_id(id);
  v1::SequenceInfo info;
  grpc::Status s = stub_->GetSequence(&ctx, req, &info);
  if (!s.ok()) return RpcError("GetSequence", s, address_);
  return info;
}

absl::StatusOr<std::vector<v1::SequenceInfo>> AttentionClient::ListSequences() {
  std::vector<v1::SequenceInfo> all;
  v1::ListSequencesRequest req;
  for (int page = 0; page < 1000000; ++page) {
    grpc::ClientContext ctx;
    Prepare(&ctx);
    v1::ListSequencesResponse resp;
    grpc::Status s = stub_->ListSequences(&ctx, req, &resp);
    if (!s.ok()) return RpcError("ListSequences", s, address_);
    for (v1::SequenceInfo& info : *resp.mutable_sequences()) all.push_back(std::move(info));
    if (resp.next_page_token().empty()) return all;
    if (resp.next_page_token() == req.page_token()) {
      return absl::InternalError("ListSequences returned the same page token twice");
    }
    req.set_page_token(resp.next_page_token());
  }
  return absl::InternalError("ListSequences: too many pages");
}

absl::Status AttentionClient::ReleaseSequence(const std::string& id) {
  grpc::ClientContext ctx;
  Prepare(&ctx);
  v1::ReleaseSequenceRequest req;
  req.set_sequence_id(id);
  v1::ReleaseSequenceResponse resp;
  return RpcError("ReleaseSequence", stub_->ReleaseSequence(&ctx, req, &resp), address_);
}

absl::Status AttentionClient::SuspendSequence(const std::string& id) {
  grpc::ClientContext ctx;
  Prepare(&ctx);
  v1::SuspendSequenceRequest req;
  req.set_sequence_id(id);
  v1::SuspendSequenceResponse resp;
  return RpcError("SuspendSequence", stub_->SuspendSequence(&ctx, req, &resp), address_);
}

absl::StatusOr<v1::AttendResponse> AttentionClient::Attend(const v1::AttendRequest& request) {
  grpc::ClientContext ctx;
  Prepare(&ctx);
  v1::AttendResponse resp;
  grpc::Status s = stub_->Attend(&ctx, request, &resp);
  if (!s.ok()) return RpcError("Attend", s, address_);
  return resp;
}

absl::StatusOr<v1::AppendKVResponse> AttentionClient::AppendKv(
    const std::string& id, int layer, uint64_t position, const KvSpan& kv, size_t chunk_bytes,
    const std::function<void(double)>& progress) {
  const int64_t per_chunk =
      std::max<int64_t>(1, int64_t(chunk_bytes / std::max<size_t>(1, 2 * kv.row_bytes)));
  grpc::ClientContext ctx;
  Prepare(&ctx);
  v1::AppendKVResponse resp;
  std::unique_ptr<grpc::ClientWriter<v1::AppendKVChunk>> writer = stub_->AppendKV(&ctx, &resp);
  v1::AppendKVChunk chunk;
  chunk.set_sequence_id(id);
  chunk.set_layer(uint32_t(layer));
  for (int64_t t = 0; t < kv.num_tokens; t += per_chunk) {
    const int64_t n = std::min(per_chunk, kv.num_tokens - t);
    chunk.set_position(position + uint64_t(t));
    chunk.set_num_tokens(uint32_t(n));
    chunk.set_k(kv.k + t * kv.row_bytes, size_t(n) * kv.row_bytes);
    chunk.set_v(kv.v + t * kv.row_bytes, size_t(n) * kv.row_bytes);
    // A failed write means the server ended the call; Finish() has its status.
    if (!writer->Write(chunk)) break;
    if (progress) progress(double(t + n) / double(kv.num_tokens));
  }
  writer->WritesDone();
  grpc::Status s = writer->Finish();
  if (!s.ok()) return RpcError("AppendKV", s, address_);
  return resp;
}

std::unique_ptr<AttentionClient::Stream> AttentionClient::OpenAttendStream() {
  auto stream = std::unique_ptr<Stream>(new Stream());
  stream->context_ = std::make_unique<grpc::ClientContext>();
  Prepare(stream->context_.get());
  stream->rw_ = stub_->AttendStream(stream->context_.get());
  stream->address_ = address_;
  return stream;
}

absl::StatusOr<v1::AttendResponse> AttentionClient::Stream::Step(const v1::AttendRequest& request) {
  if (rw_ == nullptr) return absl::FailedPreconditionError("AttendStream: the call has ended");
  v1::AttendResponse resp;
  if (!rw_->Write(request) || !rw_->Read(&resp)) {
    rw_->WritesDone();
    grpc::Status s = rw_->Finish();
    if (s.ok()) s = grpc::Status(grpc::StatusCode::INTERNAL, "stream ended without a response");
    rw_.reset();
    return RpcError("AttendStream", s, address_);
  }
  return resp;
}

absl::Status AttentionClient::Stream::Finish() {
  if (rw_ == nullptr) return absl::OkStatus();  // already finished by a failed Step
  rw_->WritesDone();
  grpc::Status s = rw_->Finish();
  rw_.reset();
  return RpcError("AttendStream", s, address_);
}

}  // namespace ihip::cli
