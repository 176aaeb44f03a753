// The multipole term on the GPU: every non-selected cluster enters as N_c copies of a key with
// its centroid's logit and its mean value (CPU twin: kernels/cpu/multipole/
// centroid_approximation.cc). Grid (approx splits, KV heads, batch); each block folds a chunk of
// the clusters into one (o, m, l) partial per query head of the group and writes it to its partial
// slot after the exact splits', where DecodeAttention's merge picks it up.
#include <cmath>

#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/multipole/dispatch.cuh"
#include "kernels/cuda/multipole/multipole_kernels.h"

namespace mpa::cuda::multipole {
namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;

template <int HD, int G>
__global__ void __launch_bounds__(kThreads) CentroidApproximationKernel(StepArgs a) {
  constexpr int kVecs = HD / 8;
  constexpr int kLanes = detail::LanesPerRow<HD>();
  constexpr int kSlots = kThreads / kLanes;
  __shared__ float sm_o[kSlots * HD];
  __shared__ float sm_m[kSlots];
  __shared__ float sm_l[kSlots];

  const int split = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z;
  const int hb = b * a.num_kv_heads + kvh;
  const int slot = threadIdx.x / kLanes, lane = threadIdx.x % kLanes;
  const bool lane_active = lane < kVecs;
  const int num_clusters = a.approximate[b] ? a.num_clusters[hb] : 0;
  const int chunk = (num_clusters + a.approx_splits - 1) / a.approx_splits;
  const int first = split * chunk;
  const int last = min(num_clusters, first + chunk);
  const float* logits = a.logits2 + static_cast<int64_t>(hb) * G * a.max_clusters;
  const uint8_t* selected = a.selected + static_cast<int64_t>(hb) * a.max_clusters;
  const bf16* values = last > first ? a.value_centroids[hb] : nullptr;
  const int32_t* begin = last > first ? a.cluster_begin[hb] : nullptr;

  float m[G], l[G], o[G][8];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; ++i) o[g][i] = 0.0f;
  }
  for (int base = first; base < last; base += kSlots * kUnroll) {
    uint4 raw[kUnroll];
    float weight[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = base + u * kSlots + slot;
      const bool live = c < last && !selected[c];
      const int count = live ? begin[c + 1] - begin[c] : 0;
      weight[u] = static_cast<float>(count);
      raw[u] = count > 0 && lane_active ? __ldg(reinterpret_cast<const uint4*>(
                                              values + static_cast<int64_t>(c) * HD + lane * 8))
                                        : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (weight[u] == 0.0f) continue;
      const int c = base + u * kSlots + slot;
      float v[8];
      detail::Bf16x8ToFloat(raw[u], v);
#pragma unroll
      for (int g = 0; g < G; ++g) {
        const float s = logits[g * a.max_clusters + c];
        if (s == -INFINITY) continue;
        const float m_new = fmaxf(m[g], s);
        const float alpha = exp2f(m[g] - m_new);
        const float p = weight[u] * exp2f(s - m_new);
        l[g] = fmaf(l[g], alpha, p);
#pragma unroll
        for (int i = 0; i < 8; ++i) o[g][i] = fmaf(p, v[i], o[g][i] * alpha);
        m[g] = m_new;
      }
    }
  }

  // Merge the slots' partials per query head (MergePartial's rule) and write the partial slot.
  const int slots = a.exact_splits + a.approx_splits;
  for (int g = 0; g < G; ++g) {
    if (lane == 0) {
      sm_m[slot] = m[g];
      sm_l[slot] = l[g];
    }
    if (lane_active) {
#pragma unroll
      for (int i = 0; i < 8; ++i) sm_o[slot * HD + lane * 8 + i] = o[g][i];
    }
    __syncthreads();
    const int qh = kvh * G + g;
    const int64_t row =
        (static_cast<int64_t>(b) * slots + a.exact_splits + split) * a.num_q_heads + qh;
    for (int d = threadIdx.x; d < HD; d += kThreads) {
      float mx = -INFINITY;
      for (int s = 0; s < kSlots; ++s) mx = fmaxf(mx, sm_m[s]);
      float total_l = 0.0f, total_o = 0.0f;
      if (mx != -INFINITY) {
        for (int s = 0; s < kSlots; ++s) {
          const float w = exp2f(sm_m[s] - mx);
          total_l = fmaf(sm_l[s], w, total_l);
          total_o = fmaf(sm_o[s * HD + d], w, total_o);
        }
      }
      a.partial_o[row * HD + d] = total_l > 0.0f ? total_o / total_l : 0.0f;
      if (d == 0) a.partial_lse[row] = total_l > 0.0f ? mx + log2f(total_l) : -INFINITY;
    }
    __syncthreads();
  }
}

}  // namespace

cudaError_t LaunchCentroidApproximation(const StepArgs& a, cudaStream_t stream) {
  const dim3 grid(a.approx_splits, a.num_kv_heads, a.batch);
  return DispatchHeadDimAndGroup(a.head_dim, a.num_q_heads / a.num_kv_heads, [&](auto hd, auto g) {
    CentroidApproximationKernel<hd(), g()><<<grid, kThreads, 0, stream>>>(a);
    return cudaGetLastError();
  });
}

}  // namespace mpa::cuda::multipole
