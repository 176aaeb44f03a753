// The projections: y = x W^T (+ beta y), BF16 inputs, FP32 accumulation and output. Decode-sized
// products (a row or two) go through a weight-streaming GEMV kernel of ours, which can also fuse
// the layer's RMSNorm into its input and SwiGLU into its output; larger ones through cuBLAS.
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

// The handle must be bound to the stream the caller wants (cublasSetStream). Products that
// GemvSupports (up to kGemvMaxRows rows) run through Gemv on the handle's stream; everything else
// through cublasGemmEx.
cublasStatus_t Linear(cublasHandle_t handle, const LinearParams& p);

inline constexpr int kGemvMaxRows = 2;

// A decode-sized product with its neighbours fused in. Each warp streams whole weight rows with
// 16-byte loads, several in flight per lane; the input rows sit in shared memory.
struct GemvParams {
  // The input rows, exactly one of:
  const bf16* x = nullptr;  // [rows, in_features]
  const float* norm_input =
      nullptr;  // [rows, in_features] fp32: the input is RmsNorm's bf16 output
  const float* norm_weight = nullptr;  // [in_features], with norm_input
  float eps = 1e-6f;                   // with norm_input
  const bf16* w = nullptr;             // [out_features, in_features]
  int64_t rows = 0;                    // 1..kGemvMaxRows
  int64_t in_features = 0;             // a multiple of 8; x and w 16-byte aligned
  int64_t out_features = 0;
  // The output, exactly one of:
  float* y = nullptr;  // [rows, out_features] (+ beta * y)
  float beta = 0.0f;
  // [rows, out_features / 2]: silu(gate) * up of the fused gate|up product, as SiluMul writes it
  // (rows [0, out/2) of w are gate_proj, the rest up_proj).
  bf16* swiglu_out = nullptr;
  // Programmatic dependent launch: the kernel may start while the previous kernel on the stream
  // still runs; it reads its weights early and everything else only after that kernel has ended.
  bool programmatic_launch = false;
  // Tuning knob for benchmarks: 16-byte loads in flight per lane, 4, 8 or 16 (0: the default, 8).
  int loads_in_flight = 0;
};

// Whether Gemv takes these shapes and pointers (rows, alignment, input rows fit shared memory).
bool GemvSupports(const GemvParams& p);
// cudaErrorInvalidValue when !GemvSupports(p).
cudaError_t Gemv(const GemvParams& p, cudaStream_t stream);

}  // namespace mpa::cuda
