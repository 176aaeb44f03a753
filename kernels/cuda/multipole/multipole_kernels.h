// The launches behind MultipoleDecode (multipole_decode.h), one per step, each in its own file.
// Internal: the public entry point validates shapes and lays out the workspace.
#pragma once

#include <cstdint>

#include "kernels/cuda/common.h"

namespace mpa::cuda::multipole {

// Shapes and pointers every launch reads (copied by value into each kernel).
struct StepArgs {
  const bf16* q;  // [batch, num_q_heads, head_dim]
  const bf16* const* key_centroids;
  const bf16* const* value_centroids;
  const int32_t* const* cluster_begin;
  const int32_t* num_clusters;  // [batch * num_kv_heads]
  const int32_t* pages;         // [batch, max_pages] positions -> pages
  int max_pages;
  const int32_t* clustered_pages;  // [batch, max_clustered_pages] slots -> pages
  int max_clustered_pages;
  int slots_after_sink;          // 1: slot s is row sink_end + s of clustered_pages (in place)
  const int32_t* seq_lens;       // [batch]
  const int32_t* sink_end;       // [batch]
  const int32_t* clustered_end;  // [batch]
  const int32_t* token_budget;   // [batch]
  const uint8_t* approximate;    // [batch]
  // [batch] 1: Quest (the "clusters" are pages of consecutive positions, key_centroids and
  // value_centroids their per-channel key minima and maxima; scores are upper bounds of a logit,
  // written by the Quest scoring launch); null: no Quest sequence in the batch.
  const uint8_t* quest;
  int batch;
  int num_q_heads;
  int num_kv_heads;
  int head_dim;
  int page_size;
  int page_shift;
  int max_clusters;
  int max_seq_len;  // rows list capacity per (sequence, KV head)
  float scale2;     // softmax scale * log2(e)
  // Workspace (multipole_decode.h, MultipoleWorkspace).
  float* logits2;
  float* norms;     // [batch, num_kv_heads, group, lookup_blocks, 2] (max, sum) per lookup block
  float* approx_o;  // [batch, num_kv_heads, group, lookup_blocks, head_dim] value sums (multipole)
  int lookup_blocks;  // LookupBlocks(max_clusters)
  // [batch, num_kv_heads, kSelectionWarps, group, head_dim]: each selection warp's sum of its
  // selected clusters' N_c 2^(s_c - m) Vc_c (multipole), subtracted in the selection's merge.
  float* selected_o;
  float* scores;
  uint8_t* selected;
  int32_t* rows;
  int32_t* row_counts;
  int32_t* selected_tokens;
  unsigned long long* exact_tokens;  // [batch] or null: += rows attended exactly
  // DecodeAttention's partials: [batch, partial_slots, num_q_heads, head_dim] then lse [batch,
  // partial_slots, num_q_heads]; slots [0, exact_splits) are the exact part's, then one
  // approximation slot per level (the fine level's is exact_splits, the coarse level's
  // exact_splits + 1); this launch's approximation goes to approx_slot.
  float* partial_o;
  float* partial_lse;
  int exact_splits;
  int partial_slots;
  int approx_slot;

  // Two levels (multipole_decode.h, CoarseLevel). The coarse pass (expansion > 0) ranks the
  // coarse clusters and selects them up to ceil(expansion x token budget) tokens, writes no rows,
  // and lists the fine clusters of the selected ("expanded") coarse clusters, in cluster order,
  // for the fine pass: fine_ids[i] is the fine cluster of list entry i, list_begin[i] its first
  // token in the list's own numbering (entry i holds list_begin[i + 1] - list_begin[i] tokens),
  // list_count the entries. The fine pass (fine_ids non-null) treats list entry i as its cluster
  // i: centroid rows fine_ids[i], counts from list_begin, first slot cluster_begin[fine_ids[i]].
  float expansion;                        // > 0: this launch is the coarse pass
  const int32_t* const* fine_of_coarse;   // coarse pass: -> [num_coarse + 1]
  const int32_t* const* fine_slot_begin;  // coarse pass: the fine level's cluster_begin
  int32_t* list_ids;                      // coarse pass writes, fine pass reads (fine_ids)
  int32_t* list_begin;                    // [batch * num_kv_heads, max_fine + 1]
  int32_t* list_count;                    // [batch * num_kv_heads]
  int max_fine;                           // the list's capacity per (sequence, KV head)
  const int32_t* fine_ids;                // fine pass: list_ids (null: one level)
  const int32_t* fine_list_begin;         // fine pass: list_begin
  // [batch] 1: the sequence has two levels; 0: one level (its fine pass reads its own clusters,
  // the coarse pass only copies its cluster count, fine_num_clusters, into list_count); null:
  // every sequence of a two-level call has two levels. Quest sequences are one-level.
  const uint8_t* two_level;
  const int32_t* fine_num_clusters;  // coarse pass: the fine level's num_clusters
  const int32_t* coarse_budget;      // coarse pass: [batch] expanded budgets (null: expansion)
  // Benchmarks only: the selection kernel's block (0, 0) writes clock64() at its phase ends
  // (0..11) and counts (16: keys in the first miss's bin, 17: tail rounds, 18: tail candidates,
  // 19: clusters selected); null: nothing.
  long long* trace;
  // The lookup on CUDA cores even where the tensor-core one applies (head_dim 64 and 128).
  bool cuda_core_lookup;
  bool programmatic_launch;  // the selection: see MultipoleDecodeParams
};

// Warps of the selection kernel's block (1024 threads).
inline constexpr int kSelectionWarps = 32;

// Clusters per lookup block, and the lookup's blocks per (sequence, KV head).
inline constexpr int kLookupClustersPerBlock = 256;
inline int LookupBlocks(int max_clusters) {
  return (max_clusters + kLookupClustersPerBlock - 1) / kLookupClustersPerBlock;
}

cudaError_t LaunchCentroidLookup(const StepArgs& a, cudaStream_t stream);
cudaError_t LaunchClusterSelection(const StepArgs& a, cudaStream_t stream);
// Quest sequences: each page's upper bound of the group's logits into `scores`.
cudaError_t LaunchQuestScores(const StepArgs& a, cudaStream_t stream);

__device__ __forceinline__ bool IsQuest(const StepArgs& a, int b) {
  return a.quest != nullptr && a.quest[b] != 0;
}

// Whether sequence b of a two-level call has two levels (see StepArgs::two_level).
__device__ __forceinline__ bool TwoLevel(const StepArgs& a, int b) {
  return !IsQuest(a, b) && (a.two_level == nullptr || a.two_level[b] != 0);
}
// Whether this launch is the fine pass of a two-level sequence: its clusters are list entries.
__device__ __forceinline__ bool ListedClusters(const StepArgs& a, int b) {
  return a.fine_ids != nullptr && TwoLevel(a, b);
}
// The token bounds of (sequence b, KV head) hb's clusters: cluster c holds bounds[c + 1] -
// bounds[c] tokens (the fine pass's list numbering, or the level's own slots).
__device__ __forceinline__ const int32_t* ClusterBounds(const StepArgs& a, int b, int hb) {
  return ListedClusters(a, b) ? a.fine_list_begin + static_cast<int64_t>(hb) * (a.max_clusters + 1)
                              : a.cluster_begin[hb];
}
// The centroid row of cluster c of hb (the fine pass: its list entry's fine cluster).
__device__ __forceinline__ int CentroidRow(const StepArgs& a, int b, int hb, int c) {
  return ListedClusters(a, b) ? __ldg(a.fine_ids + static_cast<int64_t>(hb) * a.max_clusters + c)
                              : c;
}

// Dynamic shared memory of the selection kernel for max_clusters (bytes).
size_t SelectionSharedBytes(int max_clusters);

}  // namespace mpa::cuda::multipole
