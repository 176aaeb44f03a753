#include "kernels/cpu/ops.h"

#include <cmath>

namespace mpa::cpu {

void RmsNorm(const float* x, const float* weight, int n, float eps, float* out) {
  double sum_sq = 0.0;
  for (int i = 0; i < n; ++i) sum_sq += static_cast<double>(x[i]) * x[i];
  const float inv = 1.0f / std::sqrt(static_cast<float>(sum_sq / n) + eps);
  for (int i = 0; i < n; ++i) out[i] = x[i] * inv * weight[i];
}

void RmsNormRows(const float* x, const float* weight, int rows, int n, float eps, float* out) {
  for (int r = 0; r < rows; ++r) RmsNorm(x + int64_t{r} * n, weight, n, eps, out + int64_t{r} * n);
}

void ApplyRope(float* x, int num_heads, int head_dim, const float* cos, const float* sin) {
  const int half = head_dim / 2;
  for (int h = 0; h < num_heads; ++h) {
    float* row = x + int64_t{h} * head_dim;
    for (int i = 0; i < half; ++i) {
      const float a = row[i];
      const float b = row[i + half];
      row[i] = a * cos[i] - b * sin[i];
      row[i + half] = b * cos[i] + a * sin[i];
    }
  }
}

void SiluMul(const float* gate, const float* up, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

void AddInPlace(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

}  // namespace mpa::cpu
