#include "services/cli/proto_util.h"

#include <algorithm>
#include <cmath>

#include "absl/flags/flag.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "services/cli/cli_flags.h"

namespace ihip::cli {
namespace {

absl::Status Usage(const std::string& msg) { return absl::InvalidArgumentError(msg); }

const char* RopeName(v1::RopeMode m) { return m == v1::ROPE_MODE_EXTEND ? "extend" : "none"; }

const char* PresetName(v1::HipConfig::Preset p) {
  return p == v1::HipConfig::PRESET_5K ? "5k" : "3k";
}

const char* RefreshName(v1::HipConfig::RefreshPreset r) {
  switch (r) {
    case v1::HipConfig::REFRESH_PRESET_FAST:
      return "fast";
    case v1::HipConfig::REFRESH_PRESET_FLASH:
      return "flash";
    default:
      return "paper";
  }
}

// Without dense_layers the service uses {0, 1, 2} cut to the model's layers.
std::string DenseLayersText(const v1::HipConfig& c, uint32_t num_layers) {
  if (!c.has_dense_layers()) {
    std::vector<uint32_t> d;
    for (uint32_t l = 0; l < std::min(3u, num_layers); ++l) d.push_back(l);
    return absl::StrCat(absl::StrJoin(d, ","), " (default)");
  }
  if (c.dense_layers().layers().empty()) return "none";
  return absl::StrJoin(c.dense_layers().layers(), ",");
}

std::string LengthsText(const v1::SequenceInfo& info) {
  const auto& l = info.layer_lengths();
  if (l.empty()) return "none reported";
  if (std::all_of(l.begin(), l.end(), [&](uint64_t x) { return x == l[0]; })) {
    return absl::StrCat("all ", l.size(), " layers ", l[0]);
  }
  std::vector<std::string> parts;
  for (int i = 0; i < l.size(); ++i) {
    if (l[i] != 0) parts.push_back(absl::StrCat("L", i, "=", l[i]));
  }
  return absl::StrCat(absl::StrJoin(parts, " "), " (other layers 0)");
}

}  // namespace

absl::StatusOr<v1::DType> ParseDType(const std::string& name, bool storage) {
  const std::string n = absl::AsciiStrToLower(name);
  if (n == "bf16" || n == "bfloat16") return v1::DTYPE_BF16;
  if (n == "fp16" || n == "f16" || n == "float16") return v1::DTYPE_FP16;
  if (n == "fp32" || n == "f32" || n == "float32") return v1::DTYPE_FP32;
  if (storage && (n == "fp8_e4m3" || n == "e4m3")) return v1::DTYPE_FP8_E4M3;
  if (storage && (n == "fp8_e5m2" || n == "e5m2")) return v1::DTYPE_FP8_E5M2;
  return Usage(absl::StrCat("unknown dtype '", name, "' (bf16, fp16, fp32",
                            storage ? ", fp8_e4m3, fp8_e5m2)" : ")"));
}

const char* DTypeName(v1::DType t) {
  switch (t) {
    case v1::DTYPE_FP32:
      return "fp32";
    case v1::DTYPE_FP16:
      return "fp16";
    case v1::DTYPE_BF16:
      return "bf16";
    case v1::DTYPE_FP8_E4M3:
      return "fp8_e4m3";
    case v1::DTYPE_FP8_E5M2:
      return "fp8_e5m2";
    default:
      return "unspecified";
  }
}

size_t WireSize(v1::DType t) { return t == v1::DTYPE_FP32 ? 4 : 2; }

absl::StatusOr<engine::DType> ToEngine(v1::DType t) {
  switch (t) {
    case v1::DTYPE_FP32:
      return engine::DType::kF32;
    case v1::DTYPE_FP16:
      return engine::DType::kF16;
    case v1::DTYPE_BF16:
      return engine::DType::kBF16;
    case v1::DTYPE_FP8_E4M3:
      return engine::DType::kF8E4M3;
    case v1::DTYPE_FP8_E5M2:
      return engine::DType::kF8E5M2;
    default:
      return absl::InvalidArgumentError(absl::StrCat("dtype ", int(t), " is not known"));
  }
}

NpyType NpyTypeOf(v1::DType wire) {
  return wire == v1::DTYPE_FP32   ? NpyType::kF32
         : wire == v1::DTYPE_FP16 ? NpyType::kF16
                                  : NpyType::kBF16;
}

absl::StatusOr<v1::ModelSpec> ModelSpecFromFlags() {
  v1::ModelSpec m;
  const int layers = absl::GetFlag(FLAGS_layers), hq = absl::GetFlag(FLAGS_q_heads);
  const int hkv = absl::GetFlag(FLAGS_kv_heads), d = absl::GetFlag(FLAGS_head_dim);
  if (layers < 1 || hq < 1 || hkv < 1 || d < 1) {
    return Usage("--layers, --q_heads, --kv_heads and --head_dim must be >= 1");
  }
  m.set_num_layers(uint32_t(layers));
  m.set_num_q_heads(uint32_t(hq));
  m.set_num_kv_heads(uint32_t(hkv));
  m.set_head_dim(uint32_t(d));
  absl::StatusOr<v1::DType> dtype = ParseDType(absl::GetFlag(FLAGS_dtype), false);
  if (!dtype.ok())
    return absl::InvalidArgumentError(absl::StrCat("--dtype: ", dtype.status().message()));
  m.set_dtype(*dtype);
  if (!absl::GetFlag(FLAGS_kv_dtype).empty()) {
    absl::StatusOr<v1::DType> kv = ParseDType(absl::GetFlag(FLAGS_kv_dtype), true);
    if (!kv.ok())
      return absl::InvalidArgumentError(absl::StrCat("--kv_dtype: ", kv.status().message()));
    m.set_kv_storage_dtype(*kv);
  }
  const std::string rope = absl::AsciiStrToLower(absl::GetFlag(FLAGS_rope));
  if (rope == "none") {
    m.mutable_rope()->set_mode(v1::ROPE_MODE_NONE);
  } else if (rope == "extend") {
    m.mutable_rope()->set_mode(v1::ROPE_MODE_EXTEND);
  } else {
    return Usage(absl::StrCat("--rope: unknown mode '", rope, "' (none, extend)"));
  }
  m.mutable_rope()->set_theta(absl::GetFlag(FLAGS_theta));
  if (absl::GetFlag(FLAGS_softmax_scale) != 0) {
    m.set_softmax_scale(float(absl::GetFlag(FLAGS_softmax_scale)));
  }
  if (absl::GetFlag(FLAGS_max_context) < 0) return Usage("--max_context must be >= 0");
  m.set_max_context(uint64_t(absl::GetFlag(FLAGS_max_context)));
  return m;
}

absl::StatusOr<v1::HipConfig> HipConfigFromFlags() {
  v1::HipConfig c;
  absl::StatusOr<engine::HipPreset> preset = engine::ParseHipPreset(absl::GetFlag(FLAGS_preset));
  if (!preset.ok())
    return absl::InvalidArgumentError(absl::StrCat("--preset: ", preset.status().message()));
  c.set_preset(*preset == engine::HipPreset::k5K ? v1::HipConfig::PRESET_5K
                                                 : v1::HipConfig::PRESET_3K);
  absl::StatusOr<engine::RefreshPreset> refresh =
      engine::ParseRefreshPreset(absl::GetFlag(FLAGS_refresh));
  if (!refresh.ok())
    return absl::InvalidArgumentError(absl::StrCat("--refresh: ", refresh.status().message()));
  c.set_refresh(*refresh == engine::RefreshPreset::kFast    ? v1::HipConfig::REFRESH_PRESET_FAST
                : *refresh == engine::RefreshPreset::kFlash ? v1::HipConfig::REFRESH_PRESET_FLASH
                                                            : v1::HipConfig::REFRESH_PRESET_PAPER);
  const std::string dense = absl::GetFlag(FLAGS_dense_layers);
  if (dense == "none") {
    c.mutable_dense_layers();  // present and empty: no dense layer
  } else if (!dense.empty()) {
    for (absl::string_view part : absl::StrSplit(dense, ',')) {
      uint32_t layer;
      if (!absl::SimpleAtoi(part, &layer)) {
        return Usage(absl::StrCat("--dense_layers: '", std::string(part), "' is not a layer"));
      }
      c.mutable_dense_layers()->add_layers(layer);
    }
  }
  return c;
}

engine::HipConfig EngineConfigOf(const v1::HipConfig& c) {
  engine::HipConfig e = engine::HipConfig::Make(
      c.preset() == v1::HipConfig::PRESET_5K ? engine::HipPreset::k5K : engine::HipPreset::k3K,
      c.refresh() == v1::HipConfig::REFRESH_PRESET_FAST    ? engine::RefreshPreset::kFast
      : c.refresh() == v1::HipConfig::REFRESH_PRESET_FLASH ? engine::RefreshPreset::kFlash
                                                           : engine::RefreshPreset::kPaper);
  if (c.has_dense_layers()) {
    e.dense_layers.assign(c.dense_layers().layers().begin(), c.dense_layers().layers().end());
  }
  return e;
}

size_t KvRowBytes(const v1::ModelSpec& m) {
  return size_t(m.num_kv_heads()) * m.head_dim() * WireSize(m.dtype());
}

size_t QRowBytes(const v1::ModelSpec& m) {
  return size_t(m.num_q_heads()) * m.head_dim() * WireSize(m.dtype());
}

uint64_t MinLength(const v1::SequenceInfo& info) {
  const auto& l = info.layer_lengths();
  return l.empty() ? 0 : *std::min_element(l.begin(), l.end());
}

uint64_t MaxLength(const v1::SequenceInfo& info) {
  const auto& l = info.layer_lengths();
  return l.empty() ? 0 : *std::max_element(l.begin(), l.end());
}

std::string FormatSequenceInfo(const v1::SequenceInfo& info, const std::string& indent) {
  const v1::ModelSpec& m = info.model();
  const v1::HipConfig& c = info.config();
  const v1::DType kv =
      m.kv_storage_dtype() == v1::DTYPE_UNSPECIFIED ? m.dtype() : m.kv_storage_dtype();
  std::string rope = RopeName(m.rope().mode());
  if (m.rope().mode() == v1::ROPE_MODE_EXTEND) {
    absl::StrAppend(&rope, " (theta ", m.rope().theta() == 0 ? 10000.0 : m.rope().theta(),
                    m.rope().has_llama3_scaling() ? ", llama3 scaling)" : ")");
  }
  std::string out = absl::StrFormat(
      "%ssequence %s (%s)\n"
      "%s  model:  %u layers, Hq %u, Hkv %u, D %u, dtype %s, kv %s, rope %s, max_context %s\n"
      "%s  config: preset %s, refresh %s, dense layers %s%s\n"
      "%s  tokens: %s\n"
      "%s  kv:     %s\n",
      indent, info.sequence_id(),
      info.state() == v1::SequenceInfo::STATE_SUSPENDED ? "suspended" : "active", indent,
      m.num_layers(), m.num_q_heads(), m.num_kv_heads(), m.head_dim(), DTypeName(m.dtype()),
      DTypeName(kv), rope, m.max_context() == 0 ? "default" : absl::StrCat(m.max_context()), indent,
      PresetName(c.preset()), RefreshName(c.refresh()), DenseLayersText(c, m.num_layers()),
      c.layer_overrides_size() > 0 ? absl::StrCat(", ", c.layer_overrides_size(), " overrides")
                                   : "",
      indent, LengthsText(info), indent, HumanBytes(double(info.kv_bytes())));
  return out;
}

std::string SequenceInfoJson(const v1::SequenceInfo& info) {
  const v1::ModelSpec& m = info.model();
  return absl::StrFormat(
      "{\"sequence_id\": %s, \"state\": \"%s\", \"num_layers\": %u, \"num_q_heads\": %u, "
      "\"num_kv_heads\": %u, \"head_dim\": %u, \"dtype\": \"%s\", \"kv_dtype\": \"%s\", "
      "\"rope\": \"%s\", \"max_context\": %u, \"layer_lengths\": [%s], \"kv_bytes\": %u}",
      JsonString(info.sequence_id()),
      info.state() == v1::SequenceInfo::STATE_SUSPENDED ? "suspended" : "active", m.num_layers(),
      m.num_q_heads(), m.num_kv_heads(), m.head_dim(), DTypeName(m.dtype()),
      DTypeName(m.kv_storage_dtype() == v1::DTYPE_UNSPECIFIED ? m.dtype() : m.kv_storage_dtype()),
      RopeName(m.rope().mode()), m.max_context(), absl::StrJoin(info.layer_lengths(), ", "),
      info.kv_bytes());
}

std::string HumanBytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024 && u < 4) {
    bytes /= 1024;
    ++u;
  }
  return u == 0 ? absl::StrFormat("%.0f B", bytes) : absl::StrFormat("%.2f %s", bytes, units[u]);
}

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += char(c);
    } else if (c < 0x20) {
      out += absl::StrFormat("\\u%04x", c);
    } else {
      out += char(c);
    }
  }
  return out + "\"";
}

std::string FormatRanges(const std::vector<uint64_t>& sorted) {
  std::vector<std::string> parts;
  for (size_t i = 0; i < sorted.size();) {
    size_t j = i;
    while (j + 1 < sorted.size() && sorted[j + 1] == sorted[j] + 1) ++j;
    parts.push_back(j == i ? absl::StrCat(sorted[i]) : absl::StrCat(sorted[i], "-", sorted[j]));
    i = j + 1;
  }
  return absl::StrJoin(parts, ",");
}

}  // namespace ihip::cli
