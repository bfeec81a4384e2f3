#pragma once

// The `ihip` subcommands. Each reads its flags (cli_flags.h), talks to ihip-server over gRPC
// (except `demo needle --in_process`) and returns the process exit code:
//   0 ok, 1 a check failed (e.g. the needle was missed), 2 usage error or failed RPC.
// Errors go to stderr as "error: <what>" with the gRPC status code name.

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "services/cli/attention_client.h"

namespace ihip::cli {

constexpr int kExitOk = 0;
constexpr int kExitCheckFailed = 1;
constexpr int kExitError = 2;

int RunCreate();
int RunAppend();
int RunDecode();
int RunList();
int RunStats();
int RunDrop();
int RunSuspend();
int RunDemoNeedle();  // remote, or in-process with --in_process
int RunBench();

// Shared by the commands.
int Fail(const absl::Status& s);           // prints "error: ..." to stderr, returns kExitError
AttentionClient MakeClient();              // --server, --deadline_s
absl::StatusOr<std::string> RequiredId();  // --id, which must be set
int LayerFlagOr(int fallback);             // --layer, or `fallback` when it is -1

// Releases a sequence when it goes out of scope, however the command ends; with `keep` it only
// says how to release it.
class SequenceGuard {
 public:
  SequenceGuard(AttentionClient* client, bool keep) : client_(client), keep_(keep) {}
  ~SequenceGuard();
  SequenceGuard(const SequenceGuard&) = delete;
  SequenceGuard& operator=(const SequenceGuard&) = delete;
  void Set(const std::string& id) { id_ = id; }

 private:
  AttentionClient* client_;
  bool keep_;
  std::string id_;
};

}  // namespace ihip::cli
