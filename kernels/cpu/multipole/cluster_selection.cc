#include "kernels/cpu/multipole/cluster_selection.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace mpa::cpu {

int64_t SelectClusters(const ClusterSelectionParams& p) {
  std::fill_n(p.selected, p.num_clusters, uint8_t{0});
  if (p.token_budget <= 0) return 0;
  std::vector<int32_t> ranked;
  ranked.reserve(p.num_clusters);
  for (int c = 0; c < p.num_clusters; ++c) {
    if (p.counts[c] > 0) ranked.push_back(c);
  }
  // NaN scores rank last (they compare false); stable_sort keeps the lower index first on ties.
  std::stable_sort(ranked.begin(), ranked.end(), [&](int32_t a, int32_t b) {
    const float sa = p.scores[a], sb = p.scores[b];
    if (std::isnan(sb)) return !std::isnan(sa);
    return sa > sb;
  });
  if (ranked.empty()) return 0;
  const int top = ranked.front();
  if (p.counts[top] > p.token_budget) {  // the boundary rule
    p.selected[top] = 1;
    return p.counts[top];
  }
  int64_t used = 0;
  for (int c : ranked) {
    if (used + p.counts[c] <= p.token_budget) {
      p.selected[c] = 1;
      used += p.counts[c];
    }
  }
  return used;
}

}  // namespace mpa::cpu
