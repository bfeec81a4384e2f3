#pragma once

// DiskTier: the kvstore's disk tier on RocksDB — the only code that includes RocksDB. Page bytes
// are values (in blob files), keyed by fixed-width big-endian (sequence, layer, page) so that one
// sequence is one contiguous key range; each sequence's manifest is a value of its own. Key
// format in DISK_FORMAT.md beside this file. Thread-safe (RocksDB is).

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace ihip::kvstore {

struct DiskTierOptions {
  std::string path;               // RocksDB directory; created if missing
  bool sync = false;              // fsync every write: survives power loss; off, a write survives
                                  // a crash of the process (it is in the OS page cache)
  bool blob_files = true;         // page values in blob files (no rewrite on compaction)
  uint64_t min_blob_size = 4096;  // values at least this large go to blob files
  bool direct_reads = true;       // O_DIRECT page reads: fetch-back measures the disk, not the
                                  // page cache (falls back to buffered where unsupported)
  bool direct_writes = true;      // O_DIRECT for flush and compaction
  int background_jobs = 0;        // flush + compaction threads; 0 = one per hardware thread
                                  // (2..16). Half of them flush (at least 2): a spill is
                                  // memtable flushes, each computing the blob CRC32c (software
                                  // in Debian's RocksDB: the spill's main CPU cost) and writing
                                  // on one thread
  uint64_t write_buffer_bytes = 64ull << 20;  // memtable size
  int memtables = 0;  // memtables (1 taking writes, the others flushing); 0 = flush threads + 2
  // Tune this process's malloc (once) so that memtable arena blocks come from the heap and their
  // pages are reused by the next memtable instead of being faulted in and zeroed again.
  bool keep_memtable_memory = true;
  absl::Status Validate() const;
};

struct PageKey {
  uint64_t sequence = 0;
  uint32_t layer = 0;
  uint32_t page = 0;
};

class DiskTier {
 public:
  static absl::StatusOr<std::unique_ptr<DiskTier>> Open(const DiskTierOptions& options);
  ~DiskTier();

  // Writes pages and, when `manifest` is non-null, the manifest of `manifest_sequence`, as one
  // atomic batch.
  struct PageWrite {
    PageKey key;
    const void* data = nullptr;
    size_t bytes = 0;
  };
  // `write_ahead_log` false skips RocksDB's WAL (half the bytes written): for pages that are
  // only a cache (spills of a non-durable store), which a crash may lose.
  absl::Status Write(const std::vector<PageWrite>& pages, uint64_t manifest_sequence = 0,
                     const std::string* manifest = nullptr, bool write_ahead_log = true);
  // Reads one page into `out` (exactly `bytes`): NOT_FOUND if absent, DATA_LOSS if the stored
  // value has another size.
  absl::Status ReadPage(const PageKey& key, void* out, size_t bytes);
  // Reads several pages, `bytes` each, into `outs`, on up to `threads` threads (a fetch-back of
  // many pages keeps several disk reads in flight). The first error is returned.
  absl::Status ReadPages(const std::vector<PageKey>& keys, const std::vector<void*>& outs,
                         size_t bytes, int threads = 4);
  // Deletes one page (no error if absent).
  absl::Status DeletePage(const PageKey& key);
  // Deletes every page and the manifest of a sequence.
  absl::Status DeleteSequence(uint64_t sequence);
  // Every stored manifest, by sequence.
  absl::StatusOr<std::vector<std::pair<uint64_t, std::string>>> ListManifests();
  // Writes every memtable to disk files and waits for it (a spill is complete on disk, not
  // only in RocksDB's memory, when this returns).
  absl::Status Flush();
  // Full manual compaction (admin "Compact").
  absl::Status Compact();
  // RocksDB statistics for /metrics: ticker name -> count (e.g. "rocksdb.bytes.written") and a
  // few properties (e.g. "rocksdb.estimate-live-data-size", "rocksdb.total-blob-file-size").
  std::map<std::string, uint64_t> Statistics() const;

 private:
  struct Impl;
  explicit DiskTier(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ihip::kvstore
