#include "services/attention/server_metrics.h"

#include <algorithm>

namespace ihip::attention {
namespace {

const prometheus::Histogram::BucketBoundaries& LatencyBuckets() {
  static const prometheus::Histogram::BucketBoundaries b = {
      1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2,
      2e-2, 5e-2, 0.1,  0.2,  0.5,  1,    2,    5,    10,   30};
  return b;
}

}  // namespace

ServerMetrics::ServerMetrics(prometheus::Registry& r)
    : requests_(prometheus::BuildCounter()
                    .Name("ihip_server_requests_total")
                    .Help("RPCs (and stream messages) finished, by method and status code")
                    .Register(r)),
      latency_(prometheus::BuildHistogram()
                   .Name("ihip_server_request_seconds")
                   .Help("Request latency by method and phase (queue, engine, total)")
                   .Register(r)) {
  auto gauge = [&](const char* name, const char* help) {
    return &prometheus::BuildGauge().Name(name).Help(help).Register(r).Add({});
  };
  auto counter = [&](const char* name, const char* help) {
    return &prometheus::BuildCounter().Name(name).Help(help).Register(r).Add({});
  };
  queue_length = gauge("ihip_server_queue_length", "Requests waiting for an engine worker");
  running = gauge("ihip_server_running_requests", "Requests being computed");
  active_sequences = gauge("ihip_server_active_sequences", "Sequences this server holds");
  kv_utilization = gauge("ihip_server_kv_utilization",
                         "Share of the KV host tier in use (0..1), the router's KV gauge");
  kv_block_tokens = gauge("ihip_server_kv_block_size_tokens", "Tokens per KV page (block)");
  kv_blocks_used = gauge("ihip_server_kv_blocks_used", "KV pages (blocks) in use, host tier");
  kv_blocks_total = gauge("ihip_server_kv_blocks_total", "KV pages (blocks) the host tier holds");
  kv_bytes_host = gauge("ihip_server_kv_host_bytes", "Bytes of KV in the host tier");
  kv_bytes_disk = gauge("ihip_server_kv_disk_bytes",
                        "Bytes of KV only on disk (spilled or suspended; 0 without a kvstore)");
  pinned_layers = gauge("ihip_server_pinned_layers", "(sequence, layer) pairs with pinned KV");
  kvstore_up = gauge("ihip_server_kvstore_up", "1 while ihip-kvstore answers (1 without one)");
  engine_healthy = gauge("ihip_server_engine_healthy",
                         "0 once the compute backend failed for good (a sticky CUDA error): the "
                         "server then stops serving and exits non-zero");
  engine_healthy->Set(1);
  tokens_appended_ = counter("ihip_server_tokens_appended_total", "KV tokens appended");
  tokens_attended_ = counter("ihip_server_tokens_attended_total", "Query tokens attended");
  selected_ = &prometheus::BuildHistogram()
                   .Name("ihip_server_attended_keys_per_query")
                   .Help("Keys a query attended (sink + selected + window)")
                   .Register(r)
                   .Add({}, prometheus::Histogram::BucketBoundaries{
                                256, 1024, 2048, 3328, 4096, 5376, 8192, 16384, 65536, 1 << 20});
  auto& refresh = prometheus::BuildCounter()
                      .Name("ihip_server_mask_refreshes_total")
                      .Help("Decode steps by the stage their mask was re-run from (0 = reused)")
                      .Register(r);
  for (int s = 0; s < 5; ++s) refreshes_[s] = &refresh.Add({{"stage", std::to_string(s)}});
}

void ServerMetrics::OnRequest(const std::string& method, absl::StatusCode code,
                              absl::Duration queue, absl::Duration engine, absl::Duration total) {
  requests_.Add({{"method", method}, {"code", absl::StatusCodeToString(code)}}).Increment();
  latency_.Add({{"method", method}, {"phase", "queue"}}, LatencyBuckets())
      .Observe(absl::ToDoubleSeconds(queue));
  latency_.Add({{"method", method}, {"phase", "engine"}}, LatencyBuckets())
      .Observe(absl::ToDoubleSeconds(engine));
  latency_.Add({{"method", method}, {"phase", "total"}}, LatencyBuckets())
      .Observe(absl::ToDoubleSeconds(total));
}

void ServerMetrics::OnAttend(int64_t tokens, int64_t attended_keys, int refreshed_from_stage,
                             bool decode) {
  tokens_attended_->Increment(double(tokens));
  if (tokens > 0) selected_->Observe(double(attended_keys) / double(tokens));
  if (decode) refreshes_[std::clamp(refreshed_from_stage, 0, 4)]->Increment();
}

}  // namespace ihip::attention
