#pragma once

// Status propagation macros (Abseil 20220623 has none). Prefixed to avoid clashes.

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define IHIP_STATUS_CONCAT_INNER_(a, b) a##b
#define IHIP_STATUS_CONCAT_(a, b) IHIP_STATUS_CONCAT_INNER_(a, b)

// Returns from the current function if `expr` (an absl::Status) is not OK.
#define IHIP_RETURN_IF_ERROR(expr)               \
  do {                                           \
    const ::absl::Status ihip_status_ = (expr);  \
    if (!ihip_status_.ok()) return ihip_status_; \
  } while (false)

// `IHIP_ASSIGN_OR_RETURN(auto x, FuncReturningStatusOr());`
#define IHIP_ASSIGN_OR_RETURN(lhs, expr) \
  IHIP_ASSIGN_OR_RETURN_IMPL_(IHIP_STATUS_CONCAT_(ihip_statusor_, __LINE__), lhs, expr)

#define IHIP_ASSIGN_OR_RETURN_IMPL_(var, lhs, expr) \
  auto var = (expr);                                \
  if (!var.ok()) return std::move(var).status();    \
  lhs = std::move(var).value()

// Note: Abseil here is built with its own absl::string_view (ABSL_OPTION_USE_STD_STRING_VIEW 0);
// std::string_view does not convert to absl::AlphaNum, so pass std::string or const char* to
// absl::StrCat.
