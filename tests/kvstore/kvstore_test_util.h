#pragma once

// Helpers shared by the kvstore tests: unique shm names, temp directories, small segment options,
// byte patterns, and a fixture that builds ShmSegment + DiskTier + Store + StoreServer in the
// test process (and tears every piece down, in reverse order, at the end of each test).

#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <system_error>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "kvstore/disk_tier.h"
#include "kvstore/shm_segment.h"
#include "kvstore/store.h"
#include "kvstore/store_server.h"

namespace ihip::kvstore::testing {

// "/ihip-test-<pid>-<counter>": unique per process and per call, so parallel test binaries and
// forked children never meet each other's segments.
inline std::string UniqueShmName() {
  static std::atomic<uint64_t> counter{0};
  return absl::StrCat("/ihip-test-", getpid(), "-", counter.fetch_add(1));
}

// A fresh directory under $TMPDIR (or /tmp), removed with everything in it on destruction.
class TempDir {
 public:
  TempDir() {
    const char* tmp = std::getenv("TMPDIR");
    std::string tmpl =
        absl::StrCat(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp", "/ihip_kvstore_test.XXXXXX");
    if (mkdtemp(tmpl.data()) == nullptr) {
      ADD_FAILURE() << "mkdtemp " << tmpl << ": " << std::strerror(errno);
    }
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A small segment: `slots` page slots of 16 KiB, 4 clients, 64-entry rings, 64 KiB mailboxes,
// a 200 ms lease (dead clients are reclaimed quickly).
inline SegmentOptions SmallSegmentOptions(const std::string& name, uint64_t slots = 32) {
  SegmentOptions o;
  o.name = name;
  o.slot_bytes = 16 << 10;
  o.pool_bytes = slots * o.slot_bytes;
  o.max_clients = 4;
  o.ring_entries = 64;
  o.mailbox_bytes = 64 << 10;
  o.lease = absl::Milliseconds(200);
  o.populate_threads = 1;
  return o;
}

inline DiskTierOptions TestDiskOptions(const std::string& path) {
  DiskTierOptions o;
  o.path = path;
  o.write_buffer_bytes = 4 << 20;
  return o;
}

// Deterministic bytes: a function of `seed` only.
inline std::vector<uint8_t> PatternBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull + 1);
  std::vector<uint8_t> out(n);
  for (size_t i = 0; i < n; i += 8) {
    const uint64_t v = rng();
    std::memcpy(out.data() + i, &v, std::min<size_t>(8, n - i));
  }
  return out;
}

// The seed of the page (sequence handle, layer, page) in pattern-filled tests.
inline uint64_t PageSeed(uint64_t handle, uint32_t layer, uint64_t page) {
  return (handle << 40) ^ (uint64_t{layer} << 24) ^ page;
}

inline bool BytesEqual(const void* a, const std::vector<uint8_t>& b) {
  return std::memcmp(a, b.data(), b.size()) == 0;
}

// A forked child process: killed (SIGKILL) and reaped on destruction unless Wait() reaped it.
class Child {
 public:
  explicit Child(pid_t pid) : pid_(pid) {}
  ~Child() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  pid_t pid() const { return pid_; }
  void Kill() { kill(pid_, SIGKILL); }
  // Reaps the child; returns its wait status.
  int Wait() {
    int status = -1;
    if (pid_ > 0 && waitpid(pid_, &status, 0) == pid_) pid_ = 0;
    return status;
  }

 private:
  pid_t pid_;
};

// A pipe whose ends are closed on destruction.
struct Pipe {
  Pipe() {
    if (pipe(fd) != 0) ADD_FAILURE() << "pipe: " << std::strerror(errno);
  }
  ~Pipe() {
    CloseRead();
    CloseWrite();
  }
  void CloseRead() {
    if (fd[0] >= 0) close(fd[0]);
    fd[0] = -1;
  }
  void CloseWrite() {
    if (fd[1] >= 0) close(fd[1]);
    fd[1] = -1;
  }
  int fd[2] = {-1, -1};
};

// Reads exactly `n` bytes from `fd`, waiting at most `timeout` in all (a stuck child fails the
// test instead of hanging it). False on EOF, error or timeout.
inline bool ReadFully(int fd, void* out, size_t n, absl::Duration timeout = absl::Seconds(60)) {
  const absl::Time deadline = absl::Now() + timeout;
  auto* p = static_cast<char*>(out);
  while (n > 0) {
    const int64_t left_ms = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (left_ms <= 0) return false;
    struct pollfd pfd = {fd, POLLIN, 0};
    const int r = poll(&pfd, 1, int(std::min<int64_t>(left_ms, 1 << 30)));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    const ssize_t got = read(fd, p, n);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return false;
    p += got;
    n -= size_t(got);
  }
  return true;
}

inline bool WriteFully(int fd, const void* data, size_t n) {
  const auto* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t put = write(fd, p, n);
    if (put < 0 && errno == EINTR) continue;
    if (put <= 0) return false;
    p += put;
    n -= size_t(put);
  }
  return true;
}

inline SequenceSpec MakeSpec(uint32_t num_layers, uint32_t page_bytes, uint32_t page_tokens) {
  SequenceSpec spec{};
  spec.num_layers = num_layers;
  spec.page_bytes = page_bytes;
  spec.page_tokens = page_tokens;
  return spec;
}

// Builds, per test, a segment (unique name), an optional disk tier in a temp dir, a Store and
// (on request) a StoreServer on its own thread. Everything started is stopped in TearDown.
class KvStoreFixture : public ::testing::Test {
 protected:
  void TearDown() override { StopAll(); }

  // `with_disk`: open a DiskTier at disk_path() (reused across restarts within a test).
  void StartStore(uint64_t slots = 32, bool with_disk = true, StoreOptions store_options = {}) {
    if (shm_name_.empty()) shm_name_ = UniqueShmName();
    seg_options_ = SmallSegmentOptions(shm_name_, slots);
    auto seg = ShmSegment::Create(seg_options_);
    ASSERT_TRUE(seg.ok()) << seg.status();
    segment_ = std::move(seg).value();
    if (with_disk) {
      auto disk = DiskTier::Open(TestDiskOptions(disk_path()));
      ASSERT_TRUE(disk.ok()) << disk.status();
      disk_ = std::move(disk).value();
    }
    ASSERT_TRUE(store_options.Validate().ok());
    store_ = std::make_unique<Store>(store_options, segment_.get(), disk_.get());
  }

  void StartServer(StoreServerOptions options = {}) {
    server_ = std::make_unique<StoreServer>(options, segment_.get(), store_.get());
    server_->Start();
  }

  // Stops the server, then drops the store, the disk tier and the segment (unlinking it).
  void StopAll() {
    if (server_ != nullptr) server_->Stop();
    server_.reset();
    store_.reset();
    disk_.reset();
    segment_.reset();
  }

  std::string disk_path() const { return dir_.path() + "/db"; }
  uint64_t slot_bytes() const { return segment_->header()->slot_bytes; }

  TempDir dir_;
  std::string shm_name_;
  SegmentOptions seg_options_;
  std::unique_ptr<ShmSegment> segment_;
  std::unique_ptr<DiskTier> disk_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<StoreServer> server_;
};

}  // namespace ihip::kvstore::testing
