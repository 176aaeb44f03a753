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

// Two levels (DESIGN.md section 5, as ClusterIndex builds them on the CPU): after a job's fine
// k-means, its fine centroids (weighted by their member counts) are clustered into coarse
// clusters (KMeansLloyd with weights), the fine clusters renumbered coarse-major so that every
// coarse cluster is a contiguous run of fine clusters (and, once laid out, of slots), and the
// coarse level's tables derived from the fine level's.
struct CoarseJob {
  int num_coarse = 0;            // >= 1
  int64_t coarse_row_begin = 0;  // rows of the coarse k-means centroids
  int first_coarse = 0;          // the head's coarse clusters [first, first + num_coarse)
};

struct CoarseLayoutParams {
  const ClusterJob* jobs = nullptr;        // [num_jobs] the fine jobs
  const CoarseJob* coarse_jobs = nullptr;  // [num_jobs]
  int num_jobs = 0;
  int max_points = 0;    // host bound of a job's num_points
  int max_clusters = 0;  // host bound of a job's (fine) num_clusters
  int max_coarse = 0;    // host bound of num_coarse
  int head_dim = 0;
  // Coarse labels of the fine clusters: fine cluster f of a job is point centroid_begin + f of
  // the coarse k-means, its label that point's.
  const int32_t* coarse_labels = nullptr;
  // The coarse level's arrays, head h at h * coarse_stride (+ h for the [coarse + 1] ones).
  int coarse_stride = 0;
  int32_t* coarse_cluster_begin = nullptr;  // [num_kv_heads, coarse_stride + 1] slots
  int32_t* fine_of_coarse = nullptr;        // [num_kv_heads, coarse_stride + 1] fine cluster ids
  bf16* coarse_key_centroids = nullptr;     // [num_kv_heads, coarse_stride, head_dim]
  bf16* coarse_value_centroids = nullptr;
};

// The coarse k-means input: every fine centroid of every job as a bf16 point and its member
// count as its weight (rows as the fine centroids).
cudaError_t CoarsePoints(const float* centroids, const int32_t* counts, int64_t rows, int head_dim,
                         bf16* points, float* weights, cudaStream_t stream);

// Renumbers every job's fine clusters coarse-major (coarse label ascending, fine id ascending
// inside a coarse cluster): relabels the job's points in `labels` (in place) and writes the
// centroids and counts in the new order to out_centroids / out_counts (rows as centroids).
// fine_of: [num_jobs, max_coarse + 1] scratch out, each job's coarse clusters' first (local)
// fine cluster.
cudaError_t RenumberCoarseMajor(const CoarseLayoutParams& p, int32_t* labels,
                                const float* centroids, const int32_t* counts, float* out_centroids,
                                int32_t* out_counts, int32_t* fine_of, cudaStream_t stream);

// After BuildClusterLayout (of the renumbered fine clusters) wrote the fine level `fine`: every
// job's coarse clusters' slots, fine runs and centroids (the means of the keys and values of
// their slots, fp32 sums rounded to bf16, as the fine level's value centroids).
cudaError_t BuildCoarseLevel(const CoarseLayoutParams& p, const ClusterLayoutParams& fine,
                             const int32_t* fine_of, cudaStream_t stream);

}  // namespace mpa::cuda
