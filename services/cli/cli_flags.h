#pragma once

// The `ihip` flags (one namespace for every subcommand: a flag means the same wherever it
// applies) and the command-line parser: `ihip <command words> [--flag=value | --flag value]...`.
// The parser is ours rather than absl::ParseCommandLine so that a usage error exits with code 2
// and `ihip <command> --help` prints that command's help. Flags are set once, at start-up.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/flags/declare.h"
#include "absl/status/statusor.h"

ABSL_DECLARE_FLAG(std::string, server);
ABSL_DECLARE_FLAG(double, deadline_s);
ABSL_DECLARE_FLAG(std::string, id);
ABSL_DECLARE_FLAG(int, layers);
ABSL_DECLARE_FLAG(int, q_heads);
ABSL_DECLARE_FLAG(int, kv_heads);
ABSL_DECLARE_FLAG(int, head_dim);
ABSL_DECLARE_FLAG(std::string, dtype);
ABSL_DECLARE_FLAG(std::string, kv_dtype);
ABSL_DECLARE_FLAG(std::string, rope);
ABSL_DECLARE_FLAG(double, theta);
ABSL_DECLARE_FLAG(double, softmax_scale);
ABSL_DECLARE_FLAG(std::string, preset);
ABSL_DECLARE_FLAG(std::string, refresh);
ABSL_DECLARE_FLAG(std::string, dense_layers);
ABSL_DECLARE_FLAG(int64_t, max_context);
ABSL_DECLARE_FLAG(int, layer);
ABSL_DECLARE_FLAG(std::string, from);
ABSL_DECLARE_FLAG(std::string, k);
ABSL_DECLARE_FLAG(std::string, v);
ABSL_DECLARE_FLAG(std::string, q);
ABSL_DECLARE_FLAG(bool, raw);
ABSL_DECLARE_FLAG(int64_t, tokens);
ABSL_DECLARE_FLAG(int64_t, position);
ABSL_DECLARE_FLAG(int, chunk_kib);
ABSL_DECLARE_FLAG(std::string, mode);
ABSL_DECLARE_FLAG(bool, show_blocks);
ABSL_DECLARE_FLAG(std::string, out);
ABSL_DECLARE_FLAG(bool, json);
ABSL_DECLARE_FLAG(int64_t, context);
ABSL_DECLARE_FLAG(double, margin);
ABSL_DECLARE_FLAG(uint64_t, seed);
ABSL_DECLARE_FLAG(int, threads);
ABSL_DECLARE_FLAG(bool, in_process);
ABSL_DECLARE_FLAG(bool, keep);
ABSL_DECLARE_FLAG(int, steps);
ABSL_DECLARE_FLAG(int, warmup);

namespace ihip::cli {

struct ParsedArgs {
  std::vector<std::string> words;  // the positional arguments: command and subcommand
  bool help = false;               // -h, --help or `help` anywhere
};

// Sets the flags it finds; the error names the offending argument.
absl::StatusOr<ParsedArgs> ParseArgs(int argc, char** argv);

// "  --name=<default>\n      help text\n" for each flag.
std::string FlagHelp(const std::vector<std::string>& names);

}  // namespace ihip::cli
