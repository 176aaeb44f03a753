// Multipole Attention decode on the GPU (DESIGN.md section 5): one batched call per layer that
// scores every cluster's centroid, selects clusters up to each sequence's token budget, attends
// exactly to the sink, the recent window and the selected clusters, and folds every other cluster
// in through its centroid. No step waits on the host: the selection, the list of rows to read and
// the split sizes are made on the device into fixed-capacity buffers, so the launches can be
// captured in a CUDA graph.
//
// Cache layout. Positions live in the paged pool (kernels/cuda/common.h). The clustered region of
// a sequence is stored cluster-major: its slots (a permutation of the region's positions,
// cluster by cluster) are rows of pool pages, slot s of KV head h at row s (or sink_end + s when
// the slots are the region's own rows, reordered in place: slots_after_sink) of the slot pages
// table. A selected cluster is then one contiguous run of rows, read at the copy rate. Its
// centroids (means of its post-RoPE keys and of its values) are bf16 rows like the keys.
//
// The launches, each with a plain CPU twin in kernels/cpu/multipole/:
//   1. CentroidLookup   base-2 logits of the group's query heads against every key centroid, and
//                       in the same pass over the centroids, per block of clusters, the
//                       count-weighted softmax sums and N_c 2^(s_c) Vc_c summed over the block
//                       (tensor cores for head_dim 64 and 128, like the dense decode kernel)
//   2. SelectClusters   GQA-summed scores exp(s) / sum_j N_j exp(s_j), the budgeted greedy
//                       selection of cluster_selection.h (boundary rule included), the rows
//                       list (sink, recent window, then the selected clusters' slots), and the
//                       approximation partial: the blocks' sums merged, less the selected terms
//   3. DecodeAttention  split-KV over the rows list (decode_attention.h, row-list mode), merging
//                       its splits with the approximation partial
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/common.h"
#include "kernels/cuda/decode_attention.h"

namespace mpa::cuda {

// The clustered region of every (sequence, KV head) of one layer. Per-head arrays are reached
// through device arrays of pointers indexed by b * num_kv_heads + h, so each sequence may keep its
// cluster state wherever it lives between steps.
// Two levels (DESIGN.md section 5, the hierarchical option): coarse clusters over the fine ones
// of ClusteredRegion, the fine clusters of each coarse cluster numbered consecutively (so a coarse
// cluster is also one contiguous run of slots). The coarse level is looked up and selected first,
// up to ceil(expansion x token budget) tokens; the fine clusters of those coarse clusters are then
// looked up and selected up to the budget, the rest of them approximated by their fine
// centroids, and every coarse cluster not expanded by its coarse centroids (the CPU twin:
// model/attention/multipole_attention.cc with levels 2).
struct CoarseLevel {
  const bf16* const* key_centroids = nullptr;  // -> [num_coarse, head_dim]; null: one level
  const bf16* const* value_centroids = nullptr;
  // -> [num_coarse + 1]: coarse cluster c holds slots [cluster_begin[c], cluster_begin[c + 1]),
  // which are the slots of its fine clusters [fine_begin[c], fine_begin[c + 1]).
  const int32_t* const* cluster_begin = nullptr;
  const int32_t* const* fine_begin = nullptr;  // -> [num_coarse + 1]
  const int32_t* num_clusters = nullptr;       // [batch * num_kv_heads]
  int max_clusters = 0;                        // host: an upper bound of num_clusters
  float expansion = 4.0f;
  // [batch] 1: the sequence has two levels, 0: one level (its coarse arrays are not read; the
  // fine level is its only level, as in a one-level call); null: every sequence. Quest
  // sequences always have one.
  const uint8_t* two_level = nullptr;
  // [batch] the tokens each sequence's coarse pass expands (the caller's own rounding of
  // expansion x token_budget, e.g. per-sequence expansions); null: ceil(expansion x budget).
  const int32_t* token_budget = nullptr;
};

struct ClusteredRegion {
  BlockTable pages;  // [batch, max_pages] pool pages of the cluster-major slots
  // The slots are the region's own rows, reordered in place: slot s is row sink_end + s of
  // `pages` (the sequence's position pages); false: row s.
  bool slots_after_sink = false;
  const bf16* const* key_centroids = nullptr;    // -> [num_clusters, head_dim]
  const bf16* const* value_centroids = nullptr;  // -> [num_clusters, head_dim]
  // -> [num_clusters + 1]: cluster c holds slots [cluster_begin[c], cluster_begin[c + 1]);
  // cluster_begin[0] = 0 and the last entry is the region's length (clustered_end - sink_end).
  const int32_t* const* cluster_begin = nullptr;
  const int32_t* num_clusters = nullptr;  // [batch * num_kv_heads] (0: no clustered region)
  int max_clusters = 0;  // host: an upper bound of num_clusters (sizes grids and scratch)
  CoarseLevel coarse;    // two levels where coarse.key_centroids is set
};

struct MultipoleDecodeParams {
  const bf16* q = nullptr;  // [batch, num_q_heads, head_dim] after RoPE at the true position
  PagedKvCache kv;
  BlockTable block_table;                  // positions -> pages
  int64_t pool_pages = 0;                  // pages in the pool (pool rows must fit in int32)
  const int32_t* seq_lens = nullptr;       // [batch] tokens in the cache
  const int32_t* sink_end = nullptr;       // [batch] positions [0, sink_end) are exact
  const int32_t* clustered_end = nullptr;  // [batch] [sink_end, clustered_end) is clustered,
                                           // [clustered_end, seq_len) exact (recent window)
  const int32_t* token_budget = nullptr;   // [batch] clustered tokens attended exactly (>= 0)
  const uint8_t* approximate = nullptr;    // [batch] 1: multipole, 0: exact-only
  // [batch] 1: the Quest baseline for this sequence, 0: multipole or exact-only (null: none is).
  // A Quest sequence's region [sink_end, clustered_end) is in position order (slot s is position
  // sink_end + s: slots_after_sink with the sequence's own pages); its "clusters" are pages of
  // consecutive positions (cluster_begin: page starts), key_centroids and value_centroids hold
  // each page's per-channel minimum and maximum of its keys (QuestPageBounds), pages are ranked by
  // the largest over the group's query heads of sum_i max(q_i min_i, q_i max_i) and selected by
  // the same budget rule; no approximation (approximate is ignored); one level.
  const uint8_t* quest = nullptr;
  ClusteredRegion clusters;
  int batch = 0;
  int num_q_heads = 0;  // a multiple of kv.num_kv_heads, group <= 8
  int max_seq_len = 0;  // host: an upper bound of seq_lens (sizes the rows list)
  float scale = 0.0f;
  // Splits of the exact part per (sequence, KV head); 0: chosen from the device and the shapes.
  int exact_splits = 0;
  bf16* out = nullptr;  // [batch, num_q_heads, head_dim]; exactly one of out, out_f32
  float* out_f32 = nullptr;
  void* workspace = nullptr;  // MultipoleDecodeWorkspaceBytes
  size_t workspace_bytes = 0;
  // The exact part's kernel (tests force one); kCudaCore also keeps the lookup on CUDA cores
  // (otherwise on tensor cores for head_dim 64 and 128).
  DecodeKernel kernel = DecodeKernel::kAuto;
  // Optional [batch] device counters: each call adds, per sequence, the tokens attended exactly
  // (sink + recent + selected) summed over its KV heads (statistics of the sparsity).
  unsigned long long* exact_tokens = nullptr;
  // Benchmarks time the steps by stopping early: 0 runs all; 1 the lookup; 2 lookup + selection
  // (the output is then not written).
  int stop_after = 0;
  // The batch in two halves, each (lookup, selection, exact part) on its own stream, so one
  // half's selection (latency-bound, the memory idle) overlaps the other's memory-bound launches:
  // 0 chooses (halves from 64 (sequence, KV head) pairs on, when stop_after is 0), 1 one
  // stream, 2 halves (tests). The results are the same bits either way. The second stream is
  // forked from and joined back into `stream` with events, so the call stays capturable.
  int pipeline_parts = 0;
  // The selection kernel is launched as a programmatic dependent of the lookup: it reads the
  // cluster bounds and lists the sink and window rows while the lookup drains, then waits for
  // the lookup's results (false: an ordinary launch; benchmarks compare).
  bool programmatic_launch = true;
  // Benchmarks: [32] device values, the selection kernel's phase clocks and counts of its first
  // (sequence, KV head) (multipole_kernels.h, StepArgs::trace); null: none.
  long long* trace = nullptr;
};

// Where the intermediate results sit inside the workspace (tests and statistics read them).
struct MultipoleWorkspace {
  float* logits2 = nullptr;  // [batch, num_kv_heads, group, max_clusters] base-2 logits
                             // (-inf: empty or absent cluster; not written for Quest sequences)
  // [batch, num_kv_heads, group, lookup blocks, 2]: each lookup block's (max, sum N 2^(s - max))
  // of its clusters' logits, merged by the selection into the softmax normalisers.
  float* norms = nullptr;
  // [batch, num_kv_heads, group, lookup blocks, head_dim]: each block's sum of N_c 2^(s_c - max)
  // Vc_c (multipole sequences only).
  float* approx_o = nullptr;
  // [batch, num_kv_heads, 32 selection warps, group, head_dim]: each selection warp's sum of its
  // selected clusters' terms (multipole sequences only).
  float* selected_o = nullptr;
  float* scores = nullptr;             // [batch, num_kv_heads, max_clusters] GQA-summed scores
  uint8_t* selected = nullptr;         // [batch, num_kv_heads, max_clusters] 1: attended exactly
  int32_t* rows = nullptr;             // [batch, num_kv_heads, max_seq_len] pool rows read exactly
  int32_t* row_counts = nullptr;       // [batch, num_kv_heads]
  int32_t* selected_tokens = nullptr;  // [batch, num_kv_heads] clustered tokens attended exactly
  void* partials = nullptr;            // DecodeAttention's partials (decode_attention.h)
  size_t partials_bytes = 0;
  // Two levels (MultipoleShape::max_coarse_clusters > 0; null otherwise). The fine level's
  // arrays above are then indexed by the entries of the list of expanded fine clusters (entry i
  // is fine cluster fine_ids[i]; fine_count entries), the coarse level's below by coarse cluster.
  float* coarse_logits2 = nullptr;     // [batch, num_kv_heads, group, max_coarse_clusters]
  float* coarse_scores = nullptr;      // [batch, num_kv_heads, max_coarse_clusters]
  uint8_t* coarse_expanded = nullptr;  // [batch, num_kv_heads, max_coarse_clusters] 1: expanded
  int32_t* expanded_tokens = nullptr;  // [batch, num_kv_heads] tokens of the expanded clusters
  int32_t* fine_ids = nullptr;         // [batch, num_kv_heads, max_clusters]
  int32_t* fine_count = nullptr;       // [batch, num_kv_heads]
  // Internal to the call: the coarse lookup's per-block partials (as norms and approx_o) and
  // the list's token bounds ([batch, num_kv_heads, max_clusters + 1]).
  float* coarse_norms = nullptr;
  float* coarse_approx_o = nullptr;
  int32_t* list_begin = nullptr;
};

struct MultipoleShape {
  int batch = 0;
  int num_q_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int max_clusters = 0;
  int max_seq_len = 0;
  int exact_splits = 0;         // as chosen (ChooseMultipoleSplits)
  int max_coarse_clusters = 0;  // two levels: CoarseLevel::max_clusters; 0: one level
};

// The splits the launcher uses for a shape (fills shape.exact_splits where 0).
MultipoleShape ChooseMultipoleSplits(MultipoleShape shape);
size_t MultipoleDecodeWorkspaceBytes(const MultipoleShape& shape);
MultipoleWorkspace MultipoleWorkspaceLayout(void* workspace, const MultipoleShape& shape);

// The Quest baseline's page bounds (kernels/cpu/multipole/quest_pages.h, QuestPageBounds, is the
// CPU twin): per KV head, the per-channel minimum and maximum of the keys of pages
// [first_page, end_page) of one sequence's region, page p holding positions
// [region_begin + p * page_tokens, min(region_begin + (p + 1) * page_tokens, region_end)).
// Keys are bf16, so the bounds are exact in bf16. Also writes page_begin[p] = p * page_tokens for
// p in [first_page, end_page) and page_begin[end_page] = region_end - region_begin (the pages'
// first slots, as cluster_begin).
struct QuestPageBoundsParams {
  PagedKvCache kv;                 // one layer's pool
  const int32_t* pages = nullptr;  // the sequence's pages in position order
  int region_begin = 0;
  int region_end = 0;
  int page_tokens = 16;
  int first_page = 0;
  int end_page = 0;
  bf16* page_min = nullptr;  // head h's table at page_min + h * head_stride: [pages, head_dim]
  bf16* page_max = nullptr;
  int64_t head_stride = 0;        // elements
  int32_t* page_begin = nullptr;  // [end_page + 1] (null: not written)
};
cudaError_t QuestPageBounds(const QuestPageBoundsParams& p, cudaStream_t stream);

// The largest cluster count per (sequence, KV head) the selection kernel sorts in shared memory.
inline constexpr int kMaxClustersPerHead = 16384;

// cudaErrorInvalidValue on unsupported shapes (head_dim not a multiple of 8 up to 256, group
// not 1/2/4/8, max_clusters over kMaxClustersPerHead, pool rows over int32), missing pointers, or
// a coarse level with missing arrays or an expansion that is not a positive number.
cudaError_t MultipoleDecode(const MultipoleDecodeParams& p, cudaStream_t stream);

}  // namespace mpa::cuda
