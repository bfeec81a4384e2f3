// cuda_decode_bench: the CUDA backend's kernels on the GPU (issue 5, DESIGN §6). One attention
// layer of Llama-3-8B shape (Hq 32, Hkv 8, D 128, bf16 KV, RoPE `none`), KV of one layer on the
// GPU read through a block table, decode at batch 1 and 8 for each context: our dense split-K
// kernel; sparse steps with the mask cached, refreshed from each stage, and fully re-estimated;
// refresh-cycle averages (derived from the medians); achieved bandwidth against a measured copy;
// prefill of one chunk, sparse vs dense; and at batch 1, on structured synthetic data
// (engine/synthetic), needle found, top-k recall, mass recall and output error, plus a needle
// recall curve over margins at one context.
//
// Every timed step is one replay of a captured CUDA graph between two events, after the L2 was
// flushed by writing --flush_mib MiB (a model runs other layers between two steps of this one).
// Batch 8 = 8 sequences with their own KV (random data), their steps in one graph with 8
// parallel branches. Prints markdown, writes JSON; never asserts a time (STYLE.md).

#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "engine/cuda/cuda_layer.h"
#include "engine/cuda/decode_attention.h"
#include "engine/cuda/prefill_attention.h"
#include "engine/cuda/pruning.h"
#include "engine/hip/dtype_convert.h"
#include "engine/hip/refresh_schedule.h"
#include "engine/hip_config.h"
#include "engine/synthetic/accuracy.h"
#include "engine/synthetic/synthetic_data.h"
#include "tests/bench/bench_util.h"

ABSL_FLAG(std::string, contexts, "131072,262144,524288,1048576,2097152,3145728",
          "decode contexts (tokens)");
ABSL_FLAG(std::string, batches, "1,8", "decode batch sizes");
ABSL_FLAG(int, reps, 50, "timed replays per variant");
ABSL_FLAG(int, warmup, 5, "untimed replays per variant");
ABSL_FLAG(int, flush_mib, 256, "MiB written between timed replays (flushes the 60 MB L2)");
ABSL_FLAG(double, margin, 3.0, "needle margin (nats) of the batch-1 data");
ABSL_FLAG(uint64_t, seed, 1, "seed of the synthetic data");
ABSL_FLAG(int64_t, recall_context, 131072, "context of the needle recall curve (0 = none)");
ABSL_FLAG(std::string, recall_margins, "0.5,1,2,3,4", "margins of the recall curve");
ABSL_FLAG(int, recall_seeds, 4, "trials per margin of the recall curve");
ABSL_FLAG(std::string, prefill_contexts, "131072,1048576", "contexts of the prefill benchmark");
ABSL_FLAG(int, prefill_chunk, 32768, "prefill chunk (tokens) at the end of the context");
ABSL_FLAG(int, prefill_reps, 3, "timed prefill runs");
ABSL_FLAG(int, sparse_splits, 0,
          "override the sparse attention's split count (0 = the plan's; experiments)");
ABSL_FLAG(bool, speculate, true,
          "sparse launches with split_keys and max_blocks (the engine's way); false: equal "
          "shares, selected blocks loaded after the step scalars");
ABSL_FLAG(bool, trace, false,
          "also launch each batch's cached-mask step with per-block phase timestamps and print "
          "where its time goes (needs a build with -DIHIP_DECODE_TRACE=ON)");
ABSL_FLAG(std::string, json, "", "write the results as JSON here");
ABSL_FLAG(std::string, markdown, "", "also write the report here");
ABSL_FLAG(std::string, git_commit, "", "commit to record (default: ask git)");

namespace ihip::bench {
namespace {

using engine::DType;
using engine::HipConfig;
using engine::LayerConfig;
namespace cu = engine::cuda;

constexpr int kHq = 32, kHkv = 8, kD = 128, kPageTokens = 64;
constexpr size_t kRowBytes = size_t(kHkv) * kD * 2;  // one token's K (or V), bf16
constexpr size_t kPageBytes = 2 * kPageTokens * kRowBytes;

#define CHECK_CUDA(call)                                                                   \
  do {                                                                                     \
    const cudaError_t e_ = (call);                                                         \
    if (e_ != cudaSuccess) {                                                               \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
      std::exit(1);                                                                        \
    }                                                                                      \
  } while (0)

template <class T>
T* DeviceAlloc(size_t count) {
  void* p = nullptr;
  CHECK_CUDA(cudaMalloc(&p, std::max<size_t>(count * sizeof(T), 16)));
  return static_cast<T*>(p);
}

// One layer's KV on the GPU: pages in one allocation, addressed through a block table.
struct GpuKv {
  int64_t length = 0;
  uint8_t* pages = nullptr;
  const uint8_t** table = nullptr;
  cu::DeviceKv kv;

  explicit GpuKv(int64_t len) : length(len) {
    const int64_t n = (len + kPageTokens - 1) / kPageTokens;
    pages = DeviceAlloc<uint8_t>(size_t(n) * kPageBytes);
    std::vector<const uint8_t*> host(n);
    for (int64_t i = 0; i < n; ++i) host[i] = pages + size_t(i) * kPageBytes;
    table = DeviceAlloc<const uint8_t*>(n);
    CHECK_CUDA(cudaMemcpy(table, host.data(), n * sizeof(void*), cudaMemcpyHostToDevice));
    kv = cu::DeviceKv{table, kPageTokens, kHkv, kD, cu::ElemType::kBF16};
  }
  ~GpuKv() {
    cudaFree(pages);
    cudaFree(table);
  }
  // K and V rows [length][Hkv][D] (bf16) into the pages: one strided copy per half.
  void Fill(const void* k, const void* v) {
    const int64_t full = length / kPageTokens, rest = length % kPageTokens;
    for (int half = 0; half < 2; ++half) {
      const uint8_t* src = static_cast<const uint8_t*>(half == 0 ? k : v);
      uint8_t* dst = pages + half * kPageTokens * kRowBytes;
      const size_t width = kPageTokens * kRowBytes;
      if (full > 0) {
        CHECK_CUDA(cudaMemcpy2D(dst, kPageBytes, src, width, width, full, cudaMemcpyDefault));
      }
      if (rest > 0) {
        CHECK_CUDA(cudaMemcpy(dst + full * kPageBytes, src + full * width, rest * kRowBytes,
                              cudaMemcpyDefault));
      }
    }
  }
  // Random bf16 (N(0,1)) from a host tile repeated over the pages (offset varies the phase).
  void FillRandom(const std::vector<uint16_t>& tile, size_t offset) {
    const size_t total = size_t((length + kPageTokens - 1) / kPageTokens) * kPageBytes;
    const size_t tile_bytes = tile.size() * 2;
    uint8_t* d_tile = DeviceAlloc<uint8_t>(tile_bytes);
    CHECK_CUDA(cudaMemcpy(d_tile, tile.data(), tile_bytes, cudaMemcpyHostToDevice));
    for (size_t at = 0; at < total;) {
      const size_t start = (at + offset) % tile_bytes;
      const size_t n = std::min(total - at, tile_bytes - start);
      CHECK_CUDA(cudaMemcpy(pages + at, d_tile + start, n, cudaMemcpyDeviceToDevice));
      at += n;
    }
    CHECK_CUDA(cudaFree(d_tile));
  }
};

// The decode work of one sequence: buffers, plans, and how to enqueue each variant.
// Variant v: 0 = cached mask (attention only), 1..N = stages v..N then attention, N+1 = dense.
struct DecodeItem {
  const GpuKv* kv = nullptr;
  cu::PrunePlan plan;
  cu::DeviceMask mask;
  void* prune_ws = nullptr;
  cu::DecodeAttentionPlan sparse_plan, dense_plan;
  void *sparse_ws = nullptr, *dense_ws = nullptr;
  float *q = nullptr, *o = nullptr, *lse = nullptr;
  cu::StepScalars* step = nullptr;
  int64_t* pos = nullptr;
  unsigned long long* trace = nullptr;  // --trace: the sparse launches' phase timestamps
  int64_t sparse_max_keys = 0;          // the sparse plan's key bound

  DecodeItem(const GpuKv* k, const LayerConfig& cfg, const std::vector<float>& q_host, int sms)
      : kv(k) {
    const int64_t p = k->length - 1;
    CHECK_CUDA(cu::PlanPrune(cu::ToPruneConfig(cfg), kHq, kHkv, kD, cu::ElemType::kBF16, 1, 1,
                             k->length, &plan));
    for (int s = 1; s < plan.cfg.num_stages; ++s) {
      mask.stage_inputs[s] = DeviceAlloc<int64_t>(plan.max_candidates[s]);
      mask.stage_capacity[s] = plan.max_candidates[s];
    }
    mask.stage_input_counts = DeviceAlloc<int>(cu::DeviceMask::kMaxStages);
    mask.blocks = DeviceAlloc<int64_t>(plan.block_capacity);
    mask.num_blocks = DeviceAlloc<int>(1);
    mask.block_capacity = plan.block_capacity;
    prune_ws = DeviceAlloc<uint8_t>(plan.workspace_bytes);
    const int64_t sparse_keys = cfg.sink_tokens + 8 * int64_t(plan.block_capacity) +
                                cfg.window_tokens + 8;
    sparse_max_keys = sparse_keys;
    CHECK_CUDA(cu::PlanDecodeAttention(kHq, kHkv, kD, cu::ElemType::kBF16, sparse_keys, sms,
                                       &sparse_plan));
    CHECK_CUDA(cu::PlanDecodeAttention(kHq, kHkv, kD, cu::ElemType::kBF16, p + 1, sms,
                                       &dense_plan));
    sparse_ws = DeviceAlloc<uint8_t>(sparse_plan.workspace_bytes);
    dense_ws = DeviceAlloc<uint8_t>(dense_plan.workspace_bytes);
    q = DeviceAlloc<float>(kHq * kD);
    o = DeviceAlloc<float>(kHq * kD);
    lse = DeviceAlloc<float>(kHq);
    step = DeviceAlloc<cu::StepScalars>(1);
    pos = DeviceAlloc<int64_t>(1);
    const cu::StepScalars sc{p, k->length, p, p};
    CHECK_CUDA(cudaMemcpy(step, &sc, sizeof sc, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(pos, &p, sizeof p, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(q, q_host.data(), q_host.size() * 4, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaDeviceSynchronize());
  }

  void Record(int variant, const LayerConfig& cfg, cudaStream_t s) const {
    const int N = plan.cfg.num_stages;
    if (variant >= 1 && variant <= N) {
      cu::PruneParams pp;
      pp.kv = kv->kv;
      pp.step = step;
      pp.pooled_q = pp.full_q = q;
      pp.pooled_positions = pp.full_positions = pos;
      pp.mask = mask;
      pp.workspace = prune_ws;
      CHECK_CUDA(cu::LaunchRunStages(plan, pp, variant - 1, s));
    }
    cu::DecodeAttentionParams ap;
    ap.kv = kv->kv;
    ap.step = step;
    ap.q = q;
    ap.num_q_heads = kHq;
    ap.dense = variant == N + 1;
    ap.blocks = mask.blocks;
    ap.num_blocks = mask.num_blocks;
    ap.sink_tokens = cfg.sink_tokens;
    ap.window_tokens = cfg.window_tokens;
    ap.out = o;
    ap.out_dtype = cu::ElemType::kF32;
    ap.out_lse = lse;
    ap.workspace = ap.dense ? dense_ws : sparse_ws;
    ap.num_splits = ap.dense ? dense_plan.num_splits : sparse_plan.num_splits;
    if (!ap.dense && absl::GetFlag(FLAGS_sparse_splits) > 0) {
      ap.num_splits = std::min(absl::GetFlag(FLAGS_sparse_splits), sparse_plan.num_splits);
    }
    if (!ap.dense) {
      ap.trace = trace;
      if (absl::GetFlag(FLAGS_speculate)) {
        // The plan's shares, or equal shares of the plan's key bound over --sparse_splits.
        ap.split_keys = ap.num_splits == sparse_plan.num_splits
                            ? sparse_plan.split_keys
                            : (sparse_max_keys + ap.num_splits - 1) / ap.num_splits / 8 * 8 + 8;
        ap.max_blocks = mask.block_capacity;
      }
    }
    CHECK_CUDA(cu::LaunchDecodeAttention(ap, s));
  }

  std::vector<int64_t> Blocks() const {
    int n = 0;
    CHECK_CUDA(cudaMemcpy(&n, mask.num_blocks, sizeof n, cudaMemcpyDeviceToHost));
    std::vector<int64_t> b(std::clamp(n, 0, plan.block_capacity));
    CHECK_CUDA(cudaMemcpy(b.data(), mask.blocks, b.size() * 8, cudaMemcpyDeviceToHost));
    return b;
  }
  std::vector<float> Output() const {
    std::vector<float> out(kHq * kD);
    CHECK_CUDA(cudaMemcpy(out.data(), o, out.size() * 4, cudaMemcpyDeviceToHost));
    return out;
  }
  ~DecodeItem() {
    for (int s = 1; s < cu::DeviceMask::kMaxStages; ++s) cudaFree(mask.stage_inputs[s]);
    for (void* p : {(void*)mask.stage_input_counts, (void*)mask.blocks, (void*)mask.num_blocks,
                    prune_ws, sparse_ws, dense_ws, (void*)q, (void*)o, (void*)lse, (void*)step,
                    (void*)pos}) {
      cudaFree(p);
    }
  }
};

// Streams and events for timing graphs with an L2 flush before each replay.
struct Timer {
  std::vector<cudaStream_t> streams;  // [0] is the main stream
  cudaEvent_t start, stop;
  std::vector<cudaEvent_t> fork;
  void* flush = nullptr;
  size_t flush_bytes = 0;

  explicit Timer(int branches) {
    streams.resize(branches);
    fork.resize(branches + 1);
    for (auto& s : streams) CHECK_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    for (auto& e : fork) CHECK_CUDA(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    CHECK_CUDA(cudaEventCreate(&start));
    CHECK_CUDA(cudaEventCreate(&stop));
    flush_bytes = size_t(absl::GetFlag(FLAGS_flush_mib)) << 20;
    flush = DeviceAlloc<uint8_t>(flush_bytes);
  }

  // Enqueues the items' variant on the main stream: one branch (stream) per item, forked from
  // and joined back into the main stream. Eager, or inside a capture.
  void Enqueue(const std::vector<const DecodeItem*>& items, int variant, const LayerConfig& cfg) {
    cudaStream_t main = streams[0];
    CHECK_CUDA(cudaEventRecord(fork[0], main));
    for (size_t i = 1; i < items.size(); ++i) CHECK_CUDA(cudaStreamWaitEvent(streams[i], fork[0]));
    for (size_t i = 0; i < items.size(); ++i) items[i]->Record(variant, cfg, streams[i]);
    for (size_t i = 1; i < items.size(); ++i) {
      CHECK_CUDA(cudaEventRecord(fork[i], streams[i]));
      CHECK_CUDA(cudaStreamWaitEvent(main, fork[i]));
    }
  }

  // Captures the items' variant as one graph (one branch per item).
  cudaGraphExec_t Capture(const std::vector<const DecodeItem*>& items, int variant,
                          const LayerConfig& cfg) {
    cudaStream_t main = streams[0];
    CHECK_CUDA(cudaStreamBeginCapture(main, cudaStreamCaptureModeThreadLocal));
    Enqueue(items, variant, cfg);
    cudaGraph_t g;
    CHECK_CUDA(cudaStreamEndCapture(main, &g));
    cudaGraphExec_t exec;
    CHECK_CUDA(cudaGraphInstantiate(&exec, g, 0));
    CHECK_CUDA(cudaGraphDestroy(g));
    return exec;
  }

  Stats Time(cudaGraphExec_t g, int reps, int warmup) {
    cudaStream_t s = streams[0];
    for (int i = 0; i < warmup; ++i) CHECK_CUDA(cudaGraphLaunch(g, s));
    std::vector<double> ms;
    for (int r = 0; r < reps; ++r) {
      CHECK_CUDA(cudaMemsetAsync(flush, r & 0xff, flush_bytes, s));
      CHECK_CUDA(cudaEventRecord(start, s));
      CHECK_CUDA(cudaGraphLaunch(g, s));
      CHECK_CUDA(cudaEventRecord(stop, s));
      CHECK_CUDA(cudaEventSynchronize(stop));
      float t = 0;
      CHECK_CUDA(cudaEventElapsedTime(&t, start, stop));
      ms.push_back(t);
    }
    return Summarize(ms);
  }
};

// The launch floor: a graph of one 4-byte memset, timed like every step (L2 flush, events).
Stats LaunchFloor(Timer& timer) {
  void* d = DeviceAlloc<uint8_t>(256);
  cudaStream_t s = timer.streams[0];
  CHECK_CUDA(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  CHECK_CUDA(cudaMemsetAsync(d, 0, 4, s));
  cudaGraph_t g;
  CHECK_CUDA(cudaStreamEndCapture(s, &g));
  cudaGraphExec_t exec;
  CHECK_CUDA(cudaGraphInstantiate(&exec, g, 0));
  CHECK_CUDA(cudaGraphDestroy(g));
  const Stats st = timer.Time(exec, 50, 5);
  CHECK_CUDA(cudaGraphExecDestroy(exec));
  cudaFree(d);
  return st;
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// --trace: the cached-mask step of every item launched with phase timestamps (kernels/
// decode_attention_common.cuh TraceSlot), on the items' streams as in the timed graphs, after an
// L2 flush; prints where a block's time goes, when blocks start and end relative to the first
// block's start, and how many blocks are running over time.
void TraceSparse(const std::vector<std::unique_ptr<DecodeItem>>& items, const LayerConfig& cfg,
                 Timer& timer) {
  const int slots = cu::kDecodeTraceSlots;
  std::vector<int> counts;
  for (auto& it : items) {
    // The attention grid's blocks, then the merge kernel's (one per query head).
    const int blocks = it->sparse_plan.num_splits * (kHq / it->sparse_plan.heads_per_block) + kHq;
    counts.push_back(blocks);
    it->trace = DeviceAlloc<unsigned long long>(size_t(blocks) * slots);
  }
  std::vector<const DecodeItem*> ptrs;
  for (auto& it : items) ptrs.push_back(it.get());
  cudaStream_t main = timer.streams[0];
  float ms = 0;
  for (int rep = 0; rep < 5; ++rep) {
    for (size_t i = 0; i < items.size(); ++i) {
      CHECK_CUDA(cudaMemsetAsync(items[i]->trace, 0, size_t(counts[i]) * slots * 8, main));
    }
    CHECK_CUDA(cudaMemsetAsync(timer.flush, rep & 0xff, timer.flush_bytes, main));
    CHECK_CUDA(cudaEventRecord(timer.start, main));
    timer.Enqueue(ptrs, 0, cfg);
    CHECK_CUDA(cudaEventRecord(timer.stop, main));
    CHECK_CUDA(cudaEventSynchronize(timer.stop));
    CHECK_CUDA(cudaEventElapsedTime(&ms, timer.start, timer.stop));
  }
  std::vector<std::array<double, 16>> rows;
  // Per item: the last attention block's end, the merge blocks' first start and last end (ns).
  std::vector<double> merge_wait, merge_span;
  for (size_t i = 0; i < items.size(); ++i) {
    std::vector<unsigned long long> t(size_t(counts[i]) * slots);
    CHECK_CUDA(cudaMemcpy(t.data(), items[i]->trace, t.size() * 8, cudaMemcpyDeviceToHost));
    cudaFree(items[i]->trace);
    items[i]->trace = nullptr;
    for (int b = 0; b < counts[i]; ++b) {
      std::array<double, 16> r;
      for (int k = 0; k < 16; ++k) r[k] = double(t[size_t(b) * slots + k]);
      if (r[0] > 0 && r[14] == 0) rows.push_back(r);  // (a capped launch leaves rows empty)
    }
    double attn_end = 0, merge_start = 1e300, merge_end = 0;
    for (int b = 0; b < counts[i]; ++b) {
      const unsigned long long* r = &t[size_t(b) * slots];
      if (r[0] == 0) continue;
      if (r[14] == 0) attn_end = std::max(attn_end, double(r[10]));
      if (r[14] == 1) {
        merge_start = std::min(merge_start, double(r[0]));
        merge_end = std::max(merge_end, double(r[10]));
      }
    }
    if (merge_end > 0) {
      merge_wait.push_back((merge_start - attn_end) / 1e3);
      merge_span.push_back((merge_end - merge_start) / 1e3);
    }
  }
  if (rows.empty() || rows[0][0] == 0) {
    std::printf("\n--trace: no timestamps (build with -DIHIP_DECODE_TRACE=ON)\n");
    return;
  }
  // Cycles -> ns from each block's own globaltimer span.
  std::vector<double> ns_per_cycle;
  double t0 = 1e300;
  for (const auto& r : rows) {
    const double cyc = r[9] - r[1], ns = r[10] - r[0];
    if (cyc > 0 && ns > 0) ns_per_cycle.push_back(ns / cyc);
    if (r[0] > 0) t0 = std::min(t0, r[0]);
  }
  const double k = Median(ns_per_cycle);
  double last_start = 0, last_end = 0;
  std::vector<double> starts, ends, lives;
  for (const auto& r : rows) {
    starts.push_back((r[0] - t0) / 1e3);
    ends.push_back((r[10] - t0) / 1e3);
    lives.push_back((r[10] - r[0]) / 1e3);
    last_start = std::max(last_start, starts.back());
    last_end = std::max(last_end, ends.back());
  }
  std::printf("\n### --trace: cached-mask step, batch %zu, %zu blocks (%d splits each), eager "
              "launch %.1f us between events; blocks start over %.2f us, the last ends %.2f us "
              "after the first starts; block lifetime median %.2f us; %.3f ns per clock\n\n",
              items.size(), rows.size(), items[0]->sparse_plan.num_splits, ms * 1e3, last_start,
              last_end, Median(lives), k);
  std::printf("| phase (us) | median | max | blocks |\n|---|---|---|---|\n");
  // (from, to, name): the stamps of kernels/decode_attention_common.cuh TraceSlot.
  const struct {
    int from, to;
    const char* name;
  } phases[] = {{1, 2, "step scalars + block count"}, {2, 3, "rows resolved, q staged"},
                {3, 4, "tile 0 arrived"},             {4, 5, "rest of the tiles"},
                {5, 6, "warp states merged"},         {6, 7, "partial written"},
                {1, 9, "whole block"}};
  for (const auto& ph : phases) {
    std::vector<double> d;
    for (const auto& r : rows) {
      if (r[ph.to] == 0 || r[ph.from] == 0) continue;
      d.push_back((r[ph.to] - r[ph.from]) * k / 1e3);
    }
    if (d.empty()) continue;
    std::printf("| %s | %.2f | %.2f | %zu |\n", ph.name, Median(d),
                *std::max_element(d.begin(), d.end()), d.size());
  }
  std::printf("\nblock start after the first: median %.2f us; block end: median %.2f us, "
              "max %.2f us\n",
              Median(starts), Median(ends), last_end);
  // Blocks running, sampled every microsecond.
  std::string hist;
  for (double x = 0; x <= last_end; x += 1.0) {
    int n = 0;
    for (size_t b = 0; b < starts.size(); ++b) n += starts[b] <= x && ends[b] > x;
    absl::StrAppendFormat(&hist, "%s%d", hist.empty() ? "" : " ", n);
  }
  std::printf("blocks running at each microsecond: %s\n", hist.c_str());
  if (!merge_span.empty()) {
    std::printf("merge kernel: its first block passes griddepcontrol.wait %.2f us after the "
                "attention grid's last block ends (median over the batch); its blocks span "
                "%.2f us\n",
                Median(merge_wait), Median(merge_span));
  }
}

double CopyBandwidthGBs(Timer& timer) {
  const size_t bytes = size_t(4) << 30;
  uint8_t* a = DeviceAlloc<uint8_t>(bytes);
  uint8_t* b = DeviceAlloc<uint8_t>(bytes);
  CHECK_CUDA(cudaMemset(a, 1, bytes));
  cudaStream_t s = timer.streams[0];
  std::vector<double> ms;
  for (int r = 0; r < 13; ++r) {
    CHECK_CUDA(cudaEventRecord(timer.start, s));
    CHECK_CUDA(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, s));
    CHECK_CUDA(cudaEventRecord(timer.stop, s));
    CHECK_CUDA(cudaEventSynchronize(timer.stop));
    float t = 0;
    CHECK_CUDA(cudaEventElapsedTime(&t, timer.start, timer.stop));
    if (r >= 3) ms.push_back(t);
  }
  cudaFree(a);
  cudaFree(b);
  return 2.0 * double(bytes) / (Summarize(ms).median * 1e6);
}

std::vector<int64_t> ParseInts(const std::string& s) {
  std::vector<int64_t> out;
  for (absl::string_view p : absl::StrSplit(s, ',', absl::SkipEmpty())) {
    out.push_back(std::stoll(std::string(p)));
  }
  return out;
}

std::vector<float> ScaledQuery(const engine::synthetic::SyntheticData& data) {
  std::vector<float> q(kHq * kD);
  engine::ToFloat(DType::kBF16, data.q_at(0), q.size(), q.data());
  for (float& x : q) x *= data.scale;
  return q;
}

engine::synthetic::SyntheticData MakeData(int64_t length, double margin, uint64_t seed) {
  engine::synthetic::SyntheticOptions so;
  so.length = length;
  so.num_q_heads = kHq;
  so.num_kv_heads = kHkv;
  so.head_dim = kD;
  so.dtype = DType::kBF16;
  so.seed = seed;
  so.needle_margin = margin;
  Progress progress(absl::StrFormat("generate %s (margin %.1f, seed %d)", TokensLabel(length),
                                    margin, seed));
  auto data = engine::synthetic::Generate(so, [&](double f) { progress.Update(f); });
  progress.Done();
  return data;
}

// Decode at one context and batch: every variant's median, and at batch 1 the accuracy.
struct DecodeRow {
  int64_t context = 0;
  int batch = 1;
  std::vector<Stats> variants;  // 0 cached, 1..N from stage, N+1 dense
  int64_t attended_keys = 0;
  double sparse_attn_gbs = 0, dense_gbs = 0;
  std::map<std::string, double> cycle_ms;  // refresh preset -> derived average step
  bool has_accuracy = false;
  engine::synthetic::DecodeAccuracy acc;
  double dense_vs_cpu = 0;  // our dense kernel vs the CPU oracle (relative L2)
  int64_t needle = -1;
};

double CycleAverage(const std::vector<Stats>& v, std::vector<engine::StageSpec> stages,
                    engine::RefreshPreset preset) {
  const std::vector<int> r = engine::RefreshIntervals(preset);
  int cycle = 1;
  for (size_t i = 0; i < stages.size() && i < r.size(); ++i) {
    stages[i].refresh_interval = r[i];
    cycle = std::max(cycle, r[i]);
  }
  double sum = 0;
  for (int s = 0; s < cycle; ++s) sum += v[engine::StageToRefresh(stages, s)].median;
  return sum / cycle;
}

DecodeRow RunDecode(int64_t context, int batch, Timer& timer, int sms) {
  const HipConfig config = HipConfig::Make();
  const LayerConfig& cfg = config.ForLayer(3);
  const int N = int(cfg.stages.size());
  DecodeRow row;
  row.context = context;
  row.batch = batch;
  std::vector<std::unique_ptr<GpuKv>> kvs;
  std::vector<std::unique_ptr<DecodeItem>> items;
  engine::synthetic::SyntheticData data;
  if (batch == 1) {
    data = MakeData(context, absl::GetFlag(FLAGS_margin), absl::GetFlag(FLAGS_seed));
    kvs.push_back(std::make_unique<GpuKv>(context));
    kvs[0]->Fill(data.k.data(), data.v.data());
    items.push_back(std::make_unique<DecodeItem>(kvs[0].get(), cfg, ScaledQuery(data), sms));
    row.needle = data.needle_token;
  } else {
    std::mt19937_64 rng(absl::GetFlag(FLAGS_seed));
    std::normal_distribution<float> normal;
    std::vector<uint16_t> tile((size_t(1) << 27) + 4099);  // 256 MiB + a little: no period match
    for (auto& x : tile) x = engine::FloatToBf16(normal(rng));
    for (int b = 0; b < batch; ++b) {
      kvs.push_back(std::make_unique<GpuKv>(context));
      kvs[b]->FillRandom(tile, size_t(b) * 7919 * 64);
      std::vector<float> q(kHq * kD);
      for (float& x : q) x = normal(rng) * 0.09f;
      items.push_back(std::make_unique<DecodeItem>(kvs[b].get(), cfg, q, sms));
    }
  }
  std::vector<const DecodeItem*> ptrs;
  for (auto& it : items) ptrs.push_back(it.get());
  // Fill every item's mask first (the cached variant attends the blocks of a full run).
  for (auto* it : ptrs) it->Record(1, cfg, timer.streams[0]);
  CHECK_CUDA(cudaStreamSynchronize(timer.streams[0]));
  const int reps = absl::GetFlag(FLAGS_reps), warmup = absl::GetFlag(FLAGS_warmup);
  for (int v = 0; v <= N + 1; ++v) {
    cudaGraphExec_t g = timer.Capture(ptrs, v, cfg);
    const int r = v == N + 1 && int64_t(context) * batch > (int64_t(1) << 23) ? reps / 4 : reps;
    row.variants.push_back(timer.Time(g, std::max(5, r), warmup));
    CHECK_CUDA(cudaGraphExecDestroy(g));
  }
  if (absl::GetFlag(FLAGS_trace)) TraceSparse(items, cfg, timer);
  const std::vector<int64_t> blocks = items[0]->Blocks();
  row.attended_keys = engine::CountKeys(engine::SparseRuns(context - 1, context - 1, cfg, blocks));
  const double kv_bytes_per_key = 2.0 * kRowBytes;
  row.sparse_attn_gbs =
      batch * row.attended_keys * kv_bytes_per_key / (row.variants[0].median * 1e6);
  row.dense_gbs = batch * context * kv_bytes_per_key / (row.variants[N + 1].median * 1e6);
  for (auto preset : {engine::RefreshPreset::kPaper, engine::RefreshPreset::kFast,
                      engine::RefreshPreset::kFlash}) {
    row.cycle_ms[engine::RefreshPresetName(preset)] = CycleAverage(row.variants, cfg.stages, preset);
  }
  if (batch == 1) {
    // Accuracy of the full step against the CPU oracle computed from the data, and our dense
    // kernel against the same oracle.
    items[0]->Record(1, cfg, timer.streams[0]);
    CHECK_CUDA(cudaStreamSynchronize(timer.streams[0]));
    const std::vector<float> sparse = items[0]->Output();
    items[0]->Record(N + 1, cfg, timer.streams[0]);
    CHECK_CUDA(cudaStreamSynchronize(timer.streams[0]));
    const std::vector<float> dense = items[0]->Output();
    Progress progress("accuracy against the CPU oracle");
    row.acc = engine::synthetic::EvaluateDecode(data, 0, blocks, cfg, sparse.data());
    row.dense_vs_cpu =
        engine::synthetic::EvaluateDecode(data, 0, blocks, cfg, dense.data()).output_error;
    progress.Done();
    row.has_accuracy = true;
  }
  return row;
}

// Needle recall over margins at one context (batch 1, full pruning from stage 1).
std::vector<std::pair<double, double>> RecallCurve(int64_t context, Timer& timer, int sms) {
  const LayerConfig cfg = HipConfig::Make().ForLayer(3);
  std::vector<std::pair<double, double>> curve;
  const int seeds = absl::GetFlag(FLAGS_recall_seeds);
  for (absl::string_view ms : absl::StrSplit(absl::GetFlag(FLAGS_recall_margins), ',')) {
    const double margin = std::stod(std::string(ms));
    int found = 0;
    for (int s = 0; s < seeds; ++s) {
      const auto data = MakeData(context, margin, absl::GetFlag(FLAGS_seed) + 1000 + s);
      GpuKv kv(context);
      kv.Fill(data.k.data(), data.v.data());
      DecodeItem item(&kv, cfg, ScaledQuery(data), sms);
      item.Record(1, cfg, timer.streams[0]);
      CHECK_CUDA(cudaStreamSynchronize(timer.streams[0]));
      const auto blocks = item.Blocks();
      found += std::binary_search(blocks.begin(), blocks.end(), data.needle_token / 8);
    }
    curve.emplace_back(margin, double(found) / seeds);
  }
  return curve;
}

struct PrefillRow {
  int64_t context = 0;
  int chunk = 0;
  Stats prune, sparse_attn, dense;
};

// One chunk at the end of the context: pruning of every query block, block-sparse attention,
// and dense attention, each timed separately (random data).
PrefillRow RunPrefill(int64_t context, int chunk, Timer& timer, int sms) {
  const LayerConfig cfg = HipConfig::Make().ForLayer(3);
  PrefillRow row{context, chunk, {}, {}, {}};
  std::mt19937_64 rng(absl::GetFlag(FLAGS_seed));
  std::normal_distribution<float> normal;
  std::vector<uint16_t> tile((size_t(1) << 26) + 4099);
  for (auto& x : tile) x = engine::FloatToBf16(normal(rng));
  GpuKv kv(context);
  kv.FillRandom(tile, 0);
  const int64_t position = context - chunk;
  const int nqb = (chunk + cfg.query_block - 1) / cfg.query_block;
  const int ng = (cfg.query_block + cfg.pool_stride - 1) / cfg.pool_stride;
  std::vector<float> q(size_t(chunk) * kHq * kD);
  for (float& x : q) x = normal(rng) * 0.09f;
  float* d_q = DeviceAlloc<float>(q.size());
  CHECK_CUDA(cudaMemcpy(d_q, q.data(), q.size() * 4, cudaMemcpyHostToDevice));
  float* d_pooled = DeviceAlloc<float>(size_t(nqb) * ng * kHq * kD);  // pooled q (any values)
  CHECK_CUDA(cudaMemcpy(d_pooled, q.data(), size_t(nqb) * ng * kHq * kD * 4,
                        cudaMemcpyHostToDevice));
  std::vector<int64_t> pos(size_t(nqb) * (ng + cfg.query_block));
  std::vector<cu::StepScalars> scalars(nqb);
  for (int b = 0; b < nqb; ++b) {
    const int64_t p_min = position + int64_t(b) * cfg.query_block;
    scalars[b] = cu::StepScalars{p_min, context, p_min, p_min};
    for (int g = 0; g < ng; ++g) pos[size_t(b) * ng + g] = p_min + g * cfg.pool_stride;
    for (int i = 0; i < cfg.query_block; ++i) {
      pos[size_t(nqb) * ng + size_t(b) * cfg.query_block + i] = p_min + i;
    }
  }
  int64_t* d_pos = DeviceAlloc<int64_t>(pos.size());
  cu::StepScalars* d_scalars = DeviceAlloc<cu::StepScalars>(nqb);
  CHECK_CUDA(cudaMemcpy(d_pos, pos.data(), pos.size() * 8, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(d_scalars, scalars.data(), nqb * sizeof(cu::StepScalars),
                        cudaMemcpyHostToDevice));
  cu::PrunePlan plan;
  CHECK_CUDA(cu::PlanPrune(cu::ToPruneConfig(cfg), kHq, kHkv, kD, cu::ElemType::kBF16, ng,
                           cfg.query_block, context, &plan));
  int64_t* d_blocks = DeviceAlloc<int64_t>(size_t(nqb) * plan.block_capacity);
  int* d_counts = DeviceAlloc<int>(nqb);
  void* ws = DeviceAlloc<uint8_t>(cu::PruneBatchWorkspaceBytes(plan, nqb));
  cudaStream_t s = timer.streams[0];
  auto prune = [&] {  // every query block of the chunk in one batched run
    cu::PruneBatchParams bp;
    bp.kv = kv.kv;
    bp.step = d_scalars;
    bp.pooled_q = d_pooled;
    bp.pooled_q_stride = int64_t(ng) * kHq * kD;
    bp.pooled_positions = d_pos;
    bp.pooled_positions_stride = ng;
    bp.full_q = d_q;
    bp.full_q_stride = int64_t(cfg.query_block) * kHq * kD;
    bp.full_positions = d_pos + size_t(nqb) * ng;
    bp.full_positions_stride = cfg.query_block;
    bp.blocks = d_blocks;
    bp.blocks_stride = plan.block_capacity;
    bp.block_counts = d_counts;
    bp.num_query_blocks = nqb;
    bp.workspace = ws;
    CHECK_CUDA(cu::LaunchRunStagesBatched(plan, bp, s));
  };
  float* d_o = DeviceAlloc<float>(q.size());
  cu::PrefillAttentionParams pa;
  pa.kv = kv.kv;
  pa.kv_length = context;
  pa.position = position;
  pa.num_tokens = chunk;
  pa.num_q_heads = kHq;
  pa.q = d_q;
  pa.blocks = d_blocks;
  pa.block_counts = d_counts;
  pa.max_blocks = plan.block_capacity;
  pa.query_block = cfg.query_block;
  pa.sink_tokens = cfg.sink_tokens;
  pa.window_tokens = cfg.window_tokens;
  pa.out = d_o;
  pa.out_dtype = cu::ElemType::kBF16;
  pa.sm_count = sms;
  auto attend = [&](bool dense) {
    cu::PrefillAttentionParams p = pa;
    p.dense = dense;
    static void* pws = nullptr;
    static size_t pws_bytes = 0;
    const size_t need = cu::PrefillAttentionWorkspaceBytes(p);
    if (need > pws_bytes) {
      if (pws != nullptr) cudaFree(pws);
      pws = DeviceAlloc<uint8_t>(need);
      pws_bytes = need;
    }
    p.workspace = pws;
    CHECK_CUDA(cu::LaunchPrefillAttention(p, s));
  };
  auto time = [&](auto&& fn, int reps) {
    fn();  // warm-up
    CHECK_CUDA(cudaStreamSynchronize(s));
    std::vector<double> ms;
    for (int r = 0; r < reps; ++r) {
      CHECK_CUDA(cudaEventRecord(timer.start, s));
      fn();
      CHECK_CUDA(cudaEventRecord(timer.stop, s));
      CHECK_CUDA(cudaEventSynchronize(timer.stop));
      float t = 0;
      CHECK_CUDA(cudaEventElapsedTime(&t, timer.start, timer.stop));
      ms.push_back(t);
    }
    return Summarize(ms);
  };
  const int reps = absl::GetFlag(FLAGS_prefill_reps);
  row.prune = time(prune, reps);
  row.sparse_attn = time([&] { attend(false); }, reps);
  row.dense = time([&] { attend(true); }, reps);
  for (void* p : {(void*)d_q, (void*)d_pooled, (void*)d_pos, (void*)d_scalars, (void*)d_blocks,
                  (void*)d_counts, ws, (void*)d_o}) {
    cudaFree(p);
  }
  return row;
}

void Report(const RunInfo& info, const std::string& device, double copy_gbs, double floor_ms,
            const std::vector<DecodeRow>& rows, const std::vector<std::pair<double, double>>& curve,
            int64_t curve_context, const std::vector<PrefillRow>& prefill) {
  std::string md = absl::StrFormat(
      "# cuda_decode_bench\n\n- date %s; commit `%s`; %s\n- command: `%s`\n- device-to-device "
      "copy: %.0f GB/s (bytes read + written)\n- launch floor: a graph of one 4-byte memset, "
      "timed like the steps: %.4f ms\n- one layer, Hq 32, Hkv 8, D 128, bf16 KV, RoPE "
      "none, preset 3K; each time = median of graph replays after an L2 flush (ms)\n\n",
      info.date_utc, info.git_commit, device, info.command, copy_gbs, floor_ms);
  md += "| context | batch | cached | from 3 | from 2 | full | dense | paper avg | fast avg | "
        "flash avg | dense / flash | sparse attn GB/s | dense GB/s (% of copy) |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
  for (const DecodeRow& r : rows) {
    const auto& v = r.variants;
    const int N = int(v.size()) - 2;
    md += absl::StrFormat(
        "| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %.1fx | %.0f | %.0f (%.0f%%) |\n",
        TokensLabel(r.context), r.batch, Ms(v[0].median), Ms(v[3].median), Ms(v[2].median),
        Ms(v[1].median), Ms(v[N + 1].median), Ms(r.cycle_ms.at("paper")),
        Ms(r.cycle_ms.at("fast")), Ms(r.cycle_ms.at("flash")),
        v[N + 1].median / r.cycle_ms.at("flash"), r.sparse_attn_gbs, r.dense_gbs,
        100 * r.dense_gbs / copy_gbs);
  }
  md += "\n| context | needle found | top-2048 recall | mass recall | output error | dense kernel "
        "vs CPU | keys attended |\n|---|---|---|---|---|---|---|\n";
  for (const DecodeRow& r : rows) {
    if (!r.has_accuracy) continue;
    md += absl::StrFormat("| %s | %s | %.3f | %.3f | %.3f | %.1e | %d |\n", TokensLabel(r.context),
                          r.acc.needle_selected ? "yes" : "NO", r.acc.topk_recall,
                          r.acc.mass_recall, r.acc.output_error, r.dense_vs_cpu, r.attended_keys);
  }
  if (!curve.empty()) {
    md += absl::StrFormat("\nNeedle recall at %s over margins (nats):", TokensLabel(curve_context));
    for (auto [m, rec] : curve) md += absl::StrFormat(" m=%.1f: %.2f;", m, rec);
    md += "\n";
  }
  if (!prefill.empty()) {
    md += "\n| prefill chunk | context | pruning ms | sparse attention ms | sparse total ms | "
          "dense ms | dense / sparse |\n|---|---|---|---|---|---|---|\n";
    for (const PrefillRow& p : prefill) {
      const double sparse = p.prune.median + p.sparse_attn.median;
      md += absl::StrFormat("| %s | %s | %s | %s | %s | %s | %.1fx |\n", TokensLabel(p.chunk),
                            TokensLabel(p.context), Ms(p.prune.median), Ms(p.sparse_attn.median),
                            Ms(sparse), Ms(p.dense.median), p.dense.median / sparse);
    }
  }
  std::fputs(md.c_str(), stdout);
  if (!absl::GetFlag(FLAGS_markdown).empty()) WriteFile(absl::GetFlag(FLAGS_markdown), md);
  if (absl::GetFlag(FLAGS_json).empty()) return;
  JsonWriter j;
  j.BeginObject().Key("run");
  WriteRunInfo(info, j);
  j.Key("device").String(device).Key("copy_gb_per_s").Number(copy_gbs);
  j.Key("launch_floor_ms").Number(floor_ms);
  j.Key("decode").BeginArray();
  const char* names[] = {"cached", "from_stage_1", "from_stage_2", "from_stage_3", "dense"};
  for (const DecodeRow& r : rows) {
    j.BeginObject().Key("context").Int(r.context).Key("batch").Int(r.batch);
    for (size_t v = 0; v < r.variants.size() && v < 5; ++v) {
      j.Key(std::string(names[v]) + "_ms").BeginObject();
      j.Key("median").Number(r.variants[v].median).Key("p90").Number(r.variants[v].p90);
      j.Key("min").Number(r.variants[v].min).Key("count").Int(r.variants[v].count).EndObject();
    }
    for (const auto& [k, ms] : r.cycle_ms) j.Key(k + "_cycle_avg_ms").Number(ms);
    j.Key("attended_keys").Int(r.attended_keys);
    j.Key("sparse_attention_gb_per_s").Number(r.sparse_attn_gbs);
    j.Key("dense_gb_per_s").Number(r.dense_gbs);
    if (r.has_accuracy) {
      j.Key("needle_token").Int(r.needle).Key("needle_found").Bool(r.acc.needle_selected);
      j.Key("topk_recall").Number(r.acc.topk_recall).Key("mass_recall").Number(r.acc.mass_recall);
      j.Key("output_error").Number(r.acc.output_error);
      j.Key("dense_kernel_vs_cpu").Number(r.dense_vs_cpu);
    }
    j.EndObject();
  }
  j.EndArray().Key("recall_curve").BeginObject().Key("context").Int(curve_context);
  j.Key("points").BeginArray();
  for (auto [m, rec] : curve) j.BeginObject().Key("margin").Number(m).Key("recall").Number(rec).EndObject();
  j.EndArray().EndObject().Key("prefill").BeginArray();
  for (const PrefillRow& p : prefill) {
    j.BeginObject().Key("context").Int(p.context).Key("chunk").Int(p.chunk);
    j.Key("prune_ms").Number(p.prune.median).Key("sparse_attention_ms").Number(p.sparse_attn.median);
    j.Key("dense_ms").Number(p.dense.median).EndObject();
  }
  j.EndArray().EndObject();
  WriteFile(absl::GetFlag(FLAGS_json), j.str() + "\n");
}

int Main(int argc, char** argv) {
  const RunInfo info = CollectRunInfo(argc, argv, absl::GetFlag(FLAGS_git_commit),
                                      {"engine", "tests/bench"});
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    std::fprintf(stderr, "cuda_decode_bench: no CUDA GPU\n");
    return 2;
  }
  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  const std::string device = absl::StrFormat("%s (%d SMs)", prop.name, prop.multiProcessorCount);
  const std::vector<int64_t> batches = ParseInts(absl::GetFlag(FLAGS_batches));
  Timer timer(int(*std::max_element(batches.begin(), batches.end())));
  const double copy = CopyBandwidthGBs(timer);
  const double floor_ms = LaunchFloor(timer).median;
  std::fprintf(stderr, "%s; copy %.0f GB/s; launch floor %.4f ms\n", device.c_str(), copy,
               floor_ms);
  std::vector<DecodeRow> rows;
  for (int64_t batch : batches) {
    for (int64_t context : ParseInts(absl::GetFlag(FLAGS_contexts))) {
      Progress progress(absl::StrFormat("decode %s batch %d", TokensLabel(context), batch));
      rows.push_back(RunDecode(context, int(batch), timer, prop.multiProcessorCount));
      const DecodeRow& r = rows.back();
      progress.Done(absl::StrFormat("cached %s ms, full %s ms, dense %s ms, flash avg %s ms",
                                    Ms(r.variants[0].median), Ms(r.variants[1].median),
                                    Ms(r.variants.back().median), Ms(r.cycle_ms.at("flash"))));
    }
  }
  std::vector<std::pair<double, double>> curve;
  const int64_t curve_context = absl::GetFlag(FLAGS_recall_context);
  if (curve_context > 0) curve = RecallCurve(curve_context, timer, prop.multiProcessorCount);
  std::vector<PrefillRow> prefill;
  for (int64_t context : ParseInts(absl::GetFlag(FLAGS_prefill_contexts))) {
    Progress progress(absl::StrFormat("prefill %s", TokensLabel(context)));
    prefill.push_back(
        RunPrefill(context, absl::GetFlag(FLAGS_prefill_chunk), timer, prop.multiProcessorCount));
    progress.Done();
  }
  Report(info, device, copy, floor_ms, rows, curve, curve_context, prefill);
  return 0;
}

}  // namespace
}  // namespace ihip::bench

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "cuda_decode_bench: the CUDA backend's decode and prefill kernels on the GPU (issue 5).\n"
      "Usage: cuda_decode_bench [--contexts=...] [--batches=1,8] [--json=F] [--markdown=F]");
  absl::ParseCommandLine(argc, argv);
  return ihip::bench::Main(argc, argv);
}
