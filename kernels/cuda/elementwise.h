// Small elementwise kernels of the model: embedding gather, SwiGLU, residual add, conversions and
// seeded random fills (random weights at real shapes are generated on the device).
#pragma once

#include "kernels/cuda/common.h"

namespace mpa::cuda {

// out[r, :] = table[ids[r], :]. Ids must be in [0, vocab) (checked by the caller on the host).
cudaError_t EmbeddingGather(const bf16* table /*[vocab, hidden]*/, const int32_t* ids /*[rows]*/,
                            int rows, int hidden, float* out /*[rows, hidden]*/,
                            cudaStream_t stream);

// out[r, i] = silu(gate_up[r, i]) * gate_up[r, ffn + i]: the fused gate|up projection's output.
cudaError_t SiluMul(const float* gate_up /*[rows, 2 * ffn]*/, int rows, int ffn,
                    bf16* out /*[rows, ffn]*/, cudaStream_t stream);

// y[i] += x[i].
cudaError_t AddInPlace(float* y, const float* x, int64_t n, cudaStream_t stream);

// out[i] = bf16(in[i]) (round to nearest even).
cudaError_t ConvertToBf16(const float* in, int64_t n, bf16* out, cudaStream_t stream);

// out[i] = bf16(mean + stddev * N(0, 1)) from a counter-based generator: element i depends only
// on (seed, i), so any shape is reproducible regardless of how it is split into launches.
cudaError_t FillNormalBf16(bf16* out, int64_t n, uint64_t seed, float mean, float stddev,
                           cudaStream_t stream);
// The same in fp32 (norm weights stay fp32 on the device).
cudaError_t FillNormalF32(float* out, int64_t n, uint64_t seed, float mean, float stddev,
                          cudaStream_t stream);

}  // namespace mpa::cuda
