// grpc_floor_bench: the transport floor under ihip-server's AttendStream overhead (issue 4). A
// callback-API bidi stream on loopback TCP that answers each AttendRequest from OnReadDone (no
// engine, no executor hop) with an 8 KiB output, driven by a synchronous client sending a Llama
// decode step's 12 KiB of q/k/v: the round trip any AttendStream step pays before the service
// does anything. Both ends in this process (a lower bound: two processes add context switches).
// Prints a table; --json writes the figures. Never asserts a time.

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "ihip/v1/attention.grpc.pb.h"
#include "tests/bench/bench_util.h"

ABSL_FLAG(int, steps, 3000, "timed round trips per variant");
ABSL_FLAG(int, warmup, 200, "untimed round trips per variant");
ABSL_FLAG(std::string, json, "", "write the results as JSON here");
ABSL_FLAG(std::string, git_commit, "", "commit to record (default: ask git)");

namespace ihip::bench {
namespace {

using v1::AttendRequest;
using v1::AttendResponse;

class EchoService final : public v1::Attention::CallbackService {
 public:
  explicit EchoService(bool hop) : hop_(hop) {}
  grpc::ServerBidiReactor<AttendRequest, AttendResponse>* AttendStream(
      grpc::CallbackServerContext*) override {
    return new Reactor(hop_);
  }

 private:
  class Reactor : public grpc::ServerBidiReactor<AttendRequest, AttendResponse> {
   public:
    explicit Reactor(bool hop) : hop_(hop) { StartRead(&req_); }
    void OnReadDone(bool ok) override {
      if (!ok) {
        Finish(grpc::Status::OK);
        return;
      }
      resp_.Clear();
      resp_.set_request_id(req_.request_id());
      resp_.add_results()->set_o(std::string(8192, 'o'));
      // hop: answer from another thread, as a server handing the work to a worker would.
      if (hop_) {
        std::thread([this] { StartWrite(&resp_); }).detach();
      } else {
        StartWrite(&resp_);
      }
    }
    void OnWriteDone(bool) override { StartRead(&req_); }
    void OnDone() override { delete this; }

   private:
    const bool hop_;
    AttendRequest req_;
    AttendResponse resp_;
  };
  const bool hop_;
};

Stats RoundTrips(bool hop) {
  EchoService service(hop);
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  auto stub = v1::Attention::NewStub(grpc::CreateChannel(absl::StrCat("127.0.0.1:", port),
                                                         grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  auto stream = stub->AttendStream(&ctx);
  AttendRequest req;
  v1::AttendItem* item = req.add_items();
  item->set_q(std::string(8192, 'q'));  // Hq 32 x D 128 x bf16
  item->set_k(std::string(2048, 'k'));  // Hkv 8 x D 128 x bf16
  item->set_v(std::string(2048, 'v'));
  AttendResponse resp;
  std::vector<double> ms;
  const int warmup = absl::GetFlag(FLAGS_warmup), steps = absl::GetFlag(FLAGS_steps);
  for (int i = 0; i < warmup + steps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    req.set_request_id(i);
    if (!stream->Write(req) || !stream->Read(&resp)) break;
    const auto t1 = std::chrono::steady_clock::now();
    if (i >= warmup) ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  stream->WritesDone();
  const grpc::Status st = stream->Finish();
  server->Shutdown();
  if (!st.ok() || int(ms.size()) != steps) {
    std::fprintf(stderr, "grpc_floor_bench: stream failed: %s\n", st.error_message().c_str());
    std::exit(1);
  }
  return Summarize(ms);
}

}  // namespace
}  // namespace ihip::bench

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  using namespace ihip::bench;
  const RunInfo info =
      CollectRunInfo(argc, argv, absl::GetFlag(FLAGS_git_commit), {"tests/bench"});
  const Stats inline_rt = RoundTrips(false);
  const Stats hop_rt = RoundTrips(true);
  std::printf("grpc_floor_bench (%s, %d hardware threads, load %s)\n\n", info.cpu_model.c_str(),
              info.hardware_threads, LoadAverage().c_str());
  std::printf("  %-40s %9s %9s\n", "AttendStream echo round trip", "p50 us", "p90 us");
  std::printf("  %-40s %9.1f %9.1f\n", "answered in OnReadDone", inline_rt.median * 1e3,
              inline_rt.p90 * 1e3);
  std::printf("  %-40s %9.1f %9.1f\n", "answered from another thread", hop_rt.median * 1e3,
              hop_rt.p90 * 1e3);
  if (!absl::GetFlag(FLAGS_json).empty()) {
    JsonWriter j;
    j.BeginObject().Key("run");
    WriteRunInfo(info, j);
    j.Key("inline_p50_us").Number(inline_rt.median * 1e3);
    j.Key("inline_p90_us").Number(inline_rt.p90 * 1e3);
    j.Key("hop_p50_us").Number(hop_rt.median * 1e3).Key("hop_p90_us").Number(hop_rt.p90 * 1e3);
    j.EndObject();
    WriteFile(absl::GetFlag(FLAGS_json), j.str() + "\n");
  }
  return 0;
}
