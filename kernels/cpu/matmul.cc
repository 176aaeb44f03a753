#include "kernels/cpu/matmul.h"

#include <cblas.h>

namespace mpa::cpu {

void LinearReference(const LinearParams& p) {
  for (int64_t r = 0; r < p.rows; ++r) {
    const float* xr = p.x + r * p.in_features;
    for (int64_t o = 0; o < p.out_features; ++o) {
      const float* wr = p.w + o * p.in_features;
      double acc = p.bias ? p.bias[o] : 0.0;
      for (int64_t i = 0; i < p.in_features; ++i) acc += static_cast<double>(xr[i]) * wr[i];
      p.y[r * p.out_features + o] = static_cast<float>(acc);
    }
  }
}

void LinearBlas(const LinearParams& p) {
  if (p.rows == 1) {
    cblas_sgemv(CblasRowMajor, CblasNoTrans, p.out_features, p.in_features, 1.0f, p.w,
                p.in_features, p.x, 1, 0.0f, p.y, 1);
  } else {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, p.rows, p.out_features, p.in_features,
                1.0f, p.x, p.in_features, p.w, p.in_features, 0.0f, p.y, p.out_features);
  }
  if (p.bias) {
    for (int64_t r = 0; r < p.rows; ++r)
      for (int64_t o = 0; o < p.out_features; ++o) p.y[r * p.out_features + o] += p.bias[o];
  }
}

void SetBlasThreads(int threads) {
  if (threads > 0) openblas_set_num_threads(threads);
}

}  // namespace mpa::cpu
