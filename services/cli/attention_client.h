#pragma once

// AttentionClient: the CLI's synchronous client of ihip.v1.Attention. Every call has a deadline
// and returns an absl::Status whose code is the RPC's gRPC code and whose message names the RPC
// ("CreateSequence: NOT_FOUND ..."), plus a hint where the cause is likely local (no server at
// the address). Not thread-safe: one CLI command, one thread.

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "ihip/v1/attention.grpc.pb.h"

namespace ihip::cli {

// K and V of `num_tokens` consecutive tokens of one layer, [T, Hkv, D] each in the wire dtype.
struct KvSpan {
  const std::byte* k = nullptr;
  const std::byte* v = nullptr;
  int64_t num_tokens = 0;
  size_t row_bytes = 0;  // bytes of one token's k (= of its v)
};

class AttentionClient {
 public:
  // `address` is host:port; `deadline` applies to each unary call and to each whole stream.
  AttentionClient(const std::string& address, absl::Duration deadline);

  absl::StatusOr<v1::SequenceInfo> CreateSequence(const v1::CreateSequenceRequest& request);
  absl::StatusOr<v1::SequenceInfo> GetSequence(const std::string& id);
  // Every sequence (follows next_page_token).
  absl::StatusOr<std::vector<v1::SequenceInfo>> ListSequences();
  absl::Status ReleaseSequence(const std::string& id);
  absl::Status SuspendSequence(const std::string& id);
  absl::StatusOr<v1::AttendResponse> Attend(const v1::AttendRequest& request);

  // Streams `kv` into (id, layer) from `position` through one AppendKV stream, in chunks of at
  // most `chunk_bytes` of K + V. `progress` (optional) gets the fraction sent after each chunk.
  absl::StatusOr<v1::AppendKVResponse> AppendKv(const std::string& id, int layer, uint64_t position,
                                                const KvSpan& kv, size_t chunk_bytes,
                                                const std::function<void(double)>& progress = {});

  // One AttendStream call: Step() writes a request and waits for its response.
  class Stream {
   public:
    absl::StatusOr<v1::AttendResponse> Step(const v1::AttendRequest& request);
    // Half-closes and returns the call's final status.
    absl::Status Finish();

   private:
    friend class AttentionClient;
    std::unique_ptr<grpc::ClientContext> context_;
    std::unique_ptr<grpc::ClientReaderWriter<v1::AttendRequest, v1::AttendResponse>> rw_;
    std::string address_;
  };
  std::unique_ptr<Stream> OpenAttendStream();

  const std::string& address() const { return address_; }

 private:
  void Prepare(grpc::ClientContext* context) const;

  std::string address_;
  absl::Duration deadline_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Attention::Stub> stub_;
};

// The RPC's status as an absl::Status: same code, message "<rpc>: <message>" plus a hint.
absl::Status RpcError(const std::string& rpc, const grpc::Status& s, const std::string& address);

}  // namespace ihip::cli
