#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/norm_rope.h"

namespace mpa::cuda {
namespace {

constexpr int kNormThreads = 256;

__global__ void __launch_bounds__(kNormThreads) RmsNormKernel(RmsNormParams p) {
  __shared__ float scratch[32];
  const int64_t base = static_cast<int64_t>(blockIdx.x) * p.n;
  float* x = p.residual + base;
  float sum_sq = 0.0f;
  for (int i = threadIdx.x; i < p.n; i += kNormThreads) {
    float v = x[i];
    if (p.delta != nullptr) {
      v += p.delta[base + i];
      x[i] = v;
    }
    sum_sq = fmaf(v, v, sum_sq);
  }
  sum_sq = detail::BlockSum(sum_sq, scratch);
  const float inv = rsqrtf(sum_sq / p.n + p.eps);
  for (int i = threadIdx.x; i < p.n; i += kNormThreads) {
    const float y = x[i] * inv * p.weight[i];
    if (p.out != nullptr) p.out[base + i] = __float2bfloat16_rn(y);
    if (p.out_f32 != nullptr) p.out_f32[base + i] = y;
  }
}

// One block of 128 threads per (token, head): heads [0, nq) are queries, [nq, nq + nkv) keys,
// [nq + nkv, nq + 2 nkv) values. Each thread owns rotation pairs (i, i + hd/2).
constexpr int kHeadThreads = 128;

__global__ void __launch_bounds__(kHeadThreads) QkvPrepareKernel(QkvPrepareParams p) {
  __shared__ float scratch[32];
  const int head = blockIdx.x, r = blockIdx.y;
  const int nq = p.num_q_heads, nkv = p.num_kv_heads, hd = p.head_dim, half = hd / 2;
  const int width = (nq + 2 * nkv) * hd;
  const float* src = p.qkv + static_cast<int64_t>(r) * width + head * hd;
  const float* bias = p.bias != nullptr ? p.bias + head * hd : nullptr;
  const bool is_q = head < nq, is_v = head >= nq + nkv;
  const int i = threadIdx.x;
  const bool active = i < half;  // hd <= 256

  float a = 0.0f, b = 0.0f;
  if (active) {
    a = src[i];
    b = src[i + half];
    if (bias != nullptr) {
      a += bias[i];
      b += bias[i + half];
    }
  }
  if (!is_v) {
    const float* norm = is_q ? p.q_norm : p.k_norm;
    if (norm != nullptr) {
      const float inv = rsqrtf(detail::BlockSum(a * a + b * b, scratch) / hd + p.eps);
      if (active) {
        a = a * inv * norm[i];
        b = b * inv * norm[i + half];
      }
    }
    if (active) {
      const int64_t t = static_cast<int64_t>(p.positions[r]) * half + i;
      const float c = p.rope_cos[t], s = p.rope_sin[t];
      const float ra = a * c - b * s;
      const float rb = b * c + a * s;
      a = ra;
      b = rb;
    }
  }
  if (!active) return;
  if (is_q) {
    bf16* dst = p.q_out + (static_cast<int64_t>(r) * nq + head) * hd;
    dst[i] = __float2bfloat16_rn(a);
    dst[i + half] = __float2bfloat16_rn(b);
    return;
  }
  if (p.slots == nullptr) return;
  const int kvh = is_v ? head - nq - nkv : head - nq;
  const int64_t slot = p.slots[r];
  const int64_t page = slot / p.kv.page_size, offset = slot % p.kv.page_size;
  bf16* cache = is_v ? p.kv.v : p.kv.k;
  bf16* dst = cache + ((page * nkv + kvh) * p.kv.page_size + offset) * hd;
  dst[i] = __float2bfloat16_rn(a);
  dst[i + half] = __float2bfloat16_rn(b);
}

}  // namespace

cudaError_t RmsNorm(const RmsNormParams& p, cudaStream_t stream) {
  if (p.residual == nullptr || p.weight == nullptr || p.rows < 0 || p.n <= 0) {
    return cudaErrorInvalidValue;
  }
  if (p.rows == 0) return cudaSuccess;
  RmsNormKernel<<<p.rows, kNormThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t QkvPrepare(const QkvPrepareParams& p, cudaStream_t stream) {
  if (p.qkv == nullptr || p.rope_cos == nullptr || p.rope_sin == nullptr ||
      p.positions == nullptr || p.q_out == nullptr || p.head_dim <= 0 || p.head_dim % 2 != 0 ||
      p.head_dim > 2 * kHeadThreads || p.rows < 0 || p.num_q_heads <= 0 || p.num_kv_heads <= 0) {
    return cudaErrorInvalidValue;
  }
  if (p.slots != nullptr && (p.kv.k == nullptr || p.kv.v == nullptr || p.kv.page_size <= 0 ||
                             p.kv.num_kv_heads != p.num_kv_heads || p.kv.head_dim != p.head_dim)) {
    return cudaErrorInvalidValue;
  }
  if (p.rows == 0) return cudaSuccess;
  const dim3 grid(p.num_q_heads + 2 * p.num_kv_heads, p.rows);
  QkvPrepareKernel<<<grid, kHeadThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace mpa::cuda
