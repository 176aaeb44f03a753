// Budgeted selection: which clusters (or Quest pages) get exact attention. Shared by Multipole
// Attention (clusters ranked by centroid lookup) and the Quest baseline (pages ranked by their
// upper bound), so both spend a token budget by the same rule.
#pragma once

#include <cstdint>

namespace mpa::cpu {

struct ClusterSelectionParams {
  const float* scores = nullptr;    // [num_clusters] higher is more important
  const int32_t* counts = nullptr;  // [num_clusters] tokens per cluster (0: empty, never selected)
  int num_clusters = 0;
  int64_t token_budget = 0;     // tokens that may be attended exactly (>= 0)
  uint8_t* selected = nullptr;  // [num_clusters] out: 1 if selected, else 0
};

// Walks the non-empty clusters in descending score (ties: lower index first) and selects each
// one that still fits in the remaining budget; a cluster that does not fit is skipped and the
// walk goes on, so smaller, lower-ranked clusters can use the rest of the budget.
//
// Boundary rule (the one case that spends more than the budget): when the budget is positive but
// smaller than the top-ranked cluster, that cluster is selected alone, so a small budget still
// attends the most important cluster exactly. The total then exceeds the budget by less than
// that cluster's size. A budget of 0 selects nothing; a budget >= all tokens selects everything.
//
// Returns the number of tokens selected.
int64_t SelectClusters(const ClusterSelectionParams& p);

}  // namespace mpa::cpu
