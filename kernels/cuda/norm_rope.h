// Normalisation, rotary embedding and KV-cache append: the per-token glue around the projections.
#pragma once

#include "kernels/cuda/common.h"

namespace mpa::cuda {

// residual[r] += delta[r] (when delta is set), then out[r] = residual[r] / rms(residual[r]) *
// weight, for each of `rows` rows of n values. The residual stream stays fp32 so that long
// stacks of layers do not accumulate bf16 rounding.
struct RmsNormParams {
  float* residual = nullptr;      // [rows, n] in (and out when delta is set)
  const float* delta = nullptr;   // [rows, n] or null
  const float* weight = nullptr;  // [n]
  int rows = 0;
  int n = 0;
  float eps = 1e-6f;
  bf16* out = nullptr;       // [rows, n] or null
  float* out_f32 = nullptr;  // [rows, n] or null
};
cudaError_t RmsNorm(const RmsNormParams& p, cudaStream_t stream);

// From the fused q/k/v projection of `rows` tokens: adds the biases, applies the per-head RMSNorm
// of q and k (Qwen3), rotates q and k by the rotate-half RoPE at each token's position using a
// precomputed cos/sin table (so any rope scaling works: the table carries it), writes q, and
// appends k and v to the paged cache at each token's slot.
struct QkvPrepareParams {
  const float* qkv = nullptr;     // [rows, (num_q_heads + 2 num_kv_heads) * head_dim]: q | k | v
  const float* bias = nullptr;    // [(num_q_heads + 2 num_kv_heads) * head_dim] or null
  const float* q_norm = nullptr;  // [head_dim] or null (no q norm)
  const float* k_norm = nullptr;  // [head_dim] or null
  float eps = 1e-6f;
  const float* rope_cos = nullptr;     // [max_positions, head_dim / 2]
  const float* rope_sin = nullptr;     // [max_positions, head_dim / 2]
  const int32_t* positions = nullptr;  // [rows] device, < max_positions
  int rows = 0;
  int num_q_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;       // even, <= 256
  bf16* q_out = nullptr;  // [rows, num_q_heads, head_dim]
  // The cache to append to (its k/v set) at slots[r] = page * page_size + offset in page.
  PagedKvCache kv;
  const int64_t* slots = nullptr;  // [rows] device
};
cudaError_t QkvPrepare(const QkvPrepareParams& p, cudaStream_t stream);

}  // namespace mpa::cuda
