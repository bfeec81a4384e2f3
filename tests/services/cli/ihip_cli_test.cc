// The `ihip` binary against a real ihip-server (--kv_backend=memory) on loopback: create, append
// from .npy and raw files the test writes, decode (o compared with dense attention computed
// here), list, stats, drop, demo needle, bench, and the error paths (exit code 2 and the gRPC
// code in the message).

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"
#include "tests/testing/child_process.h"

namespace ihip {
namespace {

using testing::ChildProcess;

struct CliResult {
  int exit_code = -1;
  std::string out, err;
};

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void WriteFile(const std::string& path, const void* data, size_t n) {
  std::ofstream f(path, std::ios::binary);
  f.write(static_cast<const char*>(data), std::streamsize(n));
}

// Writes a .npy file by hand (independent of the CLI's writer): `version` 1 or 2, any descr.
void WriteNpy(const std::string& path, const std::string& descr, const std::vector<int64_t>& shape,
              const void* data, size_t bytes, int version = 1) {
  std::string dims = absl::StrJoin(shape, ", ");
  if (shape.size() == 1) dims += ",";
  std::string header =
      absl::StrCat("{'descr': '", descr, "', 'fortran_order': False, 'shape': (", dims, "), }");
  const size_t prefix = version == 1 ? 10 : 12;
  header.append((prefix + header.size() + 1 + 63) / 64 * 64 - prefix - header.size() - 1, ' ');
  header += '\n';
  std::string out = "\x93NUMPY";
  out += char(version);
  out += char(0);
  const uint32_t len = uint32_t(header.size());
  for (size_t i = 0; i < prefix - 8; ++i) out += char((len >> (8 * i)) & 0xff);
  out += header;
  out.append(static_cast<const char*>(data), bytes);
  WriteFile(path, out.data(), out.size());
}

std::vector<float> Random(size_t n, std::mt19937* rng) {
  std::normal_distribution<float> d(0.f, 1.f);
  std::vector<float> v(n);
  for (float& x : v) x = d(*rng);
  return v;
}

class IhipCliTest : public ::testing::Test {
 protected:
  static constexpr int kHq = 4, kHkv = 2, kD = 64;

  void SetUp() override {
    dir_ = testing::MakeTempDir();
    ASSERT_FALSE(dir_.empty());
    ASSERT_TRUE(server_.Start({IHIP_SERVER_BIN, "--kv_backend=memory", "--grpc_address=127.0.0.1:0",
                               "--metrics_host=127.0.0.1", "--metrics_port=0", "--threads=2"},
                              dir_ + "/server.log"));
    const std::string ready = server_.WaitForLine("ihip-server ready", absl::Seconds(60));
    ASSERT_FALSE(ready.empty()) << "ihip-server did not become ready:\n"
                                << ReadFile(dir_ + "/server.log");
    server_flag_ = absl::StrCat("--server=127.0.0.1:", testing::ReadyField(ready, "grpc_port"));
  }

  void TearDown() override {
    if (server_.running()) {
      server_.Signal(SIGTERM);
      EXPECT_EQ(server_.Wait(absl::Seconds(30)), 0) << ReadFile(dir_ + "/server.log");
    }
    testing::RemoveTree(dir_);
  }

  // Runs `ihip args... --server=...` and collects its exit code, stdout and stderr.
  CliResult Ihip(std::vector<std::string> args, bool with_server = true) {
    if (with_server) args.push_back(server_flag_);
    args.insert(args.begin(), IHIP_CLI_BIN);
    const std::string out = dir_ + "/cli.out", err = dir_ + "/cli.err";
    const pid_t pid = fork();
    if (pid == 0) {
      const int o = open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      const int e = open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(o, STDOUT_FILENO);
      dup2(e, STDERR_FILENO);
      std::vector<char*> argv;
      for (std::string& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    CliResult r;
    int status = 0;
    waitpid(pid, &status, 0);
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    r.out = ReadFile(out);
    r.err = ReadFile(err);
    return r;
  }

  std::string Path(const std::string& name) const { return dir_ + "/" + name; }

  std::string dir_;
  std::string server_flag_;
  ChildProcess server_;
};

#define EXPECT_CLI_OK(r) \
  EXPECT_EQ((r).exit_code, 0) << "stdout:\n" << (r).out << "stderr:\n" << (r).err

// Dense attention of one decode query over keys [0, n): o[h] = softmax(q_h k^T / sqrt(D)) v.
std::vector<float> Dense(const std::vector<float>& q, const std::vector<float>& k,
                         const std::vector<float>& v, int n, int hq, int hkv, int d) {
  std::vector<float> o(size_t(hq) * d, 0.f);
  for (int h = 0; h < hq; ++h) {
    const int g = h / (hq / hkv);
    std::vector<double> s(n);
    double m = -INFINITY;
    for (int t = 0; t < n; ++t) {
      double dot = 0;
      for (int i = 0; i < d; ++i) dot += double(q[h * d + i]) * k[(size_t(t) * hkv + g) * d + i];
      s[t] = dot / std::sqrt(double(d));
      m = std::max(m, s[t]);
    }
    double sum = 0;
    for (double& x : s) sum += (x = std::exp(x - m));
    for (int t = 0; t < n; ++t) {
      for (int i = 0; i < d; ++i) {
        o[h * d + i] += float(s[t] / sum * v[(size_t(t) * hkv + g) * d + i]);
      }
    }
  }
  return o;
}

TEST_F(IhipCliTest, CreateAppendDecodeListStatsDrop) {
  CliResult r = Ihip({"create", "--id=t1", "--layers=4", "--q_heads=4", "--kv_heads=2",
                      "--head_dim=64", "--dtype=fp32"});
  EXPECT_CLI_OK(r);
  EXPECT_NE(r.out.find("created t1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("4 layers, Hq 4, Hkv 2, D 64, dtype fp32"), std::string::npos) << r.out;

  // 3000 tokens from a K/V pair, 100 more from one [2, T, Hkv, D] file (format version 2), 50
  // more as raw bytes.
  std::mt19937 rng(7);
  constexpr int kT1 = 3000, kT2 = 100, kT3 = 50, kTotal = kT1 + kT2 + kT3 + 1;
  const size_t row = size_t(kHkv) * kD;
  std::vector<float> k = Random(kTotal * row, &rng), v = Random(kTotal * row, &rng);
  std::vector<float> q = Random(size_t(kHq) * kD, &rng);
  WriteNpy(Path("k.npy"), "<f4", {kT1, kHkv, kD}, k.data(), kT1 * row * 4);
  WriteNpy(Path("v.npy"), "<f4", {kT1, kHkv, kD}, v.data(), kT1 * row * 4);
  std::vector<float> kv2(k.begin() + kT1 * row, k.begin() + (kT1 + kT2) * row);
  kv2.insert(kv2.end(), v.begin() + kT1 * row, v.begin() + (kT1 + kT2) * row);
  WriteNpy(Path("kv2.npy"), "<f4", {2, kT2, kHkv, kD}, kv2.data(), kv2.size() * 4, 2);
  WriteFile(Path("k3.bin"), k.data() + (kT1 + kT2) * row, kT3 * row * 4);
  WriteFile(Path("v3.bin"), v.data() + (kT1 + kT2) * row, kT3 * row * 4);

  r = Ihip({"append", "--id=t1", "--layer=3", "--k=" + Path("k.npy"), "--v=" + Path("v.npy")});
  EXPECT_CLI_OK(r);
  EXPECT_NE(r.out.find("layer length now 3000"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("100%"), std::string::npos) << "no progress bar: " << r.err;
  r = Ihip({"append", "--id=t1", "--layer=3", "--from=" + Path("kv2.npy"), "--chunk_kib=16"});
  EXPECT_CLI_OK(r);
  EXPECT_NE(r.out.find("layer length now 3100"), std::string::npos) << r.out;
  r = Ihip({"append", "--id=t1", "--layer=3", "--raw", "--tokens=50", "--k=" + Path("k3.bin"),
            "--v=" + Path("v3.bin")});
  EXPECT_CLI_OK(r);
  EXPECT_NE(r.out.find("layer length now 3150"), std::string::npos) << r.out;

  // One decode step; q as [Hq, D], k and v as [1, Hkv, D]. With 3151 keys the default budget
  // (sink 256 + 2048 selected + window 1024) covers every key: o must equal dense attention.
  WriteNpy(Path("q.npy"), "<f4", {kHq, kD}, q.data(), q.size() * 4);
  WriteNpy(Path("k1.npy"), "<f4", {1, kHkv, kD}, k.data() + (kTotal - 1) * row, row * 4);
  WriteNpy(Path("v1.npy"), "<f4", {1, kHkv, kD}, v.data() + (kTotal - 1) * row, row * 4);
  r = Ihip({"decode", "--id=t1", "--layer=3", "--q=" + Path("q.npy"), "--k=" + Path("k1.npy"),
            "--v=" + Path("v1.npy"), "--show_blocks", "--out=" + Path("o.npy")});
  EXPECT_CLI_OK(r);
  EXPECT_NE(r.out.find("positions [3150, 3151)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("selected:"), std::string::npos) << r.out;
  const std::string o_file = ReadFile(Path("o.npy"));
  ASSERT_EQ(o_file.size(), 128 + size_t(kHq) * kD * 4);
  EXPECT_NE(o_file.find("'shape': (1, 4, 64)"), std::string::npos);
  std::vector<float> o(size_t(kHq) * kD);
  std::memcpy(o.data(), o_file.data() + 128, o.size() * 4);
  const std::vector<float> dense = Dense(q, k, v, kTotal, kHq, kHkv, kD);
  for (size_t i = 0; i < o.size(); ++i) {
    ASSERT_NEAR(o[i], dense[i], 1e-4 + 1e-3 * std::abs(dense[i])) << "element " << i;
  }

  r = Ihip({"list"});
  EXPECT_CLI_OK(r);
  EXPECT_NE(r.out.find("t1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("3151"), std::string::npos) << r.out;
  r = Ihip({"stats", "--id=t1"});
  EXPECT_CLI_OK(r);
  EXPECT_NE(r.out.find("L3=3151"), std::string::npos) << r.out;
  r = Ihip({"stats", "--json"});
  EXPECT_CLI_OK(r);
  EXPECT_NE(r.out.find("\"sequences\": 1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(absl::StrCat("\"kv_bytes\": ", 3151 * row * 2 * 4)), std::string::npos)
      << r.out;

  r = Ihip({"drop", "--id=t1"});
  EXPECT_CLI_OK(r);
  r = Ihip({"list"});
  EXPECT_CLI_OK(r);
  EXPECT_NE(r.out.find("no sequences"), std::string::npos) << r.out;
}

TEST_F(IhipCliTest, Bf16FilesAndDenseMode) {
  CliResult r = Ihip({"create", "--id=b", "--layers=2", "--q_heads=4", "--kv_heads=2",
                      "--head_dim=64", "--dtype=bf16", "--dense_layers=none"});
  EXPECT_CLI_OK(r);
  EXPECT_NE(r.out.find("dense layers none"), std::string::npos) << r.out;
  constexpr int kT = 500;
  std::vector<uint16_t> k(kT * kHkv * kD, 0x3f80), v(kT * kHkv * kD, 0x4000);  // 1.0, 2.0
  WriteNpy(Path("k.npy"), "|V2", {kT, kHkv, kD}, k.data(), k.size() * 2);
  WriteNpy(Path("v.npy"), "<u2", {kT, kHkv, kD}, v.data(), v.size() * 2);
  r = Ihip({"append", "--id=b", "--layer=1", "--k=" + Path("k.npy"), "--v=" + Path("v.npy")});
  EXPECT_CLI_OK(r);
  std::vector<uint16_t> q(kHq * kD, 0x3f80);
  WriteNpy(Path("q.npy"), "<u2", {1, kHq, kD}, q.data(), q.size() * 2);
  WriteNpy(Path("k1.npy"), "<u2", {1, kHkv, kD}, k.data(), kHkv * kD * 2);
  WriteNpy(Path("v1.npy"), "<u2", {1, kHkv, kD}, v.data(), kHkv * kD * 2);
  r = Ihip({"decode", "--id=b", "--layer=1", "--mode=dense", "--q=" + Path("q.npy"),
            "--k=" + Path("k1.npy"), "--v=" + Path("v1.npy")});
  EXPECT_CLI_OK(r);
  // Every value is 2.0, so o is 2.0 everywhere.
  EXPECT_NE(r.out.find("min 2.0000  max 2.0000"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("attended keys per head: 501"), std::string::npos) << r.out;
}

TEST_F(IhipCliTest, ErrorsExitWithCodeTwoAndNameTheGrpcCode) {
  CliResult r = Ihip({"stats", "--id=nope"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("NOT_FOUND"), std::string::npos) << r.err;
  r = Ihip({"drop", "--id=nope"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("NOT_FOUND"), std::string::npos) << r.err;
  r = Ihip({"decode", "--id=nope", "--q=x", "--k=x", "--v=x"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("NOT_FOUND"), std::string::npos) << r.err;

  // The server rejects what the CLI cannot know is wrong: a bad model shape.
  r = Ihip({"create", "--id=bad", "--head_dim=96"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("INVALID_ARGUMENT"), std::string::npos) << r.err;
  r = Ihip({"create", "--id=dup", "--layers=1", "--dtype=fp32"});
  EXPECT_CLI_OK(r);
  r = Ihip({"create", "--id=dup", "--layers=1", "--dtype=fp32"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("ALREADY_EXISTS"), std::string::npos) << r.err;

  // Files that do not fit the sequence: wrong dtype, wrong shape, not a .npy, gap in positions.
  std::vector<float> f(10 * 8 * 128, 0.5f);
  std::vector<uint16_t> h(10 * 8 * 128, 0x3c00);
  WriteNpy(Path("f16.npy"), "<f2", {10, 8, 128}, h.data(), h.size() * 2);
  WriteNpy(Path("f32.npy"), "<f4", {10, 8, 128}, f.data(), f.size() * 4);
  WriteNpy(Path("shape.npy"), "<f4", {10, 4, 256}, f.data(), f.size() * 4);
  WriteFile(Path("junk.npy"), "hello", 5);
  r = Ihip({"append", "--id=dup", "--k=" + Path("f16.npy"), "--v=" + Path("f32.npy")});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("wire dtype is fp32"), std::string::npos) << r.err;
  r = Ihip({"append", "--id=dup", "--k=" + Path("shape.npy"), "--v=" + Path("f32.npy")});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("[10, 4, 256]"), std::string::npos) << r.err;
  r = Ihip({"append", "--id=dup", "--k=" + Path("junk.npy"), "--v=" + Path("f32.npy")});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("magic"), std::string::npos) << r.err;
  r = Ihip(
      {"append", "--id=dup", "--position=5", "--k=" + Path("f32.npy"), "--v=" + Path("f32.npy")});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("INVALID_ARGUMENT"), std::string::npos) << r.err;
  r = Ihip({"append", "--id=dup", "--layer=1", "--k=" + Path("f32.npy"), "--v=" + Path("f32.npy")});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("out of range"), std::string::npos) << r.err;
  r = Ihip({"stats", "--id=dup"});
  EXPECT_CLI_OK(r);
  EXPECT_NE(r.out.find("all 1 layers 0"), std::string::npos) << "a rejected append changed "
                                                             << "the sequence:\n"
                                                             << r.out;

  // Usage errors.
  r = Ihip({"append"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--id is required"), std::string::npos) << r.err;
  r = Ihip({"list", "--no_such_flag=1"});
  EXPECT_EQ(r.exit_code, 2);
  r = Ihip({"frobnicate"});
  EXPECT_EQ(r.exit_code, 2);

  // No server at the address.
  r = Ihip({"list", absl::StrCat("--server=127.0.0.1:", testing::FreePort())}, false);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("UNAVAILABLE"), std::string::npos) << r.err;
}

TEST_F(IhipCliTest, HelpForEveryCommand) {
  for (const char* c :
       {"create", "append", "decode", "list", "stats", "drop", "suspend", "bench"}) {
    CliResult r = Ihip({c, "--help"}, false);
    EXPECT_CLI_OK(r);
    EXPECT_NE(r.out.find(absl::StrCat("Usage: ihip ", c)), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("--server"), std::string::npos) << r.out;
  }
  CliResult r = Ihip({"demo", "needle", "--help"}, false);
  EXPECT_CLI_OK(r);
  EXPECT_NE(r.out.find("--in_process"), std::string::npos) << r.out;
  r = Ihip({"--help"}, false);
  EXPECT_CLI_OK(r);
  EXPECT_NE(r.out.find("demo needle"), std::string::npos) << r.out;
}

TEST_F(IhipCliTest, DemoNeedleFindsTheNeedleAndReleasesTheSequence) {
  CliResult r = Ihip({"demo", "needle", "--context=16384"});
  EXPECT_CLI_OK(r);
  EXPECT_NE(r.out.find("needle found:      YES"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("server round trip"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("AppendKV"), std::string::npos) << "no progress bar: " << r.err;
  r = Ihip({"list"});
  EXPECT_NE(r.out.find("no sequences"), std::string::npos) << "not released:\n" << r.out;

  r = Ihip({"demo", "needle", "--context=8192", "--keep", "--id=kept"});
  EXPECT_CLI_OK(r);
  r = Ihip({"stats", "--id=kept"});
  EXPECT_CLI_OK(r);
  EXPECT_NE(r.out.find("L16=8192"), std::string::npos) << r.out;  // the decode step appended one

  r = Ihip({"demo", "needle", "--in_process", "--context=8192", "--threads=2"}, false);
  EXPECT_CLI_OK(r);
  EXPECT_NE(r.out.find("in-process"), std::string::npos) << r.out;
}

TEST_F(IhipCliTest, BenchPrintsTableAndJson) {
  CliResult r = Ihip({"bench", "--context=4096", "--steps=5", "--warmup=1"});
  EXPECT_CLI_OK(r);
  EXPECT_NE(r.out.find("unary Attend"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("AttendStream"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("MB/s"), std::string::npos) << r.out;
  r = Ihip({"bench", "--context=4096", "--steps=5", "--warmup=0", "--json"});
  EXPECT_CLI_OK(r);
  EXPECT_EQ(r.out.rfind("{\"server\"", 0), 0u) << r.out;
  EXPECT_NE(r.out.find("\"decode_stream\": {\"p50_ms\""), std::string::npos) << r.out;
  r = Ihip({"list"});
  EXPECT_NE(r.out.find("no sequences"), std::string::npos) << "bench left a sequence:\n" << r.out;
}

}  // namespace
}  // namespace ihip
