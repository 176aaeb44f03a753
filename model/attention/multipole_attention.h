// Multipole Attention on the CPU (DESIGN.md section 5): the per-sequence cluster state, the
// online update, and the decode step. The cache of T tokens of every KV head is split into
//
//   [0, sink_end)              sink: always exact
//   [sink_end, clustered_end)  clustered region: a ClusterIndex per KV head; the clusters chosen
//                              by centroid lookup are exact, the rest enter through centroids
//   [clustered_end, T)         recent window: always exact, not yet clustered
//
// and every cluster_interval generated tokens the oldest interval of the recent window joins the
// clustered region (UpdateClusters). Decoding one KV head is four steps, one function each in
// the kernels: CentroidLookup -> SelectClusters -> AccumulateSparseExact (sink, recent, selected)
// -> AccumulateCentroidApproximation (the rest), merged as (o, m, l) partials.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "model/attention/attention_backend.h"
#include "model/attention/cluster_index.h"
#include "model/config/multipole_config.h"
#include "model/runtime/kv_cache.h"
#include "model/runtime/rope.h"

namespace mpa {

// Where the sink, clustered region and recent window lie for a cache of num_tokens tokens. The
// recent window holds I..2I-1 tokens once the cache is long enough (I = cluster_interval): the
// clustered length is max(0, floor((T - S) / I) - 1) * I, a pure function of T, so the Quest
// baseline partitions the cache identically.
struct CachePartition {
  int sink_end = 0;
  int clustered_end = 0;
  int num_tokens = 0;
  int clustered_tokens() const { return clustered_end - sink_end; }
};
CachePartition PartitionCache(int num_tokens, const MultipoleConfig& config);

// Tokens of the clustered region attended exactly: ceil(token_budget_fraction x clustered
// tokens) if the fraction is set, else token_budget.
int64_t TokenBudget(const MultipoleConfig& config, int clustered_tokens);

// Everything one KV head's decode step reads. The exact parts use the query rotated at its true
// position against post-RoPE keys. The lookup and the approximation score the index's
// key_centroids (kPostRope: means of post-RoPE keys) or rotated_key_centroids
// (kPreRopeRotatedMeans) with that same query, or the key_centroids of pre-RoPE keys (kPreRope)
// with the query rotated at the lookup position.
struct MultipoleHeadParams {
  const ClusterIndex* index = nullptr;  // covers [partition.sink_end, partition.clustered_end),
                                        // built from ClusteringRows(..., centroid_keys)
  CachePartition partition;
  const float* q_rot = nullptr;     // [group_size, head_dim] after RoPE at the true position
  const float* q_lookup = nullptr;  // [group_size, head_dim] after RoPE at lookup_position;
                                    // read only with CentroidKeys::kPreRope
  const float* k_head = nullptr;    // [>= num_tokens, head_dim] keys after RoPE
  const float* v_head = nullptr;    // [>= num_tokens, head_dim] values
  int group_size = 0;
  int head_dim = 0;
  float scale = 0.0f;
  int64_t token_budget = 0;
  float coarse_expansion = 4.0f;  // two levels only
  bool approximate = true;        // false: exact-only (non-selected clusters are dropped)
  CentroidKeys centroid_keys = CentroidKeys::kPostRope;  // which centroids, which query
  float* out = nullptr;                                  // [group_size, head_dim]
};

struct MultipoleHeadResult {
  int64_t tokens_exact = 0;  // sink + recent + selected cluster tokens
  int64_t centroids_scored = 0;
  int64_t clustered_selected = 0;  // tokens of the clustered region attended exactly
};

// One KV head's attention for its GQA group of query heads.
MultipoleHeadResult MultipoleHeadAttention(const MultipoleHeadParams& p);

// The rows of KV head `kv_head` of `kv` that its ClusterIndex clusters, for `keys`: the cached
// post-RoPE keys (kPostRope), or the pre-RoPE keys with (kPreRopeRotatedMeans) or without
// (kPreRope) the post-RoPE keys whose cluster means are kept beside them.
HeadRows ClusteringRows(LayerKv& kv, int kv_head, CentroidKeys keys);

// The cluster indices of one sequence: per layer, the clustered end and one index per KV head.
class MultipoleSequenceState : public BackendSequenceState {
 public:
  struct Layer {
    int clustered_end = 0;  // == partition.clustered_end once built; 0 before
    std::vector<ClusterIndex> heads;
  };
  explicit MultipoleSequenceState(int num_layers) : layers(num_layers) {}
  std::vector<Layer> layers;
};

// Keeps layer `layer`'s indices in step with the cache after tokens [first_new, T) were written:
// builds them when the clustered region first reaches min_clustered_tokens (with
// prefill_kmeans_iterations), and from then on extends them one interval at a time. Time spent
// building from a prompt chunk counts as prefill clustering, the rest as cluster updates.
void UpdateClusters(int layer, SequenceState& seq, int first_new);

// Multipole (or exact-only, with config.approximate or mode kExactOnly) attention for the newest
// token at `layer`. Falls back to dense attention while the clustered region is shorter than
// min_clustered_tokens.
void MultipoleDecode(const Rope& rope, int num_heads, int layer, SequenceState& seq,
                     const float* q_rot, const float* q_raw, float* out);

}  // namespace mpa
