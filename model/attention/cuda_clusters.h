// The cluster hierarchy of one sequence on the GPU (DESIGN.md section 5): for every layer and KV
// head, k-means clusters of the cached post-RoPE keys of the clustered region, stored
// cluster-major where the region lies: each block's rows are reordered in place inside the
// block's own positions (slot s is row region_begin + s of the sequence's pages), so a selected
// cluster is one contiguous run of rows and the region costs no second copy. Attention over the
// whole cache (dense decode, a later turn's prefill) does not care about the order of rows before
// the query. The state keeps, per (layer, head), which position each slot holds, and bf16 key and
// value centroids and each cluster's first slot (memory outside the KV pool: 1/16 of the
// region's KV at one centroid per 16 tokens). If the state is dropped (device memory short, or
// the cluster knobs change), the rows stay reordered and a rebuild treats them as positions:
// attention is unchanged; only the k-means seeds differ from the CPU reference's. Blocks, cluster
// counts and seeds follow the CPU ClusterIndex: frozen blocks of block_tokens while more than
// final_window_max tokens remain, then the final window; one centroid per tokens_per_centroid
// tokens; k-means seeded from the same points (ClusterHeadSeed / ClusterBlockSeed). Block sizes
// depend only on positions, so every layer and KV head has the same blocks and cluster counts.
//
// Build clusters a prompt's region (prefill_kmeans_iterations passes); Extend is the online
// update of one interval: the new tokens join the final window, which is re-clustered with
// update_kmeans_iterations passes starting from its current centroids plus new ones seeded from
// the new tokens (the CPU first assigns the new tokens to running means; the GPU lets the Lloyd
// passes do it), and a final window grown past final_window_max freezes its first block_tokens
// (both parts clustered anew). Post-RoPE keys only.
//
// Two levels (levels 2): the fine clusters (one per fine_tokens_per_centroid tokens) of each
// block are clustered into coarse ones (one per coarse_tokens_per_centroid tokens, k-means of the
// fine centroids weighted by their token counts, as the CPU ClusterIndex does) and numbered
// coarse-major, so a coarse cluster is a contiguous run of fine clusters and of slots; its
// centroids are the means of its slots' keys and values. Blocks and their coarse clusters are
// re-made with the fine ones (an online update re-clusters the final window's coarse level).
//
// Every call is enqueued on the stream it is given; the state's buffers are the sequence's.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "kernels/cuda/common.h"
#include "model/config/multipole_config.h"
#include "model/runtime/device_memory_budget.h"

namespace mpa {

struct CudaClusterBlock {
  int token_begin = 0;  // positions [token_begin, token_end)
  int token_end = 0;
  int cluster_begin = 0;  // cluster ids [cluster_begin, cluster_end) of every head
  int cluster_end = 0;
  int coarse_begin = 0;  // two levels: coarse ids [coarse_begin, coarse_end) of every head
  int coarse_end = 0;
};

class CudaClusterState {
 public:
  // What maintenance reads and where it may take pages from.
  struct Context {
    std::vector<cuda::PagedKvCache> layers;       // per layer: the pool
    const std::vector<int32_t>* pages = nullptr;  // the sequence's pages, in position order
    cudaStream_t stream = nullptr;
  };

  // `budget` (may be null: not counted) is charged for the state's device arrays before they grow.
  CudaClusterState(const MultipoleConfig& config, int num_layers, int num_kv_heads, int head_dim,
                   DeviceMemoryBudget* budget = nullptr);
  ~CudaClusterState();
  CudaClusterState(const CudaClusterState&) = delete;
  CudaClusterState& operator=(const CudaClusterState&) = delete;

  bool built() const { return !blocks_.empty(); }
  int region_begin() const { return region_begin_; }  // the sink's end
  int region_end() const { return region_end_; }
  int num_clusters() const { return blocks_.empty() ? 0 : blocks_.back().cluster_end; }
  bool two_levels() const { return config_.levels == 2; }
  int num_coarse() const { return blocks_.empty() ? 0 : blocks_.back().coarse_end; }
  const std::vector<CudaClusterBlock>& blocks() const { return blocks_; }
  int64_t device_bytes() const { return charge_.bytes(); }  // the persistent device arrays

  // Per (layer, head) device arrays, for the decode step's pointer tables.
  const cuda::bf16* key_centroids(int layer, int head) const;    // [num_clusters, head_dim]
  const cuda::bf16* value_centroids(int layer, int head) const;  // [num_clusters, head_dim]
  const int32_t* cluster_begin(int layer, int head) const;       // [num_clusters + 1]
  // [region tokens] slot -> position (tests and statistics).
  const int32_t* slot_positions(int layer, int head) const;
  // Two levels: the coarse level (multipole_decode.h, CoarseLevel).
  const cuda::bf16* coarse_key_centroids(int layer, int head) const;    // [num_coarse, head_dim]
  const cuda::bf16* coarse_value_centroids(int layer, int head) const;  // [num_coarse, head_dim]
  const int32_t* coarse_cluster_begin(int layer, int head) const;       // [num_coarse + 1] slots
  const int32_t* fine_of_coarse(int layer, int head) const;  // [num_coarse + 1] fine clusters

  // Clusters positions [begin, end) of every layer from scratch. Tokens re-clustered are added to
  // *reclustered (per KV head and layer).
  absl::Status Build(const Context& ctx, int begin, int end, int64_t* reclustered);
  // Positions [region_end(), new_end) join the final window (one online update).
  absl::Status Extend(const Context& ctx, int new_end, int64_t* reclustered);

 private:
  struct Job {
    int block;            // index into blocks_ (after the update)
    int keep_clusters;    // clusters whose current centroids start k-means (the rest: seeds)
    int first_new_point;  // seeds of the new clusters are drawn among points >= this
    bool seeded;          // all centroids seeded from points (a fresh block)
  };
  // Grows the device arrays to hold `clusters` clusters and `slots` slots per (layer, head),
  // keeping their contents.
  absl::Status Reserve(const Context& ctx, int clusters, int slots, int coarse);
  // Row of (layer, KV head) in the per-head device arrays.
  int64_t HeadIndex(int layer, int head) const {
    return static_cast<int64_t>(layer) * num_kv_heads_ + head;
  }
  // The blocks' cluster counts: fine (or single-level) and coarse.
  int FineClusters(int tokens) const;
  int CoarseClusters(int tokens) const;
  // Clusters the given blocks (jobs, contiguous) of every layer and lays them out in place;
  // positions below laid_out_end were laid out before (their rows are reordered).
  absl::Status Run(const Context& ctx, const std::vector<Job>& jobs, int iterations,
                   int laid_out_end);

  MultipoleConfig config_;
  int num_layers_, num_kv_heads_, head_dim_;
  int region_begin_ = 0;
  int region_end_ = 0;
  std::vector<CudaClusterBlock> blocks_;
  // Device arrays, strided by capacity: [layers, heads, cluster_capacity (+ 1), head_dim].
  int cluster_capacity_ = 0;
  int slot_capacity_ = 0;
  cuda::bf16* key_centroids_ = nullptr;
  cuda::bf16* value_centroids_ = nullptr;
  int32_t* cluster_begin_ = nullptr;
  int32_t* slot_positions_ = nullptr;
  int coarse_capacity_ = 0;
  cuda::bf16* coarse_key_centroids_ = nullptr;
  cuda::bf16* coarse_value_centroids_ = nullptr;
  int32_t* coarse_cluster_begin_ = nullptr;
  int32_t* fine_of_coarse_ = nullptr;
  DeviceMemoryCharge charge_;
};

}  // namespace mpa
