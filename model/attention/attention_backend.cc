#include "model/attention/attention_backend.h"

#include "absl/strings/str_cat.h"

namespace mpa {

absl::StatusOr<AttentionMode> ParseAttentionMode(absl::string_view name) {
  if (name == "dense") return AttentionMode::kDense;
  if (name == "multipole") return AttentionMode::kMultipole;
  if (name == "exact-only" || name == "exact_only") return AttentionMode::kExactOnly;
  if (name == "quest") return AttentionMode::kQuest;
  return absl::InvalidArgumentError(absl::StrCat(
      "attention mode '", name, "' is unknown (dense, multipole, exact-only, quest are)"));
}

absl::string_view AttentionModeName(AttentionMode mode) {
  switch (mode) {
    case AttentionMode::kDense:
      return "dense";
    case AttentionMode::kMultipole:
      return "multipole";
    case AttentionMode::kExactOnly:
      return "exact-only";
    case AttentionMode::kQuest:
      return "quest";
  }
  return "unknown";
}

}  // namespace mpa
