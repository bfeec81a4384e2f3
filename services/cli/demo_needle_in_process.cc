// `ihip demo needle --in_process`: the needle demo with the CPU engine inside this process (no
// ihip-server): sparse step, dense step and a cached-mask step, with per-stage detail.

#include <algorithm>
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "engine/cpu/cpu_engine.h"
#include "engine/hip/dtype_convert.h"
#include "engine/in_memory_page_store.h"
#include "engine/synthetic/accuracy.h"
#include "engine/synthetic/synthetic_data.h"
#include "services/cli/cli_flags.h"
#include "services/cli/commands.h"
#include "services/cli/demo_needle.h"
#include "services/cli/progress_bar.h"

namespace ihip::cli {
namespace {

using engine::AttendItem;
using engine::AttendResult;

double Ms(absl::Duration d) { return absl::ToDoubleMilliseconds(d); }

}  // namespace

engine::synthetic::SyntheticData BuildDemoContext(int64_t context, const engine::LayerConfig& cfg) {
  engine::synthetic::SyntheticOptions so;
  so.length = context;
  so.seed = absl::GetFlag(FLAGS_seed);
  so.needle_margin = absl::GetFlag(FLAGS_margin);
  so.sink_tokens = cfg.sink_tokens;
  so.window_tokens = cfg.window_tokens;
  ProgressBar bar("building context");
  auto data = engine::synthetic::Generate(so, [&](double f) { bar.Update(f); });
  bar.Done();
  return data;
}

int RunDemoNeedleInProcess() {
  const int64_t context = DemoContext();
  auto preset = engine::ParseHipPreset(absl::GetFlag(FLAGS_preset));
  auto refresh = engine::ParseRefreshPreset(absl::GetFlag(FLAGS_refresh));
  if (!preset.ok()) return Fail(preset.status());
  if (!refresh.ok()) return Fail(refresh.status());
  if (context < 4096 || context > (int64_t{1} << 22)) {
    return Fail(absl::InvalidArgumentError("--context must be in [4096, 4194304]"));
  }
  engine::ModelSpec model;  // Llama-3-8B: 32 layers, Hq 32, Hkv 8, D 128, bf16
  model.num_layers = 32;
  model.max_context = context;
  const int layer = LayerFlagOr(kDemoLayer);
  if (layer < 0 || layer >= model.num_layers) {
    return Fail(absl::InvalidArgumentError("--layer must be in [0, 32)"));
  }
  const engine::HipConfig config = engine::HipConfig::Make(*preset, *refresh);
  const engine::LayerConfig& cfg = config.ForLayer(layer);

  std::printf("InfiniteHiP needle demo (CPU backend, in-process)\n");
  std::printf("  model: Llama-3-8B layer shape (Hq 32, Hkv 8, D 128, bf16), layer %d of 32\n",
              layer);
  std::printf("  config: preset %s, refresh %s; sink %d, window %d, final %d tokens\n",
              engine::HipPresetName(*preset), engine::RefreshPresetName(*refresh), cfg.sink_tokens,
              cfg.window_tokens, cfg.final_tokens());

  const auto data = BuildDemoContext(context, cfg);

  engine::InMemoryPageStore store;
  engine::cpu::CpuEngineOptions eo;
  eo.num_threads = absl::GetFlag(FLAGS_threads);
  engine::cpu::CpuEngine eng(eo, &store);
  if (auto s = eng.CreateSequence("demo", model, config); !s.ok()) return Fail(s);
  ProgressBar append_bar("appending KV");
  const int64_t prefix = context - 1;
  constexpr int kChunk = 16384;
  for (int64_t t = 0; t < prefix; t += kChunk) {
    const int n = int(std::min<int64_t>(kChunk, prefix - t));
    if (auto s = eng.AppendKv("demo", layer, t, n, data.k_at(t), data.v_at(t)); !s.ok()) {
      return Fail(s);
    }
    append_bar.Update(double(t + n) / double(prefix));
  }
  append_bar.Done();

  // Decode the last token: sparse (every stage runs: the first step after the context), then
  // dense over the same KV, then the sparse step again with the cached mask.
  const size_t out_elems = size_t(model.num_q_heads) * model.head_dim;
  std::vector<uint16_t> o_sparse(out_elems), o_dense(out_elems), o_cached(out_elems);
  AttendItem item{
      "demo",          layer, prefix, 1, data.q_at(0), data.k_at(prefix), data.v_at(prefix),
      o_sparse.data(), {}};
  item.options.return_selected = item.options.return_stage_chunks = true;
  AttendResult sparse;
  absl::Time t0 = absl::Now();
  if (auto s = eng.Attend(item, &sparse); !s.ok()) return Fail(s);
  const absl::Duration sparse_time = absl::Now() - t0;

  AttendItem eval = item;
  eval.options = {};
  eval.options.append = false;
  eval.options.mode = engine::AttentionMode::kDense;
  eval.out = o_dense.data();
  AttendResult dense;
  t0 = absl::Now();
  if (auto s = eng.Attend(eval, &dense); !s.ok()) return Fail(s);
  const absl::Duration dense_time = absl::Now() - t0;

  eval.options.mode = engine::AttentionMode::kSparse;
  eval.options.refresh = engine::kRefreshReuseMask;
  eval.out = o_cached.data();
  AttendResult cached;
  t0 = absl::Now();
  if (auto s = eng.Attend(eval, &cached); !s.ok()) return Fail(s);
  const absl::Duration cached_time = absl::Now() - t0;

  std::vector<float> fs(out_elems), fd(out_elems);
  engine::ToFloat(model.dtype, o_sparse.data(), out_elems, fs.data());
  engine::ToFloat(model.dtype, o_dense.data(), out_elems, fd.data());
  const engine::MaskInfo& mask = sparse.masks.at(0);
  const auto acc =
      engine::synthetic::EvaluateDecode(data, 0, mask.blocks, cfg, fs.data(), fd.data());

  const int64_t needle = data.needle_token;
  std::printf(
      "\n  context: %lld tokens; needle: tokens [%lld, %lld) = block %lld "
      "(depth %.1f%%), margin %.2f nats\n",
      (long long)context, (long long)needle, (long long)needle + 8, (long long)needle / 8,
      100.0 * double(needle) / double(context), data.achieved_margin);
  for (size_t s = 0; s < mask.stage_chunks.size(); ++s) {
    const int size = cfg.stages[s].chunk_size;
    const auto& kept = mask.stage_chunks[s];
    const bool has = std::any_of(kept.begin(), kept.end(),
                                 [&](int64_t l) { return needle >= l && needle < l + size; });
    std::printf(
        "  stage %zu: chunks of %3d tokens, kept %4zu (%6zu tokens); needle's chunk "
        "kept: %s\n",
        s + 1, size, kept.size(), kept.size() * size, has ? "yes" : "NO");
  }
  std::printf("  selected: %zu blocks of 8; attended keys per head: %lld of %lld\n",
              mask.blocks.size(), (long long)sparse.attended_keys, (long long)context);
  std::printf("\n  needle found:      %s\n", acc.needle_selected ? "YES" : "NO");
  std::printf("  top-2048 recall:   %.3f\n", acc.topk_recall);
  std::printf("  mass recall:       %.3f\n", acc.mass_recall);
  std::printf("  output error:      %.4f  (||o_sparse - o_dense|| / ||o_dense||)\n",
              acc.output_error);
  std::printf("\n  decode step, sparse, every stage run:  %8.2f ms\n", Ms(sparse_time));
  std::printf("  decode step, sparse, cached mask:      %8.2f ms\n", Ms(cached_time));
  std::printf("  decode step, dense:                    %8.2f ms  (%.1fx the full sparse step)\n",
              Ms(dense_time), Ms(dense_time) / Ms(sparse_time));
  return acc.needle_selected ? 0 : 1;
}

}  // namespace ihip::cli
