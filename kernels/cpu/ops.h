// Elementwise and normalisation kernels of the transformer, plain fp32 (the reference).
#pragma once

#include <cstdint>

namespace mpa::cpu {

// out[i] = x[i] / sqrt(mean(x^2) + eps) * weight[i], for one row of n floats. out may alias x.
void RmsNorm(const float* x /*[n]*/, const float* weight /*[n]*/, int n, float eps, float* out);

// RmsNorm applied to each of `rows` consecutive rows of n floats (q/k norm per head).
void RmsNormRows(const float* x /*[rows, n]*/, const float* weight /*[n]*/, int rows, int n,
                 float eps, float* out);

// Rotate-half RoPE in place on `num_heads` heads of head_dim floats at one position:
// for i < head_dim/2, (x[i], x[i + head_dim/2]) is rotated by the angle whose cos/sin are given
// (cos/sin already include any attention scaling the rope type defines).
void ApplyRope(float* x /*[num_heads, head_dim]*/, int num_heads, int head_dim,
               const float* cos /*[head_dim/2]*/, const float* sin /*[head_dim/2]*/);

// out[i] = silu(gate[i]) * up[i].
void SiluMul(const float* gate, const float* up, int64_t n, float* out);

// y[i] += x[i].
void AddInPlace(float* y, const float* x, int64_t n);

}  // namespace mpa::cpu
