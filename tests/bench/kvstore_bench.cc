// kvstore_bench: the kvstore's own numbers (issue: ring round trip p50/p99 between two processes,
// append throughput into the populated pool, pool population time, spill and fetch-back
// throughput through RocksDB next to the disk's direct-I/O bandwidth measured in the same run).
// Prints a markdown table and writes JSON; never asserts a time.

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "kvstore/disk_tier.h"
#include "kvstore/kv_store_client.h"
#include "kvstore/shm_segment.h"
#include "kvstore/store.h"
#include "kvstore/store_server.h"
#include "tests/bench/bench_util.h"

ABSL_FLAG(double, pool_gib, 2.0, "host tier (shm pool) size, GiB");
ABSL_FLAG(int, round_trips, 100000, "ring round trips timed");
ABSL_FLAG(double, append_gib, 1.5, "bytes appended for the append throughput, GiB");
ABSL_FLAG(double, spill_gib, 2.0, "bytes spilled to / fetched back from RocksDB, GiB");
ABSL_FLAG(std::string, dir, "",
          "directory on the disk under test (default: a temp dir in /var/tmp)");
ABSL_FLAG(std::string, json, "", "write the results as JSON here");
ABSL_FLAG(std::string, git_commit, "", "commit to record (default: ask git)");

namespace {

using namespace ihip;
constexpr uint64_t kPageBytes = 256 << 10;

double Gbps(double bytes, absl::Duration d) { return bytes / absl::ToDoubleSeconds(d) / 1e9; }

// Runs `cmd`, returns dd's reported bytes/s (parsed from its last stderr line), or -1.
double DdBandwidth(const std::string& cmd) {
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (p == nullptr) return -1;
  char line[512];
  std::string last;
  while (fgets(line, sizeof(line), p) != nullptr) last = line;
  pclose(p);
  // "N bytes (…) copied, 1.234 s, 812 MB/s" — use bytes and seconds for precision.
  long long bytes = 0;
  double secs = 0;
  if (sscanf(last.c_str(), "%lld bytes", &bytes) != 1) return -1;
  const size_t copied = last.find("copied, ");
  if (copied == std::string::npos || sscanf(last.c_str() + copied + 8, "%lf s", &secs) != 1) {
    return -1;
  }
  return secs > 0 ? double(bytes) / secs : -1;
}

bool DropPageCache() {
  sync();
  FILE* f = fopen("/proc/sys/vm/drop_caches", "w");
  if (f == nullptr) return false;
  const bool ok = fputs("1\n", f) >= 0;
  return fclose(f) == 0 && ok;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const bench::RunInfo info = bench::CollectRunInfo(argc, argv, absl::GetFlag(FLAGS_git_commit),
                                                    {"kvstore", "tests/bench"});
  std::string dir = absl::GetFlag(FLAGS_dir);
  bool own_dir = false;
  if (dir.empty()) {
    char tmpl[] = "/var/tmp/ihip-kvstore-bench-XXXXXX";
    if (mkdtemp(tmpl) == nullptr) return 2;
    dir = tmpl;
    own_dir = true;
  }
  const std::string shm = absl::StrCat("/ihip-bench-", getpid());
  bench::JsonWriter json;
  json.BeginObject().Key("run");
  bench::WriteRunInfo(info, json);
  std::vector<std::pair<std::string, std::string>> rows;

  // 1. Pool population at start.
  kvstore::SegmentOptions so;
  so.name = shm;
  so.pool_bytes =
      uint64_t(absl::GetFlag(FLAGS_pool_gib) * double(1ull << 30)) / kPageBytes * kPageBytes;
  so.slot_bytes = kPageBytes;
  auto seg = kvstore::ShmSegment::Create(so);
  if (!seg.ok()) {
    std::fprintf(stderr, "%s\n", seg.status().ToString().c_str());
    return 1;
  }
  const double populate_gbps = double(so.pool_bytes) / (*seg)->populate_seconds() / 1e9;
  rows.push_back(
      {"pool population at start",
       absl::StrFormat("%.2f s for %.1f GiB (%.2f GB/s, %d threads)", (*seg)->populate_seconds(),
                       double(so.pool_bytes) / (1 << 30), populate_gbps, so.populate_threads)});
  json.Key("populate_seconds").Number((*seg)->populate_seconds());
  json.Key("populate_gbps").Number(populate_gbps);

  // 2. Ring round trip between two processes: the server runs in a child.
  const std::string disk_path = dir + "/rocksdb";
  {
    const pid_t child = fork();
    if (child == 0) {
      kvstore::Store store(kvstore::StoreOptions{}, seg->get(), nullptr);
      kvstore::StoreServer server({}, seg->get(), &store);
      server.Start();
      pause();  // until the parent kills us
      _exit(0);
    }
    seg->get()->header();  // the parent keeps its mapping for the client
    kvstore::KvStoreClientOptions co;
    co.segment_name = shm;
    absl::StatusOr<std::unique_ptr<kvstore::KvStoreClient>> client;
    absl::Duration attach_time;
    for (int i = 0; i < 200; ++i) {  // wait for the child to serve
      const absl::Time a = absl::Now();
      client = kvstore::KvStoreClient::Attach(co);
      attach_time = absl::Now() - a;
      if (client.ok()) break;
      absl::SleepFor(absl::Milliseconds(10));
    }
    if (!client.ok()) {
      std::fprintf(stderr, "attach: %s\n", client.status().ToString().c_str());
      kill(child, SIGKILL);
      return 1;
    }
    auto handle = (*client)->CreateSequence("rt", 1, kPageBytes, 64, "");
    uint64_t first = 0;
    std::vector<std::byte*> pages;
    absl::Status s = (*client)->Allocate(*handle, 0, 1, &first, &pages);
    const int n = absl::GetFlag(FLAGS_round_trips);
    std::vector<double> us;
    us.reserve(n);
    bench::Progress prog("ring round trips");
    for (int i = 0; i < n && s.ok(); ++i) {
      const absl::Time t0 = absl::Now();
      s = (*client)->Commit(*handle, 0, 0);  // a no-op commit: the ring and nothing else
      us.push_back(absl::ToDoubleMicroseconds(absl::Now() - t0));
      if (i % 1000 == 0) prog.Update(double(i) / n);
    }
    prog.Done();
    // Append throughput into the populated pool: allocate 64 pages, fill, commit.
    std::vector<std::byte> src(kPageBytes * 64);
    std::mt19937_64 rng(1);
    for (size_t i = 0; i < src.size(); i += 8) {
      const uint64_t r = rng();
      std::memcpy(src.data() + i, &r, 8);
    }
    const uint64_t append_bytes = std::min<uint64_t>(
        uint64_t(absl::GetFlag(FLAGS_append_gib) * double(1ull << 30)), so.pool_bytes * 8 / 10);
    auto ah = (*client)->CreateSequence("append", 1, kPageBytes, 64, "");
    uint64_t appended = 0, length = 0;
    const absl::Time a0 = absl::Now();
    while (s.ok() && ah.ok() && appended + src.size() <= append_bytes) {
      s = (*client)->Allocate(*ah, 0, 64, &first, &pages);
      for (size_t i = 0; s.ok() && i < pages.size(); ++i) {
        std::memcpy(pages[i], src.data() + i * kPageBytes, kPageBytes);
      }
      length += 64 * 64;
      if (s.ok()) s = (*client)->Commit(*ah, 0, length);
      appended += src.size();
    }
    const absl::Duration append_time = absl::Now() - a0;
    client->reset();
    kill(child, SIGKILL);
    waitpid(child, nullptr, 0);
    if (!s.ok()) {
      std::fprintf(stderr, "ring/append: %s\n", s.ToString().c_str());
      return 1;
    }
    const bench::Stats st = bench::Summarize(us);
    std::vector<double> sorted = us;
    std::sort(sorted.begin(), sorted.end());
    const double p99 = sorted[size_t(0.99 * double(sorted.size() - 1))];
    rows.push_back({"ring round trip (2 processes)",
                    absl::StrFormat("p50 %.2f us, p90 %.2f us, p99 %.2f us over %d", st.median,
                                    st.p90, p99, n)});
    rows.push_back({"client attach (maps the segment, MAP_POPULATE)",
                    absl::StrFormat("%.3f s for %.1f GiB", absl::ToDoubleSeconds(attach_time),
                                    double(so.pool_bytes) / (1 << 30))});
    json.Key("attach_seconds").Number(absl::ToDoubleSeconds(attach_time));
    rows.push_back(
        {"append into the populated pool",
         absl::StrFormat("%.2f GB/s (%.2f GiB: allocate 64 pages over the ring, memcpy from one "
                         "16 MiB source, commit)",
                         Gbps(double(appended), append_time), double(appended) / (1 << 30))});
    json.Key("ring_round_trip_us").BeginObject();
    json.Key("p50").Number(st.median).Key("p90").Number(st.p90).Key("p99").Number(p99);
    json.Key("count").Int(n).EndObject();
    json.Key("append_gbps").Number(Gbps(double(appended), append_time));
  }
  seg->reset();

  // 3. Spill and fetch-back through RocksDB on `dir`, next to dd's direct-I/O bandwidth there.
  {
    kvstore::SegmentOptions so2 = so;
    so2.name = shm + "-spill";
    auto seg2 = kvstore::ShmSegment::Create(so2);
    kvstore::DiskTierOptions dopt;
    dopt.path = disk_path;
    auto disk = kvstore::DiskTier::Open(dopt);
    if (!seg2.ok() || !disk.ok()) {
      std::fprintf(stderr, "spill setup failed\n");
      return 1;
    }
    kvstore::Store store(kvstore::StoreOptions{}, seg2->get(), disk->get());
    auto h =
        store.CreateSequence("spill", kvstore::SequenceSpec{1, kPageBytes, 64, 0, {}, 0, 0}, "");
    const uint64_t pages =
        uint64_t(absl::GetFlag(FLAGS_spill_gib) * double(1ull << 30)) / kPageBytes;
    std::vector<uint64_t> slots;
    std::mt19937_64 rng(2);
    bench::Progress prog("filling + spilling");
    const absl::Time s0 = absl::Now();
    uint64_t spilled_before = store.Stats().spill_bytes;
    for (uint64_t i = 0; i < pages; ++i) {
      auto first = store.Allocate(0, *h, 0, 1, &slots);
      if (!first.ok()) {
        std::fprintf(stderr, "allocate: %s\n", first.status().ToString().c_str());
        return 1;
      }
      auto* p = reinterpret_cast<uint64_t*>(seg2->get()->slot_data(slots[0]));
      for (size_t w = 0; w < kPageBytes / 8; w += 512) p[w] = rng();
      (void)store.Commit(*h, 0, (i + 1) * 64);
      (void)store.Unpin(0, *h, 0, *first, 1);
      if (i % 256 == 0) prog.Update(double(i) / pages);
    }
    // Everything idle goes to disk: the spill throughput is bytes written / time, until the
    // last memtable is in blob files.
    absl::Status suspended = store.SuspendSequence(*h);
    if (suspended.ok()) suspended = (*disk)->Flush();
    if (!suspended.ok()) {
      std::fprintf(stderr, "suspend: %s\n", suspended.ToString().c_str());
      return 1;
    }
    const absl::Duration spill_time = absl::Now() - s0;
    prog.Done();
    const uint64_t spilled = store.Stats().spill_bytes - spilled_before;
    const bool dropped = DropPageCache();
    // Fetch back runs of 64 pages (one layer's range, as the engine pins), runs in random order.
    constexpr uint64_t kRun = 64;
    std::vector<uint64_t> order(pages / kRun);
    for (uint64_t i = 0; i < order.size(); ++i) order[i] = i * kRun;
    std::shuffle(order.begin(), order.end(), rng);
    const uint64_t fetch_runs =
        std::min<uint64_t>(order.size(), so.pool_bytes / kPageBytes * 7 / 10 / kRun);
    const uint64_t fetch_pages = fetch_runs * kRun;
    const absl::Time f0 = absl::Now();
    for (uint64_t i = 0; i < fetch_runs; ++i) {
      absl::Status ps = store.Pin(0, *h, 0, order[i], kRun, &slots);
      if (!ps.ok()) {
        std::fprintf(stderr, "pin: %s\n", ps.ToString().c_str());
        return 1;
      }
    }
    const absl::Duration fetch_time = absl::Now() - f0;
    const double spill_gbps = Gbps(double(spilled), spill_time);
    const double fetch_gbps = Gbps(double(fetch_pages * kPageBytes), fetch_time);
    disk->reset();
    // The disk's own direct-I/O bandwidth, same directory.
    const std::string f = dir + "/dd.bin";
    const int mib = int(std::min<uint64_t>(pages * kPageBytes >> 20, 2048));
    const double dd_write =
        DdBandwidth(absl::StrCat("dd if=/dev/zero of=", f, " bs=1M count=", mib, " oflag=direct"));
    const double dd_read =
        DdBandwidth(absl::StrCat("dd if=", f, " of=/dev/null bs=1M iflag=direct"));
    std::remove(f.c_str());
    rows.push_back(
        {"disk direct I/O (dd, same dir)",
         absl::StrFormat("write %.2f GB/s, read %.2f GB/s", dd_write / 1e9, dd_read / 1e9)});
    rows.push_back(
        {"spill through RocksDB",
         absl::StrFormat("%.2f GB/s (%.0f%% of dd write; %.2f GiB, includes filling, until flushed)", spill_gbps,
                         100 * spill_gbps * 1e9 / dd_write, double(spilled) / (1 << 30))});
    rows.push_back(
        {"fetch-back through RocksDB",
         absl::StrFormat(
             "%.2f GB/s (%.0f%% of dd read; runs of 64 pages in random order, page cache %s)",
             fetch_gbps, 100 * fetch_gbps * 1e9 / dd_read,
             dropped ? "dropped first" : "NOT dropped (not root)")});
    json.Key("dd_write_gbps").Number(dd_write / 1e9).Key("dd_read_gbps").Number(dd_read / 1e9);
    json.Key("spill_gbps").Number(spill_gbps).Key("fetch_back_gbps").Number(fetch_gbps);
    json.Key("page_cache_dropped").Bool(dropped);
  }
  json.EndObject();
  if (own_dir) std::filesystem::remove_all(dir);

  std::printf("| measure | result |\n|---|---|\n");
  for (const auto& [k, v] : rows) std::printf("| %s | %s |\n", k.c_str(), v.c_str());
  const std::string path = absl::GetFlag(FLAGS_json);
  if (!path.empty() && !bench::WriteFile(path, json.str() + "\n")) return 1;
  return 0;
}
