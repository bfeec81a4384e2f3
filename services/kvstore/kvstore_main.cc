// ihip-kvstore: owns the bytes of every sequence's KV (DESIGN §4). Creates and populates the
// shared-memory page pool, serves block requests on its rings, spills idle pages to RocksDB and
// brings them back, and answers the ihip.v1.KvStore admin API, grpc.health.v1 and /metrics.
// SIGTERM/SIGINT: stop accepting, finish what is in flight, flush, exit 0.

#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "kvstore/disk_tier.h"
#include "kvstore/shm_segment.h"
#include "kvstore/store.h"
#include "kvstore/store_server.h"
#include "services/common/grpc_server.h"
#include "services/common/log.h"
#include "services/common/metrics_http_server.h"
#include "services/kvstore/kvstore_metrics.h"
#include "services/kvstore/kvstore_service.h"

ABSL_FLAG(std::string, segment_name, "/ihip-kvstore", "POSIX shm name of the page pool");
ABSL_FLAG(double, host_tier_gib, 4.0, "size of the shared-memory page pool (host tier), GiB");
ABSL_FLAG(int, slot_kib, 256,
          "bytes of one page slot, KiB (a sequence's page must fit: 2 x page_tokens x Hkv x D x "
          "dtype bytes; 256 for Llama-3-8B bf16 with 64-token pages)");
ABSL_FLAG(int, max_clients, 16, "client processes that may attach at once");
ABSL_FLAG(int, lease_ms, 10000, "a client silent this long loses its pins");
ABSL_FLAG(int, populate_threads, 2, "threads that touch the pool at start (0 = lazily)");
ABSL_FLAG(std::string, rocksdb_path, "",
          "RocksDB directory of the disk tier; empty = no disk tier (a full pool is "
          "RESOURCE_EXHAUSTED)");
ABSL_FLAG(bool, durable, false,
          "write committed pages and manifests through to RocksDB, so a restarted kvstore "
          "serves the same sequences (needs --rocksdb_path)");
ABSL_FLAG(bool, sync_writes, false, "fsync RocksDB writes (survive power loss, slower)");
ABSL_FLAG(int, rocksdb_background_jobs, 0,
          "RocksDB background threads (0 = one per hardware thread, 2..16): half flush (at "
          "least 2), the rest compact (at least 1); a spill's rate scales with the flush threads");
ABSL_FLAG(int, rocksdb_memtable_mib, 64, "RocksDB memtable size, MiB");
ABSL_FLAG(int, rocksdb_memtables, 0,
          "RocksDB memtables (0 = flush threads + 2); memory held: memtables x memtable size "
          "(10 x 64 MiB on 16 cores)");
ABSL_FLAG(double, high_watermark, 0.90, "pool share above which idle pages spill to disk");
ABSL_FLAG(double, low_watermark, 0.80, "pool share spilling brings usage down to");
ABSL_FLAG(std::string, grpc_address, "127.0.0.1:50052", "admin gRPC listen address");
ABSL_FLAG(std::string, metrics_host, "127.0.0.1", "/metrics listen host");
ABSL_FLAG(int, metrics_port, 9102, "/metrics listen port (0 = any free port)");

namespace {

constexpr char kName[] = "ihip-kvstore";

int Fail(const absl::Status& s) {
  ihip::services::LogError(kName, "fatal: ", s.ToString());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "ihip-kvstore: the InfiniteHiP KV store (host tier in shared memory, disk tier in "
      "RocksDB).\nUsage: ihip-kvstore [--flags]; --help lists them.");
  absl::ParseCommandLine(argc, argv);
  ihip::services::BlockTerminationSignals();
  using namespace ihip;

  kvstore::SegmentOptions seg_opts;
  seg_opts.name = absl::GetFlag(FLAGS_segment_name);
  seg_opts.pool_bytes = uint64_t(absl::GetFlag(FLAGS_host_tier_gib) * double(1ull << 30));
  seg_opts.slot_bytes = uint64_t(absl::GetFlag(FLAGS_slot_kib)) << 10;
  seg_opts.pool_bytes = seg_opts.pool_bytes / seg_opts.slot_bytes * seg_opts.slot_bytes;
  seg_opts.max_clients = uint32_t(absl::GetFlag(FLAGS_max_clients));
  seg_opts.lease = absl::Milliseconds(absl::GetFlag(FLAGS_lease_ms));
  seg_opts.populate_threads = absl::GetFlag(FLAGS_populate_threads);
  kvstore::StoreOptions store_opts;
  store_opts.durable = absl::GetFlag(FLAGS_durable);
  store_opts.high_watermark = absl::GetFlag(FLAGS_high_watermark);
  store_opts.low_watermark = absl::GetFlag(FLAGS_low_watermark);
  const std::string rocksdb_path = absl::GetFlag(FLAGS_rocksdb_path);
  if (absl::Status s = seg_opts.Validate(); !s.ok()) return Fail(s);
  if (absl::Status s = store_opts.Validate(); !s.ok()) return Fail(s);
  if (store_opts.durable && rocksdb_path.empty()) {
    return Fail(absl::InvalidArgumentError("--durable needs --rocksdb_path"));
  }

  std::unique_ptr<kvstore::DiskTier> disk;
  if (!rocksdb_path.empty()) {
    kvstore::DiskTierOptions disk_opts;
    disk_opts.path = rocksdb_path;
    disk_opts.sync = absl::GetFlag(FLAGS_sync_writes);
    disk_opts.background_jobs = absl::GetFlag(FLAGS_rocksdb_background_jobs);
    disk_opts.write_buffer_bytes = uint64_t(std::max(0, absl::GetFlag(FLAGS_rocksdb_memtable_mib)))
                                   << 20;
    disk_opts.memtables = absl::GetFlag(FLAGS_rocksdb_memtables);
    auto opened = kvstore::DiskTier::Open(disk_opts);
    if (!opened.ok()) return Fail(opened.status());
    disk = std::move(*opened);
    services::LogInfo(kName, "disk tier: RocksDB at ", rocksdb_path,
                      store_opts.durable ? " (durable)" : " (cache)");
  }
  services::LogInfo(kName, "creating segment ", seg_opts.name, ": ", seg_opts.pool_bytes >> 20,
                    " MiB pool of ", seg_opts.slot_bytes >> 10, " KiB slots");
  auto segment = kvstore::ShmSegment::Create(seg_opts);
  if (!segment.ok()) return Fail(segment.status());
  services::LogInfo(kName, "pool populated in ", (*segment)->populate_seconds(), " s");

  kvstore::Store store(store_opts, segment->get(), disk.get());
  if (absl::Status s = store.Recover(); !s.ok()) return Fail(s);
  services::LogInfo(kName, "sequences recovered: ", store.Stats().sequences);

  auto registry = std::make_shared<prometheus::Registry>();
  kvstore_service::KvStoreMetrics metrics(*registry);
  metrics.SetPopulateSeconds((*segment)->populate_seconds());
  kvstore::StoreServerOptions ring_opts;
  ring_opts.on_request = [&metrics](kvstore::Op op, absl::StatusCode code, absl::Duration d) {
    metrics.OnRequest(op, code, d);
  };
  ring_opts.on_client = [](uint32_t client, const char* event) {
    services::LogInfo(kName, "client ", client, ": ", event);
  };
  kvstore::StoreServer ring_server(ring_opts, segment->get(), &store);
  ring_server.Start();

  kvstore_service::KvStoreService service(segment->get(), &store, &ring_server, disk.get());
  auto grpc_server = services::StartGrpcServer(absl::GetFlag(FLAGS_grpc_address), {&service});
  if (!grpc_server.ok()) return Fail(grpc_server.status());
  services::MetricsHttpServer metrics_http(registry, [&] {
    metrics.Refresh(store.Stats(), ring_server.attached_clients(), disk.get());
  });
  auto metrics_port =
      metrics_http.Start(absl::GetFlag(FLAGS_metrics_host), absl::GetFlag(FLAGS_metrics_port));
  if (!metrics_port.ok()) return Fail(metrics_port.status());
  // Machine-readable readiness line (tests and scripts parse it).
  std::printf("ihip-kvstore ready grpc_port=%d metrics_port=%d segment=%s\n", grpc_server->port,
              *metrics_port, seg_opts.name.c_str());
  std::fflush(stdout);
  services::LogInfo(kName, "serving: gRPC port ", grpc_server->port, ", /metrics port ",
                    *metrics_port);

  const int sig = services::WaitForTerminationSignal();
  services::LogInfo(kName, "signal ", sig, ": draining");
  grpc_server->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  ring_server.Stop();
  metrics_http.Stop();
  disk.reset();  // flushes RocksDB
  services::LogInfo(kName, "stopped cleanly");
  return 0;
}
