#pragma once

// Minimal structured logging to stderr (Abseil 20220623 has no absl/log):
//   2026-11-29T22:40:00.123Z I ihip-kvstore] message
// Thread-safe (one fprintf per line).

#include <cstdio>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace ihip::services {

inline void LogLine(char level, const std::string& component, const std::string& msg) {
  const std::string ts = absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone());
  std::fprintf(stderr, "%s %c %s] %s\n", ts.c_str(), level, component.c_str(), msg.c_str());
}

template <class... Args>
void LogInfo(const std::string& component, const Args&... args) {
  LogLine('I', component, absl::StrCat(args...));
}
template <class... Args>
void LogWarning(const std::string& component, const Args&... args) {
  LogLine('W', component, absl::StrCat(args...));
}
template <class... Args>
void LogError(const std::string& component, const Args&... args) {
  LogLine('E', component, absl::StrCat(args...));
}

}  // namespace ihip::services
