// Cluster-major layout kernels (cluster_layout.h).
#include <algorithm>

#include "kernels/cuda/multipole/cluster_layout.h"

namespace mpa::cuda {
namespace {

constexpr int kSortThreads = 1024;

__device__ __forceinline__ int64_t PoolRow(const PagedKvCache& kv, const int32_t* pages, int t,
                                           int kv_head, int shift) {
  const int mask = kv.page_size - 1;
  return ((static_cast<int64_t>(pages[t >> shift]) * kv.num_kv_heads + kv_head) * kv.page_size +
          (t & mask)) *
         kv.head_dim;
}

__device__ __forceinline__ int RowOfPosition(const ClusterLayoutParams& p, int kv_head, int pos) {
  return p.position_rows == nullptr
             ? pos
             : p.position_rows[static_cast<int64_t>(kv_head) * p.position_rows_stride + pos -
                               p.position_rows_begin];
}

// One warp per point: the job's key and value rows, position order.
__global__ void GatherKernel(ClusterLayoutParams p, bf16* points, bf16* values, int shift) {
  const ClusterJob job = p.jobs[blockIdx.y];
  const int i = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (i >= job.num_points) return;
  const int row = RowOfPosition(p, job.kv_head, job.first_position + i);
  const int64_t src = PoolRow(p.kv, p.pages, row, job.kv_head, shift);
  const int64_t dst = (job.point_begin + i) * p.kv.head_dim;
  for (int d = lane * 8; d < p.kv.head_dim; d += 256) {
    *reinterpret_cast<uint4*>(points + dst + d) = *reinterpret_cast<const uint4*>(p.kv.k + src + d);
    *reinterpret_cast<uint4*>(values + dst + d) = *reinterpret_cast<const uint4*>(p.kv.v + src + d);
  }
}

__global__ void LocateKernel(ClusterLayoutParams p, int first_slot, int num_slots, int laid_out,
                             int32_t* position_rows) {
  const int h = blockIdx.y;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < num_slots; i += gridDim.x * blockDim.x) {
    const int slot = first_slot + i;
    const int row = slot + p.slot_row_offset;
    const int pos =
        slot < laid_out ? p.slot_positions[static_cast<int64_t>(h) * p.slot_stride + slot] : row;
    position_rows[static_cast<int64_t>(h) * p.position_rows_stride + pos - p.position_rows_begin] =
        row;
  }
}

// One block per job: cluster_begin by a prefix sum of the counts, then a stable counting sort of
// the job's positions by label. Points go in chunks of the block; inside a chunk the warps place
// theirs in warp order, each lane after the lanes of its warp with the same label before it.
__global__ void __launch_bounds__(kSortThreads) SortKernel(ClusterLayoutParams p) {
  extern __shared__ int next_slot[];  // [num_clusters] next free slot of each cluster
  __shared__ int scan[kSortThreads / 32];
  const ClusterJob job = p.jobs[blockIdx.x];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int32_t* counts = p.counts + job.centroid_begin;
  int32_t* begin = p.cluster_begin + static_cast<int64_t>(job.kv_head) * (p.cluster_stride + 1);
  // Exclusive prefix of counts, thread t owning clusters [t * per, (t + 1) * per).
  const int per = (job.num_clusters + kSortThreads - 1) / kSortThreads;
  const int c0 = min(job.num_clusters, tid * per), c1 = min(job.num_clusters, c0 + per);
  int local = 0;
  for (int c = c0; c < c1; ++c) local += counts[c];
  int inclusive = local;
  for (int off = 1; off < 32; off <<= 1) {
    const int y = __shfl_up_sync(0xffffffffu, inclusive, off);
    if (lane >= off) inclusive += y;
  }
  if (lane == 31) scan[warp] = inclusive;
  __syncthreads();
  if (warp == 0) {
    int w = scan[lane];
    for (int off = 1; off < 32; off <<= 1) {
      const int y = __shfl_up_sync(0xffffffffu, w, off);
      if (lane >= off) w += y;
    }
    scan[lane] = w;
  }
  __syncthreads();
  int offset = job.first_slot + (warp > 0 ? scan[warp - 1] : 0) + inclusive - local;
  for (int c = c0; c < c1; ++c) {
    begin[job.first_cluster + c] = offset;
    next_slot[c] = offset;
    offset += counts[c];
  }
  if (tid == 0) begin[job.first_cluster + job.num_clusters] = job.first_slot + job.num_points;
  __syncthreads();

  const int32_t* labels = p.labels + job.point_begin;
  int32_t* positions = p.slot_positions + static_cast<int64_t>(job.kv_head) * p.slot_stride;
  for (int base = 0; base < job.num_points; base += kSortThreads) {
    const int i = base + tid;
    const bool live = i < job.num_points;
    const int label = live ? labels[i] : -1 - lane;  // dead lanes match nobody
    const unsigned same = __match_any_sync(0xffffffffu, label);
    const int rank = __popc(same & ((1u << lane) - 1));
    const bool leader = rank == 0;
    for (int w = 0; w < kSortThreads / 32; ++w) {
      if (warp == w && live) {
        positions[next_slot[label] + rank] = job.first_position + i;
      }
      __syncthreads();
      if (warp == w && live && leader) next_slot[label] += __popc(same);
      __syncthreads();
    }
  }
}

// One warp per slot: its K and V rows from the gathered copies of its position's rows.
__global__ void CopyRowsKernel(ClusterLayoutParams p, const bf16* points, const bf16* values,
                               int shift) {
  const ClusterJob job = p.jobs[blockIdx.y];
  const int i = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (i >= job.num_points) return;
  const int slot = job.first_slot + i;
  const int pos = p.slot_positions[static_cast<int64_t>(job.kv_head) * p.slot_stride + slot];
  const int64_t src = (job.point_begin + pos - job.first_position) * p.kv.head_dim;
  const int64_t dst = PoolRow(p.kv, p.slot_pages, slot + p.slot_row_offset, job.kv_head, shift);
  for (int d = lane * 8; d < p.kv.head_dim; d += 256) {
    *reinterpret_cast<uint4*>(p.kv.k + dst + d) = *reinterpret_cast<const uint4*>(points + src + d);
    *reinterpret_cast<uint4*>(p.kv.v + dst + d) = *reinterpret_cast<const uint4*>(values + src + d);
  }
}

// One warp per cluster: key centroid from the k-means mean, value centroid the mean of its values
// (read from its now contiguous slots).
__global__ void CentroidsKernel(ClusterLayoutParams p, int shift) {
  const ClusterJob job = p.jobs[blockIdx.y];
  const int c = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (c >= job.num_clusters) return;
  const int D = p.kv.head_dim;
  const int32_t* begin =
      p.cluster_begin + static_cast<int64_t>(job.kv_head) * (p.cluster_stride + 1);
  const int first = begin[job.first_cluster + c], last = begin[job.first_cluster + c + 1];
  const int64_t out =
      (static_cast<int64_t>(job.kv_head) * p.cluster_stride + job.first_cluster + c) * D;
  const float* mean = p.centroids + (job.centroid_begin + c) * D;
  for (int d = lane; d < D; d += 32) {
    p.key_centroids[out + d] = __float2bfloat16_rn(mean[d]);
    float sum = 0.0f;
    for (int s = first; s < last; ++s) {
      sum += __bfloat162float(
          p.kv.v[PoolRow(p.kv, p.slot_pages, s + p.slot_row_offset, job.kv_head, shift) + d]);
    }
    p.value_centroids[out + d] = __float2bfloat16_rn(last > first ? sum / (last - first) : 0.0f);
  }
}

__global__ void LoadKernel(ClusterLayoutParams p, float* centroids) {
  const ClusterJob job = p.jobs[blockIdx.y];
  const int c = blockIdx.x;
  if (c >= job.keep_clusters || c >= job.num_clusters) return;
  const int D = p.kv.head_dim;
  const bf16* src =
      p.key_centroids +
      (static_cast<int64_t>(job.kv_head) * p.cluster_stride + job.first_cluster + c) * D;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    centroids[(job.centroid_begin + c) * D + d] = __bfloat162float(src[d]);
  }
}

__global__ void CoarsePointsKernel(const float* centroids, const int32_t* counts, int64_t rows,
                                   int head_dim, bf16* points, float* weights) {
  const int64_t n = rows * head_dim;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    points[i] = __float2bfloat16_rn(centroids[i]);
    // An emptied fine cluster (fewer points than clusters) weighs nothing but must stay > 0.
    if (i % head_dim == 0)
      weights[i / head_dim] = fmaxf(static_cast<float>(counts[i / head_dim]), 1e-6f);
  }
}

// One block per job: a stable counting sort of its fine clusters by coarse label (thread 0; a
// job has at most a few thousand), then the points relabelled and the centroids and counts
// moved, in parallel.
constexpr int kRenumberThreads = 256;
__global__ void __launch_bounds__(kRenumberThreads)
    RenumberKernel(CoarseLayoutParams p, int32_t* labels, const float* centroids,
                   const int32_t* counts, float* out_centroids, int32_t* out_counts,
                   int32_t* fine_of) {
  extern __shared__ int new_id[];  // [max_clusters]
  const ClusterJob job = p.jobs[blockIdx.x];
  const CoarseJob cj = p.coarse_jobs[blockIdx.x];
  const int32_t* clabels = p.coarse_labels + job.centroid_begin;
  int32_t* runs = fine_of + static_cast<int64_t>(blockIdx.x) * (p.max_coarse + 1);
  if (threadIdx.x == 0) {
    for (int c = 0; c <= cj.num_coarse; ++c) runs[c] = 0;
    for (int f = 0; f < job.num_clusters; ++f) ++runs[clabels[f] + 1];
    for (int c = 0; c < cj.num_coarse; ++c) runs[c + 1] += runs[c];
    // new_id[f]: the next place of f's coarse cluster (fine ids ascending: stable).
    for (int f = 0; f < job.num_clusters; ++f) new_id[f] = runs[clabels[f]]++;
    for (int c = cj.num_coarse; c > 0; --c) runs[c] = runs[c - 1];
    runs[0] = 0;
  }
  __syncthreads();
  int32_t* job_labels = labels + job.point_begin;
  for (int i = threadIdx.x; i < job.num_points; i += blockDim.x)
    job_labels[i] = new_id[job_labels[i]];
  const int D = p.head_dim;
  for (int i = threadIdx.x; i < job.num_clusters * D; i += blockDim.x) {
    const int f = i / D;
    out_centroids[(job.centroid_begin + new_id[f]) * D + i % D] =
        centroids[(job.centroid_begin + f) * D + i % D];
  }
  for (int f = threadIdx.x; f < job.num_clusters; f += blockDim.x) {
    out_counts[job.centroid_begin + new_id[f]] = counts[job.centroid_begin + f];
  }
}

// One warp per coarse cluster: its slot range and fine run, and the means of its slots' keys and
// values.
__global__ void CoarseLevelKernel(CoarseLayoutParams p, ClusterLayoutParams fine,
                                  const int32_t* fine_of, int shift) {
  const ClusterJob job = p.jobs[blockIdx.y];
  const CoarseJob cj = p.coarse_jobs[blockIdx.y];
  const int c = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (c >= cj.num_coarse) return;
  const int D = p.head_dim;
  const int32_t* runs = fine_of + static_cast<int64_t>(blockIdx.y) * (p.max_coarse + 1);
  const int32_t* fine_begin =
      fine.cluster_begin + static_cast<int64_t>(job.kv_head) * (fine.cluster_stride + 1);
  const int first = fine_begin[job.first_cluster + runs[c]];
  const int last = fine_begin[job.first_cluster + runs[c + 1]];
  const int64_t head = static_cast<int64_t>(job.kv_head) * (p.coarse_stride + 1);
  if (lane == 0) {
    p.coarse_cluster_begin[head + cj.first_coarse + c] = first;
    p.fine_of_coarse[head + cj.first_coarse + c] = job.first_cluster + runs[c];
    if (c == cj.num_coarse - 1) {  // the end of this job (the next job's first, or the last)
      p.coarse_cluster_begin[head + cj.first_coarse + c + 1] = last;
      p.fine_of_coarse[head + cj.first_coarse + c + 1] = job.first_cluster + job.num_clusters;
    }
  }
  const int64_t out =
      (static_cast<int64_t>(job.kv_head) * p.coarse_stride + cj.first_coarse + c) * D;
  for (int d = lane; d < D; d += 32) {
    float k = 0.0f, v = 0.0f;
    for (int s = first; s < last; ++s) {
      const int64_t row =
          PoolRow(fine.kv, fine.slot_pages, s + fine.slot_row_offset, job.kv_head, shift) + d;
      k += __bfloat162float(fine.kv.k[row]);
      v += __bfloat162float(fine.kv.v[row]);
    }
    const float inv = last > first ? 1.0f / (last - first) : 0.0f;
    p.coarse_key_centroids[out + d] = __float2bfloat16_rn(k * inv);
    p.coarse_value_centroids[out + d] = __float2bfloat16_rn(v * inv);
  }
}

}  // namespace

cudaError_t CoarsePoints(const float* centroids, const int32_t* counts, int64_t rows, int head_dim,
                         bf16* points, float* weights, cudaStream_t stream) {
  if (centroids == nullptr || counts == nullptr || points == nullptr || weights == nullptr ||
      rows < 0 || head_dim <= 0) {
    return cudaErrorInvalidValue;
  }
  if (rows == 0) return cudaSuccess;
  const int64_t n = rows * head_dim;
  const int blocks = static_cast<int>(std::min<int64_t>((n + 255) / 256, 4096));
  CoarsePointsKernel<<<blocks, 256, 0, stream>>>(centroids, counts, rows, head_dim, points,
                                                 weights);
  return cudaGetLastError();
}

cudaError_t RenumberCoarseMajor(const CoarseLayoutParams& p, int32_t* labels,
                                const float* centroids, const int32_t* counts, float* out_centroids,
                                int32_t* out_counts, int32_t* fine_of, cudaStream_t stream) {
  if (p.jobs == nullptr || p.coarse_jobs == nullptr || p.coarse_labels == nullptr ||
      labels == nullptr || centroids == nullptr || counts == nullptr || out_centroids == nullptr ||
      out_counts == nullptr || fine_of == nullptr || p.max_clusters > kMaxClustersPerJob ||
      p.head_dim <= 0) {
    return cudaErrorInvalidValue;
  }
  if (p.num_jobs == 0) return cudaSuccess;
  static const cudaError_t attr = cudaFuncSetAttribute(
      RenumberKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kMaxClustersPerJob * 4);
  if (attr != cudaSuccess) return attr;
  RenumberKernel<<<p.num_jobs, kRenumberThreads, std::max(p.max_clusters, 1) * 4, stream>>>(
      p, labels, centroids, counts, out_centroids, out_counts, fine_of);
  return cudaGetLastError();
}

cudaError_t BuildCoarseLevel(const CoarseLayoutParams& p, const ClusterLayoutParams& fine,
                             const int32_t* fine_of, cudaStream_t stream) {
  const int shift = Log2PowerOfTwo(fine.kv.page_size);
  if (p.jobs == nullptr || p.coarse_jobs == nullptr || fine_of == nullptr ||
      p.coarse_cluster_begin == nullptr || p.fine_of_coarse == nullptr ||
      p.coarse_key_centroids == nullptr || p.coarse_value_centroids == nullptr ||
      fine.cluster_begin == nullptr || fine.slot_pages == nullptr || shift < 0 ||
      p.head_dim != fine.kv.head_dim) {
    return cudaErrorInvalidValue;
  }
  if (p.num_jobs == 0 || p.max_coarse == 0) return cudaSuccess;
  CoarseLevelKernel<<<dim3((p.max_coarse + 7) / 8, p.num_jobs), 256, 0, stream>>>(p, fine, fine_of,
                                                                                  shift);
  return cudaGetLastError();
}

cudaError_t LoadKeyCentroids(const ClusterLayoutParams& p, int max_keep, float* centroids,
                             cudaStream_t stream) {
  if (centroids == nullptr || p.jobs == nullptr || p.key_centroids == nullptr || max_keep < 0) {
    return cudaErrorInvalidValue;
  }
  if (p.num_jobs == 0 || max_keep == 0) return cudaSuccess;
  LoadKernel<<<dim3(max_keep, p.num_jobs), 128, 0, stream>>>(p, centroids);
  return cudaGetLastError();
}

cudaError_t GatherRows(const ClusterLayoutParams& p, bf16* points, bf16* values,
                       cudaStream_t stream) {
  const int shift = Log2PowerOfTwo(p.kv.page_size);
  if (points == nullptr || values == nullptr || p.jobs == nullptr || p.pages == nullptr ||
      shift < 0 || p.kv.head_dim % 8 != 0 || p.kv.head_dim > 256) {
    return cudaErrorInvalidValue;
  }
  if (p.num_jobs == 0 || p.max_points == 0) return cudaSuccess;
  GatherKernel<<<dim3((p.max_points + 7) / 8, p.num_jobs), 256, 0, stream>>>(p, points, values,
                                                                             shift);
  return cudaGetLastError();
}

cudaError_t LocatePositions(const ClusterLayoutParams& p, int first_slot, int num_slots,
                            int laid_out, int32_t* position_rows, cudaStream_t stream) {
  if (position_rows == nullptr || p.slot_positions == nullptr || p.slot_pages != p.pages ||
      first_slot < 0 || num_slots < 0 || p.position_rows_stride < num_slots) {
    return cudaErrorInvalidValue;
  }
  if (num_slots == 0 || p.kv.num_kv_heads == 0) return cudaSuccess;
  LocateKernel<<<dim3((num_slots + 255) / 256, p.kv.num_kv_heads), 256, 0, stream>>>(
      p, first_slot, num_slots, laid_out, position_rows);
  return cudaGetLastError();
}

cudaError_t BuildClusterLayout(const ClusterLayoutParams& p, const bf16* points, const bf16* values,
                               cudaStream_t stream) {
  const int shift = Log2PowerOfTwo(p.kv.page_size);
  if (p.jobs == nullptr || p.pages == nullptr || p.slot_pages == nullptr || p.labels == nullptr ||
      p.counts == nullptr || p.centroids == nullptr || p.cluster_begin == nullptr ||
      p.key_centroids == nullptr || p.value_centroids == nullptr || p.slot_positions == nullptr ||
      points == nullptr || values == nullptr || shift < 0 || p.kv.head_dim % 8 != 0 ||
      p.kv.head_dim > 256 || p.max_clusters > kMaxClustersPerJob) {
    return cudaErrorInvalidValue;
  }
  if (p.num_jobs == 0 || p.max_points == 0) return cudaSuccess;
  static const cudaError_t attr = cudaFuncSetAttribute(
      SortKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kMaxClustersPerJob * 4);
  if (attr != cudaSuccess) return attr;
  SortKernel<<<p.num_jobs, kSortThreads, p.max_clusters * 4, stream>>>(p);
  CopyRowsKernel<<<dim3((p.max_points + 7) / 8, p.num_jobs), 256, 0, stream>>>(p, points, values,
                                                                               shift);
  CentroidsKernel<<<dim3((p.max_clusters + 7) / 8, p.num_jobs), 256, 0, stream>>>(p, shift);
  return cudaGetLastError();
}

}  // namespace mpa::cuda
