#pragma once

// ServerMetrics: ihip-server's Prometheus metrics (prefix ihip_server_), registered at start-up.
// Thread-safe (prometheus-cpp metrics are).

#include <array>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace ihip::attention {

class ServerMetrics {
 public:
  explicit ServerMetrics(prometheus::Registry& registry);

  // One finished RPC (or stream message): its method, code, and where the time went.
  void OnRequest(const std::string& method, absl::StatusCode code, absl::Duration queue,
                 absl::Duration engine, absl::Duration total);
  // One attended item: T queries, keys attended, the stage a decode step re-ran from.
  void OnAttend(int64_t tokens, int64_t attended_keys, int refreshed_from_stage, bool decode);
  void OnAppend(int64_t tokens) { tokens_appended_->Increment(double(tokens)); }

  prometheus::Gauge* queue_length;  // requests waiting for an engine worker
  prometheus::Gauge* running;       // requests an engine worker is on
  prometheus::Gauge* active_sequences;
  prometheus::Gauge* kv_utilization;   // 0..1 of the KV capacity in use (host tier)
  prometheus::Gauge* kv_block_tokens;  // tokens per KV page (block size)
  prometheus::Gauge* kv_blocks_used;   // KV pages in use (block count)
  prometheus::Gauge* kv_blocks_total;  // KV pages the host tier holds
  prometheus::Gauge* kv_bytes_host;
  prometheus::Gauge* kv_bytes_disk;
  prometheus::Gauge* pinned_layers;
  prometheus::Gauge* kvstore_up;  // 1 while the kvstore answers
  prometheus::Gauge* engine_healthy;  // 0 once the engine failed for good (the process exits)

 private:
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Histogram>& latency_;
  prometheus::Counter* tokens_appended_;
  prometheus::Counter* tokens_attended_;
  prometheus::Histogram* selected_;
  std::array<prometheus::Counter*, 5> refreshes_{};
};

}  // namespace ihip::attention
