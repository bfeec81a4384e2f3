#pragma once

// Proto <-> engine conversions for the public API (the only place they happen; the engine never
// sees a protobuf). Every error is INVALID_ARGUMENT naming the offending field.

#include "absl/status/statusor.h"
#include "engine/hip_config.h"
#include "engine/types.h"
#include "ihip/v1/attention.pb.h"

namespace ihip::attention {

// `default_max_context` replaces max_context 0.
absl::StatusOr<engine::ModelSpec> ModelSpecFromProto(const ihip::v1::ModelSpec& p,
                                                     int64_t default_max_context);
// Unset fields take the preset's values; dense_layers absent = {0, 1, 2} cut to the model's
// layers.
absl::StatusOr<engine::HipConfig> HipConfigFromProto(const ihip::v1::HipConfig& p, int num_layers);
absl::StatusOr<engine::DType> DTypeFromProto(ihip::v1::DType d, const char* field);
// The spec as the service uses it (defaults filled in), for SequenceInfo.
ihip::v1::ModelSpec ModelSpecToProto(const engine::ModelSpec& m);

}  // namespace ihip::attention
