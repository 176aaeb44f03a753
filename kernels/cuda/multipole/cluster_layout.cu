// Cluster-major layout kernels (cluster_layout.h).
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

}  // namespace

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
