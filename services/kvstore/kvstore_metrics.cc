#include "services/kvstore/kvstore_metrics.h"

#include "absl/strings/str_replace.h"

namespace ihip::kvstore_service {

using kvstore::Op;

const char* OpName(Op op) {
  switch (op) {
    case Op::kCreateSequence:
      return "create_sequence";
    case Op::kOpenSequence:
      return "open_sequence";
    case Op::kDropSequence:
      return "drop_sequence";
    case Op::kAllocate:
      return "allocate";
    case Op::kCommit:
      return "commit";
    case Op::kAbort:
      return "abort";
    case Op::kPin:
      return "pin";
    case Op::kUnpin:
      return "unpin";
    case Op::kDetach:
      return "detach";
    case Op::kSuspendSequence:
      return "suspend_sequence";
    case Op::kTruncate:
      return "truncate";
    default:
      return "unknown";
  }
}

KvStoreMetrics::KvStoreMetrics(prometheus::Registry& r)
    : pages_(prometheus::BuildGauge()
                 .Name("ihip_kvstore_pages")
                 .Help("KV pages held, by tier (host = shm pool, disk = RocksDB only)")
                 .Register(r)),
      bytes_(prometheus::BuildGauge()
                 .Name("ihip_kvstore_bytes")
                 .Help("Bytes of KV pages held, by tier")
                 .Register(r)),
      request_seconds_(prometheus::BuildHistogram()
                           .Name("ihip_kvstore_ring_request_seconds")
                           .Help("Service time of ring requests inside the kvstore, by op")
                           .Register(r)),
      requests_(prometheus::BuildCounter()
                    .Name("ihip_kvstore_ring_requests_total")
                    .Help("Ring requests served, by op and status code")
                    .Register(r)),
      rocksdb_(prometheus::BuildGauge()
                   .Name("ihip_kvstore_rocksdb_statistic")
                   .Help("RocksDB statistics and properties of the disk tier, by name")
                   .Register(r)) {
  pages_host_ = &pages_.Add({{"tier", "host"}});
  pages_disk_ = &pages_.Add({{"tier", "disk"}});
  bytes_host_ = &bytes_.Add({{"tier", "host"}});
  bytes_disk_ = &bytes_.Add({{"tier", "disk"}});
  auto gauge = [&](const char* name, const char* help) {
    return &prometheus::BuildGauge().Name(name).Help(help).Register(r).Add({});
  };
  auto counter = [&](const char* name, const char* help) {
    return &prometheus::BuildCounter().Name(name).Help(help).Register(r).Add({});
  };
  slots_total_ = gauge("ihip_kvstore_slots", "Page slots in the host tier");
  pages_pinned_ = gauge("ihip_kvstore_pinned_pages", "Resident pages pinned by a client");
  sequences_ = gauge("ihip_kvstore_sequences", "Sequences stored");
  clients_ = gauge("ihip_kvstore_clients", "Attached clients");
  populate_seconds_ =
      gauge("ihip_kvstore_pool_populate_seconds", "Time to populate the shm pool at start");
  spilled_pages_ = counter("ihip_kvstore_spilled_pages_total", "Pages moved out of the host tier");
  spilled_bytes_ = counter("ihip_kvstore_spilled_bytes_total", "Bytes written to disk by spills");
  fetched_pages_ =
      counter("ihip_kvstore_fetched_back_pages_total", "Pages read back from disk on pin");
  fetched_bytes_ =
      counter("ihip_kvstore_fetched_back_bytes_total", "Bytes read back from disk on pin");
  write_through_bytes_ = counter("ihip_kvstore_write_through_bytes_total",
                                 "Committed bytes written through to disk (durable mode)");
  const prometheus::Histogram::BucketBoundaries buckets = {1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4,
                                                           2e-4, 5e-4, 1e-3, 5e-3, 2e-2, 1e-1, 1.0};
  for (uint32_t op = 1; op <= 11; ++op) {
    by_op_[op] = &request_seconds_.Add({{"op", OpName(Op(op))}}, buckets);
  }
  by_op_[0] = &request_seconds_.Add({{"op", "unknown"}}, buckets);
}

void KvStoreMetrics::Refresh(const kvstore::StoreStats& s, uint32_t clients,
                             kvstore::DiskTier* disk) {
  std::lock_guard<std::mutex> lock(mu_);
  pages_host_->Set(double(s.slots_used));
  pages_disk_->Set(double(s.pages_disk_only));
  bytes_host_->Set(double(s.slots_used * s.slot_bytes));
  bytes_disk_->Set(double(s.pages_disk_only * s.slot_bytes));
  slots_total_->Set(double(s.slots_total));
  pages_pinned_->Set(double(s.pages_pinned));
  sequences_->Set(double(s.sequences));
  clients_->Set(double(clients));
  spilled_pages_->Increment(double(s.spills - last_.spills));
  spilled_bytes_->Increment(double(s.spill_bytes - last_.spill_bytes));
  fetched_pages_->Increment(double(s.fetch_backs - last_.fetch_backs));
  fetched_bytes_->Increment(double(s.fetch_back_bytes - last_.fetch_back_bytes));
  write_through_bytes_->Increment(double(s.write_through_bytes - last_.write_through_bytes));
  last_ = s;
  if (disk != nullptr) {
    for (const auto& [name, value] : disk->Statistics()) {
      rocksdb_.Add({{"name", name}}).Set(double(value));
    }
  }
}

void KvStoreMetrics::OnRequest(Op op, absl::StatusCode code, absl::Duration service) {
  const uint32_t i = uint32_t(op) < by_op_.size() && by_op_[uint32_t(op)] ? uint32_t(op) : 0;
  by_op_[i]->Observe(absl::ToDoubleSeconds(service));
  requests_.Add({{"op", OpName(op)}, {"code", absl::StatusCodeToString(code)}}).Increment();
}

}  // namespace ihip::kvstore_service
