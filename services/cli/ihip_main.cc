// The `ihip` command-line client.

#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "services/cli/demo_needle.h"

namespace {

constexpr char kUsage[] =
    "ihip: InfiniteHiP command-line client.\n"
    "\n"
    "Commands:\n"
    "  ihip demo needle [--context=N] [--margin=M] [--seed=S] [--preset=3k|5k]\n"
    "                   [--refresh=paper|fast|flash] [--threads=N] [--layer=L]\n"
    "      Builds an N-token synthetic context (Llama-3-8B layer shape: 32 query heads,\n"
    "      8 kv heads, head dim 128, bf16) with a planted needle, decodes one step with\n"
    "      sparse and with dense attention in-process, and reports whether the needle\n"
    "      was found, the accuracy and both times. Exit code 1 if the needle was missed.\n"
    "\n"
    "Run `ihip --helpfull` for every flag.";

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(kUsage);
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  std::vector<std::string> cmd(args.begin() + 1, args.end());
  if (cmd.size() == 2 && cmd[0] == "demo" && cmd[1] == "needle") return ihip::cli::RunDemoNeedle();
  std::fprintf(stderr, "%s\n", kUsage);
  return cmd.empty() ? 0 : 2;
}
