#include "kernels/cpu/multipole/centroid_lookup.h"

#include <algorithm>
#include <cmath>

#include "kernels/cpu/attention.h"

namespace mpa::cpu {

void CentroidLookup(const CentroidLookupParams& p) {
  const int C = p.num_clusters;
  const float s2_scale = p.scale * kLog2e;
  std::fill_n(p.scores, C, 0.0f);
  for (int h = 0; h < p.group_size; ++h) {
    const float* q = p.q + int64_t{h} * p.head_dim;
    float* s2 = p.logits2 + int64_t{h} * C;
    float m = -INFINITY;
    for (int c = 0; c < C; ++c) {
      if (p.counts[c] <= 0) {
        s2[c] = -INFINITY;
        continue;
      }
      const float* k = p.key_centroids + int64_t{c} * p.head_dim;
      float dot = 0.0f;
      for (int i = 0; i < p.head_dim; ++i) dot += q[i] * k[i];
      s2[c] = dot * s2_scale;
      m = std::max(m, s2[c]);
    }
    if (m == -INFINITY) continue;  // no cluster has tokens
    // Denominator of the count-weighted softmax: sum_j N_j 2^(s2_j - m).
    double denom = 0.0;
    for (int c = 0; c < C; ++c) {
      if (p.counts[c] > 0) denom += static_cast<double>(p.counts[c]) * std::exp2(double{s2[c]} - m);
    }
    for (int c = 0; c < C; ++c) {
      if (p.counts[c] > 0) p.scores[c] += static_cast<float>(std::exp2(double{s2[c]} - m) / denom);
    }
  }
}

}  // namespace mpa::cpu
