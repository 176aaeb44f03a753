// Matrix products of the linear layers: y = x W^T (+ bias), PyTorch's nn.Linear convention.
#pragma once

#include <cstdint>

namespace mpa::cpu {

struct LinearParams {
  const float* x = nullptr;     // [rows, in_features]
  const float* w = nullptr;     // [out_features, in_features]
  const float* bias = nullptr;  // [out_features] or null
  int64_t rows = 0;
  int64_t in_features = 0;
  int64_t out_features = 0;
  float* y = nullptr;  // [rows, out_features]
};

// Plain triple loop with double accumulation: the oracle.
void LinearReference(const LinearParams& p);

// Through OpenBLAS (multi-threaded sgemm/sgemv); the engine's CPU path.
void LinearBlas(const LinearParams& p);

// Sets the number of threads BLAS may use (<= 0: leave BLAS's default).
void SetBlasThreads(int threads);

}  // namespace mpa::cpu
