// `ihip bench`: service-level timings against a running ihip-server — AppendKV throughput, and
// decode round trips through unary Attend and through one AttendStream call (p50/p99 over
// --steps). One Llama-3-8B-shaped layer with synthetic data; the sequence is released at the
// end. A benchmark, not a test: it prints a table (or JSON) and never asserts a time.

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "engine/synthetic/synthetic_data.h"
#include "services/cli/cli_flags.h"
#include "services/cli/commands.h"
#include "services/cli/progress_bar.h"
#include "services/cli/proto_util.h"

namespace ihip::cli {
namespace {

constexpr int64_t kBenchDefaultContext = 16384;

struct Latency {
  double p50 = 0, p99 = 0, mean = 0, min = 0, max = 0;
};

Latency Summarize(std::vector<double> ms) {
  Latency l;
  if (ms.empty()) return l;
  std::sort(ms.begin(), ms.end());
  auto at = [&](double q) { return ms[std::min(ms.size() - 1, size_t(q * double(ms.size())))]; };
  l.p50 = at(0.5);
  l.p99 = at(0.99);
  l.min = ms.front();
  l.max = ms.back();
  for (double x : ms) l.mean += x;
  l.mean /= double(ms.size());
  return l;
}

// Decode item for synthetic query `i` at `position` (its k and v are the data's at position).
v1::AttendRequest DecodeRequest(const std::string& id, const engine::synthetic::SyntheticData& d,
                                int i, int64_t position) {
  v1::AttendRequest req;
  req.set_request_id(uint64_t(position));
  v1::AttendItem* item = req.add_items();
  item->set_sequence_id(id);
  item->set_layer(0);
  item->set_position(uint64_t(position));
  item->set_num_tokens(1);
  item->set_q(d.q_at(i), d.q_row_bytes());
  item->set_k(d.k_at(position), d.kv_row_bytes());
  item->set_v(d.v_at(position), d.kv_row_bytes());
  item->set_mode(absl::GetFlag(FLAGS_mode) == "dense" ? v1::ATTENTION_MODE_DENSE
                                                      : v1::ATTENTION_MODE_SPARSE);
  return req;
}

struct Results {
  double append_mb = 0, append_s = 0;
  Latency unary, stream;
  // Round trip minus the engine time the server reports (AttendResponse.timing.engine_us).
  Latency unary_overhead, stream_overhead;
};

std::string Json(const Results& r, int64_t context, int steps, const std::string& server) {
  auto lat = [](const Latency& l) {
    return absl::StrFormat(
        "{\"p50_ms\": %.4f, \"p99_ms\": %.4f, \"mean_ms\": %.4f, "
        "\"min_ms\": %.4f, \"max_ms\": %.4f}",
        l.p50, l.p99, l.mean, l.min, l.max);
  };
  return absl::StrFormat(
      "{\"server\": %s, \"shape\": {\"q_heads\": 32, \"kv_heads\": 8, \"head_dim\": 128, "
      "\"dtype\": \"bf16\"}, \"context\": %d, \"steps\": %d, \"mode\": %s, "
      "\"append\": {\"mb\": %.3f, \"seconds\": %.4f, \"mb_per_s\": %.2f}, "
      "\"decode_unary\": %s, \"decode_stream\": %s, \"overhead_unary\": %s, "
      "\"overhead_stream\": %s}",
      JsonString(server), context, steps, JsonString(absl::GetFlag(FLAGS_mode)), r.append_mb,
      r.append_s, r.append_mb / std::max(r.append_s, 1e-9), lat(r.unary), lat(r.stream),
      lat(r.unary_overhead), lat(r.stream_overhead));
}

}  // namespace

int RunBench() {
  const int64_t context =
      absl::GetFlag(FLAGS_context) == 0 ? kBenchDefaultContext : absl::GetFlag(FLAGS_context);
  const int steps = absl::GetFlag(FLAGS_steps), warmup = absl::GetFlag(FLAGS_warmup);
  if (context < 1 || steps < 1 || warmup < 0) {
    return Fail(absl::InvalidArgumentError("--context and --steps must be >= 1, --warmup >= 0"));
  }
  if (absl::GetFlag(FLAGS_mode) != "sparse" && absl::GetFlag(FLAGS_mode) != "dense") {
    return Fail(absl::InvalidArgumentError("--mode must be sparse or dense"));
  }
  const int decodes = 2 * (steps + warmup);
  engine::synthetic::SyntheticOptions so;
  so.length = context + decodes;
  so.num_queries = decodes;
  so.seed = absl::GetFlag(FLAGS_seed);
  so.plant_needle = false;
  const auto data = engine::synthetic::Generate(so);

  AttentionClient client = MakeClient();
  v1::CreateSequenceRequest create;
  v1::ModelSpec* m = create.mutable_model();
  m->set_num_layers(1);
  m->set_num_q_heads(32);
  m->set_num_kv_heads(8);
  m->set_head_dim(128);
  m->set_dtype(v1::DTYPE_BF16);
  m->mutable_rope()->set_mode(v1::ROPE_MODE_NONE);
  m->set_max_context(uint64_t(so.length));
  create.mutable_config()->mutable_dense_layers();  // none: layer 0 is a sparse layer
  create.set_sequence_id(absl::GetFlag(FLAGS_id));
  absl::StatusOr<v1::SequenceInfo> info = client.CreateSequence(create);
  if (!info.ok()) return Fail(info.status());
  const std::string id = info->sequence_id();
  SequenceGuard guard(&client, false);
  guard.Set(id);

  Results res;
  ProgressBar bar("AppendKV");
  absl::Time t0 = absl::Now();
  absl::StatusOr<v1::AppendKVResponse> appended = client.AppendKv(
      id, 0, 0, {data.k_at(0), data.v_at(0), context, data.kv_row_bytes()},
      size_t(absl::GetFlag(FLAGS_chunk_kib)) << 10, [&](double f) { bar.Update(f); });
  res.append_s = absl::ToDoubleSeconds(absl::Now() - t0);
  if (!appended.ok()) return Fail(appended.status());
  bar.Done();
  res.append_mb = 2.0 * double(context) * double(data.kv_row_bytes()) / 1e6;

  int64_t pos = context;
  int q = 0;
  std::vector<double> unary, stream, unary_overhead, stream_overhead;
  for (int i = 0; i < warmup + steps; ++i, ++pos, ++q) {
    t0 = absl::Now();
    absl::StatusOr<v1::AttendResponse> r = client.Attend(DecodeRequest(id, data, q, pos));
    if (!r.ok()) return Fail(r.status());
    if (i >= warmup) {
      unary.push_back(absl::ToDoubleMilliseconds(absl::Now() - t0));
      unary_overhead.push_back(unary.back() - double(r->timing().engine_us()) / 1000.0);
    }
  }
  std::unique_ptr<AttentionClient::Stream> s = client.OpenAttendStream();
  for (int i = 0; i < warmup + steps; ++i, ++pos, ++q) {
    t0 = absl::Now();
    absl::StatusOr<v1::AttendResponse> r = s->Step(DecodeRequest(id, data, q, pos));
    if (!r.ok()) return Fail(r.status());
    if (r->request_id() != uint64_t(pos)) {
      return Fail(absl::InternalError(
          absl::StrCat("AttendStream echoed request_id ", r->request_id(), ", expected ", pos)));
    }
    if (i >= warmup) {
      stream.push_back(absl::ToDoubleMilliseconds(absl::Now() - t0));
      stream_overhead.push_back(stream.back() - double(r->timing().engine_us()) / 1000.0);
    }
  }
  if (absl::Status st = s->Finish(); !st.ok()) return Fail(st);
  res.unary = Summarize(unary);
  res.stream = Summarize(stream);
  res.unary_overhead = Summarize(unary_overhead);
  res.stream_overhead = Summarize(stream_overhead);

  if (absl::GetFlag(FLAGS_json)) {
    std::printf("%s\n", Json(res, context, steps, client.address()).c_str());
    return kExitOk;
  }
  std::printf("ihip bench: ihip-server at %s\n", client.address().c_str());
  std::printf(
      "  one layer, Hq 32, Hkv 8, D 128, bf16; context %lld tokens; %s decode; %d "
      "timed steps after %d warm-up steps per variant\n\n",
      (long long)context, absl::GetFlag(FLAGS_mode).c_str(), steps, warmup);
  std::printf("  %-28s %9s %9s %9s %9s\n", "decode round trip", "p50 ms", "p99 ms", "mean ms",
              "max ms");
  for (const auto& [name, l] : {std::pair<const char*, Latency>{"unary Attend", res.unary},
                                {"AttendStream", res.stream},
                                {"unary overhead (- engine)", res.unary_overhead},
                                {"stream overhead (- engine)", res.stream_overhead}}) {
    std::printf("  %-28s %9.3f %9.3f %9.3f %9.3f\n", name, l.p50, l.p99, l.mean, l.max);
  }
  std::printf("\n  AppendKV: %.1f MB of K+V in %.3f s = %.1f MB/s\n", res.append_mb, res.append_s,
              res.append_mb / std::max(res.append_s, 1e-9));
  return kExitOk;
}

}  // namespace ihip::cli
