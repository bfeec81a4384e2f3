#include "engine/types.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace ihip::engine {

size_t DTypeSize(DType t) {
  switch (t) {
    case DType::kF32:
      return 4;
    case DType::kF16:
    case DType::kBF16:
      return 2;
    case DType::kF8E4M3:
    case DType::kF8E5M2:
      return 1;
  }
  return 0;
}

const char* DTypeName(DType t) {
  switch (t) {
    case DType::kF32:
      return "fp32";
    case DType::kF16:
      return "fp16";
    case DType::kBF16:
      return "bf16";
    case DType::kF8E4M3:
      return "fp8_e4m3";
    case DType::kF8E5M2:
      return "fp8_e5m2";
  }
  return "unknown";
}

bool IsWireDType(DType t) { return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16; }

float ModelSpec::scale() const {
  return softmax_scale.has_value() ? *softmax_scale : 1.0f / std::sqrt(float(head_dim));
}

absl::Status ModelSpec::Validate() const {
  auto bad = [](auto... parts) { return absl::InvalidArgumentError(absl::StrCat(parts...)); };
  if (num_layers < 1) return bad("model.num_layers must be >= 1, got ", num_layers);
  if (num_q_heads < 1) return bad("model.num_q_heads must be >= 1, got ", num_q_heads);
  if (num_kv_heads < 1) return bad("model.num_kv_heads must be >= 1, got ", num_kv_heads);
  if (num_layers > 4096) return bad("model.num_layers must be <= 4096, got ", num_layers);
  if (num_q_heads > 1024) return bad("model.num_q_heads must be <= 1024, got ", num_q_heads);
  if (num_kv_heads > 1024) return bad("model.num_kv_heads must be <= 1024, got ", num_kv_heads);
  if (num_q_heads % num_kv_heads != 0) {
    return bad("model.num_q_heads (", num_q_heads, ") must be a multiple of model.num_kv_heads (",
               num_kv_heads, ")");
  }
  if (head_dim != 64 && head_dim != 128 && head_dim != 256) {
    return bad("model.head_dim must be 64, 128 or 256, got ", head_dim);
  }
  if (uint8_t(kv_dtype) > uint8_t(DType::kF8E5M2)) {
    return bad("model.kv_dtype has an unknown value ", int(kv_dtype));
  }
  if (!IsWireDType(dtype)) {
    return bad("model.dtype must be fp32, fp16 or bf16 (", DTypeName(dtype), " is storage-only)");
  }
  if (softmax_scale.has_value() && !(std::isfinite(*softmax_scale) && *softmax_scale > 0)) {
    return bad("model.softmax_scale must be finite and > 0, got ", *softmax_scale);
  }
  if (max_context < 1) return bad("model.max_context must be >= 1, got ", max_context);
  if (rope.mode == RopeMode::kExtend) {
    if (!(rope.theta > 1.0) || !std::isfinite(rope.theta)) {
      return bad("model.rope.theta must be > 1, got ", rope.theta);
    }
    if (rope.llama3.has_value()) {
      const Llama3Scaling& s = *rope.llama3;
      if (!(s.factor >= 1.0) || !std::isfinite(s.factor)) {
        return bad("model.rope.llama3.factor must be finite and >= 1, got ", s.factor);
      }
      if (!(s.low_freq_factor > 0) || !(s.high_freq_factor > s.low_freq_factor) ||
          !std::isfinite(s.high_freq_factor)) {
        return bad("model.rope.llama3 needs 0 < low_freq_factor < high_freq_factor, got ",
                   s.low_freq_factor, " and ", s.high_freq_factor);
      }
      if (!(s.original_max_positions >= 1) || !std::isfinite(s.original_max_positions)) {
        return bad("model.rope.llama3.original_max_positions must be >= 1");
      }
    }
  }
  return absl::OkStatus();
}

absl::Status PageGeometry::Validate() const {
  if (page_tokens < 8 || page_tokens % 8 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_tokens must be a positive multiple of 8, got ", page_tokens));
  }
  if (kv_heads < 1 || head_dim < 1) {
    return absl::InvalidArgumentError("page geometry needs kv_heads >= 1 and head_dim >= 1");
  }
  return absl::OkStatus();
}

}  // namespace ihip::engine
