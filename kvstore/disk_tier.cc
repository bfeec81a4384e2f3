// DiskTier on RocksDB. The only file in the project that includes RocksDB headers; every
// rocksdb::Status becomes an absl::Status in FromRocks() below.
//
// How: one default column family. Keys are fixed-width big-endian (DISK_FORMAT.md), so the
// bytewise comparator orders them by (type, sequence, layer, page) and one sequence's pages are
// one contiguous range: DeleteSequence is one range tombstone plus the manifest delete, in one
// batch. Page values (256 KiB for the Llama-3-8B shape) go to blob files at flush, so compaction
// moves only the small keys; Compact() runs blob garbage collection to reclaim the space of
// deleted sequences. Compression is off everywhere: page values are fp data.

#include "kvstore/disk_tier.h"

#include <malloc.h>

#include <atomic>
#include <mutex>
#include <cstring>
#include <filesystem>
#include <algorithm>
#include <system_error>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "rocksdb/db.h"
#include "rocksdb/filter_policy.h"
#include "rocksdb/options.h"
#include "rocksdb/slice.h"
#include "rocksdb/statistics.h"
#include "rocksdb/status.h"
#include "rocksdb/table.h"
#include "rocksdb/write_batch.h"

namespace ihip::kvstore {
namespace {

constexpr char kManifestTag = 'M';
constexpr char kPageTag = 'P';
constexpr char kVersionTag = 'V';  // the key "V": the format version below, u32 big-endian
constexpr uint32_t kFormatVersion = 1;
constexpr size_t kPageKeyBytes = 1 + 8 + 4 + 4;
constexpr size_t kManifestKeyBytes = 1 + 8;

// The one conversion from rocksdb::Status. `what` says which operation failed.
absl::Status FromRocks(const rocksdb::Status& s, const std::string& what) {
  if (s.ok()) return absl::OkStatus();
  // ToString() is "<Code>: <message>", with a bare ": " when the message is empty.
  const std::string msg =
      absl::StrCat("disk tier: ", what, ": ", absl::StripSuffix(s.ToString(), ": "));
  switch (s.code()) {
    case rocksdb::Status::kNotFound:
      return absl::NotFoundError(msg);
    case rocksdb::Status::kCorruption:
      return absl::DataLossError(msg);
    case rocksdb::Status::kNotSupported:
      return absl::UnimplementedError(msg);
    case rocksdb::Status::kInvalidArgument:
      return absl::InvalidArgumentError(msg);
    case rocksdb::Status::kIOError:
      if (s.IsNoSpace() || s.subcode() == rocksdb::Status::kSpaceLimit) {
        return absl::ResourceExhaustedError(msg);
      }
      return absl::UnavailableError(msg);
    case rocksdb::Status::kBusy:
    case rocksdb::Status::kTryAgain:
    case rocksdb::Status::kIncomplete:
    case rocksdb::Status::kShutdownInProgress:
      return absl::UnavailableError(msg);
    case rocksdb::Status::kTimedOut:
      return absl::DeadlineExceededError(msg);
    case rocksdb::Status::kAborted:
      return absl::AbortedError(msg);
    default:
      return absl::InternalError(msg);
  }
}

void PutBigEndian(char* out, uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; --i) {
    out[i] = static_cast<char>(v & 0xff);
    v >>= 8;
  }
}

uint64_t GetBigEndian(const char* in, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v = (v << 8) | static_cast<unsigned char>(in[i]);
  return v;
}

std::string PageKeyString(const PageKey& key) {
  std::string k(kPageKeyBytes, '\0');
  k[0] = kPageTag;
  PutBigEndian(&k[1], key.sequence, 8);
  PutBigEndian(&k[9], key.layer, 4);
  PutBigEndian(&k[13], key.page, 4);
  return k;
}

std::string ManifestKeyString(uint64_t sequence) {
  std::string k(kManifestKeyBytes, '\0');
  k[0] = kManifestTag;
  PutBigEndian(&k[1], sequence, 8);
  return k;
}

std::string PageName(const PageKey& key) {
  return absl::StrCat("page (sequence ", key.sequence, ", layer ", key.layer, ", page ", key.page,
                      ")");
}

rocksdb::Options MakeRocksOptions(const DiskTierOptions& o, bool direct_io) {
  rocksdb::Options r;
  r.create_if_missing = true;
  r.statistics = rocksdb::CreateDBStatistics();
  const int jobs = o.background_jobs > 0
                       ? o.background_jobs
                       : std::clamp(int(std::thread::hardware_concurrency()), 2, 16);
  r.max_background_jobs = jobs;
  // RocksDB gives flushes a quarter of the jobs by default; a spill is nothing but flushes (the
  // values go to blob files, compactions move only keys), and each flush runs on one thread,
  // computing the blob CRC32c (in software in Debian's RocksDB) and writing with O_DIRECT, one
  // request at a time: several flushes in flight overlap CPU and disk. At least 2, even on 2
  // cores (a flush waiting for the disk leaves its core idle).
  const int flushes = std::max(2, jobs / 2);
  r.max_background_flushes = flushes;
  // Set explicitly: with only the flushes set, RocksDB 7.8 leaves compactions at 1 thread. The
  // compactions move only keys (the values are in blob files), but with the write slowdowns off
  // (below) they are what keeps L0 under its stop trigger.
  r.max_background_compactions = std::max(1, jobs - flushes);
  // A flush needs an immutable memtable: spills arrive in bursts of many MiB, so writes go on
  // into further memtables while the full ones are written, one flush thread each (2 more than
  // the flush threads: one taking writes, one filling while all flushes run).
  r.write_buffer_size = o.write_buffer_bytes;
  r.max_write_buffer_number = o.memtables > 0 ? o.memtables : flushes + 2;
  // With more than 3 memtables RocksDB throttles writes to delayed_write_rate (16 MiB/s by
  // default) once only one memtable is left, which is what a spill burst hits on every memtable
  // (the RocksDB LOG said "Stalling writes because we have 3 immutable memtables"; the stall took
  // two thirds of a spill's time). A spill should rather wait until a flush frees a memtable
  // (the stop at max_write_buffer_number), so the throttle is set above any disk's rate. That
  // also turns off the L0 and pending-compaction slowdowns: only their hard stops remain (36 L0
  // files, 256 GB pending), which the compaction threads above keep far away (L0 SSTs hold
  // only keys).
  r.delayed_write_rate = uint64_t(64) << 30;
  // Larger writes per request (the default 1 MiB buffer makes the blob writes small).
  r.writable_file_max_buffer_size = 8 << 20;
  r.keep_log_file_num = 10;  // RocksDB's own LOG files
  // Page values are fp data: compression costs CPU for nothing.
  r.compression = rocksdb::kNoCompression;
  r.bottommost_compression = rocksdb::kNoCompression;
  r.blob_compression_type = rocksdb::kNoCompression;
  r.enable_blob_files = o.blob_files;
  r.min_blob_size = o.min_blob_size;
  // No blob GC in background compactions: it relocates every live blob of the oldest blob files
  // a compaction passes over, which during a pure spill re-wrote 65% of the spilled bytes
  // (tests/bench/disk_tier_bench.md). A blob file is still deleted once no key refers to it
  // (its sequences are all deleted and compacted away); Compact() forces a full GC.
  r.enable_blob_garbage_collection = false;
  r.use_direct_reads = direct_io && o.direct_reads;
  r.use_direct_io_for_flush_and_compaction = direct_io && o.direct_writes;
  // Point lookups of pages: a bloom filter spares an SST block read for absent pages.
  rocksdb::BlockBasedTableOptions table;
  table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
  r.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  return r;
}

// Writes the format version into a new DB; refuses a DB of another version.
absl::Status CheckFormatVersion(rocksdb::DB& db) {
  const std::string key(1, kVersionTag);
  std::string value;
  rocksdb::Status s = db.Get(rocksdb::ReadOptions(), key, &value);
  if (s.IsNotFound()) {
    value.assign(4, '\0');
    PutBigEndian(value.data(), kFormatVersion, 4);
    rocksdb::WriteOptions sync;
    sync.sync = true;
    return FromRocks(db.Put(sync, key, value), "write format version");
  }
  if (!s.ok()) return FromRocks(s, "read format version");
  const uint64_t version = value.size() == 4 ? GetBigEndian(value.data(), 4) : 0;
  if (version != kFormatVersion) {
    return absl::FailedPreconditionError(
        absl::StrCat("disk tier: format version ", version, " (", value.size(),
                     " bytes), this build reads version ", kFormatVersion));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status DiskTierOptions::Validate() const {
  if (path.empty()) return absl::InvalidArgumentError("disk tier: path is empty");
  if (background_jobs < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("disk tier: background_jobs must be >= 0 (0 = automatic), got ",
                     background_jobs));
  }
  if (memtables != 0 && memtables < 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "disk tier: memtables must be 0 (automatic) or >= 2 (one takes writes while one "
        "flushes), got ",
        memtables));
  }
  if (write_buffer_bytes < (1ull << 20)) {
    return absl::InvalidArgumentError(
        absl::StrCat("disk tier: write_buffer_bytes must be >= 1 MiB, got ", write_buffer_bytes));
  }
  return absl::OkStatus();
}

struct DiskTier::Impl {
  std::unique_ptr<rocksdb::DB> db;
  std::shared_ptr<rocksdb::Statistics> stats;
  rocksdb::WriteOptions write_options;
  // Whether the DB runs with O_DIRECT (reads or flush/compaction). False when the options asked
  // for none, or when the filesystem refused it at Open (RocksDB answers InvalidArgument "Direct
  // I/O is not supported by the specified DB") and we reopened buffered. Reported in
  // Statistics() as "ihip.direct_io".
  bool direct_io = false;
};

DiskTier::DiskTier(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

DiskTier::~DiskTier() {
  if (impl_ && impl_->db) {
    // Close() waits for background jobs; unflushed memtables stay in the WAL and are replayed
    // at the next Open. Nothing to report to: a failure here loses no acknowledged write.
    impl_->db->Close().PermitUncheckedError();
  }
}

// Memtables are arenas of write_buffer_bytes / 8 blocks. With glibc's defaults a block of that
// size is a fresh mmap, so every memtable faults in and zeroes new pages (measured: a fifth of
// the CPU of a spill went to clear_page) and returns them at flush. Serving such blocks from the
// heap and keeping freed memory lets the next memtable reuse the pages.
void KeepMemtableMemory(uint64_t write_buffer_bytes) {
  static std::once_flag once;
  std::call_once(once, [&] {
    const int block = int(std::min<uint64_t>(write_buffer_bytes / 8 + (1 << 20), 32u << 20));
    mallopt(M_MMAP_THRESHOLD, block);
    mallopt(M_TRIM_THRESHOLD, int(std::min<uint64_t>(8 * write_buffer_bytes, 1u << 30)));
  });
}

absl::StatusOr<std::unique_ptr<DiskTier>> DiskTier::Open(const DiskTierOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  if (options.keep_memtable_memory) KeepMemtableMemory(options.write_buffer_bytes);
  std::error_code ec;
  std::filesystem::create_directories(options.path, ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("disk tier: cannot create ", options.path, ": ", ec.message()));
  }
  auto impl = std::make_unique<Impl>();
  impl->direct_io = options.direct_reads || options.direct_writes;
  rocksdb::Options ro = MakeRocksOptions(options, impl->direct_io);
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(ro, options.path, &raw);
  if (!s.ok() && impl->direct_io && s.IsInvalidArgument()) {
    // The filesystem does not take O_DIRECT (older tmpfs, some overlay/network filesystems):
    // run buffered. Reads then may be served from the OS page cache.
    impl->direct_io = false;
    ro = MakeRocksOptions(options, false);
    s = rocksdb::DB::Open(ro, options.path, &raw);
  }
  if (!s.ok()) return FromRocks(s, absl::StrCat("open ", options.path));
  impl->db.reset(raw);
  if (absl::Status v = CheckFormatVersion(*impl->db); !v.ok()) return v;
  impl->stats = ro.statistics;
  impl->write_options.sync = options.sync;
  return std::unique_ptr<DiskTier>(new DiskTier(std::move(impl)));
}

absl::Status DiskTier::Write(const std::vector<PageWrite>& pages, uint64_t manifest_sequence,
                             const std::string* manifest, bool write_ahead_log) {
  // Validate everything before building the batch: a bad page writes nothing.
  for (const PageWrite& p : pages) {
    if (p.bytes == 0 || p.data == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("disk tier: write of ", PageName(p.key),
                                                     " has no data (", p.bytes, " bytes)"));
    }
  }
  if (pages.empty() && manifest == nullptr) return absl::OkStatus();
  rocksdb::WriteBatch batch;
  for (const PageWrite& p : pages) {
    rocksdb::Status s =
        batch.Put(PageKeyString(p.key), rocksdb::Slice(static_cast<const char*>(p.data), p.bytes));
    if (!s.ok()) return FromRocks(s, absl::StrCat("batch put ", PageName(p.key)));
  }
  if (manifest != nullptr) {
    rocksdb::Status s = batch.Put(ManifestKeyString(manifest_sequence), *manifest);
    if (!s.ok()) return FromRocks(s, absl::StrCat("batch put manifest ", manifest_sequence));
  }
  rocksdb::WriteOptions wo = impl_->write_options;
  if (!write_ahead_log) {
    wo.disableWAL = true;
    wo.sync = false;
  }
  return FromRocks(impl_->db->Write(wo, &batch), absl::StrCat("write of ", pages.size(), " pages"));
}

absl::Status DiskTier::ReadPages(const std::vector<PageKey>& keys, const std::vector<void*>& outs,
                                 size_t bytes, int threads) {
  if (keys.size() != outs.size()) {
    return absl::InvalidArgumentError("disk tier: ReadPages needs one buffer per key");
  }
  const size_t n = keys.size();
  const size_t workers = std::min<size_t>(std::max(1, threads), n);
  if (workers <= 1) {
    for (size_t i = 0; i < n; ++i) {
      absl::Status s = ReadPage(keys[i], outs[i], bytes);
      if (!s.ok()) return s;
    }
    return absl::OkStatus();
  }
  std::atomic<size_t> next{0};
  std::vector<absl::Status> errors(workers);
  std::vector<std::thread> pool;
  for (size_t w = 0; w < workers; ++w) {
    pool.emplace_back([&, w] {
      for (size_t i = next++; i < n && errors[w].ok(); i = next++) {
        errors[w] = ReadPage(keys[i], outs[i], bytes);
      }
    });
  }
  for (std::thread& t : pool) t.join();
  for (const absl::Status& s : errors) {
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status DiskTier::ReadPage(const PageKey& key, void* out, size_t bytes) {
  if (out == nullptr && bytes > 0) {
    return absl::InvalidArgumentError("disk tier: ReadPage into a null buffer");
  }
  rocksdb::PinnableSlice value;
  rocksdb::Status s = impl_->db->Get(rocksdb::ReadOptions(), impl_->db->DefaultColumnFamily(),
                                     PageKeyString(key), &value);
  if (!s.ok()) return FromRocks(s, absl::StrCat("read ", PageName(key)));
  if (value.size() != bytes) {
    return absl::DataLossError(absl::StrCat("disk tier: ", PageName(key), " holds ", value.size(),
                                            " bytes, expected ", bytes));
  }
  if (bytes > 0) std::memcpy(out, value.data(), bytes);
  return absl::OkStatus();
}

absl::Status DiskTier::DeletePage(const PageKey& key) {
  return FromRocks(impl_->db->Delete(impl_->write_options, PageKeyString(key)),
                   absl::StrCat("delete ", PageName(key)));
}

absl::Status DiskTier::DeleteSequence(uint64_t sequence) {
  // [P seq 0 0, P seq+1 0 0): every page of `sequence`. The last sequence has no successor;
  // its range ends at the 1-byte key "Q", above every page key.
  const std::string begin = PageKeyString(PageKey{sequence, 0, 0});
  const std::string end = sequence == UINT64_MAX ? std::string(1, static_cast<char>(kPageTag + 1))
                                                 : PageKeyString(PageKey{sequence + 1, 0, 0});
  rocksdb::WriteBatch batch;
  const std::string what = absl::StrCat("delete sequence ", sequence);
  rocksdb::Status s = batch.DeleteRange(begin, end);
  if (s.ok()) s = batch.Delete(ManifestKeyString(sequence));
  if (!s.ok()) return FromRocks(s, what);
  return FromRocks(impl_->db->Write(impl_->write_options, &batch), what);
}

absl::StatusOr<std::vector<std::pair<uint64_t, std::string>>> DiskTier::ListManifests() {
  const std::string lower(1, kManifestTag);
  const std::string upper_key(1, static_cast<char>(kManifestTag + 1));
  rocksdb::Slice upper(upper_key);
  rocksdb::ReadOptions read_options;
  read_options.iterate_upper_bound = &upper;
  std::unique_ptr<rocksdb::Iterator> it(impl_->db->NewIterator(read_options));
  std::vector<std::pair<uint64_t, std::string>> out;
  for (it->Seek(lower); it->Valid(); it->Next()) {
    rocksdb::Slice k = it->key();
    if (k.size() != kManifestKeyBytes) {
      return absl::DataLossError(
          absl::StrCat("disk tier: manifest key of ", k.size(), " bytes, expected 9"));
    }
    out.emplace_back(GetBigEndian(k.data() + 1, 8), it->value().ToString());
  }
  if (absl::Status s = FromRocks(it->status(), "list manifests"); !s.ok()) return s;
  return out;
}

absl::Status DiskTier::Flush() {
  rocksdb::FlushOptions options;
  options.wait = true;
  return FromRocks(impl_->db->Flush(options), "flush");
}

absl::Status DiskTier::Compact() {
  rocksdb::CompactRangeOptions options;
  // Rewrite the last level too, so range tombstones and deleted pages are dropped, and run blob
  // GC over every blob file: live blobs of files holding garbage move to new files, and the old
  // files go.
  options.bottommost_level_compaction = rocksdb::BottommostLevelCompaction::kForce;
  options.blob_garbage_collection_policy = rocksdb::BlobGarbageCollectionPolicy::kForce;
  options.blob_garbage_collection_age_cutoff = 1.0;
  return FromRocks(impl_->db->CompactRange(options, nullptr, nullptr), "compact");
}

std::map<std::string, uint64_t> DiskTier::Statistics() const {
  std::map<std::string, uint64_t> out;
  if (impl_->stats) impl_->stats->getTickerMap(&out);
  for (const std::string& property : {
           rocksdb::DB::Properties::kEstimateLiveDataSize,
           rocksdb::DB::Properties::kTotalBlobFileSize,
           rocksdb::DB::Properties::kLiveBlobFileSize,
           rocksdb::DB::Properties::kNumBlobFiles,
           rocksdb::DB::Properties::kTotalSstFilesSize,
           rocksdb::DB::Properties::kEstimateNumKeys,
           rocksdb::DB::Properties::kCurSizeAllMemTables,
       }) {
    uint64_t value = 0;
    if (impl_->db->GetIntProperty(property, &value)) out[property] = value;
  }
  out["ihip.direct_io"] = impl_->direct_io ? 1 : 0;
  // The configuration RocksDB runs with (defaults resolved), for operators and tests.
  const rocksdb::Options o = impl_->db->GetOptions();
  out["ihip.memtables"] = uint64_t(std::max(0, o.max_write_buffer_number));
  out["ihip.memtable_bytes"] = o.write_buffer_size;
  out["ihip.flush_threads"] = uint64_t(std::max(0, o.max_background_flushes));
  out["ihip.compaction_threads"] = uint64_t(std::max(0, o.max_background_compactions));
  out["ihip.delayed_write_rate"] = o.delayed_write_rate;
  return out;
}

}  // namespace ihip::kvstore
