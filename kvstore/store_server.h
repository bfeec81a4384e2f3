#pragma once

// StoreServer: serves the request rings of every attached client on one thread (DESIGN §4):
// pops requests, runs them on the Store, posts completions (payloads in the client's mailbox)
// and rings the client's doorbell. It also reclaims clients whose lease expired or whose
// process died (their pins are released). Waiting is a brief spin, then a futex sleep.

#include <atomic>
#include <cstdint>
#include <functional>
#include <thread>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "kvstore/shm_segment.h"
#include "kvstore/store.h"

namespace ihip::kvstore {

struct StoreServerOptions {
  int spin = 2000;  // doorbell checks before sleeping (each ~40 ns): keeps round trips short
  // Called after each request with its op and service time (for metrics); may be empty.
  std::function<void(Op op, absl::StatusCode code, absl::Duration service)> on_request;
  // Called when a client attaches or is reclaimed/detached (for logs); may be empty.
  std::function<void(uint32_t client, const char* event)> on_client;
};

class StoreServer {
 public:
  StoreServer(const StoreServerOptions& options, ShmSegment* segment, Store* store);
  ~StoreServer();  // Stop()s

  // Starts serving: bumps the segment's epoch, marks it serving, starts the thread.
  void Start();
  // Marks the segment stopped (clients see UNAVAILABLE), finishes the request in progress,
  // wakes and joins the thread.
  void Stop();
  uint32_t attached_clients() const { return attached_.load(); }

 private:
  void Loop();
  bool AnyRequest() const;
  void Serve(uint32_t client, const Message& request);
  void Reply(uint32_t client, Message reply, const absl::Status& status, uint32_t bytes);
  void CheckLeases();
  void Reclaim(uint32_t client, const char* why);

  const StoreServerOptions options_;
  ShmSegment* const segment_;
  Store* const store_;
  // Entries seen in the "claiming" state: generation and when first seen. A client that died
  // between its claim and its attach would otherwise hold the entry forever.
  std::vector<std::pair<uint64_t, uint64_t>> claiming_seen_;
  std::atomic<bool> stop_{false};
  std::atomic<uint32_t> attached_{0};
  std::thread thread_;
};

}  // namespace ihip::kvstore
