// cpu_decode_bench: decode-step time and accuracy of the CPU backend on structured synthetic data
// (DESIGN §3.6, §6), one Llama-3-8B layer (Hq 32, Hkv 8, D 128, bf16, RoPE none), batch 1.
//
// Per context: build the data, AppendKv all but the last token, run one appending decode step
// (every stage runs and fills the mask cache), then time evaluation calls (append = false) at
// the last position, which leave the state unchanged between repetitions: the cached mask, a
// refresh from each stage, the full pruning, and dense attention. The average step over one
// cycle of each refresh preset is derived from those medians and the schedule. Accuracy of the
// full step against the engine's dense output comes from synthetic::EvaluateDecode. Needle
// recall regenerates the data per (context, margin, seed) with the needle at a random depth.
//
// Prints markdown on stdout, progress on stderr, and writes JSON with --json. Never asserts a
// time; exits non-zero only when the engine or the flags fail.

#include <malloc.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <string>
#include <vector>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "engine/cpu/cpu_engine.h"
#include "engine/hip/dtype_convert.h"
#include "engine/hip/refresh_schedule.h"
#include "engine/in_memory_page_store.h"
#include "engine/status_macros.h"
#include "engine/synthetic/accuracy.h"
#include "engine/synthetic/synthetic_data.h"
#include "tests/bench/bench_util.h"
#include "tests/bench/cpu_decode_report.h"

namespace {
ihip::engine::synthetic::SyntheticOptions synthetic_defaults() { return {}; }
}  // namespace

ABSL_FLAG(std::vector<std::string>, contexts,
          std::vector<std::string>({"32768", "65536", "131072", "262144", "524288", "1048576"}),
          "context lengths in tokens (the decode step's position + 1), ascending");
ABSL_FLAG(int, reps, 15, "timed repetitions per variant (fewer where --variant_budget_s says)");
ABSL_FLAG(int, warmup, 1, "untimed repetitions per variant before the timed ones");
ABSL_FLAG(int, min_reps, 3, "repetitions per variant however slow it is");
ABSL_FLAG(double, variant_budget_s, 3.0,
          "reps = min(--reps, max(--min_reps, budget / first call)): bounds slow variants");
ABSL_FLAG(int, flush_cache_mib, 128,
          "before every timed call, write this many MiB on every engine thread so that each "
          "step starts with cold caches, as in a model where other layers run between steps "
          "(0 = no flush: a step then sees whatever the previous call left in the caches)");
ABSL_FLAG(int, threads, 0, "engine threads (0 = one per hardware thread)");
ABSL_FLAG(std::string, preset, "3k", "stage preset: 3k or 5k");
ABSL_FLAG(std::string, refresh, "paper", "refresh preset of the sequence: paper, fast, flash");
ABSL_FLAG(int, num_layers, 4, "layers of the model; the context lives in --layer only");
ABSL_FLAG(int, layer, 3, "the layer measured; must not be a dense layer (0, 1, 2)");
ABSL_FLAG(uint64_t, seed, 1, "seed of the timing and accuracy data");
ABSL_FLAG(double, margin, 3.0, "needle margin (nats) of the timing and accuracy data");
ABSL_FLAG(std::vector<std::string>, margins,
          std::vector<std::string>({"0.5", "1", "1.5", "2", "3", "4"}),
          "needle recall: margins (nats) for contexts <= --full_curve_max_context");
ABSL_FLAG(std::vector<std::string>, large_margins, std::vector<std::string>({"1", "3"}),
          "needle recall: margins for contexts above --full_curve_max_context");
ABSL_FLAG(int64_t, full_curve_max_context, 1048576,
          "largest context that gets every margin of --margins");
ABSL_FLAG(int, recall_seeds, 4,
          "needle recall: seeds per (context, margin): --seed, --seed + 1, ... (a trial with "
          "--seed and --margin reuses the timing data)");
ABSL_FLAG(int, large_recall_seeds, 4, "needle recall seeds above --full_curve_max_context");
ABSL_FLAG(double, passage_logit, synthetic_defaults().passage_logit,
          "synthetic data: logit boost (nats) at the needle's passage peak (0 = no passage)");
ABSL_FLAG(int, passage_radius, synthetic_defaults().passage_radius,
          "synthetic data: tokens either side of the needle nudged up (the passage)");
ABSL_FLAG(int64_t, dense_check_max_context, 1 << 20,
          "largest context where the engine's dense output is checked against the oracle "
          "computed from the data (costs about one dense step, single-threaded per head)");
ABSL_FLAG(bool, retain_memory, true,
          "keep freed memory in the process (malloc without mmap, no trimming) so that data and "
          "KV pages are reused without page faults between trials; setup time only");
ABSL_FLAG(std::string, json, "", "write every figure as JSON to this path");
ABSL_FLAG(std::string, markdown, "", "also write the markdown report to this path");
ABSL_FLAG(std::string, git_commit, "",
          "commit to record (default: `git rev-parse HEAD` of the source tree, if available)");

namespace ihip::bench {
namespace {

using engine::AttendItem;
using engine::AttendResult;
using engine::AttentionMode;
namespace synthetic = engine::synthetic;

struct Setup {
  engine::ModelSpec model;
  engine::HipConfig config;
  engine::LayerConfig cfg;
  engine::HipPreset preset;
  int layer = 0;
};

// A sequence holding one context, after its first (appending) decode step.
struct Loaded {
  std::string id;
  AttendResult first;
  std::vector<uint16_t> out;
  double append_s = 0;
  double first_ms = 0;
};

absl::StatusOr<std::vector<double>> ParseDoubles(const std::vector<std::string>& v,
                                                 const char* flag) {
  std::vector<double> out;
  for (const std::string& s : v) {
    double x;
    if (!absl::SimpleAtod(s, &x)) {
      return absl::InvalidArgumentError(absl::StrCat("--", flag, ": bad number '", s, "'"));
    }
    out.push_back(x);
  }
  return out;
}

double ElapsedMs(absl::Time t0) { return absl::ToDoubleMilliseconds(absl::Now() - t0); }

std::vector<float> ToFloats(const std::vector<uint16_t>& bf16) {
  std::vector<float> f(bf16.size());
  engine::ToFloat(engine::DType::kBF16, bf16.data(), bf16.size(), f.data());
  return f;
}

// The first stage whose kept chunks miss the needle's token; 0 when the final blocks hold it.
int LostAtStage(const engine::MaskInfo& mask, const engine::LayerConfig& cfg, int64_t needle) {
  for (size_t s = 0; s < mask.stage_chunks.size(); ++s) {
    const int size = cfg.stages[s].chunk_size;
    const auto& kept = mask.stage_chunks[s];
    const bool has = std::any_of(kept.begin(), kept.end(),
                                 [&](int64_t l) { return needle >= l && needle < l + size; });
    if (!has) return int(s) + 1;
  }
  return std::binary_search(mask.blocks.begin(), mask.blocks.end(), needle / 8)
             ? 0
             : int(mask.stage_chunks.size()) + 1;
}

class Bench {
 public:
  Bench(const Setup& setup, engine::cpu::CpuEngine* eng)
      : s_(setup),
        eng_(eng),
        flush_(size_t(std::max(0, absl::GetFlag(FLAGS_flush_cache_mib))) << 20) {}

  synthetic::SyntheticData MakeData(int64_t context, uint64_t seed, double margin,
                                    Progress* progress, double share) const {
    synthetic::SyntheticOptions so;
    so.length = context;
    so.num_q_heads = s_.model.num_q_heads;
    so.num_kv_heads = s_.model.num_kv_heads;
    so.head_dim = s_.model.head_dim;
    so.dtype = s_.model.dtype;
    so.seed = seed;
    so.needle_margin = margin;
    so.passage_logit = absl::GetFlag(FLAGS_passage_logit);
    so.passage_radius = absl::GetFlag(FLAGS_passage_radius);
    so.sink_tokens = s_.cfg.sink_tokens;
    so.window_tokens = s_.cfg.window_tokens;
    return synthetic::Generate(so, [&](double f) { progress->Update(f * share); });
  }

  // AppendKv all but the last token, then the appending decode step at the last position.
  absl::Status Load(const synthetic::SyntheticData& data, const std::string& id, Progress* progress,
                    double base, Loaded* out) {
    IHIP_RETURN_IF_ERROR(eng_->CreateSequence(id, s_.model, s_.config));
    out->id = id;
    const int64_t prefix = data.options.length - 1;
    constexpr int kChunk = 16384;
    absl::Time t0 = absl::Now();
    for (int64_t t = 0; t < prefix; t += kChunk) {
      const int n = int(std::min<int64_t>(kChunk, prefix - t));
      IHIP_RETURN_IF_ERROR(eng_->AppendKv(id, s_.layer, t, n, data.k_at(t), data.v_at(t)));
      progress->Update(base + (1 - base) * double(t + n) / double(prefix));
    }
    out->append_s = absl::ToDoubleSeconds(absl::Now() - t0);
    out->out.assign(size_t(s_.model.num_q_heads) * s_.model.head_dim, 0);
    AttendItem item;
    item.sequence = id;
    item.layer = s_.layer;
    item.position = prefix;
    item.q = data.q_at(0);
    item.k = data.k_at(prefix);
    item.v = data.v_at(prefix);
    item.out = out->out.data();
    item.options.return_selected = item.options.return_stage_chunks = true;
    t0 = absl::Now();
    IHIP_RETURN_IF_ERROR(eng_->Attend(item, &out->first));
    out->first_ms = ElapsedMs(t0);
    return absl::OkStatus();
  }

  absl::Status RunContext(int64_t context, ContextResult* r, std::vector<RecallTrial>* trials);
  absl::Status RunRecall(int64_t context, double margin, uint64_t seed, RecallTrial* t);

 private:
  AttendItem EvalItem(const Loaded& l, const synthetic::SyntheticData& data, AttentionMode mode,
                      int refresh, void* out) const {
    AttendItem item;
    item.sequence = l.id;
    item.layer = s_.layer;
    item.position = data.options.length - 1;
    item.q = data.q_at(0);
    item.out = out;
    item.options.append = false;
    item.options.mode = mode;
    item.options.refresh = refresh;
    return item;
  }
  absl::Status TimeVariants(const Loaded& l, const synthetic::SyntheticData& data,
                            std::vector<VariantTiming>* variants,
                            std::vector<std::vector<uint16_t>>* outs, const std::string& tag);
  absl::Status CheckVariants(const Loaded& l, const synthetic::SyntheticData& data,
                             const std::vector<std::vector<uint16_t>>& outs, ContextResult* r);
  void Accuracy(const synthetic::SyntheticData& data, const Loaded& l,
                const std::vector<uint16_t>& o_full, const std::vector<uint16_t>& o_dense,
                ContextResult* r) const;
  std::vector<CycleAverage> Cycles(const std::vector<VariantTiming>& variants) const;

  // Evicts the caches of every engine thread (a write sweep over flush_, spread over the pool).
  void FlushCaches() {
    if (flush_.empty()) return;
    constexpr size_t kPart = size_t{1} << 20;
    eng_->pool()->ParallelFor(int64_t(flush_.size() / kPart), [&](int64_t part) {
      uint8_t* p = flush_.data() + size_t(part) * kPart;
      for (size_t i = 0; i < kPart; i += 64) ++p[i];
    });
  }

  const Setup& s_;
  engine::cpu::CpuEngine* eng_;
  std::vector<uint8_t> flush_;
};

// Warm-up and one first call per variant fix each variant's repetitions; then the timed calls
// go round-robin over the variants, so that a disturbance (other work on the machine) is spread
// over all of them instead of skewing one.
absl::Status Bench::TimeVariants(const Loaded& l, const synthetic::SyntheticData& data,
                                 std::vector<VariantTiming>* variants,
                                 std::vector<std::vector<uint16_t>>* outs, const std::string& tag) {
  const size_t nv = variants->size();
  std::vector<AttendItem> items;
  outs->assign(nv, std::vector<uint16_t>(size_t(s_.model.num_q_heads) * s_.model.head_dim, 0));
  for (size_t i = 0; i < nv; ++i) {
    const VariantTiming& v = (*variants)[i];
    items.push_back(EvalItem(l, data, v.dense ? AttentionMode::kDense : AttentionMode::kSparse,
                             v.dense ? engine::kRefreshBySchedule : v.refresh, (*outs)[i].data()));
  }
  std::vector<AttendResult> results(nv);
  auto once = [&](size_t i, bool timed) -> absl::Status {
    FlushCaches();
    const double c0 = ProcessCpuMs();
    const absl::Time t0 = absl::Now();
    IHIP_RETURN_IF_ERROR(eng_->Attend(items[i], &results[i]));
    const double ms = ElapsedMs(t0);
    VariantTiming& v = (*variants)[i];
    if (timed) {
      v.samples_ms.push_back(ms);
      v.cpu_ms.push_back(ProcessCpuMs() - c0);
    } else {
      v.warmup_ms.push_back(ms);
    }
    return absl::OkStatus();
  };
  Progress p(absl::StrCat(tag, " timing ", nv, " variants"));
  const int max_reps = std::max(1, absl::GetFlag(FLAGS_reps));
  const double budget_ms = 1000 * absl::GetFlag(FLAGS_variant_budget_s);
  std::vector<int> reps(nv);
  int64_t total = 0, done = 0;
  for (size_t i = 0; i < nv; ++i) {
    for (int w = 0; w < absl::GetFlag(FLAGS_warmup); ++w) IHIP_RETURN_IF_ERROR(once(i, false));
    IHIP_RETURN_IF_ERROR(once(i, true));
    const VariantTiming& v = (*variants)[i];
    const double estimate = v.warmup_ms.empty() ? v.samples_ms.back() : v.warmup_ms.back();
    const int affordable = int(budget_ms / std::max(estimate, 1e-3));
    reps[i] = std::min(max_reps, std::max(absl::GetFlag(FLAGS_min_reps), affordable));
    total += reps[i];
    ++done;
  }
  for (int r = 1; r < max_reps; ++r) {
    for (size_t i = 0; i < nv; ++i) {
      if (r >= reps[i]) continue;
      IHIP_RETURN_IF_ERROR(once(i, true));
      p.Update(double(++done) / double(total));
    }
  }
  std::vector<std::string> summary;
  for (size_t i = 0; i < nv; ++i) {
    VariantTiming& v = (*variants)[i];
    v.stats = Summarize(v.samples_ms);
    v.attended_keys = results[i].attended_keys;
    v.refreshed_from_stage = results[i].refreshed_from_stage;
    summary.push_back(absl::StrCat(v.key, " ", Ms(v.stats.median), " ms x", v.stats.count));
  }
  p.Done(absl::StrJoin(summary, ", "));
  return absl::OkStatus();
}

// Every sparse variant must select the first step's blocks (a re-run from a stage cache equals
// a full run, DESIGN §3.3) and so produce the same output.
absl::Status Bench::CheckVariants(const Loaded& l, const synthetic::SyntheticData& data,
                                  const std::vector<std::vector<uint16_t>>& outs,
                                  ContextResult* r) {
  const std::vector<int64_t>& blocks = l.first.masks.at(0).blocks;
  r->selected_blocks = int64_t(blocks.size());
  std::vector<uint16_t> tmp(outs.front().size());
  const std::vector<float> ref = ToFloats(l.out);
  for (size_t i = 0; i < r->variants.size(); ++i) {
    const VariantTiming& v = r->variants[i];
    if (v.dense) continue;
    AttendItem item = EvalItem(l, data, AttentionMode::kSparse, v.refresh, tmp.data());
    item.options.return_selected = true;
    AttendResult res;
    IHIP_RETURN_IF_ERROR(eng_->Attend(item, &res));
    if (res.masks.empty() || res.masks[0].blocks != blocks) r->stage_cache_consistent = false;
    if (v.refreshed_from_stage != v.refresh) r->stage_cache_consistent = false;
    const std::vector<float> o = ToFloats(outs[i]);
    for (size_t j = 0; j < o.size(); ++j) {
      r->sparse_variants_max_abs_diff =
          std::max<double>(r->sparse_variants_max_abs_diff, std::fabs(o[j] - ref[j]));
    }
  }
  return absl::OkStatus();
}

void Bench::Accuracy(const synthetic::SyntheticData& data, const Loaded& l,
                     const std::vector<uint16_t>& o_full, const std::vector<uint16_t>& o_dense,
                     ContextResult* r) const {
  const std::vector<int64_t>& blocks = l.first.masks.at(0).blocks;
  const std::vector<float> fs = ToFloats(o_full), fd = ToFloats(o_dense);
  r->accuracy = synthetic::EvaluateDecode(data, 0, blocks, s_.cfg, fs.data(), fd.data());
  if (r->context <= absl::GetFlag(FLAGS_dense_check_max_context)) {
    // With o_sparse = the engine's dense output and no o_dense, output_error compares the
    // engine's dense attention with the oracle's, computed from the data.
    r->dense_vs_oracle =
        synthetic::EvaluateDecode(data, 0, blocks, s_.cfg, fd.data(), nullptr).output_error;
  }
}

std::vector<CycleAverage> Bench::Cycles(const std::vector<VariantTiming>& variants) const {
  const int N = int(s_.cfg.stages.size());
  std::vector<double> by_stage(N + 1, NAN);  // [0] cached, [i] refresh from stage i
  for (const VariantTiming& v : variants) {
    if (!v.dense) by_stage[v.refresh] = v.stats.median;
  }
  std::vector<CycleAverage> out;
  for (engine::RefreshPreset p : {engine::RefreshPreset::kPaper, engine::RefreshPreset::kFast,
                                  engine::RefreshPreset::kFlash}) {
    const engine::HipConfig c = engine::HipConfig::Make(s_.preset, p);
    const std::vector<engine::StageSpec>& stages = c.ForLayer(s_.layer).stages;
    CycleAverage a;
    a.preset = engine::RefreshPresetName(p);
    a.cycle_steps = 1;
    for (const engine::StageSpec& st : stages) {
      a.intervals.push_back(st.refresh_interval);
      a.cycle_steps = std::lcm(a.cycle_steps, st.refresh_interval);
    }
    a.steps_from.assign(N + 1, 0);
    double total = 0;
    for (int step = 0; step < a.cycle_steps; ++step) {
      const int from = engine::StageToRefresh(stages, step);
      ++a.steps_from[from];
      total += by_stage[from];
    }
    a.avg_ms = total / a.cycle_steps;
    out.push_back(a);
  }
  return out;
}

absl::Status Bench::RunContext(int64_t context, ContextResult* r,
                               std::vector<RecallTrial>* trials) {
  const std::string tag = absl::StrCat("[", TokensLabel(context), "]");
  r->context = context;
  r->seed = absl::GetFlag(FLAGS_seed);
  r->margin = absl::GetFlag(FLAGS_margin);
  Progress gen(absl::StrCat(tag, " generating data"));
  const synthetic::SyntheticData data = MakeData(context, r->seed, r->margin, &gen, 1.0);
  r->generate_s = gen.Done();
  r->needle_token = data.needle_token;
  r->achieved_margin = data.achieved_margin;

  Loaded l;
  Progress app(absl::StrCat(tag, " appending KV + first decode step"));
  IHIP_RETURN_IF_ERROR(Load(data, absl::StrCat("bench-", context), &app, 0, &l));
  r->append_s = l.append_s;
  r->first_step_ms = l.first_ms;
  app.Done(absl::StrFormat("append %.1f s, first step %s ms", l.append_s, Ms(l.first_ms)));

  // Variants, cheapest first: cached mask, refresh from stage N .. 2, full, dense.
  const int N = int(s_.cfg.stages.size());
  auto variant = [](std::string key, std::string label, bool dense, int refresh) {
    VariantTiming v;
    v.key = std::move(key);
    v.label = std::move(label);
    v.dense = dense;
    v.refresh = refresh;
    return v;
  };
  r->variants.push_back(variant("cached", "cached mask", false, engine::kRefreshReuseMask));
  for (int i = N; i >= 2; --i) {
    r->variants.push_back(variant(absl::StrCat("refresh_from_stage_", i),
                                  absl::StrCat("refresh from stage ", i), false, i));
  }
  r->variants.push_back(variant("full", absl::StrCat("full (stages 1-", N, ")"), false, 1));
  r->variants.push_back(variant("dense", "dense", true, 0));
  std::vector<std::vector<uint16_t>> outs;
  IHIP_RETURN_IF_ERROR(TimeVariants(l, data, &r->variants, &outs, tag));
  r->cycles = Cycles(r->variants);
  IHIP_RETURN_IF_ERROR(CheckVariants(l, data, outs, r));

  Progress acc(absl::StrCat(tag, " accuracy vs dense"));
  Accuracy(data, l, outs[r->variants.size() - 2], outs.back(), r);
  acc.Done();

  // The timing data doubles as one recall trial.
  RecallTrial t;
  t.context = context;
  t.margin = r->margin;
  t.seed = r->seed;
  t.needle_token = data.needle_token;
  t.depth = double(data.needle_token) / double(context);
  t.achieved_margin = data.achieved_margin;
  t.seconds = r->generate_s + r->append_s + l.first_ms / 1000;
  t.reused_timing_data = true;
  t.found = r->accuracy.needle_selected;
  t.lost_at_stage = t.found ? 0 : LostAtStage(l.first.masks.at(0), s_.cfg, t.needle_token);
  trials->push_back(t);
  return eng_->ReleaseSequence(l.id);
}

absl::Status Bench::RunRecall(int64_t context, double margin, uint64_t seed, RecallTrial* t) {
  t->context = context;
  t->margin = margin;
  t->seed = seed;
  Progress p(absl::StrFormat("[%s] recall margin %g seed %d", TokensLabel(context), margin, seed));
  const absl::Time t0 = absl::Now();
  Loaded l;
  {
    const synthetic::SyntheticData data = MakeData(context, seed, margin, &p, 0.7);
    t->needle_token = data.needle_token;
    t->depth = double(data.needle_token) / double(context);
    t->achieved_margin = data.achieved_margin;
    IHIP_RETURN_IF_ERROR(
        Load(data, absl::StrFormat("recall-%d-%g-%d", context, margin, seed), &p, 0.7, &l));
  }
  const engine::MaskInfo& mask = l.first.masks.at(0);
  t->found = std::binary_search(mask.blocks.begin(), mask.blocks.end(), t->needle_token / 8);
  t->lost_at_stage = t->found ? 0 : LostAtStage(mask, s_.cfg, t->needle_token);
  IHIP_RETURN_IF_ERROR(eng_->ReleaseSequence(l.id));
  t->seconds = absl::ToDoubleSeconds(absl::Now() - t0);
  p.Done(t->found ? absl::StrFormat("found (depth %.0f%%)", 100 * t->depth)
                  : absl::StrFormat("MISSED (depth %.0f%%, lost at stage %d)", 100 * t->depth,
                                    t->lost_at_stage));
  return absl::OkStatus();
}

absl::StatusOr<Setup> MakeSetup(int64_t max_context) {
  Setup s;
  IHIP_ASSIGN_OR_RETURN(s.preset, engine::ParseHipPreset(absl::GetFlag(FLAGS_preset)));
  IHIP_ASSIGN_OR_RETURN(engine::RefreshPreset refresh,
                        engine::ParseRefreshPreset(absl::GetFlag(FLAGS_refresh)));
  s.model.num_layers = absl::GetFlag(FLAGS_num_layers);  // Hq 32, Hkv 8, D 128, bf16: defaults
  s.model.max_context = max_context;
  s.layer = absl::GetFlag(FLAGS_layer);
  s.config = engine::HipConfig::Make(s.preset, refresh);
  IHIP_RETURN_IF_ERROR(s.model.Validate());
  IHIP_RETURN_IF_ERROR(s.config.Validate(s.model.num_layers));
  if (s.layer < 0 || s.layer >= s.model.num_layers) {
    return absl::InvalidArgumentError("--layer must be in [0, --num_layers)");
  }
  if (std::count(s.config.dense_layers.begin(), s.config.dense_layers.end(), s.layer)) {
    return absl::InvalidArgumentError("--layer is a dense layer; pick a sparse one");
  }
  s.cfg = s.config.ForLayer(s.layer);
  return s;
}

RunConfig Describe(const Setup& s, int threads) {
  RunConfig c;
  c.num_layers = s.model.num_layers;
  c.layer = s.layer;
  c.num_q_heads = s.model.num_q_heads;
  c.num_kv_heads = s.model.num_kv_heads;
  c.head_dim = s.model.head_dim;
  c.dtype = engine::DTypeName(s.model.dtype);
  c.preset = engine::HipPresetName(s.config.preset);
  c.refresh = engine::RefreshPresetName(s.config.refresh);
  c.sink_tokens = s.cfg.sink_tokens;
  c.window_tokens = s.cfg.window_tokens;
  for (const engine::StageSpec& st : s.cfg.stages) {
    c.chunk_sizes.push_back(st.chunk_size);
    c.kept_tokens.push_back(st.kept_tokens);
  }
  c.threads = threads;
  c.retain_memory = absl::GetFlag(FLAGS_retain_memory);
  c.flush_cache_mib = absl::GetFlag(FLAGS_flush_cache_mib);
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    if (absl::StrContains(flag->Filename(), "cpu_decode_bench")) {
      c.flags.push_back(absl::StrCat("--", name, "=", flag->CurrentValue()));
    }
  }
  std::sort(c.flags.begin(), c.flags.end());
  return c;
}

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "cpu_decode_bench: error: %s\n", s.ToString().c_str());
  return 2;
}

int Run(int argc, char** argv) {
  const absl::Time start = absl::Now();
  std::vector<int64_t> contexts;
  for (const std::string& c : absl::GetFlag(FLAGS_contexts)) {
    int64_t x;
    if (!absl::SimpleAtoi(c, &x) || x < 4096) {
      return Fail(absl::InvalidArgumentError(
          absl::StrCat("--contexts: '", c, "' is not a token count >= 4096")));
    }
    contexts.push_back(x);
  }
  if (contexts.empty()) return Fail(absl::InvalidArgumentError("--contexts is empty"));
  auto margins = ParseDoubles(absl::GetFlag(FLAGS_margins), "margins");
  auto large_margins = ParseDoubles(absl::GetFlag(FLAGS_large_margins), "large_margins");
  if (!margins.ok()) return Fail(margins.status());
  if (!large_margins.ok()) return Fail(large_margins.status());
  auto setup = MakeSetup(*std::max_element(contexts.begin(), contexts.end()));
  if (!setup.ok()) return Fail(setup.status());
  if (absl::GetFlag(FLAGS_retain_memory)) {
    mallopt(M_MMAP_MAX, 0);         // large blocks from the heap, so they can be reused ...
    mallopt(M_TRIM_THRESHOLD, -1);  // ... and never given back (no page faults on reuse)
  }

  engine::InMemoryPageStore store;
  engine::cpu::CpuEngineOptions eo;
  eo.num_threads = absl::GetFlag(FLAGS_threads);
  if (auto s = eo.Validate(); !s.ok()) return Fail(s);
  engine::cpu::CpuEngine eng(eo, &store);
  Bench bench(*setup, &eng);

  BenchResult result;
  result.info = CollectRunInfo(argc, argv, absl::GetFlag(FLAGS_git_commit),
                               {"CMakeLists.txt", "cmake", "engine", "tests/bench"});
  result.config = Describe(*setup, eng.pool()->num_threads());
  const uint64_t seed0 = absl::GetFlag(FLAGS_seed);
  for (int64_t context : contexts) {
    ContextResult r;
    if (auto s = bench.RunContext(context, &r, &result.trials); !s.ok()) return Fail(s);
    result.contexts.push_back(r);
    const bool full = context <= absl::GetFlag(FLAGS_full_curve_max_context);
    const std::vector<double>& ms = full ? *margins : *large_margins;
    const int seeds =
        full ? absl::GetFlag(FLAGS_recall_seeds) : absl::GetFlag(FLAGS_large_recall_seeds);
    for (double m : ms) {
      for (int i = 0; i < seeds; ++i) {
        const uint64_t seed = seed0 + uint64_t(i);
        if (m == r.margin && seed == r.seed) continue;  // the timing data's trial
        RecallTrial t;
        if (auto s = bench.RunRecall(context, m, seed, &t); !s.ok()) return Fail(s);
        result.trials.push_back(t);
      }
    }
  }
  for (const RecallTrial& t : result.trials) result.margins.push_back(t.margin);
  std::sort(result.margins.begin(), result.margins.end());
  result.margins.erase(std::unique(result.margins.begin(), result.margins.end()),
                       result.margins.end());
  result.wall_s = absl::ToDoubleSeconds(absl::Now() - start);
  result.info.loadavg_end = LoadAverage();

  const std::string md = RenderMarkdown(result);
  std::fputs(md.c_str(), stdout);
  std::fflush(stdout);
  if (const std::string path = absl::GetFlag(FLAGS_markdown); !path.empty()) {
    if (!WriteFile(path, md)) return Fail(absl::UnavailableError("cannot write " + path));
  }
  if (const std::string path = absl::GetFlag(FLAGS_json); !path.empty()) {
    if (!WriteFile(path, RenderJson(result))) {
      return Fail(absl::UnavailableError("cannot write " + path));
    }
    std::fprintf(stderr, "wrote %s\n", path.c_str());
  }
  std::fprintf(stderr, "total %.0f s\n", result.wall_s);
  return 0;
}

}  // namespace
}  // namespace ihip::bench

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "CPU decode benchmark: step times, refresh-cycle averages, accuracy and needle recall "
      "on synthetic data. See tests/bench/README.md.");
  absl::ParseCommandLine(argc, argv);
  return ihip::bench::Run(argc, argv);
}
