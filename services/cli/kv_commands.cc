// ihip append | decode: K/V (and q) from .npy or raw files into one layer of a sequence.

#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "engine/hip/dtype_convert.h"
#include "services/cli/cli_flags.h"
#include "services/cli/commands.h"
#include "services/cli/npy.h"
#include "services/cli/progress_bar.h"
#include "services/cli/proto_util.h"

namespace ihip::cli {
namespace {

// Rows of one tensor ([T, H, D] in the wire dtype), backed by a mapped file.
struct Rows {
  std::unique_ptr<MappedFile> file;
  const std::byte* data = nullptr;
  int64_t tokens = 0;
};

absl::Status Usage(const std::string& msg) { return absl::InvalidArgumentError(msg); }

// Loads `path` as [T, heads, D] rows (`heads` x D per token) in `wire`. A .npy may also be
// [heads, D] (one token). With `raw`, T = `raw_tokens` (> 0) or the file size / row bytes.
// `parts` > 1 (append --from): the file holds `parts` tensors one after the other: .npy shape
// [parts, T, heads, D]; the returned rows are part 0, the others follow every T rows.
absl::StatusOr<Rows> LoadRows(const std::string& flag, const std::string& path, bool raw,
                              int64_t raw_tokens, int heads, int d, v1::DType wire, int parts = 1) {
  if (path.empty()) return Usage(absl::StrCat("--", flag, " is required"));
  const size_t row = size_t(heads) * d * WireSize(wire);
  Rows r;
  if (raw) {
    absl::StatusOr<std::unique_ptr<MappedFile>> f = MappedFile::Open(path);
    if (!f.ok()) return f.status();
    const size_t size = (*f)->size();
    const size_t unit = row * parts;
    if (raw_tokens > 0) {
      if (size != unit * size_t(raw_tokens)) {
        return Usage(absl::StrCat("--", flag, " ", path, ": ", size, " bytes, but ", raw_tokens,
                                  " tokens of ", parts > 1 ? "K and V " : "", "[", heads, ", ", d,
                                  "] ", DTypeName(wire), " are ", unit * raw_tokens, " bytes"));
      }
      r.tokens = raw_tokens;
    } else {
      if (size == 0 || size % unit != 0) {
        return Usage(absl::StrCat("--", flag, " ", path, ": ", size,
                                  " bytes is not a whole number of [", heads, ", ", d, "] ",
                                  DTypeName(wire), " rows (", unit, " bytes each)"));
      }
      r.tokens = int64_t(size / unit);
    }
    r.data = (*f)->data();
    r.file = *std::move(f);
    return r;
  }
  absl::StatusOr<NpyArray> a = ReadNpy(path);
  if (!a.ok()) return a.status();
  const std::vector<int64_t>& s = a->header.shape;
  if (a->header.type != NpyTypeOf(wire)) {
    return Usage(absl::StrCat("--", flag, " ", path, " holds ", NpyTypeName(a->header.type),
                              " but the sequence's wire dtype is ", DTypeName(wire),
                              " (save it as ", NpyTypeName(NpyTypeOf(wire)),
                              wire == v1::DTYPE_BF16 ? ": raw bfloat16 bits as uint16)" : ")"));
  }
  std::vector<int64_t> want_tail = {heads, d};
  const bool one_token = parts == 1 && s.size() == 2;
  const size_t lead = parts > 1 ? 2 : (one_token ? 0 : 1);
  const bool ok_rank = s.size() == lead + 2 && (parts == 1 || s[0] == parts);
  if (!ok_rank || s[lead] != heads || s[lead + 1] != d) {
    return Usage(absl::StrCat("--", flag, " ", path, " has shape ", ShapeString(s), "; expected ",
                              parts > 1 ? absl::StrCat("[", parts, ", T, ", heads, ", ", d, "]")
                                        : absl::StrCat("[T, ", heads, ", ", d, "]")));
  }
  r.tokens = one_token ? 1 : s[lead - 1];
  if (r.tokens < 1) return Usage(absl::StrCat("--", flag, " ", path, " holds no tokens"));
  r.data = a->data();
  r.file = std::move(a->file);
  return r;
}

struct Target {
  v1::SequenceInfo info;
  std::string id;
  int layer = 0;
  uint64_t position = 0;
};

// --id, --layer and --position against the server's view of the sequence.
absl::StatusOr<Target> ResolveTarget(AttentionClient& client) {
  Target t;
  absl::StatusOr<std::string> id = RequiredId();
  if (!id.ok()) return id.status();
  t.id = *id;
  absl::StatusOr<v1::SequenceInfo> info = client.GetSequence(t.id);
  if (!info.ok()) return info.status();
  t.info = *std::move(info);
  t.layer = LayerFlagOr(0);
  const int layers = int(t.info.model().num_layers());
  if (t.layer < 0 || t.layer >= layers) {
    return Usage(absl::StrCat("--layer ", t.layer, " is out of range: sequence ", t.id, " has ",
                              layers, " layers"));
  }
  const int64_t pos = absl::GetFlag(FLAGS_position);
  if (pos < -1) return Usage("--position must be >= 0 (or -1 = the layer's length)");
  t.position = pos >= 0                                ? uint64_t(pos)
               : t.layer < t.info.layer_lengths_size() ? t.info.layer_lengths(t.layer)
                                                       : 0;
  return t;
}

void PrintLayerLengthAfterFailure(AttentionClient& client, const Target& t) {
  absl::StatusOr<v1::SequenceInfo> now = client.GetSequence(t.id);
  if (now.ok() && t.layer < now->layer_lengths_size()) {
    std::fprintf(stderr, "note: layer %d of %s now holds %llu tokens\n", t.layer, t.id.c_str(),
                 (unsigned long long)now->layer_lengths(t.layer));
  }
}

}  // namespace

int RunAppend() {
  AttentionClient client = MakeClient();
  absl::StatusOr<Target> t = ResolveTarget(client);
  if (!t.ok()) return Fail(t.status());
  const v1::ModelSpec& m = t->info.model();
  const bool raw = absl::GetFlag(FLAGS_raw);
  const int64_t raw_tokens = absl::GetFlag(FLAGS_tokens);
  if (raw && raw_tokens < 1) return Fail(Usage("--raw needs --tokens (tokens in the files)"));
  const std::string from = absl::GetFlag(FLAGS_from);
  const int hkv = int(m.num_kv_heads()), d = int(m.head_dim());
  KvSpan kv;
  kv.row_bytes = KvRowBytes(m);
  Rows k, v;
  if (!from.empty()) {
    if (!absl::GetFlag(FLAGS_k).empty() || !absl::GetFlag(FLAGS_v).empty()) {
      return Fail(Usage("give either --from or --k and --v, not both"));
    }
    absl::StatusOr<Rows> both = LoadRows("from", from, raw, raw_tokens, hkv, d, m.dtype(), 2);
    if (!both.ok()) return Fail(both.status());
    k = *std::move(both);
    kv.k = k.data;
    kv.v = k.data + k.tokens * kv.row_bytes;
    kv.num_tokens = k.tokens;
  } else {
    absl::StatusOr<Rows> lk =
        LoadRows("k", absl::GetFlag(FLAGS_k), raw, raw_tokens, hkv, d, m.dtype());
    if (!lk.ok()) return Fail(lk.status());
    absl::StatusOr<Rows> lv =
        LoadRows("v", absl::GetFlag(FLAGS_v), raw, raw_tokens, hkv, d, m.dtype());
    if (!lv.ok()) return Fail(lv.status());
    k = *std::move(lk);
    v = *std::move(lv);
    if (k.tokens != v.tokens) {
      return Fail(Usage(absl::StrCat("--k holds ", k.tokens, " tokens but --v holds ", v.tokens)));
    }
    kv = {k.data, v.data, k.tokens, kv.row_bytes};
  }
  const int chunk_kib = absl::GetFlag(FLAGS_chunk_kib);
  if (chunk_kib < 1) return Fail(Usage("--chunk_kib must be >= 1"));

  ProgressBar bar(absl::StrCat("appending layer ", t->layer));
  const absl::Time start = absl::Now();
  absl::StatusOr<v1::AppendKVResponse> resp = client.AppendKv(
      t->id, t->layer, t->position, kv, size_t(chunk_kib) << 10, [&](double f) { bar.Update(f); });
  const double secs = absl::ToDoubleSeconds(absl::Now() - start);
  if (!resp.ok()) {
    std::fprintf(stderr, "\n");
    const int rc = Fail(resp.status());
    PrintLayerLengthAfterFailure(client, *t);
    return rc;
  }
  bar.Done();
  const double bytes = 2.0 * double(kv.num_tokens) * double(kv.row_bytes);
  const uint64_t now = t->layer < resp->layer_lengths_size() ? resp->layer_lengths(t->layer) : 0;
  std::printf(
      "appended %lld tokens to layer %d of %s at positions [%llu, %llu); "
      "layer length now %llu\n",
      (long long)kv.num_tokens, t->layer, t->id.c_str(), (unsigned long long)t->position,
      (unsigned long long)(t->position + kv.num_tokens), (unsigned long long)now);
  std::printf("  %s of K+V in %.3f s (%.1f MB/s); server counted %llu tokens\n",
              HumanBytes(bytes).c_str(), secs, bytes / 1e6 / std::max(secs, 1e-9),
              (unsigned long long)resp->tokens_appended());
  return kExitOk;
}

namespace {

void PrintOutputStats(const v1::ModelSpec& m, const std::string& o, int64_t tokens) {
  const size_t n = size_t(tokens) * m.num_q_heads() * m.head_dim();
  if (o.size() != n * WireSize(m.dtype())) {
    std::printf("  o: %zu bytes, expected %zu — not [%lld, %u, %u] %s\n", o.size(),
                n * WireSize(m.dtype()), (long long)tokens, m.num_q_heads(), m.head_dim(),
                DTypeName(m.dtype()));
    return;
  }
  std::vector<float> f(n);
  engine::ToFloat(*ToEngine(m.dtype()), o.data(), n, f.data());
  double sum = 0, sq = 0, lo = INFINITY, hi = -INFINITY;
  size_t bad = 0;
  for (float x : f) {
    if (!std::isfinite(x)) {
      ++bad;
      continue;
    }
    sum += x;
    sq += double(x) * x;
    lo = std::min<double>(lo, x);
    hi = std::max<double>(hi, x);
  }
  const double cnt = double(std::max<size_t>(1, n - bad));
  std::printf("  o: [%lld, %u, %u] %s  min %.4f  max %.4f  mean %.4f  rms %.4f  non-finite %zu\n",
              (long long)tokens, m.num_q_heads(), m.head_dim(), DTypeName(m.dtype()), lo, hi,
              sum / cnt, std::sqrt(sq / cnt), bad);
  std::printf("  o[0, 0, :4] = %.4f %.4f %.4f %.4f\n", f[0], f[1 % n], f[2 % n], f[3 % n]);
}

}  // namespace

int RunDecode() {
  AttentionClient client = MakeClient();
  absl::StatusOr<Target> t = ResolveTarget(client);
  if (!t.ok()) return Fail(t.status());
  const v1::ModelSpec& m = t->info.model();
  const bool raw = absl::GetFlag(FLAGS_raw);
  const int64_t raw_tokens = absl::GetFlag(FLAGS_tokens);
  const int hq = int(m.num_q_heads()), hkv = int(m.num_kv_heads()), d = int(m.head_dim());
  absl::StatusOr<Rows> q = LoadRows("q", absl::GetFlag(FLAGS_q), raw, raw_tokens, hq, d, m.dtype());
  if (!q.ok()) return Fail(q.status());
  absl::StatusOr<Rows> k =
      LoadRows("k", absl::GetFlag(FLAGS_k), raw, raw_tokens, hkv, d, m.dtype());
  if (!k.ok()) return Fail(k.status());
  absl::StatusOr<Rows> v =
      LoadRows("v", absl::GetFlag(FLAGS_v), raw, raw_tokens, hkv, d, m.dtype());
  if (!v.ok()) return Fail(v.status());
  if (q->tokens != k->tokens || k->tokens != v->tokens) {
    return Fail(Usage(absl::StrCat("--q, --k and --v hold ", q->tokens, ", ", k->tokens, " and ",
                                   v->tokens, " tokens; they must agree")));
  }
  const std::string mode = absl::AsciiStrToLower(absl::GetFlag(FLAGS_mode));
  if (mode != "sparse" && mode != "dense") return Fail(Usage("--mode must be sparse or dense"));

  v1::AttendRequest req;
  v1::AttendItem* item = req.add_items();
  item->set_sequence_id(t->id);
  item->set_layer(uint32_t(t->layer));
  item->set_position(t->position);
  item->set_num_tokens(uint32_t(q->tokens));
  item->set_q(q->data, size_t(q->tokens) * QRowBytes(m));
  item->set_k(k->data, size_t(k->tokens) * KvRowBytes(m));
  item->set_v(v->data, size_t(v->tokens) * KvRowBytes(m));
  item->set_mode(mode == "dense" ? v1::ATTENTION_MODE_DENSE : v1::ATTENTION_MODE_SPARSE);
  item->set_return_selected_blocks(true);
  const absl::Time start = absl::Now();
  absl::StatusOr<v1::AttendResponse> resp = client.Attend(req);
  const double ms = absl::ToDoubleMilliseconds(absl::Now() - start);
  if (!resp.ok()) return Fail(resp.status());
  if (resp->results_size() != 1) {
    return Fail(absl::InternalError(
        absl::StrCat("Attend returned ", resp->results_size(), " results for 1 item")));
  }
  const v1::AttendResult& r = resp->results(0);
  std::printf("attend: %s layer %d, positions [%llu, %llu), %s; round trip %.2f ms\n",
              t->id.c_str(), t->layer, (unsigned long long)t->position,
              (unsigned long long)(t->position + q->tokens), mode.c_str(), ms);
  PrintOutputStats(m, r.o(), q->tokens);
  std::printf("  attended keys per head: %llu; mask %s\n", (unsigned long long)r.attended_keys(),
              r.refreshed_from_stage() == 0
                  ? "reused from the cache"
                  : absl::StrCat("recomputed from stage ", r.refreshed_from_stage()).c_str());
  for (const v1::SelectedBlocks& sb : r.selected_blocks()) {
    std::vector<uint64_t> blocks(sb.blocks().begin(), sb.blocks().end());
    std::printf("  selected: %zu blocks of 8 (%zu tokens) for queries [%u, %u)\n", blocks.size(),
                blocks.size() * 8, sb.query_offset(), sb.query_offset() + sb.num_queries());
    if (absl::GetFlag(FLAGS_show_blocks)) std::printf("    %s\n", FormatRanges(blocks).c_str());
  }
  if (const std::string out = absl::GetFlag(FLAGS_out); !out.empty()) {
    const size_t want = size_t(q->tokens) * QRowBytes(m);
    if (r.o().size() != want) return Fail(absl::InternalError("o has the wrong size; not written"));
    absl::Status s = WriteNpy(out, NpyTypeOf(m.dtype()), {q->tokens, hq, d}, r.o().data());
    if (!s.ok()) return Fail(s);
    std::printf("  o written to %s\n", out.c_str());
  }
  return kExitOk;
}

}  // namespace ihip::cli
