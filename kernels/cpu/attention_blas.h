// Dense attention through BLAS: the CPU engine's fast path, checked against DenseDecodeAttention
// (the reference in attention.h). Scores are formed with sgemm, softmaxed in fp32, and applied
// to the values with sgemm, so the inner loops run at the library's vector speed.
#pragma once

#include "kernels/cpu/attention.h"

namespace mpa::cpu {

// Same contract as DenseDecodeAttention.
void DenseDecodeAttentionBlas(const DenseDecodeParams& p);

struct CausalPrefillParams {
  const float* q = nullptr;  // [num_rows, num_q_heads, head_dim] after RoPE
  KvView kv;                 // kv.num_tokens = first_position + num_rows
  int num_rows = 0;          // new tokens; row i sits at position first_position + i
  int first_position = 0;
  int num_q_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  float scale = 0.0f;
  float* out = nullptr;  // [num_rows, num_q_heads, head_dim]
};

// Causal attention of a chunk of new tokens: row i attends to tokens [0, first_position + i].
// Equals DenseDecodeAttention applied row by row.
void CausalPrefillAttentionBlas(const CausalPrefillParams& p);

}  // namespace mpa::cpu
