#include "tests/bench/cpu_decode_report.h"

#include <cmath>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace ihip::bench {
namespace {

const VariantTiming* Find(const ContextResult& c, const std::string& key) {
  for (const VariantTiming& v : c.variants) {
    if (v.key == key) return &v;
  }
  return nullptr;
}

double Median(const ContextResult& c, const std::string& key) {
  const VariantTiming* v = Find(c, key);
  return v != nullptr ? v->stats.median : NAN;
}

// Process CPU time over wall time × engine threads, over every timed step of the context: below
// ~90% the engine waited (memory, locks) or other work on the machine took the cores.
double CpuUse(const ContextResult& c, int threads) {
  double cpu = 0, wall = 0;
  for (const VariantTiming& v : c.variants) {
    for (double x : v.cpu_ms) cpu += x;
    for (double x : v.samples_ms) wall += x;
  }
  return wall > 0 ? cpu / (wall * threads) : 0;
}

std::string Row(const std::vector<std::string>& cells) {
  return absl::StrCat("| ", absl::StrJoin(cells, " | "), " |\n");
}

std::string Rule(size_t n) {
  std::vector<std::string> cells(n, "---");
  return Row(cells);
}

std::string Ratio(double a, double b) {
  return (std::isfinite(a) && std::isfinite(b) && b > 0) ? absl::StrFormat("%.1f×", a / b) : "—";
}

void Header(const BenchResult& r, std::string* md) {
  const RunInfo& i = r.info;
  const RunConfig& c = r.config;
  absl::StrAppend(md, "# InfiniteHiP CPU decode benchmark\n\n");
  absl::StrAppend(md, "- date: ", i.date_utc, "; commit: `", i.git_commit, "`",
                  i.git_dirty_paths.empty() ? ""
                                            : absl::StrCat(" plus local changes to ",
                                                           absl::StrJoin(i.git_dirty_paths, ", ")),
                  "\n");
  absl::StrAppendFormat(md, "- machine: %s, %d hardware threads, %.1f GiB, Linux %s; ", i.cpu_model,
                        i.hardware_threads, i.memory_gib, i.kernel);
  absl::StrAppendFormat(md, "engine threads: %d\n", c.threads);
  absl::StrAppend(md, "- build: ", i.build_type, ", ", i.compiler, "\n");
  absl::StrAppend(md, "- command: `", i.command, "`\n");
  absl::StrAppend(md, "- load average (1, 5, 15 min) at start: ", i.loadavg_start,
                  "; at end: ", i.loadavg_end, "\n");
  absl::StrAppendFormat(md,
                        "- layer: Llama-3-8B shape (Hq %d, Hkv %d, D %d, %s, RoPE none), layer "
                        "%d of %d; preset %s (chunks %s, kept %s tokens), sink %d, window %d; "
                        "sequence refresh preset %s\n",
                        c.num_q_heads, c.num_kv_heads, c.head_dim, c.dtype, c.layer, c.num_layers,
                        c.preset, absl::StrJoin(c.chunk_sizes, "/"),
                        absl::StrJoin(c.kept_tokens, "/"), c.sink_tokens, c.window_tokens,
                        c.refresh);
  if (!r.contexts.empty()) {
    absl::StrAppendFormat(md,
                          "- data: synthetic (DESIGN §3.6); timing and accuracy rows use seed %d, "
                          "needle margin %g nats\n",
                          r.contexts[0].seed, r.contexts[0].margin);
  }
  absl::StrAppendFormat(md, "- total wall time: %.0f s\n\n", r.wall_s);
}

void StepTable(const BenchResult& r, std::string* md) {
  if (r.contexts.empty()) return;
  absl::StrAppend(
      md, "## Decode step time (ms, one layer, batch 1): median / p90\n\n",
      "Evaluation calls (append = false) at the context's last position, after ",
      "warm-up; the state does not change between repetitions; the variants take turns, ",
      r.config.flush_cache_mib > 0
          ? absl::StrCat("and ", r.config.flush_cache_mib,
                         " MiB are written on every engine thread before each call ",
                         "(cold caches, as when other layers run between steps). ")
          : "with no cache flush (a call sees what the previous one left). ",
      "CPU use = process CPU time ",
      "/ (wall time × engine threads) over the timed steps (low: the cores were ",
      "shared or the engine waited).\n\n");
  std::vector<std::string> head = {"context"};
  for (const VariantTiming& v : r.contexts[0].variants) head.push_back(v.label);
  head.push_back("dense ÷ full");
  head.push_back("reps");
  head.push_back("CPU use");
  absl::StrAppend(md, Row(head), Rule(head.size()));
  for (const ContextResult& c : r.contexts) {
    std::vector<std::string> row = {TokensLabel(c.context)};
    std::vector<std::string> reps;
    for (const VariantTiming& v : c.variants) {
      row.push_back(absl::StrCat(Ms(v.stats.median), " / ", Ms(v.stats.p90)));
      reps.push_back(absl::StrCat(v.stats.count));
    }
    row.push_back(Ratio(Median(c, "dense"), Median(c, "full")));
    row.push_back(absl::StrJoin(reps, "/"));
    row.push_back(absl::StrFormat("%.0f%%", 100 * CpuUse(c, r.config.threads)));
    absl::StrAppend(md, Row(row));
  }
  absl::StrAppend(md, "\n");
}

void CycleTable(const BenchResult& r, std::string* md) {
  if (r.contexts.empty() || r.contexts[0].cycles.empty()) return;
  absl::StrAppend(md, "## Average decode step over one refresh cycle (ms) — derived\n\n",
                  "Not measured as a run of steps: the mean over one cycle of the schedule ",
                  "(engine/hip/refresh_schedule.h) of the medians above.");
  for (const CycleAverage& a : r.contexts[0].cycles) {
    std::vector<std::string> parts;
    for (size_t i = 1; i < a.steps_from.size(); ++i) {
      if (a.steps_from[i] > 0) parts.push_back(absl::StrCat(a.steps_from[i], "× from stage ", i));
    }
    parts.push_back(absl::StrCat(a.steps_from[0], "× cached"));
    absl::StrAppend(md, " ", a.preset, " (", absl::StrJoin(a.intervals, ", "), "): per ",
                    a.cycle_steps, " steps ", absl::StrJoin(parts, ", "), ".");
  }
  absl::StrAppend(md, "\n\n");
  std::vector<std::string> head = {"context"};
  for (const CycleAverage& a : r.contexts[0].cycles) head.push_back(a.preset);
  head.push_back("dense");
  for (const CycleAverage& a : r.contexts[0].cycles) head.push_back("dense ÷ " + a.preset);
  absl::StrAppend(md, Row(head), Rule(head.size()));
  for (const ContextResult& c : r.contexts) {
    std::vector<std::string> row = {TokensLabel(c.context)};
    for (const CycleAverage& a : c.cycles) row.push_back(Ms(a.avg_ms));
    row.push_back(Ms(Median(c, "dense")));
    for (const CycleAverage& a : c.cycles) row.push_back(Ratio(Median(c, "dense"), a.avg_ms));
    absl::StrAppend(md, Row(row));
  }
  absl::StrAppend(md, "\n");
}

void BreakdownTable(const BenchResult& r, std::string* md) {
  if (r.contexts.empty()) return;
  absl::StrAppend(md, "## Where a step's time goes (ms) — derived\n\n",
                  "Differences of the medians: attention = the cached-mask step; stage i = ",
                  "(refresh from stage i) − (refresh from stage i+1). First step = the ",
                  "appending decode step right after AppendKv (one sample, cold).\n\n");
  const int N = int(r.config.chunk_sizes.size());
  std::vector<std::string> head = {"context", "sparse attention"};
  for (int i = N; i >= 1; --i) {
    head.push_back(absl::StrFormat("stage %d (chunks of %d)", i, r.config.chunk_sizes[i - 1]));
  }
  head.push_back("first step");
  absl::StrAppend(md, Row(head), Rule(head.size()));
  for (const ContextResult& c : r.contexts) {
    std::vector<std::string> row = {TokensLabel(c.context), Ms(Median(c, "cached"))};
    double prev = Median(c, "cached");
    for (int i = N; i >= 1; --i) {
      const double t = Median(c, i == 1 ? "full" : absl::StrCat("refresh_from_stage_", i));
      row.push_back(Ms(t - prev));
      prev = t;
    }
    row.push_back(Ms(c.first_step_ms));
    absl::StrAppend(md, Row(row));
  }
  absl::StrAppend(md, "\n");
}

void AccuracyTable(const BenchResult& r, std::string* md) {
  if (r.contexts.empty()) return;
  absl::StrAppend(md, "## Accuracy of the sparse step vs dense\n\n",
                  "synthetic::EvaluateDecode on the timing data: top-2048 recall = share of each ",
                  "head's dense top-2048 middle keys selected; mass recall = dense softmax mass ",
                  "on attended keys; output error = ‖o_sparse − o_dense‖ / ‖o_dense‖ with the ",
                  "engine's dense output. Dense check = the engine's dense output against the ",
                  "oracle computed from the data. Consistent = every refresh variant selected the ",
                  "first step's blocks and produced its output.\n\n");
  const std::vector<std::string> head = {"context",       "needle (depth)",  "selected blocks",
                                         "attended keys", "top-2048 recall", "mass recall",
                                         "output error",  "dense check",     "consistent"};
  absl::StrAppend(md, Row(head), Rule(head.size()));
  for (const ContextResult& c : r.contexts) {
    const VariantTiming* full = Find(c, "full");
    absl::StrAppend(
        md, Row({TokensLabel(c.context),
                 absl::StrFormat("%s (%.0f%%)", c.accuracy.needle_selected ? "found" : "MISSED",
                                 100.0 * double(c.needle_token) / double(c.context)),
                 absl::StrCat(c.selected_blocks),
                 absl::StrCat(full != nullptr ? full->attended_keys : 0),
                 absl::StrFormat("%.3f", c.accuracy.topk_recall),
                 absl::StrFormat("%.3f", c.accuracy.mass_recall),
                 absl::StrFormat("%.3f", c.accuracy.output_error),
                 c.dense_vs_oracle < 0 ? "—" : absl::StrFormat("%.1e", c.dense_vs_oracle),
                 c.stage_cache_consistent && c.sparse_variants_max_abs_diff == 0
                     ? "yes"
                     : absl::StrFormat("NO (max |Δo| %.2g)", c.sparse_variants_max_abs_diff)}));
  }
  absl::StrAppend(md, "\n");
}

void RecallTable(const BenchResult& r, std::string* md) {
  if (r.trials.empty()) return;
  absl::StrAppend(md, "## Needle recall (needle block selected: found / trials)\n\n",
                  "Fresh data per (context, margin, seed); the needle sits at a random depth ",
                  "set by the seed; the trial is the first decode step after AppendKv. ",
                  "— = not run.\n\n");
  std::map<std::pair<int64_t, double>, std::pair<int, int>> cell;  // found, trials
  std::vector<int64_t> contexts;
  for (const RecallTrial& t : r.trials) {
    auto& [found, n] = cell[{t.context, t.margin}];
    found += t.found;
    ++n;
    if (contexts.empty() || contexts.back() != t.context) contexts.push_back(t.context);
  }
  std::vector<std::string> head = {"context"};
  for (double m : r.margins) head.push_back(absl::StrFormat("m = %g", m));
  absl::StrAppend(md, Row(head), Rule(head.size()));
  for (int64_t c : contexts) {
    std::vector<std::string> row = {TokensLabel(c)};
    for (double m : r.margins) {
      auto it = cell.find({c, m});
      row.push_back(it == cell.end()
                        ? "—"
                        : absl::StrCat(it->second.first, "/", it->second.second,
                                       it->second.first < it->second.second ? " ✗" : ""));
    }
    absl::StrAppend(md, Row(row));
  }
  std::vector<std::string> misses;
  for (const RecallTrial& t : r.trials) {
    if (t.found) continue;
    misses.push_back(
        absl::StrFormat("%s m=%g seed %d (depth %.0f%%, achieved margin %.2f, lost at stage %d)",
                        TokensLabel(t.context), t.margin, t.seed, 100 * t.depth, t.achieved_margin,
                        t.lost_at_stage));
  }
  absl::StrAppend(md, "\nMisses: ", misses.empty() ? "none" : absl::StrJoin(misses, "; "), ".\n\n");
}

void SetupTable(const BenchResult& r, std::string* md) {
  if (r.contexts.empty()) return;
  absl::StrAppend(md, "## Setup cost (not part of any step)\n\n");
  const std::vector<std::string> head = {"context",  "KV of the layer", "generate data",
                                         "AppendKv", "recall trials",   "recall time"};
  absl::StrAppend(md, Row(head), Rule(head.size()));
  const double row_bytes = 2.0 * r.config.num_kv_heads * r.config.head_dim * 2;  // k+v, bf16
  for (const ContextResult& c : r.contexts) {
    int n = 0;
    double s = 0;
    for (const RecallTrial& t : r.trials) {
      if (t.context == c.context && !t.reused_timing_data) {
        ++n;
        s += t.seconds;
      }
    }
    absl::StrAppend(
        md,
        Row({TokensLabel(c.context), absl::StrFormat("%.2f GiB", row_bytes * c.context / (1 << 30)),
             absl::StrFormat("%.1f s", c.generate_s), absl::StrFormat("%.1f s", c.append_s),
             absl::StrCat(n), absl::StrFormat("%.0f s", s)}));
  }
  absl::StrAppend(md, "\n");
}

void JsonStats(const Stats& s, JsonWriter& j) {
  j.BeginObject();
  j.Key("count").Int(s.count);
  j.Key("median_ms").Number(s.median);
  j.Key("p90_ms").Number(s.p90);
  j.Key("min_ms").Number(s.min);
  j.Key("max_ms").Number(s.max);
  j.Key("mean_ms").Number(s.mean);
  j.EndObject();
}

void JsonContext(const ContextResult& c, JsonWriter& j) {
  j.BeginObject();
  j.Key("context").Int(c.context);
  j.Key("seed").Int(int64_t(c.seed));
  j.Key("margin").Number(c.margin);
  j.Key("needle_token").Int(c.needle_token);
  j.Key("achieved_margin").Number(c.achieved_margin);
  j.Key("generate_s").Number(c.generate_s);
  j.Key("append_s").Number(c.append_s);
  j.Key("first_step_ms").Number(c.first_step_ms);
  j.Key("variants").BeginArray();
  for (const VariantTiming& v : c.variants) {
    j.BeginObject();
    j.Key("key").String(v.key);
    j.Key("label").String(v.label);
    j.Key("mode").String(v.dense ? "dense" : "sparse");
    if (!v.dense) j.Key("refresh").Int(v.refresh);
    j.Key("attended_keys").Int(v.attended_keys);
    j.Key("refreshed_from_stage").Int(v.refreshed_from_stage);
    j.Key("stats");
    JsonStats(v.stats, j);
    j.Key("warmup_ms").Numbers(v.warmup_ms);
    j.Key("samples_ms").Numbers(v.samples_ms);
    j.Key("cpu_ms").Numbers(v.cpu_ms);
    j.EndObject();
  }
  j.EndArray();
  j.Key("refresh_cycle_average").BeginArray();
  for (const CycleAverage& a : c.cycles) {
    j.BeginObject();
    j.Key("preset").String(a.preset);
    j.Key("derived").Bool(true);
    j.Key("intervals").Numbers(std::vector<double>(a.intervals.begin(), a.intervals.end()));
    j.Key("cycle_steps").Int(a.cycle_steps);
    j.Key("steps_refreshing_from_stage")
        .Numbers(std::vector<double>(a.steps_from.begin(), a.steps_from.end()));
    j.Key("avg_step_ms").Number(a.avg_ms);
    j.EndObject();
  }
  j.EndArray();
  j.Key("accuracy").BeginObject();
  j.Key("needle_selected").Bool(c.accuracy.needle_selected);
  j.Key("topk_recall").Number(c.accuracy.topk_recall);
  j.Key("mass_recall").Number(c.accuracy.mass_recall);
  j.Key("output_error").Number(c.accuracy.output_error);
  j.Key("selected_blocks").Int(c.selected_blocks);
  if (c.dense_vs_oracle >= 0) {
    j.Key("dense_vs_oracle_error").Number(c.dense_vs_oracle);
  } else {
    j.Key("dense_vs_oracle_error").Null();
  }
  j.Key("stage_cache_consistent").Bool(c.stage_cache_consistent);
  j.Key("sparse_variants_max_abs_diff").Number(c.sparse_variants_max_abs_diff);
  j.EndObject();
  j.EndObject();
}

}  // namespace

std::string RenderMarkdown(const BenchResult& r) {
  std::string md;
  Header(r, &md);
  StepTable(r, &md);
  CycleTable(r, &md);
  BreakdownTable(r, &md);
  AccuracyTable(r, &md);
  RecallTable(r, &md);
  SetupTable(r, &md);
  return md;
}

std::string RenderJson(const BenchResult& r) {
  JsonWriter j;
  j.BeginObject();
  j.Key("benchmark").String("cpu_decode");
  j.Key("run");
  WriteRunInfo(r.info, j);
  const RunConfig& c = r.config;
  j.Key("config").BeginObject();
  j.Key("num_layers").Int(c.num_layers);
  j.Key("layer").Int(c.layer);
  j.Key("num_q_heads").Int(c.num_q_heads);
  j.Key("num_kv_heads").Int(c.num_kv_heads);
  j.Key("head_dim").Int(c.head_dim);
  j.Key("dtype").String(c.dtype);
  j.Key("rope").String("none");
  j.Key("preset").String(c.preset);
  j.Key("refresh").String(c.refresh);
  j.Key("sink_tokens").Int(c.sink_tokens);
  j.Key("window_tokens").Int(c.window_tokens);
  j.Key("chunk_sizes").Numbers(std::vector<double>(c.chunk_sizes.begin(), c.chunk_sizes.end()));
  j.Key("kept_tokens").Numbers(std::vector<double>(c.kept_tokens.begin(), c.kept_tokens.end()));
  j.Key("engine_threads").Int(c.threads);
  j.Key("flush_cache_mib").Int(c.flush_cache_mib);
  j.Key("retain_memory").Bool(c.retain_memory);
  j.Key("flags").BeginArray();
  for (const std::string& f : c.flags) j.String(f);
  j.EndArray();
  j.EndObject();
  j.Key("contexts").BeginArray();
  for (const ContextResult& ctx : r.contexts) JsonContext(ctx, j);
  j.EndArray();
  j.Key("recall").BeginObject();
  j.Key("margins").Numbers(r.margins);
  j.Key("trials").BeginArray();
  for (const RecallTrial& t : r.trials) {
    j.BeginObject();
    j.Key("context").Int(t.context);
    j.Key("margin").Number(t.margin);
    j.Key("seed").Int(int64_t(t.seed));
    j.Key("needle_token").Int(t.needle_token);
    j.Key("depth").Number(t.depth);
    j.Key("achieved_margin").Number(t.achieved_margin);
    j.Key("found").Bool(t.found);
    j.Key("lost_at_stage").Int(t.lost_at_stage);
    j.Key("seconds").Number(t.seconds);
    j.Key("reused_timing_data").Bool(t.reused_timing_data);
    j.EndObject();
  }
  j.EndArray();
  j.EndObject();
  j.Key("wall_s").Number(r.wall_s);
  j.EndObject();
  return j.str();
}

}  // namespace ihip::bench
