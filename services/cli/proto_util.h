#pragma once

// The CLI's conversions between ihip.v1 messages, flag values, engine types and text: dtype
// names, wire sizes, the ModelSpec / HipConfig a command's flags describe, and how a
// SequenceInfo is printed (text and JSON).

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/hip_config.h"
#include "engine/types.h"
#include "ihip/v1/attention.pb.h"
#include "services/cli/npy.h"

namespace ihip::cli {

// "bf16", "fp16", "fp32", and with `storage` also "fp8_e4m3", "fp8_e5m2".
absl::StatusOr<v1::DType> ParseDType(const std::string& name, bool storage);
const char* DTypeName(v1::DType t);
size_t WireSize(v1::DType t);                         // bytes per element of a wire dtype
absl::StatusOr<engine::DType> ToEngine(v1::DType t);  // for local conversions and checks
NpyType NpyTypeOf(v1::DType wire);                    // a wire dtype's .npy element type

// The ModelSpec and HipConfig described by --layers, --q_heads, ..., --preset, --refresh,
// --dense_layers (checked locally only for what the flags themselves get wrong).
absl::StatusOr<v1::ModelSpec> ModelSpecFromFlags();
absl::StatusOr<v1::HipConfig> HipConfigFromFlags();
// The engine config matching a v1 preset/refresh pair (for local accuracy checks).
engine::HipConfig EngineConfigOf(const v1::HipConfig& c);

// Bytes of one token's k (or v) and q for `m`.
size_t KvRowBytes(const v1::ModelSpec& m);
size_t QRowBytes(const v1::ModelSpec& m);

// Multi-line description, each line indented by `indent`.
std::string FormatSequenceInfo(const v1::SequenceInfo& info, const std::string& indent = "  ");
std::string SequenceInfoJson(const v1::SequenceInfo& info);
// Tokens stored: the least and most over layers.
uint64_t MinLength(const v1::SequenceInfo& info);
uint64_t MaxLength(const v1::SequenceInfo& info);

std::string HumanBytes(double bytes);          // "1.50 MiB"
std::string JsonString(const std::string& s);  // quoted and escaped
// "0-3,8,10-11": ascending indices as ranges.
std::string FormatRanges(const std::vector<uint64_t>& sorted);

}  // namespace ihip::cli
