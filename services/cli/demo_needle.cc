// `ihip demo needle` against ihip-server: create a Llama-3-8B-shaped sequence, stream the
// synthetic context of one layer through AppendKV, decode its last token with one sparse Attend
// (selected blocks returned) and check it against dense attention computed here from the data.
// Only one Attend is sent: every Attend appends its k and v, so a second (dense) call would not
// decode the same step.

#include "services/cli/demo_needle.h"

#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "engine/hip/dtype_convert.h"
#include "engine/synthetic/accuracy.h"
#include "engine/synthetic/synthetic_data.h"
#include "services/cli/cli_flags.h"
#include "services/cli/commands.h"
#include "services/cli/progress_bar.h"
#include "services/cli/proto_util.h"

namespace ihip::cli {
namespace {

v1::ModelSpec DemoModel(int64_t context) {
  v1::ModelSpec m;  // Llama-3-8B: 32 layers, Hq 32, Hkv 8, D 128, bf16, RoPE none
  m.set_num_layers(32);
  m.set_num_q_heads(32);
  m.set_num_kv_heads(8);
  m.set_head_dim(128);
  m.set_dtype(v1::DTYPE_BF16);
  m.mutable_rope()->set_mode(v1::ROPE_MODE_NONE);
  m.set_max_context(uint64_t(context));
  return m;
}

void PrintAccuracy(const engine::synthetic::SyntheticData& data,
                   const engine::synthetic::DecodeAccuracy& acc, size_t blocks,
                   const v1::AttendResult& r, int64_t context) {
  const int64_t needle = data.needle_token;
  std::printf(
      "\n  context: %lld tokens; needle: tokens [%lld, %lld) = block %lld (depth %.1f%%), "
      "margin %.2f nats\n",
      (long long)context, (long long)needle, (long long)needle + 8, (long long)needle / 8,
      100.0 * double(needle) / double(context), data.achieved_margin);
  std::printf(
      "  selected: %zu blocks of 8; attended keys per head: %llu of %lld; mask from "
      "stage %u\n",
      blocks, (unsigned long long)r.attended_keys(), (long long)context, r.refreshed_from_stage());
  std::printf("\n  needle found:      %s\n", acc.needle_selected ? "YES" : "NO");
  std::printf("  top-2048 recall:   %.3f\n", acc.topk_recall);
  std::printf("  mass recall:       %.3f\n", acc.mass_recall);
  std::printf(
      "  output error:      %.4f  (||o_sparse - o_dense|| / ||o_dense||, dense "
      "computed locally)\n",
      acc.output_error);
}

}  // namespace

int64_t DemoContext() {
  const int64_t c = absl::GetFlag(FLAGS_context);
  return c == 0 ? kDemoDefaultContext : c;
}

int RunDemoNeedle() {
  if (absl::GetFlag(FLAGS_in_process)) return RunDemoNeedleInProcess();
  const int64_t context = DemoContext();
  if (context < 4096 || context > (int64_t{1} << 22)) {
    return Fail(absl::InvalidArgumentError("--context must be in [4096, 4194304]"));
  }
  const int layer = LayerFlagOr(kDemoLayer);
  if (layer < 0 || layer >= 32)
    return Fail(absl::InvalidArgumentError("--layer must be in [0, 32)"));
  absl::StatusOr<v1::HipConfig> config = HipConfigFromFlags();
  if (!config.ok()) return Fail(config.status());
  const engine::HipConfig local = EngineConfigOf(*config);
  const engine::LayerConfig& cfg = local.ForLayer(layer);
  AttentionClient client = MakeClient();

  std::printf("InfiniteHiP needle demo (ihip-server at %s)\n", client.address().c_str());
  std::printf(
      "  model: Llama-3-8B layer shape (Hq 32, Hkv 8, D 128, bf16, RoPE none), layer %d "
      "of 32\n",
      layer);
  std::printf("  config: preset %s, refresh %s; sink %d, window %d, final %d tokens\n",
              absl::GetFlag(FLAGS_preset).c_str(), absl::GetFlag(FLAGS_refresh).c_str(),
              cfg.sink_tokens, cfg.window_tokens, cfg.final_tokens());

  const auto data = BuildDemoContext(context, cfg);

  v1::CreateSequenceRequest create;
  *create.mutable_model() = DemoModel(context);
  *create.mutable_config() = *config;
  create.set_sequence_id(absl::GetFlag(FLAGS_id));
  absl::StatusOr<v1::SequenceInfo> info = client.CreateSequence(create);
  if (!info.ok()) return Fail(info.status());
  const std::string id = info->sequence_id();
  SequenceGuard guard(&client, absl::GetFlag(FLAGS_keep));
  guard.Set(id);

  const int64_t prefix = context - 1;
  ProgressBar bar("AppendKV");
  absl::Time t0 = absl::Now();
  absl::StatusOr<v1::AppendKVResponse> appended = client.AppendKv(
      id, layer, 0, {data.k_at(0), data.v_at(0), prefix, data.kv_row_bytes()},
      size_t(absl::GetFlag(FLAGS_chunk_kib)) << 10, [&](double f) { bar.Update(f); });
  const double append_s = absl::ToDoubleSeconds(absl::Now() - t0);
  if (!appended.ok()) return Fail(appended.status());
  bar.Done();

  v1::AttendRequest req;
  v1::AttendItem* item = req.add_items();
  item->set_sequence_id(id);
  item->set_layer(uint32_t(layer));
  item->set_position(uint64_t(prefix));
  item->set_num_tokens(1);
  item->set_q(data.q_at(0), data.q_row_bytes());
  item->set_k(data.k_at(prefix), data.kv_row_bytes());
  item->set_v(data.v_at(prefix), data.kv_row_bytes());
  item->set_mode(v1::ATTENTION_MODE_SPARSE);
  item->set_return_selected_blocks(true);
  t0 = absl::Now();
  absl::StatusOr<v1::AttendResponse> resp = client.Attend(req);
  const double attend_ms = absl::ToDoubleMilliseconds(absl::Now() - t0);
  if (!resp.ok()) return Fail(resp.status());
  if (resp->results_size() != 1 || resp->results(0).selected_blocks_size() != 1) {
    return Fail(absl::InternalError(
        absl::StrCat("Attend answered ", resp->results_size(), " results and ",
                     resp->results_size() ? resp->results(0).selected_blocks_size() : 0,
                     " masks for one decode item with return_selected_blocks (expected 1 and 1)")));
  }
  const v1::AttendResult& r = resp->results(0);
  const size_t out_elems = size_t(data.options.num_q_heads) * data.options.head_dim;
  if (r.o().size() != out_elems * 2) {
    return Fail(absl::InternalError(
        absl::StrCat("Attend returned ", r.o().size(), " bytes of o, expected ", out_elems * 2)));
  }
  std::vector<float> o(out_elems);
  engine::ToFloat(engine::DType::kBF16, r.o().data(), out_elems, o.data());
  const auto& sb = r.selected_blocks(0).blocks();
  const std::vector<int64_t> blocks(sb.begin(), sb.end());
  const auto acc = engine::synthetic::EvaluateDecode(data, 0, blocks, cfg, o.data(), nullptr);

  PrintAccuracy(data, acc, blocks.size(), r, context);
  const double mb = 2.0 * double(prefix) * double(data.kv_row_bytes()) / 1e6;
  std::printf("\n  AppendKV:   %.0f MB of K+V in %.2f s (%.0f MB/s)\n", mb, append_s,
              mb / std::max(append_s, 1e-9));
  std::printf("  decode step, sparse, every stage run: %.2f ms server round trip\n", attend_ms);
  return acc.needle_selected ? kExitOk : kExitCheckFailed;
}

}  // namespace ihip::cli
