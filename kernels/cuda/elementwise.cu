#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/elementwise.h"

namespace mpa::cuda {
namespace {

constexpr int kThreads = 256;

int BlocksFor(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<int>(blocks < 65536 * 16 ? blocks : 65536 * 16);
}

__global__ void EmbeddingGatherKernel(const bf16* table, const int32_t* ids, int hidden,
                                      float* out) {
  const int r = blockIdx.x;
  const bf16* src = table + static_cast<int64_t>(ids[r]) * hidden;
  float* dst = out + static_cast<int64_t>(r) * hidden;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) dst[i] = __bfloat162float(src[i]);
}

__global__ void SiluMulKernel(const float* gate_up, int rows, int ffn, bf16* out) {
  const int64_t n = static_cast<int64_t>(rows) * ffn;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / ffn, c = i % ffn;
    const float g = gate_up[r * 2 * ffn + c];
    const float u = gate_up[r * 2 * ffn + ffn + c];
    out[i] = __float2bfloat16_rn(g / (1.0f + __expf(-g)) * u);
  }
}

__global__ void AddInPlaceKernel(float* y, const float* x, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    y[i] += x[i];
  }
}

__global__ void ConvertKernel(const float* in, int64_t n, bf16* out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = __float2bfloat16_rn(in[i]);
  }
}

__device__ __forceinline__ uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Box-Muller on two 32-bit uniforms of one 64-bit hash of (seed, i).
__device__ __forceinline__ float NormalAt(uint64_t seed, int64_t i) {
  const uint64_t h = SplitMix64(seed ^ SplitMix64(static_cast<uint64_t>(i)));
  const float u1 = (static_cast<float>(h >> 40) + 1.0f) * (1.0f / 16777216.0f);  // (0, 1]
  const float u2 = static_cast<float>((h >> 8) & 0xffffff) * (1.0f / 16777216.0f);
  return sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
}

template <typename T>
__global__ void FillNormalKernel(T* out, int64_t n, uint64_t seed, float mean, float stddev) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = detail::FromFloat<T>(mean + stddev * NormalAt(seed, i));
  }
}

}  // namespace

cudaError_t EmbeddingGather(const bf16* table, const int32_t* ids, int rows, int hidden, float* out,
                            cudaStream_t stream) {
  if (table == nullptr || ids == nullptr || out == nullptr || rows < 0 || hidden <= 0) {
    return cudaErrorInvalidValue;
  }
  if (rows == 0) return cudaSuccess;
  EmbeddingGatherKernel<<<rows, kThreads, 0, stream>>>(table, ids, hidden, out);
  return cudaGetLastError();
}

cudaError_t SiluMul(const float* gate_up, int rows, int ffn, bf16* out, cudaStream_t stream) {
  if (gate_up == nullptr || out == nullptr || rows < 0 || ffn <= 0) return cudaErrorInvalidValue;
  const int64_t n = static_cast<int64_t>(rows) * ffn;
  if (n == 0) return cudaSuccess;
  SiluMulKernel<<<BlocksFor(n), kThreads, 0, stream>>>(gate_up, rows, ffn, out);
  return cudaGetLastError();
}

cudaError_t AddInPlace(float* y, const float* x, int64_t n, cudaStream_t stream) {
  if (y == nullptr || x == nullptr || n < 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  AddInPlaceKernel<<<BlocksFor(n), kThreads, 0, stream>>>(y, x, n);
  return cudaGetLastError();
}

cudaError_t ConvertToBf16(const float* in, int64_t n, bf16* out, cudaStream_t stream) {
  if (in == nullptr || out == nullptr || n < 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  ConvertKernel<<<BlocksFor(n), kThreads, 0, stream>>>(in, n, out);
  return cudaGetLastError();
}

cudaError_t FillNormalBf16(bf16* out, int64_t n, uint64_t seed, float mean, float stddev,
                           cudaStream_t stream) {
  if (out == nullptr || n < 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  FillNormalKernel<bf16><<<BlocksFor(n), kThreads, 0, stream>>>(out, n, seed, mean, stddev);
  return cudaGetLastError();
}

cudaError_t FillNormalF32(float* out, int64_t n, uint64_t seed, float mean, float stddev,
                          cudaStream_t stream) {
  if (out == nullptr || n < 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  FillNormalKernel<float><<<BlocksFor(n), kThreads, 0, stream>>>(out, n, seed, mean, stddev);
  return cudaGetLastError();
}

}  // namespace mpa::cuda
