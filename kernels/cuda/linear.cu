#include "kernels/cuda/linear.h"

namespace mpa::cuda {

cublasStatus_t Linear(cublasHandle_t handle, const LinearParams& p) {
  if (p.x == nullptr || p.w == nullptr || p.y == nullptr || p.rows < 0 || p.in_features <= 0 ||
      p.out_features <= 0) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (p.rows == 0) return CUBLAS_STATUS_SUCCESS;
  // Column-major view: Y^T [out, rows] = W [out, in] (W^T stored) x X^T [in, rows].
  const float alpha = 1.0f;
  return cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(p.out_features),
                      static_cast<int>(p.rows), static_cast<int>(p.in_features), &alpha, p.w,
                      CUDA_R_16BF, static_cast<int>(p.in_features), p.x, CUDA_R_16BF,
                      static_cast<int>(p.in_features), &p.beta, p.y, CUDA_R_32F,
                      static_cast<int>(p.out_features), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
}

}  // namespace mpa::cuda
