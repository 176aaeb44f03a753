// Next-token choice on the device: greedy argmax, and seeded temperature / top-k / top-p sampling.
#pragma once

#include "kernels/cuda/common.h"

namespace mpa::cuda {

// ids[r] = argmax_i logits[r, i], the lowest id on ties.
cudaError_t ArgmaxRows(const float* logits /*[rows, vocab]*/, int rows, int vocab,
                       int32_t* ids /*[rows]*/, cudaStream_t stream);

// logprobs[r] = log softmax(logits[r, :])[ids[r]] (the raw logits, as the CPU's LogProbOf; an id
// outside [0, vocab) gives -inf). One block per row.
cudaError_t LogProbRows(const float* logits /*[rows, vocab]*/, int rows, int vocab,
                        const int32_t* ids /*[rows] device*/, float* logprobs /*[rows] device*/,
                        cudaStream_t stream);

// Per-row sampling settings, on the device.
struct SamplingRow {
  float temperature = 0.0f;  // <= 0: greedy
  int top_k = 0;             // <= 0 or >= vocab: off. Exactly k ids; ties: lower id first.
  float top_p = 1.0f;        // >= 1: off. Shortest rank-order prefix with mass >= top_p.
  uint64_t seed = 0;         // the draw: u = SamplingUniform(seed) (combine seed and step)
};

// For each row, the CPU Sampler's rules (model/runtime/sampler.cc): ids ranked by logit (ties:
// lower id first), p_i proportional to exp((logit_i - max) / temperature); keep the first top_k,
// then the shortest prefix of those whose mass reaches top_p of theirs; the id chosen is the first
// in rank order whose cumulative mass exceeds u * (kept mass). Masses are summed as exact integers
// (exp(-d) in units of 2^-(62 - ceil(log2 vocab))), so a row's draw is deterministic. Rows with
// temperature <= 0 or top_k == 1 take the argmax (lowest id on ties).
// Cost: a few passes over the logits with many blocks per row, then one block per row over the
// candidates the cuts can keep (the whole row, filtered, when there are more than 2048 of them).
size_t SampleRowsWorkspaceBytes(int rows);
cudaError_t SampleRows(const float* logits /*[rows, vocab]*/, int rows, int vocab,
                       const SamplingRow* params /*[rows] device*/, int32_t* ids /*[rows]*/,
                       void* workspace /*SampleRowsWorkspaceBytes(rows)*/, size_t workspace_bytes,
                       cudaStream_t stream);
// The same with a stream-ordered workspace allocation per call.
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
