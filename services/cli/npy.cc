#include "services/cli/npy.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace ihip::cli {
namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicLen = 6;

absl::Status Bad(const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("not a usable .npy file: ", what));
}

// A value of the header dict: a string, a bool or a tuple of integers.
struct Value {
  enum Kind { kString, kBool, kTuple } kind = kString;
  std::string str;
  bool boolean = false;
  std::vector<int64_t> tuple;
};

// Parses the Python dict literal of a .npy header:
//   {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }
// Strings in single or double quotes (no escapes: none of the three keys' values need them).
class DictParser {
 public:
  explicit DictParser(const std::string& s) : s_(s) {}

  absl::StatusOr<std::map<std::string, Value>> Parse() {
    std::map<std::string, Value> out;
    if (!Eat('{')) return Bad("header is not a dict");
    for (;;) {
      if (Eat('}')) return out;
      std::optional<std::string> key = String();
      if (!key) return Bad(absl::StrCat("expected a key at header offset ", i_));
      if (!Eat(':')) return Bad(absl::StrCat("expected ':' after '", *key, "'"));
      absl::StatusOr<Value> v = ParseValue();
      if (!v.ok()) return v.status();
      out[*key] = *std::move(v);
      if (!Eat(',')) {
        if (Eat('}')) return out;
        return Bad(absl::StrCat("expected ',' or '}' at header offset ", i_));
      }
    }
  }

 private:
  void Skip() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\t')) ++i_;
  }
  bool Eat(char c) {
    Skip();
    if (i_ < s_.size() && s_[i_] == c) {
      ++i_;
      return true;
    }
    return false;
  }
  bool EatWord(const char* w) {
    Skip();
    const size_t n = std::strlen(w);
    if (s_.compare(i_, n, w) != 0) return false;
    i_ += n;
    return true;
  }
  std::optional<std::string> String() {
    Skip();
    if (i_ >= s_.size() || (s_[i_] != '\'' && s_[i_] != '"')) return std::nullopt;
    const char q = s_[i_++];
    const size_t end = s_.find(q, i_);
    if (end == std::string::npos) return std::nullopt;
    std::string r = s_.substr(i_, end - i_);
    i_ = end + 1;
    return r;
  }
  std::optional<int64_t> Int() {
    Skip();
    int64_t v = 0;
    const size_t start = i_;
    while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') {
      if (v > (std::numeric_limits<int64_t>::max() - 9) / 10) return std::nullopt;
      v = v * 10 + (s_[i_++] - '0');
    }
    if (i_ < s_.size() && s_[i_] == 'L') ++i_;  // Python 2 longs
    if (i_ == start) return std::nullopt;
    return v;
  }
  absl::StatusOr<Value> ParseValue() {
    Value v;
    if (EatWord("True") || EatWord("False")) {
      v.kind = Value::kBool;
      v.boolean = s_[i_ - 1] == 'e' && s_[i_ - 4] == 'T';  // "True" (not "False")
      return v;
    }
    if (std::optional<std::string> s = String()) {
      v.str = *s;
      return v;
    }
    if (Eat('(')) {
      v.kind = Value::kTuple;
      for (;;) {
        if (Eat(')')) return v;
        std::optional<int64_t> n = Int();
        if (!n) return Bad("shape must be a tuple of non-negative integers");
        v.tuple.push_back(*n);
        if (!Eat(',')) {
          if (Eat(')')) return v;
          return Bad("malformed shape tuple");
        }
      }
    }
    return Bad(absl::StrCat("unsupported header value at offset ", i_,
                            " (a structured dtype? only plain arrays are accepted)"));
  }

  const std::string& s_;
  size_t i_ = 0;
};

absl::StatusOr<NpyType> TypeFromDescr(const std::string& d) {
  if (d == "<f4") return NpyType::kF32;
  if (d == "<f2") return NpyType::kF16;
  if (d == "<u2" || d == "|V2" || d == "<V2" || d == "bfloat16" || d == "<bf16") {
    return NpyType::kBF16;
  }
  if (d.size() > 1 && d[0] == '>') {
    return Bad(absl::StrCat("descr '", d, "' is big-endian; save it little-endian ",
                            "(arr.astype(arr.dtype.newbyteorder('<')))"));
  }
  return Bad(absl::StrCat("descr '", d, "' is not one of '<f4' (float32), '<f2' (float16), ",
                          "'<u2' or '|V2' (bfloat16 as raw 16-bit values)"));
}

}  // namespace

const char* NpyTypeName(NpyType t) {
  switch (t) {
    case NpyType::kF32:
      return "float32";
    case NpyType::kF16:
      return "float16";
    case NpyType::kBF16:
      return "bfloat16";
  }
  return "?";
}

size_t NpyTypeSize(NpyType t) { return t == NpyType::kF32 ? 4 : 2; }

int64_t NpyHeader::num_elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::StatusOr<NpyHeader> ParseNpyHeader(const void* bytes, size_t size) {
  const auto* p = static_cast<const unsigned char*>(bytes);
  if (size < kMagicLen + 4 || std::memcmp(p, kMagic, kMagicLen) != 0) {
    return Bad("missing the \\x93NUMPY magic");
  }
  const int major = p[6];
  size_t header_len = 0, prefix = 0;
  if (major == 1) {
    header_len = size_t(p[8]) | size_t(p[9]) << 8;
    prefix = 10;
  } else if (major == 2 || major == 3) {
    if (size < 12) return Bad("truncated header");
    header_len = size_t(p[8]) | size_t(p[9]) << 8 | size_t(p[10]) << 16 | size_t(p[11]) << 24;
    prefix = 12;
  } else {
    return Bad(absl::StrCat("format version ", major, ".", int(p[7]), " (1, 2 and 3 are known)"));
  }
  if (prefix + header_len > size) return Bad("truncated header");
  const std::string text(reinterpret_cast<const char*>(p + prefix), header_len);
  absl::StatusOr<std::map<std::string, Value>> dict = DictParser(text).Parse();
  if (!dict.ok()) return dict.status();
  auto descr = dict->find("descr");
  auto order = dict->find("fortran_order");
  auto shape = dict->find("shape");
  if (descr == dict->end() || descr->second.kind != Value::kString) {
    return Bad("header has no string 'descr'");
  }
  if (order == dict->end() || order->second.kind != Value::kBool) {
    return Bad("header has no 'fortran_order'");
  }
  if (shape == dict->end() || shape->second.kind != Value::kTuple) {
    return Bad("header has no 'shape' tuple");
  }
  if (order->second.boolean) {
    return Bad("fortran_order is True; save a C-ordered array (np.ascontiguousarray)");
  }
  NpyHeader h;
  absl::StatusOr<NpyType> type = TypeFromDescr(descr->second.str);
  if (!type.ok()) return type.status();
  h.type = *type;
  h.shape = shape->second.tuple;
  h.data_offset = prefix + header_len;
  int64_t n = 1;
  for (int64_t d : h.shape) {
    if (d != 0 && n > std::numeric_limits<int64_t>::max() / 16 / d) return Bad("shape too large");
    n *= d;
  }
  return h;
}

absl::StatusOr<std::unique_ptr<MappedFile>> MappedFile::Open(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::NotFoundError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, " is not a regular file"));
  }
  std::unique_ptr<MappedFile> f(new MappedFile());
  f->path_ = path;
  f->size_ = size_t(st.st_size);
  if (f->size_ > 0) {
    void* m = mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
      const int err = errno;
      close(fd);
      return absl::InternalError(absl::StrCat("cannot map ", path, ": ", std::strerror(err)));
    }
    f->data_ = static_cast<const std::byte*>(m);
  }
  close(fd);
  return f;
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) munmap(const_cast<std::byte*>(data_), size_);
}

absl::StatusOr<NpyArray> ReadNpy(const std::string& path) {
  absl::StatusOr<std::unique_ptr<MappedFile>> f = MappedFile::Open(path);
  if (!f.ok()) return f.status();
  absl::StatusOr<NpyHeader> h = ParseNpyHeader((*f)->data(), (*f)->size());
  if (!h.ok())
    return absl::Status(h.status().code(), absl::StrCat(path, ": ", h.status().message()));
  const size_t want = h->data_offset + h->num_bytes();
  if ((*f)->size() != want) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": file holds ", (*f)->size() - h->data_offset, " data bytes but ",
                     NpyTypeName(h->type), " ", ShapeString(h->shape), " needs ", h->num_bytes()));
  }
  NpyArray a;
  a.file = *std::move(f);
  a.header = *h;
  return a;
}

absl::Status WriteNpy(const std::string& path, NpyType type, const std::vector<int64_t>& shape,
                      const void* data) {
  const char* descr = type == NpyType::kF32 ? "<f4" : type == NpyType::kF16 ? "<f2" : "<u2";
  std::string dims = absl::StrJoin(shape, ", ");
  if (shape.size() == 1) dims += ",";
  std::string header =
      absl::StrCat("{'descr': '", descr, "', 'fortran_order': False, 'shape': (", dims, "), }");
  // Pad with spaces so that magic + version + length + header + '\n' is a multiple of 64.
  const size_t total = (10 + header.size() + 1 + 63) / 64 * 64;
  header.append(total - 10 - header.size() - 1, ' ');
  header.push_back('\n');
  if (header.size() > 0xffff) return absl::InvalidArgumentError("shape too long for .npy 1.0");
  NpyHeader h;
  h.type = type;
  h.shape = shape;
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot write ", path, ": ", std::strerror(errno)));
  }
  const unsigned char prefix[10] = {0x93,
                                    'N',
                                    'U',
                                    'M',
                                    'P',
                                    'Y',
                                    1,
                                    0,
                                    (unsigned char)(header.size() & 0xff),
                                    (unsigned char)(header.size() >> 8)};
  bool ok = std::fwrite(prefix, 1, 10, f) == 10 &&
            std::fwrite(header.data(), 1, header.size(), f) == header.size() &&
            std::fwrite(data, 1, h.num_bytes(), f) == h.num_bytes();
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) return absl::DataLossError(absl::StrCat("short write to ", path));
  return absl::OkStatus();
}

}  // namespace ihip::cli
