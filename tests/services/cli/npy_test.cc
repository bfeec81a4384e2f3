// The CLI's .npy reader and writer: header versions 1-3, accepted and rejected dtypes, orders
// and shapes, size checks, and a write/read round trip.

#include "services/cli/npy.h"

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace ihip::cli {
namespace {

// A .npy header of `version` around `dict` (padded to 64 bytes, newline-terminated).
std::string Header(const std::string& dict, int version = 1) {
  const size_t prefix = version == 1 ? 10 : 12;
  std::string h = dict;
  h.append((prefix + h.size() + 1 + 63) / 64 * 64 - prefix - h.size() - 1, ' ');
  h += '\n';
  std::string out = "\x93NUMPY";
  out += char(version);
  out += char(0);
  for (size_t i = 0; i < prefix - 8; ++i) out += char((h.size() >> (8 * i)) & 0xff);
  return out + h;
}

absl::StatusOr<NpyHeader> Parse(const std::string& bytes) {
  return ParseNpyHeader(bytes.data(), bytes.size());
}

TEST(NpyTest, ParsesEveryVersionAndAcceptedDescr) {
  for (int version : {1, 2, 3}) {
    const std::string h =
        Header("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2, 64), }", version);
    absl::StatusOr<NpyHeader> p = Parse(h);
    ASSERT_TRUE(p.ok()) << p.status();
    EXPECT_EQ(p->type, NpyType::kF32);
    EXPECT_EQ(p->shape, (std::vector<int64_t>{3, 2, 64}));
    EXPECT_EQ(p->data_offset, h.size());
    EXPECT_EQ(p->data_offset % 64, 0u);
    EXPECT_EQ(p->num_bytes(), 3u * 2 * 64 * 4);
  }
  const std::pair<const char*, NpyType> cases[] = {{"<f2", NpyType::kF16},
                                                   {"<u2", NpyType::kBF16},
                                                   {"|V2", NpyType::kBF16},
                                                   {"<V2", NpyType::kBF16}};
  for (const auto& [descr, type] : cases) {
    absl::StatusOr<NpyHeader> p = Parse(Header(std::string("{\"descr\": \"") + descr +
                                               "\", \"fortran_order\": False, \"shape\": (5,)}"));
    ASSERT_TRUE(p.ok()) << descr << ": " << p.status();
    EXPECT_EQ(p->type, type) << descr;
    EXPECT_EQ(p->shape, (std::vector<int64_t>{5}));
  }
  absl::StatusOr<NpyHeader> scalar =
      Parse(Header("{'shape': (), 'fortran_order': False, 'descr': '<f4'}"));
  ASSERT_TRUE(scalar.ok()) << scalar.status();
  EXPECT_TRUE(scalar->shape.empty());
  EXPECT_EQ(scalar->num_elements(), 1);
}

TEST(NpyTest, RejectsWhatTheCliCannotSend) {
  const std::pair<std::string, std::string> cases[] = {
      {Header("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }"), "fortran_order"},
      {Header("{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }"), "big-endian"},
      {Header("{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }"), "'<f8'"},
      {Header("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }"), "structured"},
      {Header("{'descr': '<f4', 'shape': (2, 3), }"), "fortran_order"},
      {Header("{'descr': '<f4', 'fortran_order': False, 'shape': (2, -3), }"), "shape"},
      {Header("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 4), "version 4"},
      {"\x93NUMPX\x01\x00\x10\x00", "magic"},
      {Header("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }").substr(0, 30),
       "truncated"},
  };
  for (const auto& [bytes, what] : cases) {
    absl::StatusOr<NpyHeader> p = Parse(bytes);
    ASSERT_FALSE(p.ok()) << "accepted a header that should fail with " << what;
    EXPECT_NE(p.status().message().find(what), absl::string_view::npos) << p.status();
  }
}

class NpyFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* tmp = std::getenv("TMPDIR");
    path_ = std::string(tmp ? tmp : "/tmp") + "/ihip-npy-test-" + std::to_string(getpid()) + ".npy";
  }
  void TearDown() override { unlink(path_.c_str()); }
  std::string path_;
};

TEST_F(NpyFileTest, WriteThenReadRoundTrips) {
  std::vector<uint16_t> data(2 * 7 * 3);
  for (size_t i = 0; i < data.size(); ++i) data[i] = uint16_t(i * 977);
  ASSERT_TRUE(WriteNpy(path_, NpyType::kBF16, {2, 7, 3}, data.data()).ok());
  absl::StatusOr<NpyArray> a = ReadNpy(path_);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->header.type, NpyType::kBF16);
  EXPECT_EQ(a->header.shape, (std::vector<int64_t>{2, 7, 3}));
  EXPECT_EQ(a->header.data_offset % 64, 0u);
  EXPECT_EQ(std::memcmp(a->data(), data.data(), data.size() * 2), 0);
}

TEST_F(NpyFileTest, DataSizeMustMatchTheShape) {
  std::vector<float> data(6, 1.f);
  ASSERT_TRUE(WriteNpy(path_, NpyType::kF32, {2, 3}, data.data()).ok());
  {
    std::ofstream f(path_, std::ios::binary | std::ios::app);
    f.write("xxxx", 4);
  }
  absl::StatusOr<NpyArray> a = ReadNpy(path_);
  ASSERT_FALSE(a.ok());
  EXPECT_NE(a.status().message().find("needs 24"), absl::string_view::npos) << a.status();
  EXPECT_EQ(ReadNpy(path_ + ".missing").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace ihip::cli
