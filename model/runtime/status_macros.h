// Early-return helpers for absl::Status / absl::StatusOr.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define MPA_CONCAT_INNER(a, b) a##b
#define MPA_CONCAT(a, b) MPA_CONCAT_INNER(a, b)

#define MPA_RETURN_IF_ERROR(expr)              \
  do {                                         \
    const ::absl::Status _mpa_status = (expr); \
    if (!_mpa_status.ok()) return _mpa_status; \
  } while (0)

#define MPA_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return tmp.status();             \
  lhs = std::move(tmp).value()

#define MPA_ASSIGN_OR_RETURN(lhs, expr) \
  MPA_ASSIGN_OR_RETURN_IMPL(MPA_CONCAT(_mpa_statusor_, __LINE__), lhs, expr)
