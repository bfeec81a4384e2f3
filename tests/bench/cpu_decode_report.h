#pragma once

// The figures cpu_decode_bench measures, and their two renderings: a markdown report for people
// and a JSON document with every figure for tools. Plain data; not thread-safe.

#include <cstdint>
#include <string>
#include <vector>

#include "engine/synthetic/accuracy.h"
#include "tests/bench/bench_util.h"

namespace ihip::bench {

// One timed kind of decode step (an evaluation call at the context's last position).
struct VariantTiming {
  std::string key;    // "cached", "refresh_from_stage_3", ..., "full", "dense"
  std::string label;  // for the table header
  bool dense = false;
  int refresh = 0;  // the refresh override of a sparse step: 0 cached mask, i from stage i
  std::vector<double> warmup_ms;
  std::vector<double> samples_ms;
  std::vector<double> cpu_ms;  // process CPU time of each timed sample (all threads)
  Stats stats;
  int64_t attended_keys = 0;     // as the engine reports it
  int refreshed_from_stage = 0;  // as the engine reports it
};

// Average step time over one cycle of a refresh preset, derived from the medians.
struct CycleAverage {
  std::string preset;           // "paper", "fast", "flash"
  std::vector<int> intervals;   // n_refresh of stages 1..N
  int cycle_steps = 0;          // steps in one cycle of the schedule
  std::vector<int> steps_from;  // [i]: steps of the cycle that refresh from stage i (0: cached)
  double avg_ms = 0;
};

struct ContextResult {
  int64_t context = 0;
  uint64_t seed = 0;
  double margin = 0;
  int64_t needle_token = -1;
  double achieved_margin = 0;
  double generate_s = 0;
  double append_s = 0;
  double first_step_ms = 0;  // the appending decode step after AppendKv (every stage runs)
  std::vector<VariantTiming> variants;
  std::vector<CycleAverage> cycles;
  engine::synthetic::DecodeAccuracy accuracy;  // the full-refresh step vs the engine's dense
  double dense_vs_oracle = -1;  // ||o_dense(engine) - o_dense(oracle)|| / ||.||; -1 skipped
  int64_t selected_blocks = 0;
  bool stage_cache_consistent = true;  // every refresh variant selected the first step's blocks
  double sparse_variants_max_abs_diff = 0;  // outputs of the sparse variants vs the full one
};

struct RecallTrial {
  int64_t context = 0;
  double margin = 0;
  uint64_t seed = 0;
  int64_t needle_token = -1;
  double depth = 0;            // needle_token / context
  double achieved_margin = 0;  // as planted (min over heads)
  bool found = false;
  int lost_at_stage = 0;  // first stage whose kept chunks miss the needle; 0 when found
  double seconds = 0;     // wall time of the trial (generate, append, decode)
  bool reused_timing_data = false;
};

struct RunConfig {
  int num_layers = 0;
  int layer = 0;
  int num_q_heads = 0, num_kv_heads = 0, head_dim = 0;
  std::string dtype;
  std::string preset;
  std::string refresh;
  int sink_tokens = 0, window_tokens = 0;
  std::vector<int> chunk_sizes, kept_tokens;
  int threads = 0;
  int flush_cache_mib = 0;
  bool retain_memory = false;
  std::vector<std::string> flags;  // every flag of the benchmark, "--name=value"
};

struct BenchResult {
  RunInfo info;
  RunConfig config;
  std::vector<ContextResult> contexts;
  std::vector<double> margins;  // every margin some trial used, ascending
  std::vector<RecallTrial> trials;
  double wall_s = 0;
};

std::string RenderMarkdown(const BenchResult& r);
std::string RenderJson(const BenchResult& r);

}  // namespace ihip::bench
