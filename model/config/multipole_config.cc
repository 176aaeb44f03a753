#include "model/config/multipole_config.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace mpa {

namespace {

absl::Status AtLeast(const char* field, double value, double minimum) {
  if (value >= minimum && std::isfinite(value)) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("multipole config: ", field, " is ", value, ", must be >= ", minimum));
}

constexpr CentroidKeys kAllCentroidKeys[] = {
    CentroidKeys::kPostRope, CentroidKeys::kPreRopeRotatedMeans, CentroidKeys::kPreRope};

}  // namespace

absl::StatusOr<CentroidKeys> ParseCentroidKeys(absl::string_view name) {
  for (CentroidKeys keys : kAllCentroidKeys) {
    if (name == CentroidKeysName(keys)) return keys;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("multipole config: centroid_keys is '", name,
                   "', must be one of post_rope, pre_rope_rotated_means, pre_rope"));
}

const char* CentroidKeysName(CentroidKeys keys) {
  switch (keys) {
    case CentroidKeys::kPostRope:
      return "post_rope";
    case CentroidKeys::kPreRopeRotatedMeans:
      return "pre_rope_rotated_means";
    case CentroidKeys::kPreRope:
      return "pre_rope";
  }
  return "unknown";
}

absl::Status MultipoleConfig::Validate() const {
  const struct {
    const char* field;
    double value;
    double minimum;
  } bounds[] = {
      {"sink_tokens", double(sink_tokens), 0},
      {"cluster_interval", double(cluster_interval), 1},
      {"tokens_per_centroid", double(tokens_per_centroid), 1},
      {"levels", double(levels), 1},
      {"coarse_tokens_per_centroid", double(coarse_tokens_per_centroid), 1},
      {"fine_tokens_per_centroid", double(fine_tokens_per_centroid), 1},
      {"coarse_expansion", coarse_expansion, 1},
      {"token_budget", double(token_budget), 0},
      {"token_budget_fraction", token_budget_fraction, 0},
      {"lookup_position", double(lookup_position), 0},
      {"prefill_kmeans_iterations", double(prefill_kmeans_iterations), 1},
      {"update_kmeans_iterations", double(update_kmeans_iterations), 0},
      {"block_tokens", double(block_tokens), 1},
      {"final_window_min", double(final_window_min), 1},
      {"final_window_max", double(final_window_max), 1},
      {"min_clustered_tokens", double(min_clustered_tokens), 0},
      {"quest_page_tokens", double(quest_page_tokens), 1},
  };
  for (const auto& b : bounds) {
    if (absl::Status s = AtLeast(b.field, b.value, b.minimum); !s.ok()) return s;
  }
  if (levels > 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("multipole config: levels is ", levels, ", must be 1 or 2"));
  }
  if (token_budget_fraction > 1.0f) {
    return absl::InvalidArgumentError(absl::StrCat("multipole config: token_budget_fraction is ",
                                                   token_budget_fraction, ", must be <= 1"));
  }
  if (levels == 2 && coarse_tokens_per_centroid < fine_tokens_per_centroid) {
    return absl::InvalidArgumentError(
        absl::StrCat("multipole config: coarse_tokens_per_centroid (", coarse_tokens_per_centroid,
                     ") must be >= fine_tokens_per_centroid (", fine_tokens_per_centroid, ")"));
  }
  if (block_tokens < fine_ratio()) {
    return absl::InvalidArgumentError(absl::StrCat("multipole config: block_tokens (", block_tokens,
                                                   ") must be >= the tokens per centroid (",
                                                   fine_ratio(), ")"));
  }
  // Freezing a block of block_tokens from a final window just over final_window_max must leave
  // at least final_window_min tokens in it.
  if (final_window_max < final_window_min + block_tokens - 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("multipole config: final_window_max (", final_window_max,
                     ") must be >= final_window_min + block_tokens - 1 (",
                     final_window_min + block_tokens - 1, ")"));
  }
  return absl::OkStatus();
}

}  // namespace mpa
