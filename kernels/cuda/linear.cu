#include <algorithm>

#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/linear.h"

namespace mpa::cuda {
namespace {

// Decode-sized products are bound by reading W once. Each warp owns one output feature (two
// weight rows with the SwiGLU epilogue) and streams its weight row with 16-byte loads, 8 in flight
// per lane; the block's 8 warps share the input rows, staged once in shared memory (and
// normalised there when the RMSNorm is fused in). The first loads of W are issued before waiting
// for the previous kernel: weights never depend on it, so under programmatic dependent launch the
// start of this kernel overlaps the end of the previous one.
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kDefaultUnroll = 8;
constexpr int kMaxSharedBytes = 160 * 1024;
constexpr int kBlocksPerMultiprocessor = 16;  // grid cap; warps then loop over several features

using detail::AllowNextGrid;
using detail::WaitForPreviousGrid;

template <int R, bool kNorm, bool kSwiGlu, int kUnroll>
__global__ void __launch_bounds__(kThreads, kUnroll <= 8 ? 4 : 2) GemvKernel(GemvParams p) {
  extern __shared__ uint4 xs[];  // [R, in_features / 8] bf16 x 8
  __shared__ float scratch[32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int vecs = static_cast<int>(p.in_features / 8);
  const int64_t units = kSwiGlu ? p.out_features / 2 : p.out_features;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kWarps;
  int64_t o = static_cast<int64_t>(blockIdx.x) * kWarps + warp;

  uint4 wr[kUnroll];
  {
    const uint4* w = reinterpret_cast<const uint4*>(p.w + (o < units ? o : 0) * p.in_features);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = u * 32 + lane;
      wr[u] = o < units && c < vecs ? __ldcs(w + c) : make_uint4(0, 0, 0, 0);
    }
  }
  WaitForPreviousGrid();
  AllowNextGrid();

  if constexpr (kNorm) {
    // The same arithmetic as RmsNorm: out = bf16(x * rsqrt(mean(x^2) + eps) * weight).
    for (int r = 0; r < R; ++r) {
      const float4* in = reinterpret_cast<const float4*>(p.norm_input + r * p.in_features);
      float sum_sq = 0.0f;
      for (int i = threadIdx.x; i < 2 * vecs; i += kThreads) {
        const float4 v = in[i];
        sum_sq = fmaf(v.x, v.x, sum_sq);
        sum_sq = fmaf(v.y, v.y, sum_sq);
        sum_sq = fmaf(v.z, v.z, sum_sq);
        sum_sq = fmaf(v.w, v.w, sum_sq);
      }
      sum_sq = detail::BlockSum(sum_sq, scratch);
      const float inv = rsqrtf(sum_sq / static_cast<float>(p.in_features) + p.eps);
      const float4* weight = reinterpret_cast<const float4*>(p.norm_weight);
      for (int c = threadIdx.x; c < vecs; c += kThreads) {
        const float4 a = in[2 * c], b = in[2 * c + 1];
        const float4 wa = weight[2 * c], wb = weight[2 * c + 1];
        const float y[8] = {a.x * inv * wa.x, a.y * inv * wa.y, a.z * inv * wa.z, a.w * inv * wa.w,
                            b.x * inv * wb.x, b.y * inv * wb.y, b.z * inv * wb.z, b.w * inv * wb.w};
        xs[r * vecs + c] = detail::FloatToBf16x8(y);
      }
    }
  } else {
    const uint4* x = reinterpret_cast<const uint4*>(p.x);
    for (int i = threadIdx.x; i < R * vecs; i += kThreads) xs[i] = x[i];
  }
  __syncthreads();

  bool prefetched = true;
  for (; o < units; o += stride) {
    float acc[kSwiGlu ? 2 : 1][R];
#pragma unroll
    for (int part = 0; part < (kSwiGlu ? 2 : 1); ++part) {
#pragma unroll
      for (int r = 0; r < R; ++r) acc[part][r] = 0.0f;
      const uint4* w =
          reinterpret_cast<const uint4*>(p.w + (part == 0 ? o : units + o) * p.in_features);
      for (int base = 0; base < vecs; base += kUnroll * 32) {
        if (!prefetched) {
#pragma unroll
          for (int u = 0; u < kUnroll; ++u) {
            const int c = base + u * 32 + lane;
            wr[u] = c < vecs ? __ldcs(w + c) : make_uint4(0, 0, 0, 0);
          }
        }
        prefetched = false;
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int c = base + u * 32 + lane;
          if (c >= vecs) break;
          float wf[8];
          detail::Bf16x8ToFloat(wr[u], wf);
#pragma unroll
          for (int r = 0; r < R; ++r) {
            float xf[8];
            detail::Bf16x8ToFloat(xs[r * vecs + c], xf);
#pragma unroll
            for (int k = 0; k < 8; ++k) acc[part][r] = fmaf(wf[k], xf[k], acc[part][r]);
          }
        }
      }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const float sum = detail::WarpSum(acc[0][r]);
      if constexpr (kSwiGlu) {
        const float up = detail::WarpSum(acc[1][r]);
        // The same arithmetic as SiluMul.
        if (lane == 0)
          p.swiglu_out[r * units + o] = __float2bfloat16_rn(sum / (1.0f + __expf(-sum)) * up);
      } else if (lane == 0) {
        float* y = p.y + r * p.out_features + o;
        *y = p.beta == 0.0f ? sum : fmaf(p.beta, *y, sum);
      }
    }
  }
}

int MultiprocessorCount() {
  static const int count = [] {
    int device = 0, sms = 0;
    if (cudaGetDevice(&device) != cudaSuccess) return 1;
    if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
      return 1;
    }
    return std::max(sms, 1);
  }();
  return count;
}

template <int R, bool kNorm, bool kSwiGlu, int kUnroll>
cudaError_t LaunchGemv(const GemvParams& p, cudaStream_t stream) {
  static const cudaError_t attr =
      cudaFuncSetAttribute(GemvKernel<R, kNorm, kSwiGlu, kUnroll>,
                           cudaFuncAttributeMaxDynamicSharedMemorySize, kMaxSharedBytes);
  if (attr != cudaSuccess) return attr;
  const int64_t units = kSwiGlu ? p.out_features / 2 : p.out_features;
  const int64_t blocks = std::min<int64_t>(
      (units + kWarps - 1) / kWarps, int64_t{kBlocksPerMultiprocessor} * MultiprocessorCount());
  return detail::LaunchKernel(
      GemvKernel<R, kNorm, kSwiGlu, kUnroll>, dim3(static_cast<unsigned>(blocks)), dim3(kThreads),
      static_cast<size_t>(R * p.in_features * 2), stream, p.programmatic_launch, p);
}

template <int R, int kUnroll>
cudaError_t LaunchGemvModes(const GemvParams& p, cudaStream_t stream) {
  const bool norm = p.norm_input != nullptr, swiglu = p.swiglu_out != nullptr;
  if (norm && swiglu) return LaunchGemv<R, true, true, kUnroll>(p, stream);
  if (norm) return LaunchGemv<R, true, false, kUnroll>(p, stream);
  if (swiglu) return LaunchGemv<R, false, true, kUnroll>(p, stream);
  return LaunchGemv<R, false, false, kUnroll>(p, stream);
}

template <int R>
cudaError_t LaunchGemvRows(const GemvParams& p, cudaStream_t stream) {
  if (p.loads_in_flight == 4) return LaunchGemvModes<R, 4>(p, stream);
  if (p.loads_in_flight == 16) return LaunchGemvModes<R, 16>(p, stream);
  return LaunchGemvModes<R, kDefaultUnroll>(p, stream);
}

bool Aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15) == 0; }

}  // namespace

bool GemvSupports(const GemvParams& p) {
  const bool one_input = (p.x != nullptr) != (p.norm_input != nullptr);
  const bool one_output = (p.y != nullptr) != (p.swiglu_out != nullptr);
  if (!one_input || !one_output || p.w == nullptr || p.rows < 1 || p.rows > kGemvMaxRows ||
      p.in_features <= 0 || p.in_features % 8 != 0 || p.out_features <= 0 ||
      p.out_features > (int64_t{1} << 31) || !Aligned16(p.w)) {
    return false;
  }
  if (p.x != nullptr && !Aligned16(p.x)) return false;
  if (p.norm_input != nullptr &&
      (p.norm_weight == nullptr || !Aligned16(p.norm_input) || !Aligned16(p.norm_weight))) {
    return false;
  }
  if (p.swiglu_out != nullptr && p.out_features % 2 != 0) return false;
  return p.rows * p.in_features * 2 <= kMaxSharedBytes;
}

cudaError_t Gemv(const GemvParams& p, cudaStream_t stream) {
  if (!GemvSupports(p)) return cudaErrorInvalidValue;
  return p.rows == 1 ? LaunchGemvRows<1>(p, stream) : LaunchGemvRows<2>(p, stream);
}

cublasStatus_t Linear(cublasHandle_t handle, const LinearParams& p) {
  if (p.x == nullptr || p.w == nullptr || p.y == nullptr || p.rows < 0 || p.in_features <= 0 ||
      p.out_features <= 0) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (p.rows == 0) return CUBLAS_STATUS_SUCCESS;
  // Measured on the H200 (bench/NOTES.md): at 1 row cuBLAS reads the 4096 x 4096 and
  // 4096 x 12288 matrices at 44% and 78% of the copy rate, this GEMV at 63% and 84%; at 8 rows a
  // CUDA-core GEMV turns arithmetic-bound and loses to cuBLAS.
  GemvParams g;
  g.x = p.x;
  g.w = p.w;
  g.rows = p.rows;
  g.in_features = p.in_features;
  g.out_features = p.out_features;
  g.y = p.y;
  g.beta = p.beta;
  if (GemvSupports(g)) {
    cudaStream_t stream = nullptr;
    const cublasStatus_t st = cublasGetStream(handle, &stream);
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    return Gemv(g, stream) == cudaSuccess ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_EXECUTION_FAILED;
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
