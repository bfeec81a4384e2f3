#pragma once

// The one place where absl::Status and grpc::Status convert into each other.

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace ihip::services {

grpc::Status ToGrpc(const absl::Status& s);
absl::Status FromGrpc(const grpc::Status& s);

}  // namespace ihip::services
