// The clustered region of one KV head of one layer of one sequence: k-means clusters of its
// keys (post-RoPE, or pre-RoPE for the CentroidKeys variants that ask for it; HeadRows says
// which), kept up to date as tokens join the region (DESIGN.md section 5).
//
// Layout. The region covers positions [region_begin, region_end). Slot i of `slots()` holds a
// token position; slots are ordered cluster-major, so fine cluster c is the contiguous run
// slots()[ranges[c].begin, ranges[c].end) (positions ascending inside a cluster). With two
// levels the fine clusters of one coarse cluster are numbered consecutively, so a coarse cluster
// is a contiguous run of fine clusters and of slots too. A GPU backend can store keys and values
// in slot order and read a selected cluster as one run.
//
// Blocks. The region is split into consecutive blocks of positions, each clustered on its own:
// frozen blocks (block_tokens each, never touched again) then the final window, the only block
// that online updates re-cluster. A block owns a contiguous range of slots (the same size as its
// position range) and of cluster ids at each level.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "kernels/cpu/multipole/sparse_attention.h"
#include "model/config/multipole_config.h"

namespace mpa {

// The cache rows of one KV head that clustering reads. Build and every Extend of one index must
// be given the same kind of rows.
struct HeadRows {
  // [>= region_end, head_dim] the keys k-means clusters and key_centroids average: the cached
  // post-RoPE keys (CentroidKeys::kPostRope) or the pre-RoPE keys (the other variants).
  const float* keys = nullptr;
  const float* v = nullptr;  // [>= region_end, head_dim] values
  // [>= region_end, head_dim] post-RoPE keys averaged into rotated_key_centroids over the
  // clusters of `keys` (CentroidKeys::kPreRopeRotatedMeans), or null (then those are zeros).
  const float* rotated_keys = nullptr;
};

// One level of clusters (the single level, or the fine or coarse level of two).
struct ClusterLevel {
  std::vector<int32_t> counts;         // [num_clusters] tokens (never 0 after an update)
  std::vector<float> key_sums;         // [num_clusters, head_dim] fp32 sums of HeadRows::keys
  std::vector<float> value_sums;       // [num_clusters, head_dim] fp32 sums of values
  std::vector<float> key_centroids;    // [num_clusters, head_dim] key_sums / counts
  std::vector<float> value_centroids;  // [num_clusters, head_dim] value_sums / counts
  // Sums and means of HeadRows::rotated_keys ([num_clusters, head_dim]; zeros when not given):
  // q_rot . mean(k_rot) is exactly the mean logit of the cluster at the query's true position.
  std::vector<float> rotated_key_sums;
  std::vector<float> rotated_key_centroids;
  std::vector<cpu::TokenRange> ranges;  // [num_clusters] the cluster's run of slots

  int num_clusters() const { return static_cast<int>(counts.size()); }
  void Truncate(int num_clusters, int head_dim);
};

struct ClusterBlock {
  int token_begin = 0;  // positions [token_begin, token_end); slots [token_begin - region_begin,
  int token_end = 0;    //   token_end - region_begin)
  int fine_begin = 0;   // fine cluster ids [fine_begin, fine_end)
  int fine_end = 0;
  int coarse_begin = 0;  // coarse cluster ids (two levels only)
  int coarse_end = 0;
  bool frozen = false;
  int num_tokens() const { return token_end - token_begin; }
};

// The seed of (layer, KV head)'s cluster index, and of one block's k-means within it: the GPU
// clustering draws its seeds from the same points as the CPU reference.
uint64_t ClusterHeadSeed(const MultipoleConfig& config, int layer, int kv_head);
uint64_t ClusterBlockSeed(uint64_t head_seed, int begin, int end);
// k-means clusters of a block of `tokens` tokens at one centroid per `tokens_per_centroid`.
int ClustersForTokens(int tokens, int tokens_per_centroid);

class ClusterIndex {
 public:
  // config must be valid; `seed` distinguishes this (layer, KV head) from the others.
  ClusterIndex(const MultipoleConfig& config, int head_dim, uint64_t seed);

  // Clusters positions [begin, end) from scratch with prefill_kmeans_iterations Lloyd passes
  // (the prompt, at the end of prefill): frozen blocks of block_tokens while more than
  // final_window_max tokens remain, the rest as the final window.
  void Build(const HeadRows& rows, int begin, int end);

  // The online update: positions [region_end(), new_end) join the final window. New clusters
  // are seeded from the new tokens, the new tokens are assigned with running means, then the
  // whole final window gets update_kmeans_iterations Lloyd passes, is relabelled and its
  // centroids (keys and values) rebuilt from the labels. If the final window then holds more
  // than final_window_max tokens, its first block_tokens tokens are frozen as a block (both
  // parts re-clustered). Returns the number of tokens re-clustered. Build must have run.
  int64_t Extend(const HeadRows& rows, int new_end);

  bool built() const { return !blocks_.empty(); }
  int levels() const { return levels_; }
  int head_dim() const { return head_dim_; }
  int region_begin() const { return region_begin_; }
  int region_end() const { return region_end_; }
  int num_tokens() const { return region_end_ - region_begin_; }

  const std::vector<int32_t>& slots() const { return slots_; }  // [num_tokens] positions
  const std::vector<int32_t>& labels() const {
    return labels_;
  }                                                       // [num_tokens] fine cluster
                                                          // of position region_begin + i
  const ClusterLevel& fine() const { return fine_; }      // the single level when levels() == 1
  const ClusterLevel& coarse() const { return coarse_; }  // empty when levels() == 1
  const std::vector<int32_t>& coarse_of_fine() const { return coarse_of_fine_; }  // [fine]
  const std::vector<ClusterBlock>& blocks() const { return blocks_; }

  // Internal if any structural invariant fails: counts equal the label histogram and the range
  // lengths; slots are a permutation of the region, grouped by label, ascending inside a
  // cluster; ranges tile each block's slots; coarse counts equal the sums of their fine counts
  // and coarse ranges the union of their fine ranges; no cluster is empty; with `rows`, sums and
  // centroids (rotated ones too where rows->rotated_keys is given) match the rows' keys and
  // values (relative 1e-4).
  absl::Status CheckInvariants(const HeadRows* rows = nullptr) const;

 private:
  // Clusters block `b` (the last block) from labels already written to labels_ for its tokens
  // (local ids 0..k-1): optional coarse level, renumbering, sums, centroids, slots, ranges.
  void Materialize(const HeadRows& rows, ClusterBlock& b, std::vector<int32_t>& local_labels,
                   int num_local);
  // Appends block [begin, end) clustered from scratch with `iterations` Lloyd passes.
  void ClusterNewBlock(const HeadRows& rows, int begin, int end, int iterations, bool frozen);
  // Drops the last block's clusters (keeps its slots region to be rewritten).
  void DropLastBlockClusters();
  uint64_t BlockSeed(int begin, int end) const;
  int ClustersFor(int tokens, int tokens_per_centroid) const;

  MultipoleConfig config_;
  int head_dim_;
  int levels_;
  uint64_t seed_;
  int region_begin_ = 0;
  int region_end_ = 0;
  std::vector<int32_t> slots_;
  std::vector<int32_t> labels_;
  ClusterLevel fine_;
  ClusterLevel coarse_;
  std::vector<int32_t> coarse_of_fine_;
  std::vector<ClusterBlock> blocks_;
};

}  // namespace mpa
