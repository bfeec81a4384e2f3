#include "services/attention/conversions.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace ihip::attention {
namespace {

absl::Status Bad(const std::string& msg) { return absl::InvalidArgumentError(msg); }

absl::Status ApplyLayer(const ihip::v1::LayerHipConfig& p, const std::string& where,
                        engine::LayerConfig* c) {
  if (p.has_sink_tokens()) c->sink_tokens = int(p.sink_tokens());
  if (p.has_window_tokens()) c->window_tokens = int(p.window_tokens());
  if (p.stages_size() > 0) {
    std::vector<engine::StageSpec> stages;
    for (int i = 0; i < p.stages_size(); ++i) {
      const auto& s = p.stages(i);
      engine::StageSpec out;
      out.chunk_size = int(std::min<uint32_t>(s.chunk_size(), 1u << 30));
      out.kept_tokens = int(std::min<uint32_t>(s.kept_tokens(), 1u << 30));
      if (s.refresh_interval() != 0) {
        out.refresh_interval = int(std::min<uint32_t>(s.refresh_interval(), 1u << 30));
      } else if (i < int(c->stages.size())) {
        out.refresh_interval = c->stages[i].refresh_interval;
      } else {
        return Bad(absl::StrCat(where, ".stages[", i, "].refresh_interval is required"));
      }
      stages.push_back(out);
    }
    c->stages = std::move(stages);
  }
  switch (p.prune_rope_style()) {
    case ihip::v1::LayerHipConfig::PRUNE_ROPE_STYLE_RELATIVE:
      c->prune_rope_style = engine::PruneRopeStyle::kRelative;
      break;
    case ihip::v1::LayerHipConfig::PRUNE_ROPE_STYLE_CHUNK_INDEXED:
      c->prune_rope_style = engine::PruneRopeStyle::kChunkIndexed;
      break;
    case ihip::v1::LayerHipConfig::PRUNE_ROPE_STYLE_UNSPECIFIED:
      break;
    default:
      return Bad(absl::StrCat(where, ".prune_rope_style has an unknown value"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<engine::DType> DTypeFromProto(ihip::v1::DType d, const char* field) {
  switch (d) {
    case ihip::v1::DTYPE_FP32:
      return engine::DType::kF32;
    case ihip::v1::DTYPE_FP16:
      return engine::DType::kF16;
    case ihip::v1::DTYPE_BF16:
      return engine::DType::kBF16;
    case ihip::v1::DTYPE_FP8_E4M3:
      return engine::DType::kF8E4M3;
    case ihip::v1::DTYPE_FP8_E5M2:
      return engine::DType::kF8E5M2;
    default:
      return Bad(absl::StrCat(field, " has an unknown value ", int(d)));
  }
}

absl::StatusOr<engine::ModelSpec> ModelSpecFromProto(const ihip::v1::ModelSpec& p,
                                                     int64_t default_max_context) {
  engine::ModelSpec m;
  auto clamp = [](uint32_t v) { return int(std::min<uint32_t>(v, 1u << 20)); };
  m.num_layers = clamp(p.num_layers());
  m.num_q_heads = clamp(p.num_q_heads());
  m.num_kv_heads = clamp(p.num_kv_heads());
  m.head_dim = clamp(p.head_dim());
  if (p.dtype() == ihip::v1::DTYPE_UNSPECIFIED) return Bad("model.dtype is required");
  auto dtype = DTypeFromProto(p.dtype(), "model.dtype");
  if (!dtype.ok()) return dtype.status();
  m.dtype = *dtype;
  if (p.kv_storage_dtype() == ihip::v1::DTYPE_UNSPECIFIED) {
    m.kv_dtype = m.dtype;
  } else {
    auto kv = DTypeFromProto(p.kv_storage_dtype(), "model.kv_storage_dtype");
    if (!kv.ok()) return kv.status();
    m.kv_dtype = *kv;
  }
  switch (p.rope().mode()) {
    case ihip::v1::ROPE_MODE_UNSPECIFIED:
    case ihip::v1::ROPE_MODE_NONE:
      m.rope.mode = engine::RopeMode::kNone;
      break;
    case ihip::v1::ROPE_MODE_EXTEND:
      m.rope.mode = engine::RopeMode::kExtend;
      break;
    default:
      return Bad("model.rope.mode has an unknown value");
  }
  m.rope.theta = p.rope().theta() == 0 ? 10000.0 : p.rope().theta();
  if (p.rope().has_llama3_scaling()) {
    const auto& s = p.rope().llama3_scaling();
    m.rope.llama3 = engine::Llama3Scaling{s.factor(), s.low_freq_factor(), s.high_freq_factor(),
                                          double(s.original_max_position_embeddings())};
  }
  if (p.has_softmax_scale()) m.softmax_scale = p.softmax_scale();
  m.max_context = p.max_context() == 0 ? default_max_context
                                       : int64_t(std::min<uint64_t>(p.max_context(), 1ull << 40));
  absl::Status valid = m.Validate();
  if (!valid.ok()) return valid;
  return m;
}

absl::StatusOr<engine::HipConfig> HipConfigFromProto(const ihip::v1::HipConfig& p, int num_layers) {
  engine::HipPreset preset = engine::HipPreset::k3K;
  switch (p.preset()) {
    case ihip::v1::HipConfig::PRESET_UNSPECIFIED:
    case ihip::v1::HipConfig::PRESET_3K:
      break;
    case ihip::v1::HipConfig::PRESET_5K:
      preset = engine::HipPreset::k5K;
      break;
    default:
      return Bad("config.preset has an unknown value");
  }
  engine::RefreshPreset refresh = engine::RefreshPreset::kPaper;
  switch (p.refresh()) {
    case ihip::v1::HipConfig::REFRESH_PRESET_UNSPECIFIED:
    case ihip::v1::HipConfig::REFRESH_PRESET_PAPER:
      break;
    case ihip::v1::HipConfig::REFRESH_PRESET_FAST:
      refresh = engine::RefreshPreset::kFast;
      break;
    case ihip::v1::HipConfig::REFRESH_PRESET_FLASH:
      refresh = engine::RefreshPreset::kFlash;
      break;
    default:
      return Bad("config.refresh has an unknown value");
  }
  engine::HipConfig c = engine::HipConfig::Make(preset, refresh);
  if (p.has_dense_layers()) {
    c.dense_layers.assign(p.dense_layers().layers().begin(), p.dense_layers().layers().end());
  } else {
    c.dense_layers.clear();
    for (int l = 0; l < std::min(3, num_layers); ++l) c.dense_layers.push_back(l);
  }
  if (p.has_all_layers()) {
    absl::Status s = ApplyLayer(p.all_layers(), "config.all_layers", &c.default_layer);
    if (s.ok()) s = ApplyLayer(p.all_layers(), "config.all_layers", &c.dense_layer);
    if (!s.ok()) return s;
  }
  for (int i = 0; i < p.layer_overrides_size(); ++i) {
    const auto& o = p.layer_overrides(i);
    if (o.layer() >= uint32_t(num_layers)) {
      return Bad(absl::StrCat("config.layer_overrides[", i, "].layer ", o.layer(),
                              " is out of range [0, ", num_layers, ")"));
    }
    engine::LayerConfig layer = c.ForLayer(int(o.layer()));
    absl::Status s =
        ApplyLayer(o.config(), absl::StrCat("config.layer_overrides[", i, "].config"), &layer);
    if (!s.ok()) return s;
    c.overrides[int(o.layer())] = layer;
  }
  absl::Status valid = c.Validate(num_layers);
  if (!valid.ok()) return valid;
  return c;
}

ihip::v1::ModelSpec ModelSpecToProto(const engine::ModelSpec& m) {
  ihip::v1::ModelSpec p;
  p.set_num_layers(m.num_layers);
  p.set_num_q_heads(m.num_q_heads);
  p.set_num_kv_heads(m.num_kv_heads);
  p.set_head_dim(m.head_dim);
  auto to = [](engine::DType d) {
    switch (d) {
      case engine::DType::kF32:
        return ihip::v1::DTYPE_FP32;
      case engine::DType::kF16:
        return ihip::v1::DTYPE_FP16;
      case engine::DType::kBF16:
        return ihip::v1::DTYPE_BF16;
      case engine::DType::kF8E4M3:
        return ihip::v1::DTYPE_FP8_E4M3;
      case engine::DType::kF8E5M2:
        return ihip::v1::DTYPE_FP8_E5M2;
    }
    return ihip::v1::DTYPE_UNSPECIFIED;
  };
  p.set_dtype(to(m.dtype));
  p.set_kv_storage_dtype(to(m.kv_dtype));
  p.mutable_rope()->set_mode(m.rope.mode == engine::RopeMode::kExtend ? ihip::v1::ROPE_MODE_EXTEND
                                                                      : ihip::v1::ROPE_MODE_NONE);
  p.mutable_rope()->set_theta(m.rope.theta);
  if (m.rope.llama3.has_value()) {
    auto* s = p.mutable_rope()->mutable_llama3_scaling();
    s->set_factor(m.rope.llama3->factor);
    s->set_low_freq_factor(m.rope.llama3->low_freq_factor);
    s->set_high_freq_factor(m.rope.llama3->high_freq_factor);
    s->set_original_max_position_embeddings(uint64_t(m.rope.llama3->original_max_positions));
  }
  p.set_softmax_scale(m.scale());
  p.set_max_context(uint64_t(m.max_context));
  return p;
}

}  // namespace ihip::attention
