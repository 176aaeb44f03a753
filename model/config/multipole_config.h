// Every knob of Multipole Attention (DESIGN.md section 5), with the design's defaults.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace mpa {

// Which keys k-means clusters, and which centroids and query the centroid lookup and the
// approximation term score.
enum class CentroidKeys {
  // k-means on the cached post-RoPE keys; their means are scored with the query at its true
  // position, so q . mean(k_rot) is exactly the mean logit of the cluster.
  kPostRope,
  // k-means on pre-RoPE keys; the means of the same clusters' post-RoPE keys are scored with the
  // query at its true position.
  kPreRopeRotatedMeans,
  // k-means on pre-RoPE keys; their means are scored with the query rotated at
  // lookup_position, as if every clustered key sat that many tokens before it (the paper's
  // variant).
  kPreRope,
};

// "post_rope", "pre_rope_rotated_means" or "pre_rope"; InvalidArgument naming centroid_keys and
// the allowed values otherwise.
absl::StatusOr<CentroidKeys> ParseCentroidKeys(absl::string_view name);
// The name ParseCentroidKeys accepts for `keys`.
const char* CentroidKeysName(CentroidKeys keys);

struct MultipoleConfig {
  int sink_tokens = 10;                 // first tokens, always exact
  int cluster_interval = 128;           // I: recent window holds I..2I-1 unclustered tokens
  int tokens_per_centroid = 16;         // single level: one centroid per this many tokens
  int levels = 1;                       // 1, or 2 (coarse over fine)
  int coarse_tokens_per_centroid = 64;  // two levels
  int fine_tokens_per_centroid = 8;     // two levels
  // Two levels: coarse clusters are expanded into their fine clusters in score order until the
  // expanded tokens reach coarse_expansion x token budget; the rest are approximated by their
  // coarse centroids.
  float coarse_expansion = 4.0f;
  int token_budget = 128;              // tokens of the clustered region attended exactly
  float token_budget_fraction = 0.0f;  // if > 0, budget = ceil(fraction x clustered length)
  // The keys clustered and the centroids scored, for both selection and the approximation term.
  CentroidKeys centroid_keys = CentroidKeys::kPostRope;
  // kPreRope only: position at which the query is rotated to score the pre-RoPE centroids.
  int lookup_position = 2048;
  int prefill_kmeans_iterations = 10;
  int update_kmeans_iterations = 3;
  int block_tokens = 8192;      // frozen block size
  int final_window_min = 4096;  // final window holds final_window_min..final_window_max tokens
  int final_window_max = 12288;
  int min_clustered_tokens = 256;  // below this clustered length attention is dense
  bool approximate = true;         // add the centroid term for non-selected clusters
  int quest_page_tokens = 16;      // Quest baseline: tokens per page
  unsigned seed = 1234;

  // Tokens per centroid of the level that selection works on (the only or the fine level).
  int fine_ratio() const { return levels == 2 ? fine_tokens_per_centroid : tokens_per_centroid; }

  // InvalidArgument naming the first bad field and its allowed range.
  absl::Status Validate() const;
};

}  // namespace mpa
