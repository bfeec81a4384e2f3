// ihip-server: the public InfiniteHiP attention service (DESIGN §1–2). Serves ihip.v1.Attention,
// grpc.health.v1 and reflection on gRPC, /metrics over HTTP. KV lives in ihip-kvstore (attached
// over its admin gRPC, then through the shared-memory segment) or, with --kv_backend=memory, in
// this process. SIGTERM/SIGINT: stop accepting, finish in-flight requests, exit 0.

#include <grpcpp/grpcpp.h>

#include <csignal>
#include <unistd.h>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "engine/cpu/cpu_engine.h"
#ifdef IHIP_HAVE_CUDA_BACKEND
#include "engine/cuda/cuda_engine.h"
#endif
#include "engine/in_memory_page_store.h"
#include "engine/kvstore_page_store.h"
#include "ihip/v1/kvstore.grpc.pb.h"
#include "kvstore/kv_store_client.h"
#include "services/attention/attention_service.h"
#include "services/attention/server_metrics.h"
#include "services/common/grpc_server.h"
#include "services/common/log.h"
#include "services/common/metrics_http_server.h"
#include "services/common/status_util.h"

ABSL_FLAG(std::string, grpc_address, "127.0.0.1:50051", "gRPC listen address");
ABSL_FLAG(std::string, metrics_host, "127.0.0.1", "/metrics listen host");
ABSL_FLAG(int, metrics_port, 9101, "/metrics listen port (0 = any free port)");
ABSL_FLAG(std::string, kv_backend, "kvstore",
          "where KV lives: kvstore (ihip-kvstore at --kvstore_address) or memory (this process; "
          "sequences die with it)");
ABSL_FLAG(std::string, kvstore_address, "127.0.0.1:50052", "ihip-kvstore admin gRPC address");
ABSL_FLAG(std::string, backend, "auto",
          "compute backend: auto (CUDA when a GPU is present, else CPU), cpu, cuda");
ABSL_FLAG(int, threads, 0, "CPU backend threads (0 = all hardware threads)");
ABSL_FLAG(int, cuda_device, 0, "CUDA backend: device ordinal");
ABSL_FLAG(double, max_device_gib, 0,
          "CUDA backend: GPU memory the KV copies may take, GiB (0 = 90% of the free memory)");
ABSL_FLAG(bool, cuda_graphs, true, "CUDA backend: replay captured CUDA graphs for decode steps");
ABSL_FLAG(int, workers, 4, "requests computed at once (the rest queue)");
ABSL_FLAG(int, inline_stream_slots, 2,
          "Attend/AttendStream decode steps (requests <= 64 KiB) computed on gRPC's callback "
          "threads instead of a worker, at most this many at once (saves a thread hand-off per "
          "step; 0 = never)");
ABSL_FLAG(int64_t, default_max_context, int64_t{1} << 22,
          "max_context of sequences created without one");
ABSL_FLAG(int, max_message_mib, 1024,
          "largest gRPC message accepted (q, k, v of a prefill chunk; clients split larger ones)");
ABSL_FLAG(double, memory_capacity_gib, 16.0,
          "--kv_backend=memory: KV bytes this process may hold (RESOURCE_EXHAUSTED beyond)");
ABSL_FLAG(double, idle_unpin_seconds, 30.0,
          "unpin the KV of a (sequence, layer) unused this long, so the kvstore may spill it");

namespace {

constexpr char kName[] = "ihip-server";

int Fail(const absl::Status& s) {
  ihip::services::LogError(kName, "fatal: ", s.ToString());
  return 1;
}

struct Attached {
  std::unique_ptr<ihip::kvstore::KvStoreClient> client;
  std::string segment;
  std::vector<std::string> sequences;  // the kvstore holds them
};

// Attach through the kvstore's admin API (it names the segment), then map the segment.
absl::StatusOr<Attached> AttachKvStore(ihip::v1::KvStore::Stub& admin,
                                       absl::Duration wait = absl::Seconds(2)) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + wait));
  ctx.set_wait_for_ready(true);
  ihip::v1::AttachRequest req;
  req.set_client_name(kName);
  req.set_pid(uint32_t(getpid()));
  ihip::v1::AttachResponse resp;
  grpc::Status gs = admin.Attach(&ctx, req, &resp);
  if (!gs.ok()) {
    return absl::UnavailableError(
        absl::StrCat("ihip-kvstore did not answer Attach: ", gs.error_message()));
  }
  ihip::kvstore::KvStoreClientOptions co;
  co.segment_name = resp.segment_name();
  co.client_name = kName;
  auto client = ihip::kvstore::KvStoreClient::Attach(co);
  if (!client.ok()) return client.status();
  Attached out{std::move(*client), resp.segment_name(), {}};
  grpc::ClientContext lctx;
  lctx.set_deadline(absl::ToChronoTime(absl::Now() + wait));
  ihip::v1::ListKvSequencesResponse list;
  gs = admin.ListSequences(&lctx, {}, &list);
  if (!gs.ok()) return ihip::services::FromGrpc(gs);
  for (const auto& s : list.sequences()) out.sequences.push_back(s.sequence_id());
  return out;
}

// The compute backend: CUDA when asked for (or, with auto, when a GPU is usable), else the CPU.
absl::StatusOr<std::unique_ptr<ihip::engine::Engine>> MakeEngine(
    const std::string& backend, const ihip::engine::cpu::CpuEngineOptions& cpu_opts,
    ihip::engine::PageStore* store) {
#ifdef IHIP_HAVE_CUDA_BACKEND
  if (backend == "cuda" || (backend == "auto" && ihip::engine::cuda::CudaAvailable())) {
    ihip::engine::cuda::CudaEngineOptions opts;
    opts.device = absl::GetFlag(FLAGS_cuda_device);
    opts.max_tokens_per_item = cpu_opts.max_tokens_per_item;
    opts.page_tokens = cpu_opts.page_tokens;
    opts.max_device_gib = absl::GetFlag(FLAGS_max_device_gib);
    opts.use_graphs = absl::GetFlag(FLAGS_cuda_graphs);
    auto made = ihip::engine::cuda::NewCudaEngine(opts, store);
    if (!made.ok()) {
      return absl::Status(made.status().code(),
                          absl::StrCat("--backend=", backend, ": ", made.status().message()));
    }
    ihip::services::LogInfo(kName, "compute backend: CUDA on ",
                      ihip::engine::cuda::DescribeDevice(opts.device));
    return made;
  }
#else
  if (backend == "cuda") {
    return absl::UnimplementedError(
        "--backend=cuda: this ihip-server was built without nvcc (no CUDA backend); use "
        "--backend=cpu or auto");
  }
#endif
  const int threads = cpu_opts.num_threads > 0 ? cpu_opts.num_threads
                                                : int(std::thread::hardware_concurrency());
  ihip::services::LogInfo(kName, "compute backend: CPU, ", threads, " threads",
                    backend == "auto" ? " (no usable GPU)" : "");
  return std::unique_ptr<ihip::engine::Engine>(
      std::make_unique<ihip::engine::cpu::CpuEngine>(cpu_opts, store));
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "ihip-server: the InfiniteHiP long-context attention service.\n"
      "Usage: ihip-server [--flags]; --help lists them.");
  absl::ParseCommandLine(argc, argv);
  ihip::services::BlockTerminationSignals();
  using namespace ihip;

  const std::string backend = absl::GetFlag(FLAGS_backend);
  if (backend != "auto" && backend != "cpu" && backend != "cuda") {
    return Fail(absl::InvalidArgumentError("--backend must be auto, cpu or cuda"));
  }

  auto registry = std::make_shared<prometheus::Registry>();
  attention::ServerMetrics metrics(*registry);
  engine::cpu::CpuEngineOptions engine_opts;
  engine_opts.num_threads = absl::GetFlag(FLAGS_threads);
  metrics.kv_block_tokens->Set(engine_opts.page_tokens);

  // KV: the kvstore (attach: admin gRPC for the segment name, then the shared memory) or memory.
  std::unique_ptr<engine::PageStore> store;
  std::unique_ptr<kvstore::KvStoreClient> kv_client;
  std::unique_ptr<ihip::v1::KvStore::Stub> kv_admin;
  std::vector<std::string> stored_ids;
  const std::string kv_backend = absl::GetFlag(FLAGS_kv_backend);
  if (kv_backend == "memory") {
    store = std::make_unique<engine::InMemoryPageStore>(
        int64_t(absl::GetFlag(FLAGS_memory_capacity_gib) * double(1ull << 30)));
  } else if (kv_backend == "kvstore") {
    kv_admin = ihip::v1::KvStore::NewStub(grpc::CreateChannel(absl::GetFlag(FLAGS_kvstore_address),
                                                              grpc::InsecureChannelCredentials()));
    auto attached = AttachKvStore(*kv_admin, absl::Seconds(10));
    if (!attached.ok()) return Fail(attached.status());
    kv_client = std::move(attached->client);
    stored_ids = attached->sequences;
    store = std::make_unique<engine::KvStorePageStore>(kv_client.get());
    services::LogInfo(kName, "attached to ihip-kvstore segment ", attached->segment);
  } else {
    return Fail(absl::InvalidArgumentError("--kv_backend must be kvstore or memory"));
  }

  auto made = MakeEngine(backend, engine_opts, store.get());
  if (!made.ok()) return Fail(made.status());
  engine::Engine& eng = **made;
  attention::AttentionServiceOptions service_opts;
  service_opts.workers = absl::GetFlag(FLAGS_workers);
  service_opts.inline_stream_slots = absl::GetFlag(FLAGS_inline_stream_slots);
  service_opts.default_max_context = absl::GetFlag(FLAGS_default_max_context);
  service_opts.max_tokens_per_item = engine_opts.max_tokens_per_item;
  service_opts.page_tokens = engine_opts.page_tokens;
  attention::AttentionService service(service_opts, &eng, &metrics);
  if (!stored_ids.empty()) {
    const int n = service.Recover(stored_ids, store.get());
    services::LogInfo(kName, "recovered ", n, " of ", stored_ids.size(),
                      " sequences held by the kvstore");
  }

  auto grpc_server =
      services::StartGrpcServer(absl::GetFlag(FLAGS_grpc_address), {&service},
                                int(std::min(2047, absl::GetFlag(FLAGS_max_message_mib))) << 20);
  if (!grpc_server.ok()) return Fail(grpc_server.status());

  // Housekeeping once a second: unpin idle layers, watch the kvstore, refresh gauges.
  std::mutex mu;
  std::condition_variable cv;
  bool stopping = false;
  std::atomic<bool> engine_failed{false};
  const absl::Duration idle = absl::Seconds(absl::GetFlag(FLAGS_idle_unpin_seconds));
  // The kvstore restarted (or reclaimed us): attach to its new segment, forget the old pins,
  // drop the sequences it no longer holds (it was not durable).
  auto reattach = [&]() -> bool {
    auto attached = AttachKvStore(*kv_admin);
    if (!attached.ok()) {
      services::LogWarning(kName, "kvstore re-attach failed: ", attached.status().ToString());
      return false;
    }
    auto* page_store = static_cast<engine::KvStorePageStore*>(store.get());
    page_store->Reattach(attached->client.get());
    const std::vector<std::string> lost = eng.Resync();
    kv_client = std::move(attached->client);  // the old client goes now, unused
    service.DropLost(lost);
    services::LogInfo(kName, "re-attached to ihip-kvstore segment ", attached->segment, "; ",
                      lost.size(), " sequences lost with its restart");
    return true;
  };
  auto refresh = [&] {
    const engine::EngineStats st = eng.Stats();
    metrics.pinned_layers->Set(double(st.pinned_layers));
    metrics.active_sequences->Set(double(service.sequences()));
    bool up = true;
    if (kv_admin != nullptr) {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
      ihip::v1::KvStoreStats ks;
      up = kv_admin->Stats(&ctx, {}, &ks).ok();
      if (up) {
        metrics.kv_blocks_total->Set(double(ks.pages_total()));
        metrics.kv_blocks_used->Set(double(ks.pages_used()));
        metrics.kv_utilization->Set(ks.pages_total() ? double(ks.pages_used()) / ks.pages_total()
                                                     : 0.0);
        metrics.kv_bytes_host->Set(double(ks.pages_used() * ks.page_bytes()));
        metrics.kv_bytes_disk->Set(double(ks.pages_disk_only() * ks.page_bytes()));
      }
    } else {
      metrics.kv_bytes_host->Set(double(store->BytesUsed()));
    }
    if (up && kv_client != nullptr && !kv_client->connected()) up = reattach();
    metrics.kvstore_up->Set(up ? 1 : 0);
    // A compute backend that failed for good (a sticky CUDA error) cannot recover in this
    // process: stop serving and exit non-zero, so that the orchestrator restarts the server.
    if (const absl::Status health = eng.Health(); !health.ok() && !engine_failed.exchange(true)) {
      metrics.engine_healthy->Set(0);
      ihip::services::LogError(kName, "compute backend failed: ", health.ToString(),
                               "; stopping (exit 1)");
      kill(getpid(), SIGTERM);
    }
    grpc_server->server->GetHealthCheckService()->SetServingStatus(up && !engine_failed.load());
  };
  std::thread housekeeping([&] {
    std::unique_lock<std::mutex> lock(mu);
    while (!cv.wait_for(lock, std::chrono::seconds(1), [&] { return stopping; })) {
      lock.unlock();
      eng.UnpinIdle(idle);
      refresh();
      lock.lock();
    }
  });

  services::MetricsHttpServer metrics_http(registry, nullptr);
  auto metrics_port =
      metrics_http.Start(absl::GetFlag(FLAGS_metrics_host), absl::GetFlag(FLAGS_metrics_port));
  if (!metrics_port.ok()) return Fail(metrics_port.status());
  std::printf("ihip-server ready grpc_port=%d metrics_port=%d\n", grpc_server->port, *metrics_port);
  std::fflush(stdout);
  services::LogInfo(kName, "serving: gRPC port ", grpc_server->port, ", /metrics port ",
                    *metrics_port, ", KV in ", kv_backend);

  const int sig = services::WaitForTerminationSignal();
  services::LogInfo(kName, "signal ", sig, ": draining");
  grpc_server->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(10));
  {
    std::lock_guard<std::mutex> lock(mu);
    stopping = true;
  }
  cv.notify_all();
  housekeeping.join();
  metrics_http.Stop();
  if (engine_failed.load()) return 1;
  services::LogInfo(kName, "stopped cleanly");
  return 0;
}
