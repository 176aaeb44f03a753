// Device-side wrappers of the sm_80+ instructions the tensor-core attention kernels share:
// asynchronous 16-byte copies, ldmatrix, the bf16 m16n8k16 matrix product, and bf16 packing.
// Older targets compile them to nothing (the kernels that use them are selected only on sm_80+).
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace mpa::cuda::detail {

__device__ __forceinline__ uint32_t SharedAddress(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte cp.async; an invalid row is filled with zeros instead (no read), so rows past a
// sequence's end never bring NaN or Inf into the products (0 * NaN would poison a row).
__device__ __forceinline__ void CopyAsync16OrZero(uint32_t smem, const void* gmem, bool valid) {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem), "l"(gmem),
               "r"(valid ? 16 : 0)
               : "memory");
#endif
}

__device__ __forceinline__ void CommitAsync() {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// Waits until at most N of this thread's committed copy groups are still in flight.
template <int N>
__device__ __forceinline__ void WaitAsync() {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

__device__ __forceinline__ void LoadMatrixX4(uint32_t addr, uint32_t (&r)[4]) {
#if __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
#endif
}

__device__ __forceinline__ void LoadMatrixX4Transposed(uint32_t addr, uint32_t (&r)[4]) {
#if __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
#endif
}

// d += a [16 x 16, row] . b [16 x 8, col], bf16 inputs, fp32 accumulators.
__device__ __forceinline__ void MmaBf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                        uint32_t b1) {
#if __CUDA_ARCH__ >= 800
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

__device__ __forceinline__ uint32_t PackBf16(float lo, float hi) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

// (lo, hi) as a bf16 pair plus the bf16 pair of what rounding left out: their sum carries ~16
// significant bits of each value.
__device__ __forceinline__ void PackBf16TwoTerms(float lo, float hi, uint32_t& big,
                                                 uint32_t& small) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  const float2 back = __bfloat1622float2(h);
  big = *reinterpret_cast<const uint32_t*>(&h);
  small = PackBf16(lo - back.x, hi - back.y);
}

// Transposes an 8x8 bf16 matrix held in the ldmatrix fragment layout (lane holds row lane / 4,
// columns 2 (lane % 4) and 2 (lane % 4) + 1).
__device__ __forceinline__ uint32_t Transpose8x8(uint32_t x) {
  uint32_t y = x;
#if __CUDA_ARCH__ >= 800
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
#endif
  return y;
}

}  // namespace mpa::cuda::detail
