// The Quest baseline on the GPU: page bounds (maintenance) and page scores (each decode step).
// CPU twins: kernels/cpu/multipole/quest_pages.cc (QuestPageBounds, QuestPageScores). The
// selection and the exact part are Multipole's (cluster_selection.cu, decode_attention.cu): a
// Quest page is a "cluster" of consecutive positions that is never approximated.
#include <algorithm>
#include <cmath>

#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/multipole/dispatch.cuh"
#include "kernels/cuda/multipole/multipole_decode.h"
#include "kernels/cuda/multipole/multipole_kernels.h"

namespace mpa::cuda {
namespace {

// One block per (page, KV head), one thread per channel: the page's keys are read row by row
// (consecutive channels, one transaction per row).
__global__ void QuestPageBoundsKernel(QuestPageBoundsParams p) {
  const int page = p.first_page + blockIdx.x, h = blockIdx.y, d = threadIdx.x;
  const int D = p.kv.head_dim;
  const int begin = p.region_begin + page * p.page_tokens;
  const int end = min(begin + p.page_tokens, p.region_end);
  if (d < D) {
    float mn = INFINITY, mx = -INFINITY;
    const int mask = p.kv.page_size - 1;
    const int shift = __ffs(p.kv.page_size) - 1;
    for (int t = begin; t < end; ++t) {
      const int64_t row =
          (static_cast<int64_t>(p.pages[t >> shift]) * p.kv.num_kv_heads + h) * p.kv.page_size +
          (t & mask);
      const float k = __bfloat162float(p.kv.k[row * D + d]);
      mn = fminf(mn, k);
      mx = fmaxf(mx, k);
    }
    const int64_t at = h * p.head_stride + static_cast<int64_t>(page) * D + d;
    p.page_min[at] = __float2bfloat16(mn);  // bf16 values: exact
    p.page_max[at] = __float2bfloat16(mx);
  }
  if (p.page_begin != nullptr && h == 0 && d == 0) {
    p.page_begin[page] = page * p.page_tokens;
    if (page == p.end_page - 1) p.page_begin[p.end_page] = p.region_end - p.region_begin;
  }
}

}  // namespace

cudaError_t QuestPageBounds(const QuestPageBoundsParams& p, cudaStream_t stream) {
  if (p.kv.k == nullptr || p.pages == nullptr || p.page_min == nullptr || p.page_max == nullptr ||
      p.kv.head_dim <= 0 || p.kv.head_dim > 1024 || p.page_tokens <= 0 || p.first_page < 0 ||
      p.end_page < p.first_page || Log2PowerOfTwo(p.kv.page_size) < 0 ||
      p.region_begin + int64_t{p.end_page - 1} * p.page_tokens >= std::max(p.region_end, 1)) {
    return cudaErrorInvalidValue;
  }
  if (p.end_page == p.first_page) return cudaSuccess;
  const int threads = (p.kv.head_dim + 31) / 32 * 32;
  QuestPageBoundsKernel<<<dim3(p.end_page - p.first_page, p.kv.num_kv_heads), threads, 0, stream>>>(
      p);
  return cudaGetLastError();
}

namespace multipole {
namespace {

constexpr int kScoreThreads = 256;

// One thread per page: the largest over the group's query heads of sum_i max(q_i min_i, q_i
// max_i), in fp32, summed over the channels in order (bf16 products are exact in fp32, so the
// result is the CPU twin's to the bit on the same bf16 inputs). Sequences that are not Quest
// return at once.
template <int HD, int G>
__global__ void __launch_bounds__(kScoreThreads) QuestScoresKernel(StepArgs a) {
  const int kvh = blockIdx.y, b = blockIdx.z;
  if (!IsQuest(a, b)) return;
  const int hb = b * a.num_kv_heads + kvh;
  __shared__ float q[G][HD];
  for (int i = threadIdx.x; i < G * HD; i += kScoreThreads) {
    q[i / HD][i % HD] =
        __bfloat162float(a.q[(static_cast<int64_t>(b) * a.num_q_heads + kvh * G) * HD + i]);
  }
  __syncthreads();
  const int page = blockIdx.x * kScoreThreads + threadIdx.x;
  if (page >= a.num_clusters[hb]) return;
  const bf16* mn_row = a.key_centroids[hb] + static_cast<int64_t>(page) * HD;
  const bf16* mx_row = a.value_centroids[hb] + static_cast<int64_t>(page) * HD;
  float bound[G];
#pragma unroll
  for (int g = 0; g < G; ++g) bound[g] = 0.0f;
#pragma unroll 2
  for (int i0 = 0; i0 < HD; i0 += 8) {
    float mn[8], mx[8];
    detail::Bf16x8ToFloat(__ldg(reinterpret_cast<const uint4*>(mn_row + i0)), mn);
    detail::Bf16x8ToFloat(__ldg(reinterpret_cast<const uint4*>(mx_row + i0)), mx);
#pragma unroll
    for (int g = 0; g < G; ++g) {
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const float qi = q[g][i0 + e];
        bound[g] = __fadd_rn(bound[g], fmaxf(__fmul_rn(qi, mn[e]), __fmul_rn(qi, mx[e])));
      }
    }
  }
  float best = -INFINITY;
#pragma unroll
  for (int g = 0; g < G; ++g) best = fmaxf(best, bound[g]);
  a.scores[static_cast<int64_t>(hb) * a.max_clusters + page] = best;
}

}  // namespace

cudaError_t LaunchQuestScores(const StepArgs& a, cudaStream_t stream) {
  const dim3 grid((a.max_clusters + kScoreThreads - 1) / kScoreThreads, a.num_kv_heads, a.batch);
  return DispatchHeadDimAndGroup(a.head_dim, a.num_q_heads / a.num_kv_heads, [&](auto hd, auto g) {
    QuestScoresKernel<hd(), g()><<<grid, kScoreThreads, 0, stream>>>(a);
    return cudaGetLastError();
  });
}

}  // namespace multipole
}  // namespace mpa::cuda
