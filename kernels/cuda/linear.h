// The projections through cuBLAS: y = x W^T (+ beta y), BF16 inputs, FP32 accumulation and output.
#pragma once

#include <cublas_v2.h>

#include "kernels/cuda/common.h"

namespace mpa::cuda {

struct LinearParams {
  const bf16* x = nullptr;  // [rows, in_features]
  const bf16* w = nullptr;  // [out_features, in_features] (nn.Linear layout)
  int64_t rows = 0;
  int64_t in_features = 0;
  int64_t out_features = 0;
  float beta = 0.0f;   // 1: accumulate into y (residual adds for free)
  float* y = nullptr;  // [rows, out_features]
};

// The handle must be bound to the stream the caller wants (cublasSetStream). Up to 2 rows with
// in_features a multiple of 8 (16-byte aligned x and w) run through a weight-streaming GEMV
// kernel of ours on the handle's stream; everything else through cublasGemmEx.
cublasStatus_t Linear(cublasHandle_t handle, const LinearParams& p);

}  // namespace mpa::cuda
