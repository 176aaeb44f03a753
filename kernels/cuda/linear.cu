#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/linear.h"

namespace mpa::cuda {
namespace {

// Decode-sized products (a few rows) are bound by reading W once; cuBLAS's choice for them reads
// it well below the copy rate, so they go through this kernel: each warp owns one output feature
// and streams its weight row with 16-byte loads, four in flight per lane; the rows of x are staged
// in shared memory a chunk at a time and shared by the block's 8 warps.
constexpr int kGemvWarps = 8;
constexpr int kGemvChunk = 2048;  // input features per shared-memory chunk
constexpr int kGemvMaxRows = 2;

template <int R>
__global__ void __launch_bounds__(kGemvWarps * 32) GemvKernel(LinearParams p) {
  __shared__ uint4 xs[R * kGemvChunk / 8];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t o = static_cast<int64_t>(blockIdx.x) * kGemvWarps + warp;
  const bool active = o < p.out_features;
  const uint4* w = reinterpret_cast<const uint4*>(p.w + (active ? o : 0) * p.in_features);
  const uint4* x = reinterpret_cast<const uint4*>(p.x);
  const int64_t vecs = p.in_features / 8;
  float acc[R];
#pragma unroll
  for (int r = 0; r < R; ++r) acc[r] = 0.0f;
  for (int64_t base = 0; base < vecs; base += kGemvChunk / 8) {
    const int n = static_cast<int>(vecs - base < kGemvChunk / 8 ? vecs - base : kGemvChunk / 8);
    __syncthreads();
    for (int i = threadIdx.x; i < R * n; i += blockDim.x) {
      const int r = i / n, c = i % n;
      xs[r * (kGemvChunk / 8) + c] = x[r * vecs + base + c];
    }
    __syncthreads();
    if (!active) continue;
    for (int c0 = 0; c0 < n; c0 += 4 * 32) {
      uint4 wr[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int c = c0 + u * 32 + lane;
        wr[u] = c < n ? __ldcs(w + base + c) : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int c = c0 + u * 32 + lane;
        if (c >= n) continue;
        float wf[8];
        detail::Bf16x8ToFloat(wr[u], wf);
#pragma unroll
        for (int r = 0; r < R; ++r) {
          float xf[8];
          detail::Bf16x8ToFloat(xs[r * (kGemvChunk / 8) + c], xf);
#pragma unroll
          for (int k = 0; k < 8; ++k) acc[r] = fmaf(wf[k], xf[k], acc[r]);
        }
      }
    }
  }
  if (!active) return;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const float sum = detail::WarpSum(acc[r]);
    if (lane == 0) {
      float* y = p.y + r * p.out_features + o;
      *y = p.beta == 0.0f ? sum : fmaf(p.beta, *y, sum);
    }
  }
}

template <int R>
cublasStatus_t LaunchGemv(const LinearParams& p, cudaStream_t stream) {
  const int64_t blocks = (p.out_features + kGemvWarps - 1) / kGemvWarps;
  GemvKernel<R><<<static_cast<unsigned>(blocks), kGemvWarps * 32, 0, stream>>>(p);
  return cudaGetLastError() == cudaSuccess ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_EXECUTION_FAILED;
}

bool Aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15) == 0; }

}  // namespace

cublasStatus_t Linear(cublasHandle_t handle, const LinearParams& p) {
  if (p.x == nullptr || p.w == nullptr || p.y == nullptr || p.rows < 0 || p.in_features <= 0 ||
      p.out_features <= 0) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (p.rows == 0) return CUBLAS_STATUS_SUCCESS;
  // Measured on the H200 (bench/NOTES.md): 1 row gains ~7% of a Qwen3-8B decode step over cuBLAS;
  // at 8 rows the kernel turns arithmetic-bound and loses (13.4 ms against 7.6 ms a step).
  if (p.rows <= kGemvMaxRows && p.in_features % 8 == 0 && Aligned16(p.x) && Aligned16(p.w)) {
    cudaStream_t stream = nullptr;
    const cublasStatus_t st = cublasGetStream(handle, &stream);
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    return p.rows == 1 ? LaunchGemv<1>(p, stream) : LaunchGemv<2>(p, stream);
  }
  // Column-major view: Y^T [out, rows] = W [out, in] (W^T stored) x X^T [in, rows].
  const float alpha = 1.0f;
  return cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(p.out_features),
                      static_cast<int>(p.rows), static_cast<int>(p.in_features), &alpha, p.w,
                      CUDA_R_16BF, static_cast<int>(p.in_features), p.x, CUDA_R_16BF,
                      static_cast<int>(p.in_features), &p.beta, p.y, CUDA_R_32F,
                      static_cast<int>(p.out_features), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
}

}  // namespace mpa::cuda
