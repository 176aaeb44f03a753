// The cluster-major layout of a sequence's clustered region on the GPU (multipole_decode.h reads
// it). After k-means has labelled the keys of some blocks of the region (kmeans.h), for every
// (KV head, block) job:
//   - its slots are a stable counting sort of its positions by cluster (positions ascending inside
//     a cluster, as ClusterIndex::slots() on the CPU), and cluster_begin the clusters' first slots;
//   - the K and V rows of its positions are written to their slots, from the gathered copies;
//   - key centroids are the k-means means (bf16), value centroids the means of the clusters'
//   values.
// GatherRows brings a job's keys and values from the paged cache into contiguous buffers (the
// k-means input, and the source of the layout's copy), so the slots may be the region's own rows:
// in place, slot s is row region_begin + s of the sequence's pages, and the region is reordered
// where it lies (no second copy). A region reordered before is read back in position order
// through LocatePositions, which inverts the slots of a range.
#pragma once

#include <cstdint>

#include "kernels/cuda/common.h"

namespace mpa::cuda {

struct ClusterJob {
  int kv_head = 0;
  int first_position = 0;      // positions [first_position, first_position + num_points)
  int num_points = 0;          // >= 1
  int64_t point_begin = 0;     // rows of the gathered points and of the labels
  int first_slot = 0;          // the head's slots [first_slot, first_slot + num_points)
  int first_cluster = 0;       // the head's clusters [first_cluster, first_cluster + num_clusters)
  int num_clusters = 0;        // >= 1
  int64_t centroid_begin = 0;  // rows of the k-means centroids and counts
  int keep_clusters = 0;       // LoadKeyCentroids: clusters whose key centroids start k-means
};

// Everything of one sequence and one layer the jobs read and write. Per-head outputs are strided
// arrays: head h's clusters at h * cluster_stride, its slots at h * slot_stride.
struct ClusterLayoutParams {
  PagedKvCache kv;
  const int32_t* pages = nullptr;  // [>= pages of the sequence] rows (as positions) -> pages
  // Slot s is row s + slot_row_offset of slot_pages (in place: the sequence's pages, offset the
  // region's first position; or pages of their own, offset 0).
  const int32_t* slot_pages = nullptr;
  int slot_row_offset = 0;
  // Optional [num_kv_heads, position_rows_stride]: the row of `pages` that holds position
  // position_rows_begin + i (LocatePositions fills it); null: position p is row p.
  const int32_t* position_rows = nullptr;
  int position_rows_begin = 0;
  int position_rows_stride = 0;
  const ClusterJob* jobs = nullptr;  // [num_jobs] device
  int num_jobs = 0;
  int max_points = 0;    // host: the largest num_points of a job
  int max_clusters = 0;  // host: the largest num_clusters of a job (<= kMaxClustersPerJob)
  const int32_t* labels = nullptr;   // [total_points] k-means labels (inside the job)
  const int32_t* counts = nullptr;   // [total_clusters] k-means member counts
  const float* centroids = nullptr;  // [total_clusters, head_dim] k-means means
  int cluster_stride = 0;
  int slot_stride = 0;
  int32_t* cluster_begin = nullptr;   // [num_kv_heads, cluster_stride + 1]
  bf16* key_centroids = nullptr;      // [num_kv_heads, cluster_stride, head_dim]
  bf16* value_centroids = nullptr;    // [num_kv_heads, cluster_stride, head_dim]
  int32_t* slot_positions = nullptr;  // [num_kv_heads, slot_stride]
};

inline constexpr int kMaxClustersPerJob = 16384;

// points, values: [total_points, head_dim] the keys and values of every job's positions, in
// position order.
cudaError_t GatherRows(const ClusterLayoutParams& p, bf16* points, bf16* values,
                       cudaStream_t stream);

// Writes every job's slots (K and V rows from the gathered points and values), cluster_begin,
// slot_positions and the centroids.
cudaError_t BuildClusterLayout(const ClusterLayoutParams& p, const bf16* points, const bf16* values,
                               cudaStream_t stream);

// For every KV head, the rows of slots [first_slot, first_slot + num_slots) of an in-place region
// (slot_pages == pages) inverted into position_rows[h * position_rows_stride + pos -
// position_rows_begin]: slots below laid_out were reordered before (slot_positions says which
// position each holds), the others still hold their own position (slot + slot_row_offset).
cudaError_t LocatePositions(const ClusterLayoutParams& p, int first_slot, int num_slots,
                            int laid_out, int32_t* position_rows, cudaStream_t stream);

// The starting centroids of an online update: for every job, its first keep_clusters clusters'
// key centroids (bf16, as the layout holds them) into rows [centroid_begin, + keep_clusters) of
// `centroids`. max_keep: host bound of keep_clusters.
cudaError_t LoadKeyCentroids(const ClusterLayoutParams& p, int max_keep, float* centroids,
                             cudaStream_t stream);

}  // namespace mpa::cuda
