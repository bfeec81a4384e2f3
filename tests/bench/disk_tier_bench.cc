// Disk-tier benchmark: page spill (DiskTier::Write of many 256 KiB pages) and fetch-back
// (ReadPage in random order, page cache dropped first where allowed) in GB/s, next to the raw
// disk's direct-I/O bandwidth measured with dd in the same directory. Prints a markdown table
// and writes JSON (--json). Never asserts a time.
//
//   disk_tier_bench --gib=4 --dir=/tmp --json=disk_tier_bench.json

#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kvstore/disk_tier.h"

ABSL_FLAG(double, gib, 4.0, "GiB of pages to spill and fetch back");
ABSL_FLAG(std::string, dir, "",
          "parent directory of the run's temp dir (on the disk under test, not tmpfs); "
          "default $TMPDIR, else /tmp");
ABSL_FLAG(int, page_kib, 256, "page size in KiB (Llama-3-8B shape: 256)");
ABSL_FLAG(int, batch_pages, 16, "pages per DiskTier::Write batch");
ABSL_FLAG(int, read_threads, 4, "threads of the parallel fetch-back pass (the first pass is 1)");
ABSL_FLAG(int, dd_mib, 1024, "MiB written and read by dd (0: skip dd)");
ABSL_FLAG(bool, direct, true, "DiskTierOptions direct_reads and direct_writes");
ABSL_FLAG(bool, sync, false, "DiskTierOptions sync");
ABSL_FLAG(bool, wal, true,
          "write-ahead log on for the spill (the store spills without it when not durable)");
ABSL_FLAG(int, jobs, 0, "DiskTierOptions background_jobs (0: automatic)");
ABSL_FLAG(int, write_buffer_mib, 64, "DiskTierOptions write_buffer_bytes, MiB");
ABSL_FLAG(int, memtables, 0, "DiskTierOptions memtables (0: automatic)");
ABSL_FLAG(int, writers, 1, "threads calling Write at once, each on its own share of the pages");
ABSL_FLAG(bool, fetch_back, true, "run the fetch-back passes");
ABSL_FLAG(std::string, rocksdb_log, "",
          "copy RocksDB's info LOG here at the end (flush timings for the notes)");
ABSL_FLAG(std::string, json, "", "write the results as JSON to this path");

namespace ihip::kvstore {
namespace {

using Clock = std::chrono::steady_clock;
double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Drops clean page-cache pages (needs root and a writable /proc/sys). False if not allowed.
bool DropPageCache() {
  sync();
  std::ofstream f("/proc/sys/vm/drop_caches");
  if (!f) return false;
  f << "1\n";
  f.flush();
  return static_cast<bool>(f);
}

// Runs `cmd` (dd) and returns GB/s from its summary line
// "N bytes (...) copied, T s, R GB/s"; negative if it failed or could not be parsed.
double RunDd(const std::string& cmd, std::string* line_out) {
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (p == nullptr) return -1;
  char buf[512];
  std::string line;
  while (fgets(buf, sizeof(buf), p) != nullptr) {
    if (std::strstr(buf, " copied, ") != nullptr) line = buf;
  }
  const int rc = pclose(p);
  if (!line.empty() && line.back() == '\n') line.pop_back();
  *line_out = line;
  unsigned long long bytes = 0;
  double seconds = 0;
  const char* copied = std::strstr(line.c_str(), " copied, ");
  if (rc != 0 || copied == nullptr || std::sscanf(line.c_str(), "%llu", &bytes) != 1 ||
      std::sscanf(copied + 9, "%lf", &seconds) != 1 || seconds <= 0) {
    return -1;
  }
  return bytes / seconds / 1e9;
}

struct DdResult {
  double write_gbps = -1, read_gbps = -1, read_page_gbps = -1;
  std::string write_line, read_line, read_page_line;
};

DdResult MeasureDd(const std::string& dir, int mib) {
  DdResult r;
  const std::string file = dir + "/dd.bin";
  r.write_gbps = RunDd(
      absl::StrCat("dd if=/dev/zero of=", file, " bs=1M count=", mib, " oflag=direct conv=fsync"),
      &r.write_line);
  DropPageCache();
  r.read_gbps =
      RunDd(absl::StrCat("dd if=", file, " of=/dev/null bs=1M iflag=direct"), &r.read_line);
  // Also in page-sized blocks: what one synchronous reader of 256 KiB pieces gets (sequential).
  r.read_page_gbps =
      RunDd(absl::StrCat("dd if=", file, " of=/dev/null bs=256K iflag=direct"), &r.read_page_line);
  std::filesystem::remove(file);
  return r;
}

PageKey KeyOf(uint64_t i) {
  // 32 layers x 4096 pages per sequence: several sequences, page and layer both vary.
  return PageKey{1000 + i / (32 * 4096), static_cast<uint32_t>(i / 4096 % 32),
                 static_cast<uint32_t>(i % 4096)};
}

// Each page is one of a few random buffers with its index stamped in the first 8 bytes, so a
// read-back can be checked without keeping gigabytes of reference data.
void FillPage(const std::vector<std::vector<uint8_t>>& pool, uint64_t i, uint8_t* out,
              size_t bytes) {
  std::memcpy(out, pool[i % pool.size()].data(), bytes);
  std::memcpy(out, &i, sizeof(i));
}

struct ReadPass {
  int threads = 0;
  double seconds = 0;
  double gbps = 0;
  double p50_us = 0, p99_us = 0;  // per ReadPage
  uint64_t errors = 0;
  bool cache_dropped = false;
};

ReadPass FetchBack(DiskTier& tier, const std::vector<std::vector<uint8_t>>& pool, uint64_t pages,
                   size_t page_bytes, int threads, uint64_t seed) {
  ReadPass r;
  r.threads = threads;
  r.cache_dropped = DropPageCache();
  std::vector<uint64_t> order(pages);
  for (uint64_t i = 0; i < pages; ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), std::mt19937_64(seed));
  std::atomic<uint64_t> next{0}, errors{0};
  std::vector<std::vector<double>> lat(threads);
  auto worker = [&](int t) {
    std::vector<uint8_t> buf(page_bytes), want(page_bytes);
    for (uint64_t n; (n = next.fetch_add(1)) < pages;) {
      const uint64_t i = order[n];
      const auto a = Clock::now();
      absl::Status s = tier.ReadPage(KeyOf(i), buf.data(), page_bytes);
      lat[t].push_back(Seconds(a, Clock::now()) * 1e6);
      FillPage(pool, i, want.data(), page_bytes);
      if (!s.ok() || buf != want) ++errors;
    }
  };
  const auto start = Clock::now();
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t) ts.emplace_back(worker, t);
  for (auto& t : ts) t.join();
  r.seconds = Seconds(start, Clock::now());
  r.gbps = pages * page_bytes / r.seconds / 1e9;
  r.errors = errors;
  std::vector<double> all;
  for (auto& l : lat) all.insert(all.end(), l.begin(), l.end());
  std::sort(all.begin(), all.end());
  if (!all.empty()) {
    r.p50_us = all[all.size() / 2];
    r.p99_us = all[std::min(all.size() - 1, all.size() * 99 / 100)];
  }
  return r;
}

// write_bytes of /proc/self/io: bytes this process (all its threads) sent to storage; -1 if
// unavailable.
int64_t ProcessBytesWritten() {
  std::ifstream f("/proc/self/io");
  std::string key;
  int64_t value = 0;
  while (f >> key >> value) {
    if (key == "write_bytes:") return value;
  }
  return -1;
}

unsigned long long U(uint64_t x) { return static_cast<unsigned long long>(x); }

std::string Gbps(double x) { return x < 0 ? "n/a" : absl::StrFormat("%.2f", x); }

// Output of `cmd` with the trailing newline removed; empty if it failed.
std::string Capture(const std::string& cmd) {
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return "";
  std::string out;
  char buf[256];
  while (fgets(buf, sizeof(buf), p) != nullptr) out += buf;
  if (pclose(p) != 0) return "";
  while (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

// Removes the run's temp dir on every way out of Main.
struct RemoveDirOnExit {
  std::string dir;
  ~RemoveDirOnExit() {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
};

struct Results {
  std::string date_utc, commit, command;
  uint64_t pages = 0;
  size_t page_bytes = 0;
  int batch = 0, writers = 1;
  bool sync = false, direct = false, wal = true;
  int jobs = 0, write_buffer_mib = 0, memtables = 0;
  DdResult dd;
  int dd_mib = 0;
  double write_s = 0, persist_s = 0;
  double write_amplification = -1;  // bytes sent to storage per page byte, spill + reopen
  std::map<std::string, uint64_t> write_stats;
  std::vector<ReadPass> reads;
  double gb() const { return pages * page_bytes / 1e9; }
};

// Writes every page in batches, then closes and reopens the tier: the reopen replays the WAL
// into blob files, so write_s + reopen = until everything is on disk.
absl::Status Spill(const DiskTierOptions& options, const std::vector<std::vector<uint8_t>>& pool,
                   std::unique_ptr<DiskTier>& tier, Results& r) {
  const int writers = std::max(1, r.writers);
  const int64_t io0 = ProcessBytesWritten();
  const auto w0 = Clock::now();
  // Writer w writes batches w, w + writers, ... from its own staging buffer.
  std::vector<absl::Status> errors(writers);
  std::vector<std::thread> threads;
  for (int w = 0; w < writers; ++w) {
    threads.emplace_back([&, w] {
      std::vector<uint8_t> staging(r.batch * r.page_bytes);
      for (uint64_t i = uint64_t(w) * r.batch; i < r.pages && errors[w].ok();
           i += uint64_t(writers) * r.batch) {
        std::vector<DiskTier::PageWrite> writes;
        for (uint64_t j = i; j < std::min<uint64_t>(r.pages, i + r.batch); ++j) {
          uint8_t* p = staging.data() + (j - i) * r.page_bytes;
          FillPage(pool, j, p, r.page_bytes);
          writes.push_back({KeyOf(j), p, r.page_bytes});
        }
        errors[w] = tier->Write(writes, 0, nullptr, r.wal);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (const absl::Status& s : errors) {
    if (!s.ok()) return s;
  }
  const auto w1 = Clock::now();
  r.write_stats = tier->Statistics();
  tier.reset();
  auto opened = DiskTier::Open(options);
  if (!opened.ok()) return opened.status();
  tier = std::move(opened).value();
  r.write_s = Seconds(w0, w1);
  r.persist_s = Seconds(w0, Clock::now());
  const int64_t io1 = ProcessBytesWritten();
  if (io0 >= 0 && io1 >= 0) r.write_amplification = (io1 - io0) / (1.0 * r.pages * r.page_bytes);
  return absl::OkStatus();
}

void PrintTable(const Results& r) {
  std::printf("\n| what | GB/s | notes |\n|---|---:|---|\n");
  std::printf("| dd write, O_DIRECT, 1 MiB blocks | %s | %d MiB, conv=fsync |\n",
              Gbps(r.dd.write_gbps).c_str(), r.dd_mib);
  std::printf("| dd read, O_DIRECT, 1 MiB blocks | %s | %d MiB, sequential |\n",
              Gbps(r.dd.read_gbps).c_str(), r.dd_mib);
  std::printf("| dd read, O_DIRECT, 256 KiB blocks | %s | %d MiB, sequential |\n",
              Gbps(r.dd.read_page_gbps).c_str(), r.dd_mib);
  std::printf(
      "| spill: Write() calls | %.2f | %.2f GB in %.1f s, %d pages/batch, %d writer(s), sync=%d, "
      "WAL %s, jobs %d, %d memtables of %d MiB |\n",
      r.gb() / r.write_s, r.gb(), r.write_s, r.batch, r.writers, r.sync ? 1 : 0,
      r.wal ? "on" : "off", r.jobs, r.memtables, r.write_buffer_mib);
  std::printf("| spill: until all in blob files | %.2f | + close/reopen (memtable flush) |\n",
              r.gb() / r.persist_s);
  for (const ReadPass& p : r.reads) {
    std::printf(
        "| fetch-back: ReadPage, random order, %d thread%s | %.2f | p50 %.0f us, p99 %.0f us "
        "per page; page cache %s; %llu errors |\n",
        p.threads, p.threads == 1 ? "" : "s", p.gbps, p.p50_us, p.p99_us,
        r.direct ? "bypassed (O_DIRECT)" : (p.cache_dropped ? "dropped" : "NOT dropped (may hit)"),
        U(p.errors));
  }
  std::map<std::string, uint64_t> ws = r.write_stats;
  std::printf(
      "\ndirect I/O: %d; bytes sent to storage per page byte, spill + reopen "
      "(/proc/self/io write_bytes: WAL + blob files + SSTs): %.2f\n",
      r.direct ? 1 : 0, r.write_amplification);
  std::printf(
      "rocksdb during the spill: bytes.written %llu, wal.bytes %llu, "
      "blobdb.blob.file.bytes.written %llu, flush.write.bytes %llu, stall.micros %llu\n",
      U(ws["rocksdb.bytes.written"]), U(ws["rocksdb.wal.bytes"]),
      U(ws["rocksdb.blobdb.blob.file.bytes.written"]), U(ws["rocksdb.flush.write.bytes"]),
      U(ws["rocksdb.stall.micros"]));
  std::printf("dd write: %s\ndd read:  %s\ndd read 256K: %s\n", r.dd.write_line.c_str(),
              r.dd.read_line.c_str(), r.dd.read_page_line.c_str());
}

bool WriteJson(const Results& r, const std::string& path) {
  std::string j = "{\n";
  absl::StrAppendFormat(&j, "  \"date_utc\": \"%s\",\n  \"commit\": \"%s\",\n", r.date_utc,
                        r.commit);
  absl::StrAppendFormat(&j, "  \"command\": \"%s\",\n", absl::CHexEscape(r.command));
  absl::StrAppendFormat(&j, "  \"pages\": %u,\n  \"page_bytes\": %u,\n  \"batch_pages\": %d,\n",
                        r.pages, r.page_bytes, r.batch);
  absl::StrAppendFormat(&j, "  \"direct_io\": %d,\n  \"sync\": %d,\n", r.direct ? 1 : 0,
                        r.sync ? 1 : 0);
  absl::StrAppendFormat(&j,
                        "  \"wal\": %d,\n  \"writers\": %d,\n  \"jobs\": %d,\n"
                        "  \"memtables\": %d,\n  \"write_buffer_mib\": %d,\n",
                        r.wal ? 1 : 0, r.writers, r.jobs, r.memtables, r.write_buffer_mib);
  absl::StrAppendFormat(&j, "  \"stall_micros\": %u,\n",
                        r.write_stats.count("rocksdb.stall.micros")
                            ? r.write_stats.at("rocksdb.stall.micros")
                            : 0);
  absl::StrAppendFormat(&j, "  \"dd_mib\": %d,\n  \"dd_write_gbps\": %.4f,\n", r.dd_mib,
                        r.dd.write_gbps);
  absl::StrAppendFormat(&j, "  \"dd_read_gbps\": %.4f,\n  \"dd_read_256k_gbps\": %.4f,\n",
                        r.dd.read_gbps, r.dd.read_page_gbps);
  absl::StrAppendFormat(&j, "  \"spill_write_s\": %.4f,\n  \"spill_write_gbps\": %.4f,\n",
                        r.write_s, r.gb() / r.write_s);
  absl::StrAppendFormat(&j, "  \"spill_persist_s\": %.4f,\n  \"spill_persist_gbps\": %.4f,\n",
                        r.persist_s, r.gb() / r.persist_s);
  absl::StrAppendFormat(&j, "  \"write_amplification\": %.4f,\n  \"fetch_back\": [\n",
                        r.write_amplification);
  for (size_t i = 0; i < r.reads.size(); ++i) {
    const ReadPass& p = r.reads[i];
    absl::StrAppendFormat(&j,
                          "    {\"threads\": %d, \"seconds\": %.4f, \"gbps\": %.4f, "
                          "\"p50_us\": %.1f, \"p99_us\": %.1f, \"errors\": %u, "
                          "\"page_cache_dropped\": %s}%s\n",
                          p.threads, p.seconds, p.gbps, p.p50_us, p.p99_us, p.errors,
                          p.cache_dropped ? "true" : "false", i + 1 < r.reads.size() ? "," : "");
  }
  j += "  ]\n}\n";
  std::ofstream f(path);
  f << j;
  return static_cast<bool>(f);
}

int Main(int argc, char** argv) {
  Results r;
  for (int i = 0; i < argc; ++i) absl::StrAppend(&r.command, i == 0 ? "" : " ", argv[i]);
  absl::ParseCommandLine(argc, argv);
  r.date_utc = Capture("date -u +%Y-%m-%dT%H:%M:%SZ");
  r.commit = Capture("git rev-parse HEAD 2>/dev/null");  // of the working directory, if any
  std::string parent = absl::GetFlag(FLAGS_dir);
  if (parent.empty()) {
    const char* t = getenv("TMPDIR");
    parent = t != nullptr && *t != '\0' ? t : "/tmp";
  }
  RemoveDirOnExit dir{parent + "/ihip_disk_tier_bench.XXXXXX"};
  if (mkdtemp(dir.dir.data()) == nullptr) {
    std::fprintf(stderr, "mkdtemp %s failed: %s\n", dir.dir.c_str(), std::strerror(errno));
    dir.dir.clear();
    return 1;
  }
  r.page_bytes = static_cast<size_t>(absl::GetFlag(FLAGS_page_kib)) << 10;
  r.pages = static_cast<uint64_t>(absl::GetFlag(FLAGS_gib) * (1ull << 30)) / r.page_bytes;
  r.batch = std::max(1, absl::GetFlag(FLAGS_batch_pages));
  r.dd_mib = absl::GetFlag(FLAGS_dd_mib);
  if (r.dd_mib > 0) {
    std::fprintf(stderr, "dd: %d MiB with O_DIRECT in %s\n", r.dd_mib, dir.dir.c_str());
    r.dd = MeasureDd(dir.dir, r.dd_mib);
  }

  DiskTierOptions options;
  options.path = dir.dir + "/db";
  options.direct_reads = options.direct_writes = absl::GetFlag(FLAGS_direct);
  options.sync = r.sync = absl::GetFlag(FLAGS_sync);
  options.background_jobs = r.jobs = absl::GetFlag(FLAGS_jobs);
  r.write_buffer_mib = absl::GetFlag(FLAGS_write_buffer_mib);
  options.write_buffer_bytes = uint64_t(r.write_buffer_mib) << 20;
  options.memtables = r.memtables = absl::GetFlag(FLAGS_memtables);
  r.writers = absl::GetFlag(FLAGS_writers);
  r.wal = absl::GetFlag(FLAGS_wal);
  auto opened = DiskTier::Open(options);
  if (!opened.ok()) {
    std::fprintf(stderr, "open: %s\n", opened.status().ToString().c_str());
    return 1;
  }
  std::unique_ptr<DiskTier> tier = std::move(opened).value();
  std::vector<std::vector<uint8_t>> pool(16, std::vector<uint8_t>(r.page_bytes));
  std::mt19937_64 rng(1);
  for (auto& p : pool)
    for (auto& b : p) b = static_cast<uint8_t>(rng());

  std::fprintf(stderr, "spill: %llu pages of %zu KiB (%.2f GB) in batches of %d\n", U(r.pages),
               r.page_bytes >> 10, r.gb(), r.batch);
  if (absl::Status s = Spill(options, pool, tier, r); !s.ok()) {
    std::fprintf(stderr, "spill: %s\n", s.ToString().c_str());
    return 1;
  }
  const int threads = std::max(1, absl::GetFlag(FLAGS_read_threads));
  if (absl::GetFlag(FLAGS_fetch_back)) {
    std::fprintf(stderr, "fetch-back: 1 thread, then %d\n", threads);
    r.reads.push_back(FetchBack(*tier, pool, r.pages, r.page_bytes, 1, 2));
    r.reads.push_back(FetchBack(*tier, pool, r.pages, r.page_bytes, threads, 3));
  }
  r.direct = tier->Statistics()["ihip.direct_io"] != 0;
  tier.reset();
  if (const std::string log = absl::GetFlag(FLAGS_rocksdb_log); !log.empty()) {
    // Every info log of the run, oldest first (LOG.old.<micros>, then LOG): the spill's is the
    // one before the reopen.
    std::vector<std::string> names;
    for (const auto& e : std::filesystem::directory_iterator(options.path)) {
      const std::string name = e.path().filename().string();
      if (name.rfind("LOG.old.", 0) == 0) names.push_back(name);
    }
    std::sort(names.begin(), names.end());
    names.push_back("LOG");
    std::ofstream out(log);
    for (const std::string& name : names) {
      std::ifstream in(options.path + "/" + name);
      out << "==== " << name << "\n" << in.rdbuf();
    }
    if (!out) std::fprintf(stderr, "cannot write the RocksDB logs to %s\n", log.c_str());
  }

  PrintTable(r);
  const std::string json_path = absl::GetFlag(FLAGS_json);
  if (!json_path.empty() && !WriteJson(r, json_path)) {
    std::fprintf(stderr, "cannot write %s\n", json_path.c_str());
    return 1;
  }
  uint64_t errors = 0;
  for (const ReadPass& p : r.reads) errors += p.errors;
  return errors == 0 ? 0 : 1;
}

}  // namespace
}  // namespace ihip::kvstore

int main(int argc, char** argv) { return ihip::kvstore::Main(argc, argv); }
