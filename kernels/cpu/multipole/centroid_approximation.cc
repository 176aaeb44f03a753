#include "kernels/cpu/multipole/centroid_approximation.h"

namespace mpa::cpu {

void AccumulateCentroidApproximation(const CentroidApproximationParams& p, PartialAttention& acc) {
  for (int c = 0; c < p.num_clusters; ++c) {
    if (p.counts[c] <= 0) continue;
    if (p.selected != nullptr && p.selected[c]) continue;
    AccumulatePartial(acc, p.logits2[c], static_cast<float>(p.counts[c]),
                      p.value_centroids + int64_t{c} * p.head_dim);
  }
}

}  // namespace mpa::cpu
