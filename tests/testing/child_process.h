#pragma once

// ChildProcess: starts one of our binaries for a test, reads its stdout line by line (to wait
// for its "ready" line), signals it and reaps it. The destructor SIGKILLs and reaps a child that
// is still running, so a failing test never leaves a server behind. Not thread-safe.

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/time/time.h"

namespace ihip::testing {

class ChildProcess {
 public:
  ChildProcess() = default;
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  // argv[0] is the binary's path. stderr goes to `stderr_path` (empty: inherited).
  bool Start(const std::vector<std::string>& argv, const std::string& stderr_path = "");
  // Reads stdout until a line starting with `prefix`; returns it ("" on timeout or EOF).
  std::string WaitForLine(const std::string& prefix, absl::Duration timeout);
  void Signal(int sig);
  // Waits for exit; returns the exit code, 128 + signal if killed, -1 on timeout.
  int Wait(absl::Duration timeout);
  bool running() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  int stdout_fd_ = -1;
  std::string buffer_;
};

// A free TCP port on 127.0.0.1 (bound and released; fine for tests that start a server next).
int FreePort();
// Value of key=... in a "ready" line ("ihip-kvstore ready grpc_port=123 ...").
int ReadyField(const std::string& line, const std::string& key);
// A fresh temporary directory (mkdtemp), removed by RemoveTree.
std::string MakeTempDir();
void RemoveTree(const std::string& path);

}  // namespace ihip::testing
