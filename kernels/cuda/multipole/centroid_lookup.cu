// Centroid lookup on the GPU: the CPU twin is kernels/cpu/multipole/centroid_lookup.cc (its
// logits2; the scores are formed by the selection kernel, which sees all clusters at once).
//
// Grid (cluster chunks, KV heads, batch). Like the CUDA-core decode kernel, kLanes threads share
// one centroid row (16 bytes each), so a row read serves the group's query heads at once.
#include <cmath>

#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/multipole/multipole_kernels.h"

namespace mpa::cuda::multipole {
namespace {

constexpr int kThreads = 256;
constexpr int kClustersPerBlock = kLookupClustersPerBlock;
constexpr int kUnroll = 4;

template <int HD, int G>
__global__ void __launch_bounds__(kThreads) CentroidLookupKernel(StepArgs a) {
  constexpr int kVecs = HD / 8;
  constexpr int kLanes = detail::LanesPerRow<HD>();
  constexpr int kSlots = kThreads / kLanes;
  const int kvh = blockIdx.y, b = blockIdx.z;
  const int hb = b * a.num_kv_heads + kvh;
  const int slot = threadIdx.x / kLanes, lane = threadIdx.x % kLanes;
  const bool lane_active = lane < kVecs;
  const int num_clusters = a.num_clusters[hb];
  const int first = blockIdx.x * kClustersPerBlock;
  const int last = min(first + kClustersPerBlock, a.max_clusters);
  float* out = a.logits2 + static_cast<int64_t>(hb) * G * a.max_clusters;
  // This block's (max, count-weighted sum) per query head: [G][lookup_blocks][2].
  float* norms = a.norms + static_cast<int64_t>(hb) * G * a.lookup_blocks * 2;
  if (first >= num_clusters) {  // nothing here: every slot still gets a defined -inf
    for (int i = threadIdx.x; i < (last - first) * G; i += kThreads) {
      out[(i / (last - first)) * a.max_clusters + first + i % (last - first)] = -INFINITY;
    }
    if (threadIdx.x < G) {
      norms[(threadIdx.x * a.lookup_blocks + blockIdx.x) * 2] = -INFINITY;
      norms[(threadIdx.x * a.lookup_blocks + blockIdx.x) * 2 + 1] = 0.0f;
    }
    return;
  }
  __shared__ float block_m[kSlots][G];
  __shared__ float block_z[kSlots][G];
  float run_m[G], run_z[G];  // this slot's clusters (lane 0 keeps them)
#pragma unroll
  for (int g = 0; g < G; ++g) {
    run_m[g] = -INFINITY;
    run_z[g] = 0.0f;
  }
  const bf16* centroids = a.key_centroids[hb];
  const int32_t* begin = a.cluster_begin[hb];

  float q[G][8];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    const uint4 raw =
        lane_active
            ? *reinterpret_cast<const uint4*>(
                  a.q + (static_cast<int64_t>(b) * a.num_q_heads + kvh * G + g) * HD + lane * 8)
            : make_uint4(0, 0, 0, 0);
    detail::Bf16x8ToFloat(raw, q[g]);
  }

  for (int base = first; base < last; base += kSlots * kUnroll) {
    uint4 raw[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = base + u * kSlots + slot;
      raw[u] = c < num_clusters && lane_active
                   ? __ldg(reinterpret_cast<const uint4*>(centroids + static_cast<int64_t>(c) * HD +
                                                          lane * 8))
                   : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = base + u * kSlots + slot;
      float k[8];
      detail::Bf16x8ToFloat(raw[u], k);
      int count = 0;
      if (lane == 0 && c < num_clusters) count = begin[c + 1] - begin[c];
      const bool live = count > 0;
#pragma unroll
      for (int g = 0; g < G; ++g) {
        float dot = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; ++i) dot = fmaf(q[g][i], k[i], dot);
#pragma unroll
        for (int off = kLanes / 2; off > 0; off >>= 1)
          dot += __shfl_xor_sync(0xffffffffu, dot, off);
        if (lane == 0 && c < last) {
          const float s2 = live ? dot * a.scale2 : -INFINITY;
          out[g * a.max_clusters + c] = s2;
          if (live) {
            const float m_new = fmaxf(run_m[g], s2);
            run_z[g] = run_z[g] * exp2f(run_m[g] - m_new) + count * exp2f(s2 - m_new);
            run_m[g] = m_new;
          }
        }
      }
    }
  }
  if (lane == 0) {
#pragma unroll
    for (int g = 0; g < G; ++g) {
      block_m[slot][g] = run_m[g];
      block_z[slot][g] = run_z[g];
    }
  }
  __syncthreads();
  if (threadIdx.x < G) {
    const int g = threadIdx.x;
    float m = -INFINITY;
    for (int s = 0; s < kSlots; ++s) m = fmaxf(m, block_m[s][g]);
    float z = 0.0f;
    if (m != -INFINITY) {
      for (int s = 0; s < kSlots; ++s) z += block_z[s][g] * exp2f(block_m[s][g] - m);
    }
    norms[(g * a.lookup_blocks + blockIdx.x) * 2] = m;
    norms[(g * a.lookup_blocks + blockIdx.x) * 2 + 1] = z;
  }
}

template <int HD>
cudaError_t LaunchForGroup(const StepArgs& a, dim3 grid, cudaStream_t stream) {
  switch (a.num_q_heads / a.num_kv_heads) {
    case 1:
      CentroidLookupKernel<HD, 1><<<grid, kThreads, 0, stream>>>(a);
      break;
    case 2:
      CentroidLookupKernel<HD, 2><<<grid, kThreads, 0, stream>>>(a);
      break;
    case 4:
      CentroidLookupKernel<HD, 4><<<grid, kThreads, 0, stream>>>(a);
      break;
    case 8:
      CentroidLookupKernel<HD, 8><<<grid, kThreads, 0, stream>>>(a);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchCentroidLookup(const StepArgs& a, cudaStream_t stream) {
  const dim3 grid((a.max_clusters + kClustersPerBlock - 1) / kClustersPerBlock, a.num_kv_heads,
                  a.batch);
  switch (a.head_dim) {
    case 8:
      return LaunchForGroup<8>(a, grid, stream);
    case 16:
      return LaunchForGroup<16>(a, grid, stream);
    case 24:
      return LaunchForGroup<24>(a, grid, stream);
    case 32:
      return LaunchForGroup<32>(a, grid, stream);
    case 64:
      return LaunchForGroup<64>(a, grid, stream);
    case 96:
      return LaunchForGroup<96>(a, grid, stream);
    case 128:
      return LaunchForGroup<128>(a, grid, stream);
    case 256:
      return LaunchForGroup<256>(a, grid, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace mpa::cuda::multipole
