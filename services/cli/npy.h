#pragma once

// NumPy .npy files (format versions 1.0, 2.0 and 3.0): a reader that maps the file and checks its
// header, and a writer (version 1.0). Only what the CLI moves over the wire is accepted: C order
// (fortran_order False), little-endian float32 ('<f4'), float16 ('<f2') and bfloat16 stored as
// raw 2-byte values ('<u2', or '|V2' / '<V2' as ml_dtypes writes it). See
// https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html
//
// Not thread-safe per object; distinct objects are independent.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace ihip::cli {

// Element types a .npy file may hold for the CLI.
enum class NpyType { kF32, kF16, kBF16 };

const char* NpyTypeName(NpyType t);  // "float32", "float16", "bfloat16"
size_t NpyTypeSize(NpyType t);

struct NpyHeader {
  NpyType type = NpyType::kF32;
  std::vector<int64_t> shape;  // empty: a scalar
  size_t data_offset = 0;      // bytes before the array data

  int64_t num_elements() const;
  size_t num_bytes() const { return size_t(num_elements()) * NpyTypeSize(type); }
};

// Parses the header at the start of `bytes` (`size` bytes available). The error names what is
// wrong (magic, version, dtype, order, shape).
absl::StatusOr<NpyHeader> ParseNpyHeader(const void* bytes, size_t size);

// A read-only view of a file: memory-mapped (unmapped by the destructor).
class MappedFile {
 public:
  static absl::StatusOr<std::unique_ptr<MappedFile>> Open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::byte* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  std::string path_;
  const std::byte* data_ = nullptr;
  size_t size_ = 0;
};

// A .npy file: header checked, data size checked against the shape.
struct NpyArray {
  std::unique_ptr<MappedFile> file;
  NpyHeader header;
  const std::byte* data() const { return file->data() + header.data_offset; }
};

absl::StatusOr<NpyArray> ReadNpy(const std::string& path);

// Writes a version 1.0 .npy file (bfloat16 as '<u2').
absl::Status WriteNpy(const std::string& path, NpyType type, const std::vector<int64_t>& shape,
                      const void* data);

// "[2, 3, 4]"
std::string ShapeString(const std::vector<int64_t>& shape);

}  // namespace ihip::cli
