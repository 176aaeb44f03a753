// Next-token choice on the device: greedy argmax, and seeded temperature / top-k / top-p sampling.
#pragma once

#include "kernels/cuda/common.h"

namespace mpa::cuda {

// ids[r] = argmax_i logits[r, i], the lowest id on ties.
cudaError_t ArgmaxRows(const float* logits /*[rows, vocab]*/, int rows, int vocab,
                       int32_t* ids /*[rows]*/, cudaStream_t stream);

// Per-row sampling settings, on the device.
struct SamplingRow {
  float temperature = 0.0f;  // <= 0: greedy
  int top_k = 0;             // <= 0 or >= vocab: off. Ties with the k-th value are all kept.
  float top_p = 1.0f;        // >= 1: off. Smallest high-probability set with mass >= top_p.
  uint64_t seed = 0;         // the draw: u = SamplingUniform(seed) (combine seed and step)
};

// For each row: p_i proportional to exp(logits_i / temperature) over the top-k set, restricted
// to the top-p nucleus of that set; the id chosen is the first (in id order) whose cumulative
// probability exceeds u * total.
cudaError_t SampleRows(const float* logits /*[rows, vocab]*/, int rows, int vocab,
                       const SamplingRow* params /*[rows] device*/, int32_t* ids /*[rows]*/,
                       cudaStream_t stream);

// The uniform in [0, 1) that a seed gives (host and device agree; tests recompute draws).
__host__ __device__ inline float SamplingUniform(uint64_t seed) {
  uint64_t x = seed + 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  x ^= x >> 31;
  return static_cast<float>(x >> 40) * (1.0f / 16777216.0f);
}

}  // namespace mpa::cuda
