#include <cmath>

#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/sampling.h"

namespace mpa::cuda {
namespace {

constexpr int kThreads = 1024;

// Order-preserving map of floats to unsigned keys (larger float, larger key).
__device__ __forceinline__ uint32_t OrderedKey(float x) {
  const uint32_t u = __float_as_uint(x);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

struct ArgMax {
  float value;
  int index;
};

__device__ __forceinline__ ArgMax Better(ArgMax a, ArgMax b) {
  if (b.value > a.value || (b.value == a.value && b.index < a.index)) return b;
  return a;
}

__device__ ArgMax BlockArgmax(const float* x, int n, float* sv, int* si) {
  ArgMax best{-INFINITY, n};
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const float v = x[i];
    if (v > best.value || (v == best.value && i < best.index)) best = {v, i};
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    ArgMax other{__shfl_xor_sync(0xffffffffu, best.value, o),
                 __shfl_xor_sync(0xffffffffu, best.index, o)};
    best = Better(best, other);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) {
    sv[warp] = best.value;
    si[warp] = best.index;
  }
  __syncthreads();
  if (warp == 0) {
    best = lane < (blockDim.x >> 5) ? ArgMax{sv[lane], si[lane]} : ArgMax{-INFINITY, n};
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      ArgMax other{__shfl_xor_sync(0xffffffffu, best.value, o),
                   __shfl_xor_sync(0xffffffffu, best.index, o)};
      best = Better(best, other);
    }
    if (lane == 0) {
      sv[0] = best.value;
      si[0] = best.index;
    }
  }
  __syncthreads();
  return {sv[0], si[0]};
}

__global__ void __launch_bounds__(kThreads)
    ArgmaxKernel(const float* logits, int vocab, int32_t* ids) {
  __shared__ float sv[32];
  __shared__ int si[32];
  const ArgMax best = BlockArgmax(logits + static_cast<int64_t>(blockIdx.x) * vocab, vocab, sv, si);
  if (threadIdx.x == 0) ids[blockIdx.x] = best.index < vocab ? best.index : 0;
}

// Largest key K with (count or mass of elements whose key >= K) >= target, by deciding the key's
// bits from the top: 32 passes over the row, each one block reduction.
template <bool kMass>
__device__ uint32_t ThresholdKey(const float* x, int n, float inv_t, float max_x, uint32_t floor,
                                 float target, float* scratch) {
  uint32_t prefix = 0;
  for (int bit = 31; bit >= 0; --bit) {
    const uint32_t cand = prefix | (1u << bit);
    float acc = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
      const float v = x[i] * inv_t;
      const uint32_t key = OrderedKey(v);
      if (key >= cand && key >= floor) acc += kMass ? exp2f((v - max_x) * kLog2e) : 1.0f;
    }
    acc = detail::BlockSum(acc, scratch);
    if (acc >= target) prefix = cand;
  }
  return prefix;
}

__global__ void __launch_bounds__(kThreads)
    SampleKernel(const float* logits, int vocab, const SamplingRow* params, int32_t* ids) {
  __shared__ float sv[32];
  __shared__ int si[32];
  __shared__ float scan[kThreads];
  const float* x = logits + static_cast<int64_t>(blockIdx.x) * vocab;
  const SamplingRow row = params[blockIdx.x];
  const ArgMax best = BlockArgmax(x, vocab, sv, si);
  if (row.temperature <= 0.0f || row.top_k == 1) {
    if (threadIdx.x == 0) ids[blockIdx.x] = best.index < vocab ? best.index : 0;
    return;
  }
  const float inv_t = 1.0f / row.temperature;
  const float max_x = best.value * inv_t;
  uint32_t floor = 0;
  if (row.top_k > 0 && row.top_k < vocab) {
    floor = ThresholdKey<false>(x, vocab, inv_t, max_x, 0, static_cast<float>(row.top_k), sv);
  }
  float total = 0.0f;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float v = x[i] * inv_t;
    if (OrderedKey(v) >= floor) total += exp2f((v - max_x) * kLog2e);
  }
  total = detail::BlockSum(total, sv);
  if (row.top_p < 1.0f) {
    floor = ThresholdKey<true>(x, vocab, inv_t, max_x, floor, row.top_p * total, sv);
    total = 0.0f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
      const float v = x[i] * inv_t;
      if (OrderedKey(v) >= floor) total += exp2f((v - max_x) * kLog2e);
    }
    total = detail::BlockSum(total, sv);
  }
  // Each thread owns a contiguous run of ids; an exclusive scan of the runs' masses finds the
  // run holding the draw, whose owner walks it.
  const float target = SamplingUniform(row.seed) * total;
  const int per = (vocab + kThreads - 1) / kThreads;
  const int lo = threadIdx.x * per, hi = min(vocab, lo + per);
  float mine = 0.0f;
  for (int i = lo; i < hi; ++i) {
    const float v = x[i] * inv_t;
    if (OrderedKey(v) >= floor) mine += exp2f((v - max_x) * kLog2e);
  }
  scan[threadIdx.x] = mine;
  __syncthreads();
  for (int off = 1; off < kThreads; off <<= 1) {  // inclusive Hillis-Steele scan
    const float add = threadIdx.x >= off ? scan[threadIdx.x - off] : 0.0f;
    __syncthreads();
    scan[threadIdx.x] += add;
    __syncthreads();
  }
  const float before = threadIdx.x > 0 ? scan[threadIdx.x - 1] : 0.0f;
  if (threadIdx.x == 0) si[0] = -1;
  __syncthreads();
  if (mine > 0.0f && target >= before && target < before + mine) {
    float acc = before;
    int chosen = -1, last = -1;
    for (int i = lo; i < hi; ++i) {
      const float v = x[i] * inv_t;
      if (OrderedKey(v) < floor) continue;
      last = i;
      acc += exp2f((v - max_x) * kLog2e);
      if (acc > target) {
        chosen = i;
        break;
      }
    }
    si[0] = chosen >= 0 ? chosen : last;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    // Rounding can leave the draw just past the last run: take the last kept id then.
    int chosen = si[0];
    if (chosen < 0) {
      for (int i = vocab - 1; i >= 0; --i) {
        if (OrderedKey(x[i] * inv_t) >= floor) {
          chosen = i;
          break;
        }
      }
    }
    ids[blockIdx.x] = chosen >= 0 ? chosen : best.index;
  }
}

}  // namespace

cudaError_t ArgmaxRows(const float* logits, int rows, int vocab, int32_t* ids,
                       cudaStream_t stream) {
  if (logits == nullptr || ids == nullptr || rows < 0 || vocab <= 0) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  ArgmaxKernel<<<rows, kThreads, 0, stream>>>(logits, vocab, ids);
  return cudaGetLastError();
}

cudaError_t SampleRows(const float* logits, int rows, int vocab, const SamplingRow* params,
                       int32_t* ids, cudaStream_t stream) {
  if (logits == nullptr || params == nullptr || ids == nullptr || rows < 0 || vocab <= 0) {
    return cudaErrorInvalidValue;
  }
  if (rows == 0) return cudaSuccess;
  SampleKernel<<<rows, kThreads, 0, stream>>>(logits, vocab, params, ids);
  return cudaGetLastError();
}

}  // namespace mpa::cuda
