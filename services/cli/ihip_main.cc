// The `ihip` command-line client of ihip-server: parses the command line, dispatches to the
// subcommand (commands.h) and prints help (`ihip --help`, `ihip <command> --help`).

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "services/cli/cli_flags.h"
#include "services/cli/commands.h"

namespace ihip::cli {
namespace {

struct Command {
  std::vector<std::string> words;  // "demo", "needle"
  const char* summary;             // one line for `ihip --help`
  const char* synopsis;
  const char* description;
  std::vector<std::string> flags;
  int (*run)();
};

const std::vector<std::string> kModelFlags = {
    "id",     "layers",   "q_heads",      "kv_heads",    "head_dim",
    "dtype",  "kv_dtype", "rope",         "theta",       "softmax_scale",
    "preset", "refresh",  "dense_layers", "max_context", "json"};

const std::vector<Command>& Commands() {
  static const std::vector<Command> commands = {
      {{"create"},
       "create a sequence",
       "ihip create [--id=ID] [--layers=32 --q_heads=32 --kv_heads=8 --head_dim=128] "
       "[--dtype=bf16] [--kv_dtype=...] [--rope=none|extend --theta=...] [--preset=3k|5k] "
       "[--refresh=paper|fast|flash] [--dense_layers=0,1,2|none] [--max_context=N]",
       "Creates a sequence (CreateSequence) and prints its SequenceInfo.",
       kModelFlags,
       RunCreate},
      {{"append"},
       "stream K and V from .npy or raw files into a layer (AppendKV)",
       "ihip append --id=ID [--layer=L] (--k=K.npy --v=V.npy | --from=KV.npy | --raw --tokens=T "
       "(--k=K.bin --v=V.bin | --from=KV.bin)) [--position=P] [--chunk_kib=2048]",
       "Streams keys and values into one layer through one AppendKV call, with a progress bar\n"
       "on stderr. .npy arrays are [T, Hkv, D] (--from: [2, T, Hkv, D], K then V) in the\n"
       "sequence's wire dtype: '<f4' for fp32, '<f2' for fp16, bfloat16 bits as '<u2' (or\n"
       "'|V2'). --raw files are headerless little-endian bytes in the wire dtype.",
       {"id", "layer", "k", "v", "from", "raw", "tokens", "position", "chunk_kib"},
       RunAppend},
      {{"decode"},
       "send one Attend step from .npy files; o stats, selected blocks",
       "ihip decode --id=ID [--layer=L] --q=Q.npy --k=K.npy --v=V.npy [--mode=sparse|dense] "
       "[--show_blocks] [--out=O.npy] [--position=P]",
       "Sends one Attend step: the new tokens' q [T, Hq, D] (or [Hq, D]) and k, v [T, Hkv, D]\n"
       "(or [Hkv, D]) are appended at the layer's end and attended. Prints statistics of o,\n"
       "the attended keys, whether the mask was recomputed, and the selected 8-token blocks.",
       {"id", "layer", "q", "k", "v", "raw", "tokens", "position", "mode", "show_blocks", "out"},
       RunDecode},
      {{"list"},
       "list the sequences",
       "ihip list [--json]",
       "Lists the server's sequences (ListSequences).",
       {"json"},
       RunList},
      {{"stats"},
       "server totals, or one sequence's details and KV bytes",
       "ihip stats [--id=ID] [--json]",
       "Without --id: sequences, tokens and KV bytes over the whole server (ListSequences).\n"
       "With --id: one sequence's SequenceInfo and per-layer lengths (GetSequence).",
       {"id", "json"},
       RunStats},
      {{"drop"},
       "release a sequence",
       "ihip drop --id=ID",
       "Releases a sequence and its KV (ReleaseSequence).",
       {"id"},
       RunDrop},
      {{"suspend"},
       "let a sequence's pages leave the GPU and host tier",
       "ihip suspend --id=ID",
       "Lets a sequence's pages leave the GPU and the host tier (SuspendSequence).",
       {"id"},
       RunSuspend},
      {{"demo", "needle"},
       "needle-in-a-haystack demo on synthetic data (exit 1 if missed)",
       "ihip demo needle [--context=131072] [--margin=3] [--seed=1] [--preset=3k|5k] "
       "[--refresh=paper|fast|flash] [--layer=16] [--keep] [--in_process [--threads=N]]",
       "Builds an N-token synthetic context (Llama-3-8B layer shape: 32 layers, Hq 32, Hkv 8,\n"
       "D 128, bf16, RoPE none; one layer populated) with a planted needle, streams it to\n"
       "ihip-server with AppendKV, decodes the last token with one sparse Attend and reports\n"
       "whether the needle's block was selected, top-k and mass recall and the output error\n"
       "against dense attention computed locally, and the round-trip time. The sequence is\n"
       "released at the end unless --keep. --in_process runs the engine inside ihip instead\n"
       "(no server). Exit code 1 if the needle was missed.",
       {"context", "margin", "seed", "preset", "refresh", "dense_layers", "layer", "id", "keep",
        "chunk_kib", "in_process", "threads"},
       RunDemoNeedle},
      {{"bench"},
       "AppendKV MB/s, unary Attend vs AttendStream round trips",
       "ihip bench [--context=16384] [--steps=200] [--warmup=5] [--mode=sparse] [--json]",
       "Service-level benchmark: creates a one-layer Llama-3-8B-shaped sequence, measures\n"
       "AppendKV throughput (MB/s) and decode round trips through unary Attend and through one\n"
       "AttendStream call (p50/p99), prints a table (or JSON) and releases the sequence.\n"
       "Never asserts a time.",
       {"context", "steps", "warmup", "mode", "seed", "chunk_kib", "json"},
       RunBench},
  };
  return commands;
}

const std::vector<std::string> kCommonFlags = {"server", "deadline_s"};

void PrintUsage(std::FILE* out) {
  std::fprintf(out,
               "ihip: command-line client of ihip-server (InfiniteHiP long-context attention).\n"
               "\nUsage: ihip <command> [flags]    (flags as --name=value or --name value)\n"
               "\nCommands:\n");
  for (const Command& c : Commands()) {
    std::fprintf(out, "  %-14s %s\n", absl::StrJoin(c.words, " ").c_str(), c.summary);
  }
  std::fprintf(out, "\nFlags of every command:\n%s", FlagHelp(kCommonFlags).c_str());
  std::fprintf(out,
               "\n`ihip <command> --help` describes a command and its flags.\n"
               "Exit codes: 0 ok, 1 a check failed (demo: needle missed), 2 usage or server "
               "error.\n");
}

void PrintCommandHelp(const Command& c) {
  std::printf("Usage: %s\n\n%s\n\nFlags:\n%s%s", c.synopsis, c.description,
              FlagHelp(c.flags).c_str(), FlagHelp(kCommonFlags).c_str());
}

}  // namespace
}  // namespace ihip::cli

int main(int argc, char** argv) {
  using namespace ihip::cli;
  absl::StatusOr<ParsedArgs> args = ParseArgs(argc, argv);
  if (!args.ok()) {
    std::fprintf(stderr, "error: %s (see `ihip --help`)\n",
                 std::string(args.status().message()).c_str());
    return kExitError;
  }
  for (const Command& c : Commands()) {
    if (args->words == c.words) {
      if (args->help) {
        PrintCommandHelp(c);
        return kExitOk;
      }
      return c.run();
    }
  }
  if (args->help && !args->words.empty()) {  // `ihip demo --help`: every command under "demo"
    bool any = false;
    for (const Command& c : Commands()) {
      if (c.words.size() > args->words.size() &&
          std::equal(args->words.begin(), args->words.end(), c.words.begin())) {
        if (any) std::printf("\n");
        PrintCommandHelp(c);
        any = true;
      }
    }
    if (any) return kExitOk;
  }
  if (args->words.empty()) {
    PrintUsage(args->help ? stdout : stderr);
    return args->help ? kExitOk : kExitError;
  }
  std::fprintf(stderr, "error: unknown command '%s'\n\n", absl::StrJoin(args->words, " ").c_str());
  PrintUsage(stderr);
  return kExitError;
}
