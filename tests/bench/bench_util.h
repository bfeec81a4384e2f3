#pragma once

// Helpers shared by the benchmarks in tests/bench: sample statistics, a small JSON writer, the
// run's metadata (date, commit, machine, build) and progress lines on stderr. Not thread-safe
// (benchmarks drive them from their main thread).

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/time/time.h"

namespace ihip::bench {

// Summary of timing samples (milliseconds).
struct Stats {
  int count = 0;
  double median = 0;
  double p90 = 0;
  double min = 0;
  double max = 0;
  double mean = 0;
};
// Percentiles interpolate linearly between order statistics (numpy's default).
Stats Summarize(std::vector<double> samples);

// Streaming JSON with indentation. Call Key() before every value inside an object. Non-finite
// doubles are written as null.
class JsonWriter {
 public:
  JsonWriter& BeginObject();
  JsonWriter& EndObject();
  JsonWriter& BeginArray();
  JsonWriter& EndArray();
  JsonWriter& Key(std::string_view key);
  JsonWriter& String(std::string_view s);
  JsonWriter& Number(double x);
  JsonWriter& Int(int64_t x);
  JsonWriter& Bool(bool b);
  JsonWriter& Null();
  JsonWriter& Numbers(const std::vector<double>& xs);  // an array on one line
  const std::string& str() const { return out_; }

 private:
  void BeforeValue();
  void Newline();
  std::string out_;
  std::vector<bool> first_;  // per open container: nothing written in it yet
  bool after_key_ = false;
};

// Where and how the benchmark ran.
struct RunInfo {
  std::string date_utc;    // ISO 8601, when the run started
  std::string git_commit;  // from the flag, else `git rev-parse HEAD` in the source tree
  // Tracked files under the benchmark's source paths that differ from the commit (only known
  // when git was asked): the run measured code that is not exactly the commit's.
  std::vector<std::string> git_dirty_paths;
  std::string cpu_model;  // /proc/cpuinfo "model name"
  int hardware_threads = 0;
  double memory_gib = 0;   // MemTotal
  std::string kernel;      // uname -r
  std::string build_type;  // CMAKE_BUILD_TYPE of this binary
  std::string compiler;
  std::string command;                     // argv joined by spaces
  std::string loadavg_start, loadavg_end;  // /proc/loadavg: other work on the machine
};
// `git_commit_flag` empty: ask git about the source tree this binary was built from;
// `source_paths` (relative to the tree, e.g. "engine") are the ones checked for local changes.
RunInfo CollectRunInfo(int argc, char** argv, const std::string& git_commit_flag,
                       const std::vector<std::string>& source_paths);
void WriteRunInfo(const RunInfo& info, JsonWriter& json);  // as an object
std::string LoadAverage();  // the first three fields of /proc/loadavg

// CPU time of the whole process (all threads), in ms.
double ProcessCpuMs();

// Progress of one step on stderr: a line redrawn in place on a terminal; otherwise (a log) a
// line per quarter once the step has run for a few seconds, and one line when it ends.
class Progress {
 public:
  explicit Progress(std::string label);
  void Update(double fraction);  // [0, 1]; cheap to call often
  // Ends the line with the elapsed time and `note`; returns the elapsed seconds.
  double Done(std::string_view note = "");

 private:
  std::string label_;
  bool tty_;
  int last_percent_ = -1;
  absl::Time start_;
};

// "32K", "1M", "1.5M"; other counts as they are.
std::string TokensLabel(int64_t tokens);
// A time in ms with 3-4 significant digits ("0.912", "12.3", "3061").
std::string Ms(double ms);

bool WriteFile(const std::string& path, const std::string& contents);

}  // namespace ihip::bench
