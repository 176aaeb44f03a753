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
  // DecodeAttention's partials: [batch, exact_splits + 1, num_q_heads, head_dim] then lse [batch,
  // exact_splits + 1, num_q_heads]; the approximation owns the last slot (exact_splits).
  float* partial_o;
  float* partial_lse;
  int exact_splits;
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

// Dynamic shared memory of the selection kernel for max_clusters (bytes).
size_t SelectionSharedBytes(int max_clusters);

}  // namespace mpa::cuda::multipole
