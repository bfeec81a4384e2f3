#include "tests/bench/bench_util.h"

#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"

#ifndef IHIP_SOURCE_DIR
#define IHIP_SOURCE_DIR ""
#endif
#ifndef IHIP_BUILD_TYPE
#define IHIP_BUILD_TYPE "unknown"
#endif

namespace ihip::bench {
namespace {

double Percentile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0;
  const double pos = q * double(sorted.size() - 1);
  const size_t lo = size_t(std::floor(pos));
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (pos - double(lo)) * (sorted[hi] - sorted[lo]);
}

// stdout of a shell command, trimmed; empty when it fails.
std::string RunCommand(const std::string& cmd) {
  FILE* f = popen(cmd.c_str(), "r");
  if (f == nullptr) return "";
  std::string out;
  char buf[512];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, n);
  if (pclose(f) != 0) return "";
  return std::string(absl::StripAsciiWhitespace(out));
}

// The value of the first "key : value" line of a /proc file whose key is `key`.
std::string ProcField(const char* path, std::string_view key) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    const size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    if (std::string(absl::StripAsciiWhitespace(line.substr(0, colon))) == key) {
      return std::string(absl::StripAsciiWhitespace(line.substr(colon + 1)));
    }
  }
  return "";
}

std::string JsonEscape(std::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += absl::StrFormat("\\u%04x", c);
        } else {
          out += c;
        }
    }
  }
  return out;
}

}  // namespace

Stats Summarize(std::vector<double> samples) {
  Stats s;
  if (samples.empty()) return s;
  std::sort(samples.begin(), samples.end());
  s.count = int(samples.size());
  s.median = Percentile(samples, 0.5);
  s.p90 = Percentile(samples, 0.9);
  s.min = samples.front();
  s.max = samples.back();
  double sum = 0;
  for (double x : samples) sum += x;
  s.mean = sum / double(samples.size());
  return s;
}

void JsonWriter::Newline() {
  out_ += '\n';
  out_.append(2 * first_.size(), ' ');
}

void JsonWriter::BeforeValue() {
  if (after_key_) {
    after_key_ = false;
    return;
  }
  if (!first_.empty()) {
    if (!first_.back()) out_ += ',';
    first_.back() = false;
    Newline();
  }
}

JsonWriter& JsonWriter::BeginObject() {
  BeforeValue();
  out_ += '{';
  first_.push_back(true);
  return *this;
}

JsonWriter& JsonWriter::EndObject() {
  const bool empty = first_.back();
  first_.pop_back();
  if (!empty) Newline();
  out_ += '}';
  if (first_.empty()) out_ += '\n';
  return *this;
}

JsonWriter& JsonWriter::BeginArray() {
  BeforeValue();
  out_ += '[';
  first_.push_back(true);
  return *this;
}

JsonWriter& JsonWriter::EndArray() {
  const bool empty = first_.back();
  first_.pop_back();
  if (!empty) Newline();
  out_ += ']';
  return *this;
}

JsonWriter& JsonWriter::Key(std::string_view key) {
  BeforeValue();
  absl::StrAppend(&out_, "\"", JsonEscape(key), "\": ");
  after_key_ = true;
  return *this;
}

JsonWriter& JsonWriter::String(std::string_view s) {
  BeforeValue();
  absl::StrAppend(&out_, "\"", JsonEscape(s), "\"");
  return *this;
}

JsonWriter& JsonWriter::Number(double x) {
  BeforeValue();
  if (std::isfinite(x)) {
    out_ += absl::StrFormat("%.9g", x);
  } else {
    out_ += "null";
  }
  return *this;
}

JsonWriter& JsonWriter::Int(int64_t x) {
  BeforeValue();
  absl::StrAppend(&out_, x);
  return *this;
}

JsonWriter& JsonWriter::Bool(bool b) {
  BeforeValue();
  out_ += b ? "true" : "false";
  return *this;
}

JsonWriter& JsonWriter::Null() {
  BeforeValue();
  out_ += "null";
  return *this;
}

JsonWriter& JsonWriter::Numbers(const std::vector<double>& xs) {
  BeforeValue();
  out_ += '[';
  for (size_t i = 0; i < xs.size(); ++i) {
    if (i > 0) out_ += ", ";
    out_ += std::isfinite(xs[i]) ? absl::StrFormat("%.6g", xs[i]) : "null";
  }
  out_ += ']';
  return *this;
}

RunInfo CollectRunInfo(int argc, char** argv, const std::string& git_commit_flag,
                       const std::vector<std::string>& source_paths) {
  RunInfo info;
  info.date_utc = absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::Now(), absl::UTCTimeZone());
  const std::string src = IHIP_SOURCE_DIR;
  if (!git_commit_flag.empty()) {
    info.git_commit = git_commit_flag;
  } else if (!src.empty()) {
    info.git_commit = RunCommand(absl::StrCat("git -C '", src, "' rev-parse HEAD 2>/dev/null"));
    const std::string changed =
        RunCommand(absl::StrCat("git -C '", src, "' diff --name-only HEAD -- ",
                                absl::StrJoin(source_paths, " "), " 2>/dev/null"));
    std::istringstream lines(changed);
    std::string line;
    while (std::getline(lines, line)) {
      if (!line.empty()) info.git_dirty_paths.push_back(line);
    }
  }
  if (info.git_commit.empty()) info.git_commit = "unknown";
  info.cpu_model = ProcField("/proc/cpuinfo", "model name");
  info.hardware_threads = int(std::thread::hardware_concurrency());
  const std::string mem = ProcField("/proc/meminfo", "MemTotal");  // "24576000 kB"
  int64_t kb = 0;
  if (absl::SimpleAtoi(mem.substr(0, mem.find(' ')), &kb)) info.memory_gib = double(kb) / (1 << 20);
  struct utsname u;
  if (uname(&u) == 0) info.kernel = u.release;
  info.build_type = IHIP_BUILD_TYPE;
#if defined(__clang__)
  info.compiler = absl::StrCat("clang ", __clang_version__);
#elif defined(__GNUC__)
  info.compiler = absl::StrCat("gcc ", __VERSION__);
#endif
  std::vector<std::string> args(argv, argv + argc);
  info.command = absl::StrJoin(args, " ");
  info.loadavg_start = LoadAverage();
  return info;
}

void WriteRunInfo(const RunInfo& info, JsonWriter& json) {
  json.BeginObject();
  json.Key("date_utc").String(info.date_utc);
  json.Key("git_commit").String(info.git_commit);
  json.Key("git_dirty_paths").BeginArray();
  for (const std::string& p : info.git_dirty_paths) json.String(p);
  json.EndArray();
  json.Key("cpu_model").String(info.cpu_model);
  json.Key("hardware_threads").Int(info.hardware_threads);
  json.Key("memory_gib").Number(info.memory_gib);
  json.Key("kernel").String(info.kernel);
  json.Key("build_type").String(info.build_type);
  json.Key("compiler").String(info.compiler);
  json.Key("command").String(info.command);
  json.Key("loadavg_start").String(info.loadavg_start);
  json.Key("loadavg_end").String(info.loadavg_end);
  json.EndObject();
}

std::string LoadAverage() {
  std::ifstream in("/proc/loadavg");
  std::string a, b, c;
  in >> a >> b >> c;
  return absl::StrCat(a, " ", b, " ", c);
}

double ProcessCpuMs() {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return double(ts.tv_sec) * 1e3 + double(ts.tv_nsec) * 1e-6;
}

Progress::Progress(std::string label)
    : label_(std::move(label)), tty_(isatty(STDERR_FILENO) != 0), start_(absl::Now()) {
  if (tty_) Update(0);
}

void Progress::Update(double fraction) {
  int percent = int(std::clamp(fraction, 0.0, 1.0) * 100);
  if (!tty_) {
    // A log, not a terminal: a line per quarter, and only once the step has run a while.
    percent = percent / 25 * 25;
    if (percent == last_percent_ || absl::Now() - start_ < absl::Seconds(3)) return;
    last_percent_ = percent;
    std::fprintf(stderr, "%s ... %d%%\n", label_.c_str(), percent);
    return;
  }
  if (percent == last_percent_) return;
  last_percent_ = percent;
  std::fprintf(stderr, "\r%s %3d%%", label_.c_str(), percent);
  std::fflush(stderr);
}

double Progress::Done(std::string_view note) {
  const double s = absl::ToDoubleSeconds(absl::Now() - start_);
  std::fprintf(stderr, "%s%s: done in %.1f s%s%s\n", tty_ ? "\r" : "", label_.c_str(), s,
               note.empty() ? "" : ": ", std::string(note).c_str());
  return s;
}

std::string TokensLabel(int64_t tokens) {
  if (tokens >= (int64_t{1} << 20) && tokens % (int64_t{1} << 19) == 0) {
    const double m = double(tokens) / double(int64_t{1} << 20);
    return m == std::floor(m) ? absl::StrCat(int64_t(m), "M") : absl::StrFormat("%.1fM", m);
  }
  if (tokens >= 1024 && tokens % 1024 == 0) return absl::StrCat(tokens / 1024, "K");
  return absl::StrCat(tokens);
}

std::string Ms(double ms) {
  if (!std::isfinite(ms)) return "—";
  if (ms < 1) return absl::StrFormat("%.3f", ms);
  if (ms < 10) return absl::StrFormat("%.2f", ms);
  if (ms < 100) return absl::StrFormat("%.1f", ms);
  return absl::StrFormat("%.0f", ms);
}

bool WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << contents;
  return bool(out);
}

}  // namespace ihip::bench
