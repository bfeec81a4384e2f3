#pragma once

// Plain value types shared by the engine's public interface: element types, the model shape a
// sequence serves, RoPE parameters and the KV page geometry. CUDA-free, protobuf-free.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace ihip::engine {

using SequenceId = std::string;

// Element types. kF32/kF16/kBF16 are wire types (q, k, v, o) and storage types; the FP8 types
// are storage-only (OCP E4M3 "fn": finite, max 448; OCP E5M2), converted with saturation.
enum class DType : uint8_t { kF32, kF16, kBF16, kF8E4M3, kF8E5M2 };

size_t DTypeSize(DType t);
const char* DTypeName(DType t);
bool IsWireDType(DType t);

enum class RopeMode : uint8_t {
  kNone,    // q and k arrive already rotated (or the model has no RoPE); never rotate
  kExtend,  // q and k arrive before RoPE; keys are stored unrotated, rotated on the fly
};

// Llama-3 style frequency scaling (rope_type "llama3").
struct Llama3Scaling {
  double factor = 8.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  double original_max_positions = 8192;
};

struct RopeSpec {
  RopeMode mode = RopeMode::kNone;
  double theta = 10000.0;               // base of the inverse frequencies
  std::optional<Llama3Scaling> llama3;  // absent: plain RoPE
};

// The shape of the model a sequence serves.
struct ModelSpec {
  int num_layers = 1;
  int num_q_heads = 32;           // Hq
  int num_kv_heads = 8;           // Hkv; divides Hq
  int head_dim = 128;             // D: 64, 128 or 256
  DType dtype = DType::kBF16;     // wire dtype of q, k, v, o
  DType kv_dtype = DType::kBF16;  // KV storage dtype
  RopeSpec rope;
  std::optional<float> softmax_scale;      // default 1/sqrt(D)
  int64_t max_context = int64_t{1} << 22;  // tokens per layer

  int group() const { return num_q_heads / num_kv_heads; }
  float scale() const;
  // Checks every field; the message names the offending field.
  absl::Status Validate() const;
};

// Layout of one KV page (DESIGN §4): `page_tokens` tokens of K, then the same of V, each laid
// out [page_tokens][kv_heads][head_dim] in `dtype`.
struct PageGeometry {
  int page_tokens = 64;
  int kv_heads = 8;
  int head_dim = 128;
  DType dtype = DType::kBF16;

  size_t row_bytes() const { return size_t(kv_heads) * head_dim * DTypeSize(dtype); }
  size_t half_bytes() const { return row_bytes() * page_tokens; }  // K or V part
  size_t page_bytes() const { return 2 * half_bytes(); }
  absl::Status Validate() const;
};

}  // namespace ihip::engine
