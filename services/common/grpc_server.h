#pragma once

// Starting and stopping our gRPC servers the same way everywhere: grpc.health.v1 and server
// reflection on, the given services registered, bound to host:port (port 0 = a free port).

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace ihip::services {

struct GrpcServer {
  std::unique_ptr<grpc::Server> server;
  int port = 0;
};

absl::StatusOr<GrpcServer> StartGrpcServer(const std::string& address,
                                           const std::vector<grpc::Service*>& services,
                                           int max_message_bytes = 64 << 20);

// Blocks SIGTERM and SIGINT in the calling thread (call first in main, before any thread starts,
// so every thread inherits the mask), then WaitForTerminationSignal() returns the signal.
void BlockTerminationSignals();
int WaitForTerminationSignal();

}  // namespace ihip::services
