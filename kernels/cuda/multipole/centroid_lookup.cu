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
#include "kernels/cuda/mma_util.cuh"
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
  if (IsQuest(a, b)) return;  // scored by the Quest launch; nothing here reads these logits
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
    // (the fine pass of two levels: the list's capacity is far above its use, and nothing reads
    // past its entries)
    if (ListedClusters(a, b)) return;
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
  const int32_t* begin = ClusterBounds(a, b, hb);

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
      const int64_t row = static_cast<int64_t>(in ? CentroidRow(a, b, hb, c) : 0) * HD + lane * 8;
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

// The same lookup on the tensor cores (head_dim 64 and 128), laid out like the dense decode
// kernel's (decode_attention.cu): each of the block's four warps streams tiles of 16 centroids
// (its key and value rows, 16-byte cp.async into a ring of kStages slots, chunks XOR-swizzled)
// and computes, with the group's query heads on the n = 8 side,
//   S^T [16 clusters x 8 heads] = Kc [16 x HD] . Q^T          (logits, written out)
//   O^T [HD x 8 heads]         += Vc^T [HD x 16] . P^T         P = N 2^(s - m), two bf16 terms
// Clusters without tokens (and rows past the last cluster) are copied as zeros, never read.
namespace tcl {

constexpr int kTile = 16;
constexpr int kWarps = 4;
constexpr int kStages = 3;
constexpr int kTilesPerWarp = kClustersPerBlock / kTile / kWarps;
static_assert(kTilesPerWarp == 4, "lanes hold the counts of four tiles, two per lane");

template <int HD>
__host__ __device__ constexpr int RingBytes() {
  return kWarps * kStages * 2 * kTile * HD * 2;
}

template <int HD, int G>
__global__ void __launch_bounds__(kWarps * 32) CentroidLookupTensorCoreKernel(StepArgs a) {
  static_assert(HD == 64 || HD == 128, "tensor-core tiles cover head_dim 64 and 128");
  constexpr int kChunks = HD / 8;
  constexpr int kRowBytes = HD * 2;
  constexpr int kTileBytes = kTile * kRowBytes;
  constexpr int kCopies = kTileBytes / 16 / 32;
  constexpr int kRowsPerCopy = 32 / kChunks;
  constexpr int kSteps = HD / 16;
  static_assert(RingBytes<HD>() >= kWarps * (8 * HD + 16) * 4, "the merge reuses the ring");
  extern __shared__ __align__(128) unsigned char smem[];

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const int kvh = blockIdx.y, b = blockIdx.z;
  const int hb = b * a.num_kv_heads + kvh;
  if (IsQuest(a, b)) return;  // scored by the Quest launch; nothing here reads these logits
  const int num_clusters = a.num_clusters[hb];
  const bool approximate = a.approximate[b] != 0;
  const int first = blockIdx.x * kClustersPerBlock;
  const int last = min(first + kClustersPerBlock, a.max_clusters);
  float* out = a.logits2 + static_cast<int64_t>(hb) * G * a.max_clusters;
  float* norms = a.norms + static_cast<int64_t>(hb) * G * a.lookup_blocks * 2;
  float* block_o = a.approx_o + static_cast<int64_t>(hb) * G * a.lookup_blocks * HD;
  if (first >= num_clusters) {
    if (ListedClusters(a, b)) return;  // see the CUDA-core kernel
    for (int i = threadIdx.x; i < (last - first) * G; i += kWarps * 32) {
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
  const int32_t* cluster_begin = ClusterBounds(a, b, hb);
  // Tile j of this warp covers clusters first + (warp + kWarps j) 16 + 0..15. Lane L holds the
  // token counts of row L % 16 of tiles L / 16 (counts_lo) and 2 + L / 16 (counts_hi).
  auto cluster_of = [&](int j, int r) { return first + (warp + kWarps * j) * kTile + r; };
  auto load_count = [&](int j) {
    const int c = cluster_of(j, lane & 15);
    return c < num_clusters ? __ldg(cluster_begin + c + 1) - __ldg(cluster_begin + c) : 0;
  };
  const int counts_lo = load_count(lane >> 4), counts_hi = load_count(2 + (lane >> 4));
  auto count_of = [&](int j, int r) {
    return __shfl_sync(0xffffffffu, j < 2 ? counts_lo : counts_hi, ((j & 1) << 4) + r);
  };
  // The centroid rows, held the same way (the fine pass of two levels reads them from its list;
  // otherwise cluster c is row c).
  const bool listed = ListedClusters(a, b);
  auto load_row = [&](int j) {
    const int c = cluster_of(j, lane & 15);
    return c < num_clusters ? CentroidRow(a, b, hb, c) : 0;
  };
  const int rows_lo = load_row(lane >> 4), rows_hi = load_row(2 + (lane >> 4));
  auto row_of = [&](int j, int r) {
    return __shfl_sync(0xffffffffu, j < 2 ? rows_lo : rows_hi, ((j & 1) << 4) + r);
  };

  const uint32_t ring = detail::SharedAddress(smem) + warp * kStages * 2 * kTileBytes;
  auto issue = [&](int j) {
    if (j < kTilesPerWarp) {
      const uint32_t dst = ring + (j % kStages) * 2 * kTileBytes;
#pragma unroll
      for (int i = 0; i < kCopies; ++i) {
        const int r = i * kRowsPerCopy + lane / kChunks, ch = lane % kChunks;
        // Every shuffle by every lane of the warp (a shuffle under a lane-dependent condition
        // would leave the other lanes out of a full-mask __shfl_sync); `listed` is the block's.
        const bool valid = count_of(j, r) > 0;
        const int row = listed ? row_of(j, r) : cluster_of(j, r);
        const int64_t from = static_cast<int64_t>(valid ? row : 0) * HD + ch * 8;
        const uint32_t to = r * kRowBytes + ((ch ^ (r & 7)) << 4);
        detail::CopyAsync16OrZero(dst + to, key_centroids + from, valid);
        if (approximate) {
          detail::CopyAsync16OrZero(dst + kTileBytes + to, value_centroids + from, valid);
        }
      }
    }
    detail::CommitAsync();
  };
#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) issue(st);

  uint32_t qf[kSteps][2];
  {
    const bf16* qrow = a.q + (static_cast<int64_t>(b) * a.num_q_heads + kvh * G + g) * HD + 2 * t;
#pragma unroll
    for (int kk = 0; kk < kSteps; ++kk) {
      qf[kk][0] = g < G ? *reinterpret_cast<const uint32_t*>(qrow + 16 * kk) : 0u;
      qf[kk][1] = g < G ? *reinterpret_cast<const uint32_t*>(qrow + 16 * kk + 8) : 0u;
    }
  }
  float m[2] = {-INFINITY, -INFINITY};
  float l[2] = {0.0f, 0.0f};
  float o[kSteps][4];
#pragma unroll
  for (int mt = 0; mt < kSteps; ++mt) o[mt][0] = o[mt][1] = o[mt][2] = o[mt][3] = 0.0f;
  const int quad = lane >> 3;
  const int k_row = (lane & 7) + ((quad & 1) << 3), k_half = quad >> 1;
  const int v_row = (lane & 7) + ((quad >> 1) << 3), v_half = quad & 1;

#pragma unroll
  for (int j = 0; j < kTilesPerWarp; ++j) {
    __syncwarp();
    issue(j + kStages - 1);
    detail::WaitAsync<kStages - 1>();
    __syncwarp();
    const uint32_t ks = ring + (j % kStages) * 2 * kTileBytes;
    const uint32_t vs = ks + kTileBytes;
    float acc[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll
    for (int kk = 0; kk < kSteps; ++kk) {
      uint32_t af[4];
      const int c = 2 * kk + k_half;
      detail::LoadMatrixX4(ks + k_row * kRowBytes + ((c ^ (k_row & 7)) << 4), af);
      detail::MmaBf16(acc[kk & 1], af, qf[kk][0], qf[kk][1]);
    }
    // s[0], s[1]: cluster row g, heads 2t, 2t + 1; s[2], s[3]: row g + 8. Base-2 logits.
    const int n_lo = count_of(j, g), n_hi = count_of(j, g + 8);
    float s[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) s[i] = (acc[0][i] + acc[1][i]) * a.scale2;
    if (n_lo <= 0) s[0] = s[1] = -INFINITY;
    if (n_hi <= 0) s[2] = s[3] = -INFINITY;
    const int c_lo = cluster_of(j, g), c_hi = cluster_of(j, g + 8);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int head = 2 * t + h;
      if (head < G) {
        if (c_lo < last) out[head * a.max_clusters + c_lo] = s[h];
        if (c_hi < last) out[head * a.max_clusters + c_hi] = s[h + 2];
      }
    }
    float mx[2] = {fmaxf(s[0], s[2]), fmaxf(s[1], s[3])};
#pragma unroll
    for (int h = 0; h < 2; ++h) {
#pragma unroll
      for (int off = 4; off < 32; off <<= 1)
        mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], off));
    }
    float alpha[2], p[4];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float m_new = fmaxf(m[h], mx[h]);
      const bool any = m_new != -INFINITY;  // a tile (and all before) without tokens: nothing
      alpha[h] = any ? exp2f(m[h] - m_new) : 1.0f;
      p[h] = any ? static_cast<float>(n_lo) * exp2f(s[h] - m_new) : 0.0f;
      p[h + 2] = any ? static_cast<float>(n_hi) * exp2f(s[h + 2] - m_new) : 0.0f;
      l[h] = fmaf(l[h], alpha[h], p[h] + p[h + 2]);
      m[h] = m_new;
    }
    if (approximate) {
#pragma unroll
      for (int mt = 0; mt < kSteps; ++mt) {
        o[mt][0] *= alpha[0];
        o[mt][1] *= alpha[1];
        o[mt][2] *= alpha[0];
        o[mt][3] *= alpha[1];
      }
      uint32_t big0, small0, big1, small1;
      detail::PackBf16TwoTerms(p[0], p[1], big0, small0);
      detail::PackBf16TwoTerms(p[2], p[3], big1, small1);
      big0 = detail::Transpose8x8(big0);
      small0 = detail::Transpose8x8(small0);
      big1 = detail::Transpose8x8(big1);
      small1 = detail::Transpose8x8(small1);
#pragma unroll
      for (int mt = 0; mt < kSteps; ++mt) {
        uint32_t af[4];
        const int c = 2 * mt + v_half;
        detail::LoadMatrixX4Transposed(vs + v_row * kRowBytes + ((c ^ (v_row & 7)) << 4), af);
        detail::MmaBf16(o[mt], af, big0, big1);
        detail::MmaBf16(o[mt], af, small0, small1);
      }
    }
  }
  detail::WaitAsync<0>();
#pragma unroll
  for (int h = 0; h < 2; ++h) {
#pragma unroll
    for (int off = 4; off < 32; off <<= 1) l[h] += __shfl_xor_sync(0xffffffffu, l[h], off);
  }

  // The warps' (max, sum, value sum) merged per query head: this block's partial.
  __syncthreads();
  float* sm_o = reinterpret_cast<float*>(smem);
  float* sm_m = sm_o + kWarps * 8 * HD;
  float* sm_l = sm_m + kWarps * 8;
  {
    float* mine = sm_o + warp * 8 * HD;
    if (approximate) {
#pragma unroll
      for (int mt = 0; mt < kSteps; ++mt) {
        mine[(2 * t) * HD + 16 * mt + g] = o[mt][0];
        mine[(2 * t + 1) * HD + 16 * mt + g] = o[mt][1];
        mine[(2 * t) * HD + 16 * mt + g + 8] = o[mt][2];
        mine[(2 * t + 1) * HD + 16 * mt + g + 8] = o[mt][3];
      }
    }
    if (g == 0) {
      sm_m[warp * 8 + 2 * t] = m[0];
      sm_m[warp * 8 + 2 * t + 1] = m[1];
      sm_l[warp * 8 + 2 * t] = l[0];
      sm_l[warp * 8 + 2 * t + 1] = l[1];
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < G * HD; idx += kWarps * 32) {
    const int h = idx / HD, d = idx % HD;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, sm_m[w * 8 + h]);
    float total_l = 0.0f, total_o = 0.0f;
    if (mx != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float m_w = sm_m[w * 8 + h];
        if (m_w == -INFINITY) continue;
        const float wt = exp2f(m_w - mx);
        total_l = fmaf(sm_l[w * 8 + h], wt, total_l);
        if (approximate) total_o = fmaf(sm_o[(w * 8 + h) * HD + d], wt, total_o);
      }
    }
    if (d == 0) {
      norms[(h * a.lookup_blocks + blockIdx.x) * 2] = mx;
      norms[(h * a.lookup_blocks + blockIdx.x) * 2 + 1] = total_l;
    }
    if (approximate && mx != -INFINITY) {
      block_o[(static_cast<int64_t>(h) * a.lookup_blocks + blockIdx.x) * HD + d] = total_o;
    }
  }
}

}  // namespace tcl

}  // namespace

cudaError_t LaunchCentroidLookup(const StepArgs& a, cudaStream_t stream) {
  const dim3 grid((a.max_clusters + kClustersPerBlock - 1) / kClustersPerBlock, a.num_kv_heads,
                  a.batch);
  return DispatchHeadDimAndGroup(a.head_dim, a.num_q_heads / a.num_kv_heads, [&](auto hd, auto g) {
    constexpr int HD = hd(), G = g();
    if constexpr (HD == 64 || HD == 128) {
      if (!a.cuda_core_lookup) {
        constexpr int bytes = tcl::RingBytes<HD>();
        static const cudaError_t attr =
            cudaFuncSetAttribute(tcl::CentroidLookupTensorCoreKernel<HD, G>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
        if (attr != cudaSuccess) return attr;
        tcl::CentroidLookupTensorCoreKernel<HD, G><<<grid, tcl::kWarps * 32, bytes, stream>>>(a);
        return cudaGetLastError();
      }
    }
    CentroidLookupKernel<HD, G><<<grid, kThreads, 0, stream>>>(a);
    return cudaGetLastError();
  });
}

}  // namespace mpa::cuda::multipole
