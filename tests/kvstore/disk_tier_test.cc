// Tests for kvstore/disk_tier.h: byte-exact page round trips, key ranges and DeleteSequence,
// error codes, manifests, durability across close and across a process crash, Compact and
// Statistics. Each test gets its own temp directory.

#include "kvstore/disk_tier.h"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <thread>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace ihip::kvstore {
namespace {

constexpr size_t kPageBytes = 256 << 10;  // Llama-3-8B page: 64 tokens x K,V x 8 heads x 128 bf16

std::string MakeTempDir() {
  const char* tmp = std::getenv("TMPDIR");
  std::string tmpl =
      std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/ihip_disk_tier_test.XXXXXX";
  char* dir = mkdtemp(tmpl.data());
  EXPECT_NE(dir, nullptr) << "mkdtemp " << tmpl;
  return tmpl;
}

std::vector<uint8_t> RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> out(n);
  for (size_t i = 0; i < n; i += 8) {
    const uint64_t v = rng();
    std::memcpy(out.data() + i, &v, std::min<size_t>(8, n - i));
  }
  return out;
}

uint64_t Seed(const PageKey& k) {
  return k.sequence * 0x9E3779B97F4A7C15ull ^ (uint64_t{k.layer} << 32 | k.page);
}

class DiskTierTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeTempDir();
    options_.path = dir_ + "/db";
    options_.write_buffer_bytes = 4 << 20;  // small memtables: data reaches blob files quickly
  }
  void TearDown() override {
    tier_.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  void OpenTier() {
    tier_.reset();
    auto tier = DiskTier::Open(options_);
    ASSERT_TRUE(tier.ok()) << tier.status();
    tier_ = std::move(tier).value();
  }
  // Writes a page whose content is a function of its key.
  void WritePage(const PageKey& k, size_t bytes) {
    std::vector<uint8_t> data = RandomBytes(bytes, Seed(k));
    ASSERT_TRUE(tier_->Write({{k, data.data(), data.size()}}).ok());
  }
  bool HasPage(const PageKey& k, size_t bytes) {
    std::vector<uint8_t> out(bytes);
    absl::Status s = tier_->ReadPage(k, out.data(), bytes);
    EXPECT_TRUE(s.ok() || absl::IsNotFound(s)) << s;
    if (s.ok()) {
      EXPECT_EQ(out, RandomBytes(bytes, Seed(k)));
    }
    return s.ok();
  }

  std::string dir_;
  DiskTierOptions options_;
  std::unique_ptr<DiskTier> tier_;
};

TEST_F(DiskTierTest, PagesRoundTripByteExact) {
  OpenTier();
  std::vector<PageKey> keys;
  for (uint64_t seq : {uint64_t{1}, uint64_t{7}, uint64_t{1} << 40})
    for (uint32_t layer : {0u, 3u, 31u})
      for (uint32_t page = 0; page < 8; ++page) keys.push_back({seq, layer, page});
  // Batches of 8 pages (2 MiB), enough in total (18 MiB) for several memtable flushes.
  for (size_t i = 0; i < keys.size(); i += 8) {
    std::vector<std::vector<uint8_t>> data;
    std::vector<DiskTier::PageWrite> writes;
    for (size_t j = i; j < i + 8; ++j) {
      data.push_back(RandomBytes(kPageBytes, Seed(keys[j])));
      writes.push_back({keys[j], data.back().data(), data.back().size()});
    }
    ASSERT_TRUE(tier_->Write(writes).ok());
  }
  std::mt19937 rng(1);
  std::shuffle(keys.begin(), keys.end(), rng);
  for (const PageKey& k : keys) EXPECT_TRUE(HasPage(k, kPageBytes)) << k.sequence;
  // Memtables are flushed in the background: wait (bounded) for the first blob file.
  for (int i = 0; i < 200 && tier_->Statistics()["rocksdb.num-blob-files"] == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_GT(tier_->Statistics()["rocksdb.num-blob-files"], 0u);  // memtables were flushed
}

TEST_F(DiskTierTest, DeleteSequenceRemovesExactlyItsRange) {
  OpenTier();
  const uint32_t kMax32 = 0xffffffffu;
  const std::vector<uint64_t> seqs = {0, 1, 99, 100, 101, UINT64_MAX - 1, UINT64_MAX};
  std::vector<PageKey> keys;
  for (uint64_t seq : seqs)
    for (uint32_t layer : {0u, 1u, kMax32})
      for (uint32_t page : {0u, 1u, kMax32}) keys.push_back({seq, layer, page});
  for (const PageKey& k : keys) WritePage(k, 5000);  // above min_blob_size
  for (uint64_t seq : seqs) {
    const std::string m = "manifest " + std::to_string(seq);
    ASSERT_TRUE(tier_->Write({}, seq, &m).ok());
  }
  for (uint64_t deleted : {uint64_t{100}, uint64_t{0}, UINT64_MAX}) {
    ASSERT_TRUE(tier_->DeleteSequence(deleted).ok());
  }
  for (int pass = 0; pass < 2; ++pass) {  // before and after compaction and a reopen
    for (const PageKey& k : keys) {
      const bool gone = k.sequence == 100 || k.sequence == 0 || k.sequence == UINT64_MAX;
      EXPECT_EQ(HasPage(k, 5000), !gone) << k.sequence << " " << k.layer << " " << k.page;
    }
    if (pass == 0) {
      ASSERT_TRUE(tier_->Compact().ok());
      OpenTier();
    }
  }
  auto manifests = tier_->ListManifests();
  ASSERT_TRUE(manifests.ok()) << manifests.status();
  std::vector<uint64_t> listed;
  for (const auto& [seq, m] : *manifests) listed.push_back(seq);
  EXPECT_EQ(listed, (std::vector<uint64_t>{1, 99, 101, UINT64_MAX - 1}));
  // Deleting an absent sequence is fine.
  EXPECT_TRUE(tier_->DeleteSequence(12345).ok());
}

TEST_F(DiskTierTest, ReadPageErrors) {
  OpenTier();
  std::vector<uint8_t> out(kPageBytes);
  absl::Status s = tier_->ReadPage({1, 2, 3}, out.data(), out.size());
  EXPECT_TRUE(absl::IsNotFound(s)) << s;
  WritePage({1, 2, 3}, kPageBytes);
  s = tier_->ReadPage({1, 2, 3}, out.data(), kPageBytes - 1);
  EXPECT_TRUE(absl::IsDataLoss(s)) << s;
  s = tier_->ReadPage({1, 2, 3}, out.data(), 100);
  EXPECT_TRUE(absl::IsDataLoss(s)) << s;
  std::vector<uint8_t> bigger(kPageBytes + 1);
  s = tier_->ReadPage({1, 2, 3}, bigger.data(), bigger.size());
  EXPECT_TRUE(absl::IsDataLoss(s)) << s;
  EXPECT_TRUE(HasPage({1, 2, 3}, kPageBytes));
  // DeletePage, twice: the second is of an absent page and still OK.
  EXPECT_TRUE(tier_->DeletePage({1, 2, 3}).ok());
  EXPECT_TRUE(tier_->DeletePage({1, 2, 3}).ok());
  EXPECT_FALSE(HasPage({1, 2, 3}, kPageBytes));
}

TEST_F(DiskTierTest, ManifestsListInSequenceOrderAndOverwrite) {
  OpenTier();
  auto empty = tier_->ListManifests();
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->empty());
  std::string binary("a\0b\xff", 4);
  const std::string big(100000, 'x');
  for (const auto& [seq, m] : std::vector<std::pair<uint64_t, std::string>>{
           {300, "three hundred"}, {2, binary}, {1ull << 33, big}, {5, ""}, {2, "two"}}) {
    ASSERT_TRUE(tier_->Write({}, seq, &m).ok());
  }
  auto manifests = tier_->ListManifests();
  ASSERT_TRUE(manifests.ok());
  const std::vector<std::pair<uint64_t, std::string>> want = {
      {2, "two"}, {5, ""}, {300, "three hundred"}, {1ull << 33, big}};
  EXPECT_EQ(*manifests, want);
}

TEST_F(DiskTierTest, BatchOfPagesAndManifestIsAllOrNothing) {
  OpenTier();
  std::vector<std::vector<uint8_t>> data;
  std::vector<DiskTier::PageWrite> writes;
  for (uint32_t p = 0; p < 4; ++p) {
    data.push_back(RandomBytes(kPageBytes, Seed({9, 0, p})));
    writes.push_back({{9, 0, p}, data.back().data(), data.back().size()});
  }
  const std::string manifest = "seq 9: 4 pages";
  // A bad page in the middle: nothing of the batch is written.
  std::vector<DiskTier::PageWrite> bad = writes;
  bad.insert(bad.begin() + 2, DiskTier::PageWrite{{9, 0, 99}, nullptr, kPageBytes});
  absl::Status s = tier_->Write(bad, 9, &manifest);
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  for (uint32_t p = 0; p < 4; ++p) EXPECT_FALSE(HasPage({9, 0, p}, kPageBytes));
  EXPECT_TRUE(tier_->ListManifests()->empty());
  // The good batch: everything.
  ASSERT_TRUE(tier_->Write(writes, 9, &manifest).ok());
  for (uint32_t p = 0; p < 4; ++p) EXPECT_TRUE(HasPage({9, 0, p}, kPageBytes));
  auto manifests = tier_->ListManifests();
  ASSERT_TRUE(manifests.ok());
  ASSERT_EQ(manifests->size(), 1u);
  EXPECT_EQ((*manifests)[0], std::make_pair(uint64_t{9}, manifest));
  EXPECT_TRUE(tier_->Write({}).ok());  // empty batch: no-op
}

TEST_F(DiskTierTest, ReopenKeepsEverything) {
  OpenTier();
  for (uint32_t p = 0; p < 24; ++p) WritePage({42, p % 3, p}, kPageBytes);  // 6 MiB > memtable
  const std::string manifest = "forty-two";
  ASSERT_TRUE(tier_->Write({}, 42, &manifest).ok());
  ASSERT_TRUE(tier_->DeleteSequence(41).ok());
  OpenTier();  // closes the first instance, then opens the same path
  for (uint32_t p = 0; p < 24; ++p) EXPECT_TRUE(HasPage({42, p % 3, p}, kPageBytes));
  auto manifests = tier_->ListManifests();
  ASSERT_TRUE(manifests.ok());
  ASSERT_EQ(manifests->size(), 1u);
  EXPECT_EQ((*manifests)[0].second, manifest);
}

// Writer half of SurvivesProcessCrash: runs only in the child that test starts.
TEST(DiskTierCrashChild, WriteThenCrash) {
  const char* path = std::getenv("IHIP_DISK_TIER_CRASH_PATH");
  if (path == nullptr) GTEST_SKIP() << "helper of DiskTierTest.SurvivesProcessCrash";
  DiskTierOptions options;
  options.path = path;  // sync stays false: the write is in the OS page cache only
  auto tier = DiskTier::Open(options);
  if (!tier.ok()) _exit(2);
  std::vector<uint8_t> page = RandomBytes(kPageBytes, Seed({5, 1, 2}));
  const std::string manifest = "crash";
  if (!(*tier)->Write({{{5, 1, 2}, page.data(), page.size()}}, 5, &manifest).ok()) _exit(3);
  _exit(0);  // no destructor, no Close, no flush: as if the process were killed
}

TEST_F(DiskTierTest, SurvivesProcessCrash) {
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // A fresh process image, so no RocksDB threads are inherited half-alive from this one.
    if (freopen("/dev/null", "w", stdout) == nullptr) _exit(126);
    setenv("IHIP_DISK_TIER_CRASH_PATH", options_.path.c_str(), 1);
    execl("/proc/self/exe", "disk_tier_test", "--gtest_filter=DiskTierCrashChild.WriteThenCrash",
          static_cast<char*>(nullptr));
    _exit(127);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  ASSERT_EQ(WEXITSTATUS(status), 0);
  OpenTier();
  EXPECT_TRUE(HasPage({5, 1, 2}, kPageBytes));
  auto manifests = tier_->ListManifests();
  ASSERT_TRUE(manifests.ok());
  ASSERT_EQ(manifests->size(), 1u);
  EXPECT_EQ((*manifests)[0].second, "crash");
}

TEST_F(DiskTierTest, CompactKeepsLiveDataAndDropsDeleted) {
  OpenTier();
  for (uint64_t seq = 1; seq <= 4; ++seq)
    for (uint32_t p = 0; p < 8; ++p) WritePage({seq, 0, p}, kPageBytes);
  ASSERT_TRUE(tier_->Compact().ok());
  const uint64_t before = tier_->Statistics()["rocksdb.total-blob-file-size"];
  EXPECT_GE(before, 32 * kPageBytes);
  for (uint64_t seq : {1u, 2u, 3u}) ASSERT_TRUE(tier_->DeleteSequence(seq).ok());
  ASSERT_TRUE(tier_->Compact().ok());
  const uint64_t after = tier_->Statistics()["rocksdb.total-blob-file-size"];
  EXPECT_LT(after, before);
  // Blob GC ran over every file: what is left is sequence 4's pages plus record headers, even
  // where a blob file also held pages of sequence 3.
  EXPECT_LE(after, 8 * kPageBytes + (64 << 10));
  for (uint32_t p = 0; p < 8; ++p) {
    EXPECT_FALSE(HasPage({1, 0, p}, kPageBytes));
    EXPECT_TRUE(HasPage({4, 0, p}, kPageBytes));
  }
  OpenTier();
  for (uint32_t p = 0; p < 8; ++p) EXPECT_TRUE(HasPage({4, 0, p}, kPageBytes));
}

TEST_F(DiskTierTest, StatisticsCountBytesWritten) {
  OpenTier();
  for (uint32_t p = 0; p < 4; ++p) WritePage({1, 0, p}, kPageBytes);
  std::map<std::string, uint64_t> stats = tier_->Statistics();
  EXPECT_GE(stats["rocksdb.bytes.written"], 4 * kPageBytes);
  EXPECT_GT(stats["rocksdb.number.keys.written"], 0u);
  EXPECT_EQ(stats.count("rocksdb.estimate-live-data-size"), 1u);
  EXPECT_EQ(stats.count("rocksdb.total-blob-file-size"), 1u);
  ASSERT_EQ(stats.count("ihip.direct_io"), 1u);
  // 1 where the filesystem under $TMPDIR takes O_DIRECT (ext4, xfs), 0 where Open fell back.
  EXPECT_LE(stats["ihip.direct_io"], 1u);
}

TEST_F(DiskTierTest, BufferedIoWorks) {
  options_.direct_reads = false;
  options_.direct_writes = false;
  OpenTier();
  WritePage({1, 1, 1}, kPageBytes);
  EXPECT_TRUE(HasPage({1, 1, 1}, kPageBytes));
  EXPECT_EQ(tier_->Statistics()["ihip.direct_io"], 0u);
}

TEST_F(DiskTierTest, OpenOnTmpfsWorks) {
  // tmpfs takes O_DIRECT on recent kernels only; either way Open must succeed (it falls back to
  // buffered I/O where O_DIRECT is refused).
  if (!std::filesystem::is_directory("/dev/shm")) GTEST_SKIP() << "no /dev/shm";
  char tmpl[] = "/dev/shm/ihip_disk_tier_test.XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  options_.path = tmpl;
  OpenTier();
  WritePage({1, 1, 1}, kPageBytes);
  EXPECT_TRUE(HasPage({1, 1, 1}, kPageBytes));
  EXPECT_LE(tier_->Statistics()["ihip.direct_io"], 1u);
  tier_.reset();
  std::filesystem::remove_all(tmpl);
}

TEST_F(DiskTierTest, OpenErrorsAreStatuses) {
  // Root may write anywhere, so "unwritable" is a path below a regular file.
  const std::string file = dir_ + "/a_file";
  std::ofstream(file) << "not a directory";
  options_.path = file + "/db";
  auto tier = DiskTier::Open(options_);
  EXPECT_FALSE(tier.ok());
  EXPECT_NE(tier.status().message().find("Not a directory"), absl::string_view::npos)
      << tier.status();
  options_.path = file;
  tier = DiskTier::Open(options_);
  EXPECT_FALSE(tier.ok());
  options_.path = "";
  tier = DiskTier::Open(options_);
  EXPECT_TRUE(absl::IsInvalidArgument(tier.status())) << tier.status();
  options_.path = dir_ + "/db";
  options_.background_jobs = -1;
  EXPECT_TRUE(absl::IsInvalidArgument(DiskTier::Open(options_).status()));
  options_.background_jobs = 0;
  options_.memtables = 1;  // no memtable left to take writes while one flushes
  EXPECT_TRUE(absl::IsInvalidArgument(DiskTier::Open(options_).status()));
  options_.memtables = 2;
  EXPECT_TRUE(DiskTier::Open(options_).ok());
}

// Flush() puts what the memtables hold into blob files before it returns (spill benchmarks time
// until then); the pages read back the same.
TEST_F(DiskTierTest, FlushWritesMemtablesToBlobFiles) {
  options_.write_buffer_bytes = 64 << 20;  // nothing flushes on its own
  OpenTier();
  std::vector<std::vector<uint8_t>> pages;
  std::vector<DiskTier::PageWrite> writes;
  for (uint32_t i = 0; i < 4; ++i) pages.push_back(RandomBytes(64 << 10, Seed(PageKey{7, 0, i})));
  for (uint32_t i = 0; i < 4; ++i) writes.push_back({PageKey{7, 0, i}, pages[i].data(), 64 << 10});
  ASSERT_TRUE(tier_->Write(writes, 0, nullptr, /*write_ahead_log=*/false).ok());
  EXPECT_EQ(tier_->Statistics()["rocksdb.num-blob-files"], 0u);
  EXPECT_GE(tier_->Statistics()["rocksdb.cur-size-all-mem-tables"], 4u * (64 << 10));
  ASSERT_TRUE(tier_->Flush().ok());
  EXPECT_GE(tier_->Statistics()["rocksdb.num-blob-files"], 1u);
  EXPECT_LT(tier_->Statistics()["rocksdb.cur-size-all-mem-tables"], 64u << 10);
  for (uint32_t i = 0; i < 4; ++i) EXPECT_TRUE(HasPage(PageKey{7, 0, i}, 64 << 10)) << i;
}

// The options reach RocksDB: automatic memtables are the flush threads + 2, flushes half the
// jobs (at least 2), compactions the rest (at least 1), and an explicit count is kept.
TEST_F(DiskTierTest, ConfigurationReachesRocksDb) {
  options_.background_jobs = 8;
  options_.memtables = 0;
  OpenTier();
  std::map<std::string, uint64_t> st = tier_->Statistics();
  EXPECT_EQ(st["ihip.flush_threads"], 4u);
  EXPECT_EQ(st["ihip.compaction_threads"], 4u);
  EXPECT_EQ(st["ihip.memtables"], 6u);
  EXPECT_EQ(st["ihip.memtable_bytes"], options_.write_buffer_bytes);
  EXPECT_GE(st["ihip.delayed_write_rate"], uint64_t(1) << 30);
  tier_.reset();
  options_.background_jobs = 2;
  options_.memtables = 3;
  OpenTier();
  st = tier_->Statistics();
  EXPECT_EQ(st["ihip.flush_threads"], 2u);
  EXPECT_EQ(st["ihip.compaction_threads"], 1u);
  EXPECT_EQ(st["ihip.memtables"], 3u);
}

TEST_F(DiskTierTest, SecondOpenOfSamePathFails) {
  OpenTier();
  auto second = DiskTier::Open(options_);  // RocksDB's LOCK file is held by the first
  EXPECT_FALSE(second.ok());
  EXPECT_FALSE(second.status().message().empty());
}

}  // namespace
}  // namespace ihip::kvstore
