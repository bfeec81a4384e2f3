#pragma once

// KvStoreMetrics: ihip-kvstore's Prometheus metrics (prefix ihip_kvstore_), built from a registry
// at start-up. Refresh() copies the store's and RocksDB's state into gauges/counters (called on
// every scrape); OnRequest() records one ring request (called from the ring server thread).

#include <array>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "kvstore/disk_tier.h"
#include "kvstore/shm_format.h"
#include "kvstore/store.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace ihip::kvstore_service {

class KvStoreMetrics {
 public:
  explicit KvStoreMetrics(prometheus::Registry& registry);

  void Refresh(const kvstore::StoreStats& stats, uint32_t clients, kvstore::DiskTier* disk);
  void OnRequest(kvstore::Op op, absl::StatusCode code, absl::Duration service);
  void SetPopulateSeconds(double s) { populate_seconds_->Set(s); }

 private:
  prometheus::Family<prometheus::Gauge>& pages_;
  prometheus::Family<prometheus::Gauge>& bytes_;
  prometheus::Gauge* pages_host_;
  prometheus::Gauge* pages_disk_;
  prometheus::Gauge* bytes_host_;
  prometheus::Gauge* bytes_disk_;
  prometheus::Gauge* slots_total_;
  prometheus::Gauge* pages_pinned_;
  prometheus::Gauge* sequences_;
  prometheus::Gauge* clients_;
  prometheus::Gauge* populate_seconds_;
  prometheus::Counter* spilled_pages_;
  prometheus::Counter* spilled_bytes_;
  prometheus::Counter* fetched_pages_;
  prometheus::Counter* fetched_bytes_;
  prometheus::Counter* write_through_bytes_;
  prometheus::Family<prometheus::Histogram>& request_seconds_;
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Gauge>& rocksdb_;
  std::array<prometheus::Histogram*, 16> by_op_{};
  std::mutex mu_;  // Refresh runs on scrape threads
  kvstore::StoreStats last_{};
};

const char* OpName(kvstore::Op op);

}  // namespace ihip::kvstore_service
