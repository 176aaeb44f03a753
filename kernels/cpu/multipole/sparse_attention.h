// Exact attention over a sparse set of tokens: the sink, the recent window and the tokens of the
// selected clusters (or Quest pages). Clusters are contiguous ranges over a permutation of token
// positions (cluster-major), so a selected cluster is one run of that permutation.
#pragma once

#include <cstdint>

#include "kernels/cpu/attention.h"

namespace mpa::cpu {

struct TokenRange {
  int32_t begin = 0;  // inclusive
  int32_t end = 0;    // exclusive
  int32_t size() const { return end - begin; }
};

struct SparseExactParams {
  const float* q = nullptr;       // [head_dim] one query head after RoPE at its true position
  const float* k_head = nullptr;  // [>= num_tokens, head_dim] keys after RoPE of its KV head
  const float* v_head = nullptr;  // [>= num_tokens, head_dim] values of its KV head
  int head_dim = 0;
  float scale = 0.0f;
  // Ranges of token positions read exactly (the sink and the recent window).
  const TokenRange* position_ranges = nullptr;
  int num_position_ranges = 0;
  // Ranges over `slots` (each a selected cluster); slots[i] is a token position.
  const int32_t* slots = nullptr;
  const TokenRange* slot_ranges = nullptr;
  int num_slot_ranges = 0;
};

// acc (+)= exact softmax partial over every token named by the ranges. Returns the token count.
int64_t AccumulateSparseExact(const SparseExactParams& p, PartialAttention& acc);

}  // namespace mpa::cpu
