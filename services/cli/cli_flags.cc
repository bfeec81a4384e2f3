#include "services/cli/cli_flags.h"

#include "absl/flags/flag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/str_cat.h"

// Connection.
ABSL_FLAG(std::string, server, "127.0.0.1:50051", "ihip-server's gRPC address (host:port)");
ABSL_FLAG(double, deadline_s, 600, "deadline of each RPC (a whole stream counts as one), seconds");

// The sequence.
ABSL_FLAG(std::string, id, "", "sequence id (create: empty = the server assigns one)");
ABSL_FLAG(int, layers, 32, "attention layers of the model");
ABSL_FLAG(int, q_heads, 32, "query heads (Hq)");
ABSL_FLAG(int, kv_heads, 8, "key/value heads (Hkv); divides Hq");
ABSL_FLAG(int, head_dim, 128, "head dimension D: 64, 128 or 256");
ABSL_FLAG(std::string, dtype, "bf16", "wire dtype of q, k, v, o: bf16, fp16 or fp32");
ABSL_FLAG(std::string, kv_dtype, "",
          "KV storage dtype: bf16, fp16, fp32, fp8_e4m3, fp8_e5m2 (empty = --dtype)");
ABSL_FLAG(std::string, rope, "none",
          "none: q and k arrive rotated (the service never rotates); extend: the service "
          "applies RoPE with StreamingLLM positions");
ABSL_FLAG(double, theta, 0, "RoPE base (0 = the service default, 10000)");
ABSL_FLAG(double, softmax_scale, 0, "softmax scale (0 = 1/sqrt(head_dim))");
ABSL_FLAG(std::string, preset, "3k", "stage preset: 3k (chunks 256/32/8) or 5k (64/32/16)");
ABSL_FLAG(std::string, refresh, "paper",
          "mask refresh preset: paper (16/8/4 steps), fast (32/16/8), flash (96/24/8)");
ABSL_FLAG(std::string, dense_layers, "",
          "layers that keep 4096 tokens, comma-separated (e.g. 0,1,2); 'none' = no dense "
          "layer; empty = the service default {0,1,2}, cut to the model's layers");
ABSL_FLAG(int64_t, max_context, 0, "tokens per layer the sequence may reach (0 = service default)");

// KV and queries.
ABSL_FLAG(int, layer, -1, "layer (-1 = the command's default: 0; demo: 16)");
ABSL_FLAG(std::string, from, "",
          "append: one file holding K and V: .npy of shape [2, T, Hkv, D], or with --raw the "
          "raw bytes of K [T, Hkv, D] followed by V");
ABSL_FLAG(std::string, k, "", "keys: .npy of shape [T, Hkv, D] (or raw bytes with --raw)");
ABSL_FLAG(std::string, v, "", "values: .npy of shape [T, Hkv, D] (or raw bytes with --raw)");
ABSL_FLAG(std::string, q, "", "decode: queries, .npy of shape [T, Hq, D] or [Hq, D] (or raw)");
ABSL_FLAG(bool, raw, false,
          "the files are raw little-endian bytes in the sequence's wire dtype, no header");
ABSL_FLAG(int64_t, tokens, 0, "with --raw: tokens in the files (append: required)");
ABSL_FLAG(int64_t, position, -1, "position of the first new token (-1 = the layer's length)");
ABSL_FLAG(int, chunk_kib, 2048, "append: K + V bytes per AppendKV message, KiB");
ABSL_FLAG(std::string, mode, "sparse", "attention: sparse (InfiniteHiP) or dense (exact)");
ABSL_FLAG(bool, show_blocks, false, "decode: print the selected 8-token blocks");
ABSL_FLAG(std::string, out, "", "decode: write o to this .npy file ([T, Hq, D], wire dtype)");
ABSL_FLAG(bool, json, false, "print JSON instead of the table");

// demo and bench.
ABSL_FLAG(int64_t, context, 0,
          "tokens of context (0 = the command's default: demo 131072, bench 16384)");
ABSL_FLAG(double, margin, 3.0, "demo: needle margin in nats over every other middle key");
ABSL_FLAG(uint64_t, seed, 1, "demo, bench: seed of the synthetic data");
ABSL_FLAG(int, threads, 0, "demo --in_process: CPU threads (0 = all)");
ABSL_FLAG(bool, in_process, false,
          "demo: run the engine inside this process instead of calling ihip-server");
ABSL_FLAG(bool, keep, false, "demo: keep the sequence on the server (default: release it)");
ABSL_FLAG(int, steps, 200, "bench: timed decode steps per variant");
ABSL_FLAG(int, warmup, 5, "bench: untimed decode steps before each variant");

namespace ihip::cli {
namespace {

bool IsHelp(const std::string& a) { return a == "-h" || a == "--help" || a == "-help"; }

absl::Status SetFlag(const std::string& name, const std::string& value) {
  absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
  if (flag == nullptr) return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
  std::string error;
  if (!flag->ParseFrom(value, &error)) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad value '", value, "' for --", name, ": ", error));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ParsedArgs> ParseArgs(int argc, char** argv) {
  ParsedArgs out;
  bool flags_done = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (flags_done || a.size() < 2 || a[0] != '-') {
      if (!flags_done && a == "help") {
        out.help = true;
      } else {
        out.words.push_back(a);
      }
      continue;
    }
    if (a == "--") {
      flags_done = true;
      continue;
    }
    if (IsHelp(a)) {
      out.help = true;
      continue;
    }
    const std::string body = a.substr(a[1] == '-' ? 2 : 1);
    const size_t eq = body.find('=');
    std::string name = body.substr(0, eq);
    if (eq != std::string::npos) {
      if (absl::Status s = SetFlag(name, body.substr(eq + 1)); !s.ok()) return s;
      continue;
    }
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    if (flag == nullptr && name.rfind("no", 0) == 0) {
      absl::CommandLineFlag* neg = absl::FindCommandLineFlag(name.substr(2));
      if (neg != nullptr && neg->IsOfType<bool>()) {
        if (absl::Status s = SetFlag(name.substr(2), "false"); !s.ok()) return s;
        continue;
      }
    }
    if (flag == nullptr) return absl::InvalidArgumentError(absl::StrCat("unknown flag ", a));
    if (flag->IsOfType<bool>()) {
      if (absl::Status s = SetFlag(name, "true"); !s.ok()) return s;
      continue;
    }
    if (i + 1 >= argc) return absl::InvalidArgumentError(absl::StrCat(a, " needs a value"));
    if (absl::Status s = SetFlag(name, argv[++i]); !s.ok()) return s;
  }
  return out;
}

std::string FlagHelp(const std::vector<std::string>& names) {
  std::string out;
  for (const std::string& n : names) {
    const absl::CommandLineFlag* f = absl::FindCommandLineFlag(n);
    if (f == nullptr) continue;
    std::string def = f->DefaultValue();
    if (f->IsOfType<std::string>()) def = absl::StrCat("\"", def, "\"");
    absl::StrAppend(&out, "  --", n, " (default ", def, ")\n      ", f->Help(), "\n");
  }
  return out;
}

}  // namespace ihip::cli
