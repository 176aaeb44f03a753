// Batched Lloyd's k-means (kmeans.h). Per pass:
//   AssignKernel    a 64-point x 64-centroid fp32 tile per step (256 threads, 4 x 4 each), the
//                   point tile held in shared memory while the problem's centroids stream past;
//                   a running (distance, id) minimum per point
//   AccumulateKernel fp32 sums and member counts by atomics, one warp per point
//   FinalizeKernel  one block per problem: emptied clusters re-seeded in id order (farthest point
//                   among clusters of >= 2 members), then means and squared norms
#include <cmath>

#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/mma_util.cuh"
#include "kernels/cuda/multipole/kmeans.h"

namespace mpa::cuda {
namespace {

constexpr int kTile = 64;    // points and centroids per assign tile
constexpr int kStride = 65;  // shared-memory row stride: transposed writes hit distinct banks
constexpr int kAssignThreads = 256;
constexpr int kFinalizeThreads = 1024;

struct Workspace {
  float* sums;      // [total_clusters, D] (weighted: sums of w x)
  float* norms;     // [total_clusters] |c|^2
  float* distance;  // [total_points] squared distance to the assigned centroid
  float* mass;      // [total_clusters] sums of the members' weights (weighted problems only)
};

Workspace Layout(void* w, const KMeansParams& p) {
  float* f = static_cast<float*>(w);
  Workspace ws;
  ws.sums = f;
  ws.norms = ws.sums + p.total_clusters * p.head_dim;
  ws.distance = ws.norms + p.total_clusters;
  ws.mass = p.weights != nullptr ? ws.distance + p.total_points : nullptr;
  return ws;
}

// Centroids from their seed points, and their norms.
__global__ void SeedKernel(KMeansParams p, Workspace ws) {
  const KMeansProblem pr = p.problems[blockIdx.y];
  const int c = blockIdx.x;
  if (c >= pr.num_clusters) return;
  const int64_t row = pr.cluster_begin + c;
  const int point = p.seeds[row];
  float norm = 0.0f;
  for (int d = threadIdx.x; d < p.head_dim; d += blockDim.x) {
    float x;
    if (point >= 0) {
      x = __bfloat162float(p.points[(pr.point_begin + point) * p.head_dim + d]);
      p.centroids[row * p.head_dim + d] = x;
    } else {
      x = p.centroids[row * p.head_dim + d];
    }
    norm += x * x;
  }
  for (int off = 16; off > 0; off >>= 1) norm += __shfl_xor_sync(0xffffffffu, norm, off);
  if (threadIdx.x == 0) ws.norms[row] = norm;
}

__global__ void NormKernel(KMeansParams p, Workspace ws) {
  const KMeansProblem pr = p.problems[blockIdx.y];
  const int c = blockIdx.x;
  if (c >= pr.num_clusters) return;
  const int64_t row = pr.cluster_begin + c;
  float norm = 0.0f;
  for (int d = threadIdx.x; d < p.head_dim; d += blockDim.x) {
    const float x = p.centroids[row * p.head_dim + d];
    norm += x * x;
  }
  for (int off = 16; off > 0; off >>= 1) norm += __shfl_xor_sync(0xffffffffu, norm, off);
  if (threadIdx.x == 0) ws.norms[row] = norm;
}

// The assignment on the tensor cores (head_dim 64 and 128): x.c as a bf16 matrix product with
// fp32 accumulators. The points are bf16 already (exact); each fp32 centroid is split into three
// bf16 terms (c = c1 + c2 + c3, 24 significant bits), so the dot products carry the precision of
// the fp32 kernel below. A block holds 128 points (32 per warp: two m16 tiles) and streams the
// problem's centroids in chunks of 64 (eight n8 tiles per term); rows are stored with their
// 16-byte chunks XOR-swizzled by (row & 7) for ldmatrix.
namespace tca {

constexpr int kWarps = 4;
constexpr int kPoints = 32 * kWarps;
constexpr int kChunk = 64;
constexpr int kTerms = 3;

template <int D>
constexpr int SharedBytes() {
  return (kPoints + kTerms * kChunk) * D * 2 + kChunk * 4;
}

template <int D>
__global__ void __launch_bounds__(kWarps * 32)
    AssignTensorCoreKernel(KMeansParams p, Workspace ws) {
  constexpr int kVecs = D / 8;  // 16-byte chunks per row
  constexpr int kRowBytes = D * 2;
  constexpr int kSteps = D / 16;
  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t xs = detail::SharedAddress(smem);
  unsigned char* cs_ptr = smem + kPoints * kRowBytes;  // [kTerms][kChunk] rows
  const uint32_t cs = detail::SharedAddress(cs_ptr);
  float* cnorm = reinterpret_cast<float*>(cs_ptr + kTerms * kChunk * kRowBytes);
  const KMeansProblem pr = p.problems[blockIdx.y];
  const int first = blockIdx.x * kPoints;
  if (first >= pr.num_points || pr.num_clusters <= 0) return;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, t = lane & 3, quad = lane >> 3;

  for (int i = tid; i < kPoints * kVecs; i += kWarps * 32) {
    const int r = i / kVecs, ch = i % kVecs;
    const bool valid = first + r < pr.num_points;
    const int64_t row = pr.point_begin + (valid ? first + r : 0);
    detail::CopyAsync16OrZero(xs + r * kRowBytes + ((ch ^ (r & 7)) << 4),
                              p.points + row * D + ch * 8, valid);
  }
  detail::CommitAsync();

  // Running minimum of |c|^2 - 2 x.c per point row this lane holds: [m tile][row g, g + 8].
  float best[2][2];
  int best_id[2][2];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
      best[mt][rr] = INFINITY;
      best_id[mt][rr] = 0;
    }
  }
  const int a_row = (lane & 7) + ((quad & 1) << 3), a_half = quad >> 1;
  const int b_row = (lane & 7) + ((quad >> 1) << 3), b_half = quad & 1;
  const float* centroids = p.centroids + pr.cluster_begin * D;
  const float* norms = ws.norms + pr.cluster_begin;

  // The centroid chunk's fp32 rows are loaded into registers one chunk ahead, so their latency
  // hides behind the previous chunk's products: thread tid holds items tid + 128 i (row, 16-byte
  // chunk of 8 values) of the chunk.
  constexpr int kItems = kChunk * kVecs / (kWarps * 32);
  float4 next[kItems][2];
  auto load_chunk = [&](int c0) {
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const int item = tid + i * kWarps * 32, r = item / kVecs, ch = item % kVecs;
      if (c0 + r < pr.num_clusters) {
        const float4* src = reinterpret_cast<const float4*>(centroids + (c0 + r) * D + ch * 8);
        next[i][0] = __ldg(src);
        next[i][1] = __ldg(src + 1);
      } else {
        next[i][0] = next[i][1] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      }
    }
  };
  load_chunk(0);
  float next_norm = tid < kChunk && tid < pr.num_clusters ? norms[tid] : INFINITY;
  for (int c0 = 0; c0 < pr.num_clusters; c0 += kChunk) {
    __syncthreads();  // the previous chunk is consumed
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const int item = tid + i * kWarps * 32, r = item / kVecs, ch = item % kVecs;
      float v[8] = {next[i][0].x, next[i][0].y, next[i][0].z, next[i][0].w,
                    next[i][1].x, next[i][1].y, next[i][1].z, next[i][1].w};
      const uint32_t to = r * kRowBytes + ((ch ^ (r & 7)) << 4);
#pragma unroll
      for (int term = 0; term < kTerms; ++term) {
        uint32_t packed[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const __nv_bfloat162 h = __floats2bfloat162_rn(v[2 * e], v[2 * e + 1]);
          const float2 back = __bfloat1622float2(h);
          v[2 * e] -= back.x;
          v[2 * e + 1] -= back.y;
          packed[e] = *reinterpret_cast<const uint32_t*>(&h);
        }
        *reinterpret_cast<uint4*>(cs_ptr + term * kChunk * kRowBytes + to) =
            make_uint4(packed[0], packed[1], packed[2], packed[3]);
      }
    }
    if (tid < kChunk) cnorm[tid] = next_norm;
    if (c0 + kChunk < pr.num_clusters) {
      load_chunk(c0 + kChunk);
      next_norm =
          tid < kChunk && c0 + kChunk + tid < pr.num_clusters ? norms[c0 + kChunk + tid] : INFINITY;
    }
    detail::WaitAsync<0>();
    __syncthreads();

    float acc[2][kChunk / 8][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
      for (int nt = 0; nt < kChunk / 8; ++nt)
        acc[mt][nt][0] = acc[mt][nt][1] = acc[mt][nt][2] = acc[mt][nt][3] = 0.0f;
    }
#pragma unroll
    for (int kk = 0; kk < kSteps; ++kk) {
      uint32_t af[2][4];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        const int row = warp * 32 + mt * 16 + a_row, c = 2 * kk + a_half;
        detail::LoadMatrixX4(xs + row * kRowBytes + ((c ^ (row & 7)) << 4), af[mt]);
      }
#pragma unroll
      for (int term = 0; term < kTerms; ++term) {
#pragma unroll
        for (int np = 0; np < kChunk / 16; ++np) {
          uint32_t bf[4];
          const int row = np * 16 + b_row, c = 2 * kk + b_half;
          detail::LoadMatrixX4(
              cs + term * kChunk * kRowBytes + row * kRowBytes + ((c ^ (row & 7)) << 4), bf);
#pragma unroll
          for (int mt = 0; mt < 2; ++mt) {
            detail::MmaBf16(acc[mt][2 * np], af[mt], bf[0], bf[1]);
            detail::MmaBf16(acc[mt][2 * np + 1], af[mt], bf[2], bf[3]);
          }
        }
      }
    }
    // acc[mt][nt]: [0], [1] point row g, centroids nt 8 + 2t (+1); [2], [3] row g + 8. Ids grow
    // along this lane's columns, so a strict < keeps the lowest of equal distances.
#pragma unroll
    for (int nt = 0; nt < kChunk / 8; ++nt) {
#pragma unroll
      for (int jj = 0; jj < 2; ++jj) {
        const int col = nt * 8 + 2 * t + jj;
        const float norm = cnorm[col];  // +inf past the last centroid: never taken
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
          for (int rr = 0; rr < 2; ++rr) {
            const float dist = fmaf(-2.0f, acc[mt][nt][2 * rr + jj], norm);
            if (dist < best[mt][rr]) {
              best[mt][rr] = dist;
              best_id[mt][rr] = c0 + col;
            }
          }
        }
      }
    }
  }
  // The four lanes of a row: (distance, id) minimum; and the point's |x|^2, a quarter each.
  const unsigned char* xs_ptr = smem;
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
      float d = best[mt][rr];
      int id = best_id[mt][rr];
#pragma unroll
      for (int off = 1; off < 4; off <<= 1) {
        const float od = __shfl_xor_sync(0xffffffffu, d, off);
        const int oid = __shfl_xor_sync(0xffffffffu, id, off);
        if (od < d || (od == d && oid < id)) {
          d = od;
          id = oid;
        }
      }
      const int r = warp * 32 + mt * 16 + g + 8 * rr;
      float norm = 0.0f;
      for (int ch = t; ch < kVecs; ch += 4) {
        float x[8];
        detail::Bf16x8ToFloat(
            *reinterpret_cast<const uint4*>(xs_ptr + r * kRowBytes + ((ch ^ (r & 7)) << 4)), x);
#pragma unroll
        for (int e = 0; e < 8; ++e) norm = fmaf(x[e], x[e], norm);
      }
      norm += __shfl_xor_sync(0xffffffffu, norm, 1);
      norm += __shfl_xor_sync(0xffffffffu, norm, 2);
      if (t == 0 && first + r < pr.num_points) {
        const int64_t row = pr.point_begin + first + r;
        p.labels[row] = id;
        ws.distance[row] = fmaxf(norm + d, 0.0f);
      }
    }
  }
}

}  // namespace tca

// Dynamic shared memory: points [D][kStride] and centroids [D][kStride], fp32, transposed.
__global__ void __launch_bounds__(kAssignThreads) AssignKernel(KMeansParams p, Workspace ws) {
  extern __shared__ float smem[];
  const int D = p.head_dim;
  float* xs = smem;                // [D][kStride]
  float* cs = smem + D * kStride;  // [D][kStride]
  const KMeansProblem pr = p.problems[blockIdx.y];
  const int first = blockIdx.x * kTile;
  if (first >= pr.num_points || pr.num_clusters <= 0) return;  // no cluster: nothing to assign
  const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
  for (int i = tid; i < kTile * D; i += kAssignThreads) {
    const int pt = i / D, d = i % D;
    xs[d * kStride + pt] = first + pt < pr.num_points
                               ? __bfloat162float(p.points[(pr.point_begin + first + pt) * D + d])
                               : 0.0f;
  }
  float best[4];
  int best_id[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    best[i] = INFINITY;
    best_id[i] = 0;
  }
  const float* centroids = p.centroids + pr.cluster_begin * D;
  const float* norms = ws.norms + pr.cluster_begin;
  for (int c0 = 0; c0 < pr.num_clusters; c0 += kTile) {
    __syncthreads();  // the previous chunk is consumed (and the point tile written)
    for (int i = tid; i < kTile * D; i += kAssignThreads) {
      const int c = i / D, d = i % D;
      cs[d * kStride + c] = c0 + c < pr.num_clusters ? centroids[(c0 + c) * D + d] : 0.0f;
    }
    __syncthreads();
    float acc[4][4] = {};
    for (int d = 0; d < D; ++d) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = xs[d * kStride + ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = cs[d * kStride + tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
      }
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int c = c0 + tx + 16 * j;
      if (c >= pr.num_clusters) continue;
      const float norm = norms[c];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float dist = fmaf(-2.0f, acc[i][j], norm);
        if (dist < best[i]) {  // ids grow with j, so the first of equals is the lowest id
          best[i] = dist;
          best_id[i] = c;
        }
      }
    }
  }
  // The 16 threads of a row of the tile hold the same points: (distance, id) minimum.
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int off = 8; off > 0; off >>= 1) {
      const float od = __shfl_xor_sync(0xffffffffu, best[i], off);
      const int oid = __shfl_xor_sync(0xffffffffu, best_id[i], off);
      if (od < best[i] || (od == best[i] && oid < best_id[i])) {
        best[i] = od;
        best_id[i] = oid;
      }
    }
    const int pt = ty + 16 * i;
    if (tx == 0 && first + pt < pr.num_points) {
      float norm = 0.0f;
      for (int d = 0; d < D; ++d) norm = fmaf(xs[d * kStride + pt], xs[d * kStride + pt], norm);
      const int64_t row = pr.point_begin + first + pt;
      p.labels[row] = best_id[i];
      ws.distance[row] = fmaxf(norm + best[i], 0.0f);
    }
  }
}

// One warp per point: its row into its cluster's fp32 sum.
__global__ void AccumulateKernel(KMeansParams p, Workspace ws) {
  const KMeansProblem pr = p.problems[blockIdx.y];
  const int point = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (point >= pr.num_points || pr.num_clusters <= 0) return;
  const int64_t row = pr.point_begin + point;
  const int64_t cluster = pr.cluster_begin + p.labels[row];
  const float w = p.weights != nullptr ? p.weights[row] : 1.0f;
  for (int d = lane; d < p.head_dim; d += 32) {
    atomicAdd(&ws.sums[cluster * p.head_dim + d],
              w * __bfloat162float(p.points[row * p.head_dim + d]));
  }
  if (lane == 0) {
    atomicAdd(&p.counts[cluster], 1);
    if (ws.mass != nullptr) atomicAdd(&ws.mass[cluster], w);
  }
}

// (value, index) maximum over the block, larger value first, lower index on ties.
__device__ void BlockArgMax(float& value, int& index, float* sv, int* si) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int off = 16; off > 0; off >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, value, off);
    const int oi = __shfl_xor_sync(0xffffffffu, index, off);
    if (ov > value || (ov == value && oi < index)) {
      value = ov;
      index = oi;
    }
  }
  __syncthreads();
  if (lane == 0) {
    sv[warp] = value;
    si[warp] = index;
  }
  __syncthreads();
  if (warp == 0) {
    value = lane < static_cast<int>(blockDim.x >> 5) ? sv[lane] : -INFINITY;
    index = lane < static_cast<int>(blockDim.x >> 5) ? si[lane] : INT32_MAX;
    for (int off = 16; off > 0; off >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, value, off);
      const int oi = __shfl_xor_sync(0xffffffffu, index, off);
      if (ov > value || (ov == value && oi < index)) {
        value = ov;
        index = oi;
      }
    }
    if (lane == 0) {
      sv[0] = value;
      si[0] = index;
    }
  }
  __syncthreads();
  value = sv[0];
  index = si[0];
  __syncthreads();
}

__global__ void __launch_bounds__(kFinalizeThreads) FinalizeKernel(KMeansParams p, Workspace ws) {
  __shared__ float sv[32];
  __shared__ int si[32];
  const KMeansProblem pr = p.problems[blockIdx.x];
  const int D = p.head_dim;
  int32_t* counts = p.counts + pr.cluster_begin;
  float* sums = ws.sums + pr.cluster_begin * D;
  int32_t* labels = p.labels + pr.point_begin;
  const float* distance = ws.distance + pr.point_begin;
  bool empty = false;
  for (int c = threadIdx.x; c < pr.num_clusters; c += blockDim.x) empty |= counts[c] == 0;
  if (__syncthreads_or(empty)) {
    for (int c = 0; c < pr.num_clusters; ++c) {
      if (counts[c] != 0) continue;  // uniform: every thread reads the same count
      float far_d = -1.0f;
      int far = INT32_MAX;
      for (int i = threadIdx.x; i < pr.num_points; i += blockDim.x) {
        if (counts[labels[i]] < 2) continue;
        if (distance[i] > far_d) {  // ascending i: the first of equals is the lowest index
          far_d = distance[i];
          far = i;
        }
      }
      BlockArgMax(far_d, far, sv, si);
      if (far_d < 0.0f) break;  // fewer points than clusters
      const int owner = labels[far];
      const bf16* x = p.points + (pr.point_begin + far) * D;
      const float w = p.weights != nullptr ? p.weights[pr.point_begin + far] : 1.0f;
      for (int d = threadIdx.x; d < D; d += blockDim.x) {
        const float v = w * __bfloat162float(x[d]);
        sums[owner * D + d] -= v;
        sums[c * D + d] = v;
      }
      __syncthreads();
      if (threadIdx.x == 0) {
        counts[owner] -= 1;
        counts[c] = 1;
        labels[far] = c;
        if (ws.mass != nullptr) {
          ws.mass[pr.cluster_begin + owner] -= w;
          ws.mass[pr.cluster_begin + c] = w;
        }
      }
      __syncthreads();
    }
  }
  const float* mass = ws.mass != nullptr ? ws.mass + pr.cluster_begin : nullptr;
  for (int i = threadIdx.x; i < pr.num_clusters * D; i += blockDim.x) {
    const int c = i / D;
    const float m = mass != nullptr ? mass[c] : static_cast<float>(counts[c]);
    if (counts[c] > 0 && m > 0.0f) p.centroids[(pr.cluster_begin + c) * D + i % D] = sums[i] / m;
  }
}

template <int D>
cudaError_t AssignOnTensorCores(const KMeansParams& p, const Workspace& ws, cudaStream_t stream) {
  constexpr int bytes = tca::SharedBytes<D>();
  static const cudaError_t attr = cudaFuncSetAttribute(
      tca::AssignTensorCoreKernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (attr != cudaSuccess) return attr;
  const dim3 grid((p.max_points + tca::kPoints - 1) / tca::kPoints, p.num_problems);
  tca::AssignTensorCoreKernel<D><<<grid, tca::kWarps * 32, bytes, stream>>>(p, ws);
  return cudaGetLastError();
}

}  // namespace

size_t KMeansWorkspaceBytes(int64_t total_points, int64_t total_clusters, int head_dim) {
  // The last total_clusters floats hold the weight sums of a weighted problem.
  return sizeof(float) * (static_cast<size_t>(total_clusters) * (head_dim + 2) + total_points);
}

cudaError_t KMeansLloyd(const KMeansParams& p, cudaStream_t stream) {
  const int D = p.head_dim;
  if (p.points == nullptr || p.problems == nullptr || p.centroids == nullptr ||
      p.labels == nullptr || p.counts == nullptr || p.workspace == nullptr || D <= 0 ||
      D % 8 != 0 || D > 256 || p.num_problems < 0 || p.max_points < 0 || p.max_clusters < 0 ||
      p.iterations < 0 ||
      p.workspace_bytes < KMeansWorkspaceBytes(p.total_points, p.total_clusters, D)) {
    return cudaErrorInvalidValue;
  }
  if (p.num_problems == 0 || p.max_points == 0 || p.max_clusters == 0) return cudaSuccess;
  const Workspace ws = Layout(p.workspace, p);
  const size_t assign_smem = 2 * sizeof(float) * D * kStride;
  static const cudaError_t attr = cudaFuncSetAttribute(
      AssignKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 2 * sizeof(float) * 256 * kStride);
  if (attr != cudaSuccess) return attr;
  const dim3 per_cluster(p.max_clusters, p.num_problems);
  if (p.seeds != nullptr) {
    SeedKernel<<<per_cluster, 32, 0, stream>>>(p, ws);
  } else {
    NormKernel<<<per_cluster, 32, 0, stream>>>(p, ws);
  }
  const dim3 assign_grid((p.max_points + kTile - 1) / kTile, p.num_problems);
  const dim3 accumulate_grid((p.max_points + 7) / 8, p.num_problems);
  auto assign = [&]() -> cudaError_t {
    if (D == 128 && !p.cuda_core_assign) return AssignOnTensorCores<128>(p, ws, stream);
    if (D == 64 && !p.cuda_core_assign) return AssignOnTensorCores<64>(p, ws, stream);
    AssignKernel<<<assign_grid, kAssignThreads, assign_smem, stream>>>(p, ws);
    return cudaSuccess;
  };
  if (cudaError_t err = assign(); err != cudaSuccess) return err;
  for (int it = 0; it < p.iterations; ++it) {
    if (it > 0) {
      if (cudaError_t err = assign(); err != cudaSuccess) return err;
    }
    cudaError_t err = cudaMemsetAsync(ws.sums, 0, sizeof(float) * p.total_clusters * D, stream);
    if (err != cudaSuccess) return err;
    err = cudaMemsetAsync(p.counts, 0, sizeof(int32_t) * p.total_clusters, stream);
    if (err != cudaSuccess) return err;
    if (ws.mass != nullptr) {
      err = cudaMemsetAsync(ws.mass, 0, sizeof(float) * p.total_clusters, stream);
      if (err != cudaSuccess) return err;
    }
    AccumulateKernel<<<accumulate_grid, 256, 0, stream>>>(p, ws);
    FinalizeKernel<<<p.num_problems, kFinalizeThreads, 0, stream>>>(p, ws);
    NormKernel<<<per_cluster, 32, 0, stream>>>(p, ws);
  }
  if (p.iterations == 0) {  // counts of the assignment alone
    cudaError_t err = cudaMemsetAsync(ws.sums, 0, sizeof(float) * p.total_clusters * D, stream);
    if (err != cudaSuccess) return err;
    err = cudaMemsetAsync(p.counts, 0, sizeof(int32_t) * p.total_clusters, stream);
    if (err != cudaSuccess) return err;
    AccumulateKernel<<<accumulate_grid, 256, 0, stream>>>(p, ws);
  }
  return cudaGetLastError();
}

}  // namespace mpa::cuda
