// Centroid lookup on the GPU: the CPU twin is kernels/cpu/multipole/centroid_lookup.cc (its
// logits2; the scores are formed by the selection kernel, which sees all clusters at once).
// The same pass reads the value centroids and sums every cluster's centroid term N 2^s Vc (the
// CPU twin is kernels/cpu/multipole/centroid_approximation.cc, over all clusters): the selection
// then subtracts the few clusters it selects, so the approximation needs no pass of its own over
// the value centroids after the selection.
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
constexpr int kClustersPerBlock = kLookupClustersPerBlock;

template <int HD, int G>
__global__ void __launch_bounds__(kThreads, G >= 8 ? 1 : 2) CentroidLookupKernel(StepArgs a) {
  constexpr int kVecs = HD / 8;
  constexpr int kLanes = detail::LanesPerRow<HD>();
  constexpr int kSlots = kThreads / kLanes;
  // Loads in flight per thread: a key and a value row per unrolled step (fewer for the largest
  // group, whose accumulators take the registers).
  constexpr int kUnroll = G >= 4 ? 2 : 4;
  __shared__ float sm_m[kSlots];
  __shared__ float sm_l[kSlots];
  __shared__ float sm_o[kSlots * HD];
  const int kvh = blockIdx.y, b = blockIdx.z;
  const int hb = b * a.num_kv_heads + kvh;
  const int slot = threadIdx.x / kLanes, lane = threadIdx.x % kLanes;
  const bool lane_active = lane < kVecs;
  const int num_clusters = a.num_clusters[hb];
  const bool approximate = a.approximate[b] != 0;
  const int first = blockIdx.x * kClustersPerBlock;
  const int last = min(first + kClustersPerBlock, a.max_clusters);
  float* out = a.logits2 + static_cast<int64_t>(hb) * G * a.max_clusters;
  // This block's (max, count-weighted sum) per query head: [G][lookup_blocks][2], and its
  // unnormalised value sum: [G][lookup_blocks][HD].
  float* norms = a.norms + static_cast<int64_t>(hb) * G * a.lookup_blocks * 2;
  float* block_o = a.approx_o + static_cast<int64_t>(hb) * G * a.lookup_blocks * HD;
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
  const bf16* key_centroids = a.key_centroids[hb];
  const bf16* value_centroids = a.value_centroids[hb];
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
  // This slot's running (max, sum N 2^(s - max), sum N 2^(s - max) v) per query head; every lane
  // of the slot holds the same max and sum.
  float m[G], l[G], o[G][8];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; ++i) o[g][i] = 0.0f;
  }

  for (int base = first; base < last; base += kSlots * kUnroll) {
    // Every load of the step is issued before any is used.
    uint4 raw_k[kUnroll], raw_v[kUnroll];
    int count[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = base + u * kSlots + slot;
      const bool in = c < num_clusters && lane_active;
      const int64_t row = static_cast<int64_t>(c) * HD + lane * 8;
      raw_k[u] =
          in ? __ldg(reinterpret_cast<const uint4*>(key_centroids + row)) : make_uint4(0, 0, 0, 0);
      raw_v[u] = in && approximate ? __ldg(reinterpret_cast<const uint4*>(value_centroids + row))
                                   : make_uint4(0, 0, 0, 0);
      count[u] = c < num_clusters ? __ldg(begin + c + 1) - __ldg(begin + c) : 0;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = base + u * kSlots + slot;
      float k[8], v[8];
      detail::Bf16x8ToFloat(raw_k[u], k);
      detail::Bf16x8ToFloat(raw_v[u], v);
      const bool live = count[u] > 0;
#pragma unroll
      for (int g = 0; g < G; ++g) {
        float dot = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; ++i) dot = fmaf(q[g][i], k[i], dot);
#pragma unroll
        for (int off = kLanes / 2; off > 0; off >>= 1)
          dot += __shfl_xor_sync(0xffffffffu, dot, off);
        const float s2 = live ? dot * a.scale2 : -INFINITY;
        if (lane == 0 && c < last) out[g * a.max_clusters + c] = s2;
        if (live) {
          const float m_new = fmaxf(m[g], s2);
          const float alpha = exp2f(m[g] - m_new);
          const float p = static_cast<float>(count[u]) * exp2f(s2 - m_new);
          l[g] = fmaf(l[g], alpha, p);
#pragma unroll
          for (int i = 0; i < 8; ++i) o[g][i] = fmaf(p, v[i], o[g][i] * alpha);
          m[g] = m_new;
        }
      }
    }
  }

  // Merge the slots per query head: the block's (max, sum) and, for multipole, its value sum.
#pragma unroll
  for (int g = 0; g < G; ++g) {
    if (lane == 0) {
      sm_m[slot] = m[g];
      sm_l[slot] = l[g];
    }
    if (approximate && lane_active) {
#pragma unroll
      for (int i = 0; i < 8; ++i) sm_o[slot * HD + lane * 8 + i] = o[g][i];
    }
    __syncthreads();
    float mx = -INFINITY;
    for (int s = 0; s < kSlots; ++s) mx = fmaxf(mx, sm_m[s]);
    if (threadIdx.x == 0) {
      float z = 0.0f;
      if (mx != -INFINITY) {
        for (int s = 0; s < kSlots; ++s) z += sm_l[s] * exp2f(sm_m[s] - mx);
      }
      norms[(g * a.lookup_blocks + blockIdx.x) * 2] = mx;
      norms[(g * a.lookup_blocks + blockIdx.x) * 2 + 1] = z;
    }
    if (approximate && mx != -INFINITY) {
      for (int d = threadIdx.x; d < HD; d += kThreads) {
        float total = 0.0f;
        for (int s = 0; s < kSlots; ++s) {
          if (sm_m[s] != -INFINITY) total = fmaf(sm_o[s * HD + d], exp2f(sm_m[s] - mx), total);
        }
        block_o[(static_cast<int64_t>(g) * a.lookup_blocks + blockIdx.x) * HD + d] = total;
      }
    }
    __syncthreads();
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
