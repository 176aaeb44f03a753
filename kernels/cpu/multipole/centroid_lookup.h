// Centroid lookup: how much attention each cluster of keys is expected to receive, estimated
// from its centroid alone. One call scores the clusters of one KV head for the query heads of
// its GQA group.
#pragma once

#include <cstdint>

namespace mpa::cpu {

struct CentroidLookupParams {
  // [group_size, head_dim] the query heads that share this KV head, rotated to match the
  // centroids: at their true position for means of post-RoPE keys, at the lookup position for
  // means of pre-RoPE keys.
  const float* q = nullptr;
  const float* key_centroids = nullptr;  // [num_clusters, head_dim] means of each cluster's keys
  const int32_t* counts = nullptr;       // [num_clusters] tokens per cluster (0: empty)
  int num_clusters = 0;
  int group_size = 0;
  int head_dim = 0;
  float scale = 0.0f;  // softmax scale (1/sqrt(head_dim) usually)
  // [group_size, num_clusters] out: base-2 logits s2[h][c] = (q_h . K_c) * scale * log2(e);
  // -inf for an empty cluster. The approximation term reuses them.
  float* logits2 = nullptr;
  // [num_clusters] out: the estimated attention weight of ONE token of cluster c, summed over the
  // group: score[c] = sum_h exp(s_hc) / sum_j N_j exp(s_hj). 0 for an empty cluster. The total
  // estimated mass of cluster c is N_c * score[c].
  float* scores = nullptr;
};

void CentroidLookup(const CentroidLookupParams& p);

}  // namespace mpa::cpu
