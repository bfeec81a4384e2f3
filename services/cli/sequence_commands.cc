// ihip create | list | stats | drop | suspend: sequence management over ihip.v1.Attention.

#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "services/cli/cli_flags.h"
#include "services/cli/commands.h"
#include "services/cli/proto_util.h"

namespace ihip::cli {

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "error: %s\n", std::string(s.message()).c_str());
  return kExitError;
}

AttentionClient MakeClient() {
  return AttentionClient(absl::GetFlag(FLAGS_server),
                         absl::Seconds(std::max(0.001, absl::GetFlag(FLAGS_deadline_s))));
}

absl::StatusOr<std::string> RequiredId() {
  const std::string id = absl::GetFlag(FLAGS_id);
  if (id.empty()) return absl::InvalidArgumentError("--id is required");
  return id;
}

int LayerFlagOr(int fallback) {
  const int layer = absl::GetFlag(FLAGS_layer);
  return layer == -1 ? fallback : layer;
}

SequenceGuard::~SequenceGuard() {
  if (id_.empty()) return;
  if (keep_) {
    std::printf("\nkept sequence %s on %s (`ihip drop --id=%s` releases it)\n", id_.c_str(),
                client_->address().c_str(), id_.c_str());
    return;
  }
  if (absl::Status s = client_->ReleaseSequence(id_); !s.ok()) {
    std::fprintf(stderr, "warning: %s\n", std::string(s.message()).c_str());
  }
}

int RunCreate() {
  v1::CreateSequenceRequest req;
  absl::StatusOr<v1::ModelSpec> model = ModelSpecFromFlags();
  if (!model.ok()) return Fail(model.status());
  absl::StatusOr<v1::HipConfig> config = HipConfigFromFlags();
  if (!config.ok()) return Fail(config.status());
  *req.mutable_model() = *model;
  *req.mutable_config() = *config;
  req.set_sequence_id(absl::GetFlag(FLAGS_id));
  AttentionClient client = MakeClient();
  absl::StatusOr<v1::SequenceInfo> info = client.CreateSequence(req);
  if (!info.ok()) return Fail(info.status());
  if (absl::GetFlag(FLAGS_json)) {
    std::printf("%s\n", SequenceInfoJson(*info).c_str());
  } else {
    std::printf("created %s\n%s", info->sequence_id().c_str(), FormatSequenceInfo(*info).c_str());
  }
  return kExitOk;
}

int RunList() {
  AttentionClient client = MakeClient();
  absl::StatusOr<std::vector<v1::SequenceInfo>> all = client.ListSequences();
  if (!all.ok()) return Fail(all.status());
  if (absl::GetFlag(FLAGS_json)) {
    std::printf("[");
    for (size_t i = 0; i < all->size(); ++i) {
      std::printf("%s\n  %s", i ? "," : "", SequenceInfoJson((*all)[i]).c_str());
    }
    std::printf("%s]\n", all->empty() ? "" : "\n");
    return kExitOk;
  }
  if (all->empty()) {
    std::printf("no sequences on %s\n", client.address().c_str());
    return kExitOk;
  }
  std::printf("%-36s %-9s %6s %-16s %-14s %12s %12s\n", "SEQUENCE", "STATE", "LAYERS",
              "HEADS (Q/KV x D)", "DTYPE/KV", "TOKENS (max)", "KV");
  for (const v1::SequenceInfo& s : *all) {
    const v1::ModelSpec& m = s.model();
    const v1::DType kv =
        m.kv_storage_dtype() == v1::DTYPE_UNSPECIFIED ? m.dtype() : m.kv_storage_dtype();
    std::printf(
        "%-36s %-9s %6u %-16s %-14s %12llu %12s\n", s.sequence_id().c_str(),
        s.state() == v1::SequenceInfo::STATE_SUSPENDED ? "suspended" : "active", m.num_layers(),
        absl::StrFormat("%u/%u x %u", m.num_q_heads(), m.num_kv_heads(), m.head_dim()).c_str(),
        absl::StrCat(DTypeName(m.dtype()), "/", DTypeName(kv)).c_str(),
        (unsigned long long)MaxLength(s), HumanBytes(double(s.kv_bytes())).c_str());
  }
  return kExitOk;
}

namespace {

int PrintOneSequence(const v1::SequenceInfo& info) {
  if (absl::GetFlag(FLAGS_json)) {
    std::printf("%s\n", SequenceInfoJson(info).c_str());
    return kExitOk;
  }
  std::printf("%s", FormatSequenceInfo(info, "").c_str());
  const auto& l = info.layer_lengths();
  uint64_t tokens = 0;
  for (uint64_t x : l) tokens += x;
  const size_t per_token = 2 * KvRowBytes(info.model());
  std::printf(
      "  stored: %llu tokens over %d layers; K+V per token and layer %s; "
      "wire-dtype size of the stored tokens %s\n",
      (unsigned long long)tokens, l.size(), HumanBytes(double(per_token)).c_str(),
      HumanBytes(double(tokens) * double(per_token)).c_str());
  std::printf("  layer lengths:");
  for (int i = 0; i < l.size(); ++i)
    std::printf("%s%d:%llu", i % 8 ? " " : "\n    ", i, (unsigned long long)l[i]);
  std::printf("\n");
  return kExitOk;
}

}  // namespace

int RunStats() {
  AttentionClient client = MakeClient();
  const std::string id = absl::GetFlag(FLAGS_id);
  if (!id.empty()) {
    absl::StatusOr<v1::SequenceInfo> info = client.GetSequence(id);
    if (!info.ok()) return Fail(info.status());
    return PrintOneSequence(*info);
  }
  absl::StatusOr<std::vector<v1::SequenceInfo>> all = client.ListSequences();
  if (!all.ok()) return Fail(all.status());
  uint64_t kv_bytes = 0, tokens = 0, suspended = 0;
  for (const v1::SequenceInfo& s : *all) {
    kv_bytes += s.kv_bytes();
    for (uint64_t x : s.layer_lengths()) tokens += x;
    suspended += s.state() == v1::SequenceInfo::STATE_SUSPENDED;
  }
  if (absl::GetFlag(FLAGS_json)) {
    std::printf(
        "{\"server\": %s, \"sequences\": %zu, \"active\": %llu, \"suspended\": %llu, "
        "\"layer_tokens\": %llu, \"kv_bytes\": %llu}\n",
        JsonString(client.address()).c_str(), all->size(),
        (unsigned long long)(all->size() - suspended), (unsigned long long)suspended,
        (unsigned long long)tokens, (unsigned long long)kv_bytes);
    return kExitOk;
  }
  std::printf("server %s\n", client.address().c_str());
  std::printf("  sequences:    %zu (%llu active, %llu suspended)\n", all->size(),
              (unsigned long long)(all->size() - suspended), (unsigned long long)suspended);
  std::printf("  layer tokens: %llu (tokens stored, summed over every sequence's layers)\n",
              (unsigned long long)tokens);
  std::printf("  kv bytes:     %s (%llu B)\n", HumanBytes(double(kv_bytes)).c_str(),
              (unsigned long long)kv_bytes);
  return kExitOk;
}

int RunDrop() {
  absl::StatusOr<std::string> id = RequiredId();
  if (!id.ok()) return Fail(id.status());
  AttentionClient client = MakeClient();
  if (absl::Status s = client.ReleaseSequence(*id); !s.ok()) return Fail(s);
  std::printf("released %s\n", id->c_str());
  return kExitOk;
}

int RunSuspend() {
  absl::StatusOr<std::string> id = RequiredId();
  if (!id.ok()) return Fail(id.status());
  AttentionClient client = MakeClient();
  if (absl::Status s = client.SuspendSequence(*id); !s.ok()) return Fail(s);
  std::printf("suspended %s\n", id->c_str());
  return kExitOk;
}

}  // namespace ihip::cli
