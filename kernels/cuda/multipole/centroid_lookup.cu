// Centroid lookup on the GPU: the CPU twin is kernels/cpu/multipole/centroid_lookup.cc (its
// logits2; the scores are formed by the selection kernel, which sees all clusters at once).
//
// Grid (cluster chunks, KV heads, batch). Like the CUDA-core decode kernel, kLanes threads share
// one centroid row (16 bytes each), so a row read serves the group's query heads at once.
#include <cmath>

#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/multipole/dispatch.cuh"
#include "kernels/cuda/multipole/multipole_kernels.h"

namespace mpa::cuda::multipole {
namespace {

constexpr int kThreads = 256;
constexpr int kClustersPerBlock = 256;
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
  if (first >= num_clusters) {  // nothing here: every slot still gets a defined -inf
    for (int i = threadIdx.x; i < (last - first) * G; i += kThreads) {
      out[(i / (last - first)) * a.max_clusters + first + i % (last - first)] = -INFINITY;
    }
    return;
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
      bool live = false;
      if (lane == 0 && c < num_clusters) live = begin[c + 1] > begin[c];
#pragma unroll
      for (int g = 0; g < G; ++g) {
        float dot = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; ++i) dot = fmaf(q[g][i], k[i], dot);
#pragma unroll
        for (int off = kLanes / 2; off > 0; off >>= 1)
          dot += __shfl_xor_sync(0xffffffffu, dot, off);
        if (lane == 0 && c < last) out[g * a.max_clusters + c] = live ? dot * a.scale2 : -INFINITY;
      }
    }
  }
}

}  // namespace

cudaError_t LaunchCentroidLookup(const StepArgs& a, cudaStream_t stream) {
  const dim3 grid((a.max_clusters + kClustersPerBlock - 1) / kClustersPerBlock, a.num_kv_heads,
                  a.batch);
  return DispatchHeadDimAndGroup(a.head_dim, a.num_q_heads / a.num_kv_heads, [&](auto hd, auto g) {
    CentroidLookupKernel<hd(), g()><<<grid, kThreads, 0, stream>>>(a);
    return cudaGetLastError();
  });
}

}  // namespace mpa::cuda::multipole
