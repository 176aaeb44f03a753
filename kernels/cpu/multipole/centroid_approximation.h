// The multipole term: every cluster that is not attended exactly still contributes through its
// centroid, as N_c copies of a key with the centroid's logit and the mean value:
//   numerator += N_c * exp(s_c) * Vc_c,  denominator += N_c * exp(s_c).
// It is accumulated as a PartialAttention with multiplicity N_c, so it merges with the exact
// parts like any other partial.
#pragma once

#include <cstdint>

#include "kernels/cpu/attention.h"

namespace mpa::cpu {

struct CentroidApproximationParams {
  const float* logits2 = nullptr;          // [num_clusters] base-2 logits of one query head
                                           // against the key centroids (from CentroidLookup)
  const float* value_centroids = nullptr;  // [num_clusters, head_dim] mean value per cluster
  const int32_t* counts = nullptr;         // [num_clusters] tokens per cluster
  const uint8_t* selected = nullptr;       // [num_clusters] 1: attended exactly, skip; or null
  int num_clusters = 0;
  int head_dim = 0;
};

// acc (+)= sum over non-selected, non-empty clusters c of N_c * 2^(s2_c) * Vc_c.
void AccumulateCentroidApproximation(const CentroidApproximationParams& p, PartialAttention& acc);

}  // namespace mpa::cpu
