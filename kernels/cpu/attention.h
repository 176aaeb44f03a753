// Decode attention, plain fp32: the online-softmax partial (o, m, l) and dense attention built
// from it. Exact parts, approximate parts and split-KV pieces all combine through MergePartial.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

namespace mpa::cpu {

// The softmax state of one query head over some set of keys, in base 2:
//   m = max_j s_j, l = sum_j w_j exp2(s_j - m), o = sum_j w_j exp2(s_j - m) v_j,
// where s_j = (q . k_j) * scale * log2(e) and w_j is a multiplicity (1 for a real token, the
// token count N_c for a centroid). An empty partial has m = -inf, l = 0, o = 0.
struct PartialAttention {
  std::vector<float> o;  // [head_dim], unnormalised
  float m = -INFINITY;
  float l = 0.0f;

  explicit PartialAttention(int head_dim = 0) : o(head_dim, 0.0f) {}
  bool empty() const { return l == 0.0f; }
};

// Adds one key with base-2 logit s2, multiplicity w (> 0) and value v[head_dim].
void AccumulatePartial(PartialAttention& acc, float s2, float w, const float* v);

// acc <- acc (+) other. Order-independent up to rounding; either side may be empty.
void MergePartial(PartialAttention& acc, const PartialAttention& other);

// out[head_dim] = o / l (zeros for an empty partial).
void FinalizePartial(const PartialAttention& p, float* out);

// log2(e): the factor that turns natural-log logits into base-2 ones.
inline constexpr float kLog2e = 1.4426950408889634f;

// Keys and values of one layer for one sequence: per KV head, `num_tokens` rows of head_dim
// floats, row t of head h at base + h * head_stride + t * head_dim.
struct KvView {
  const float* k = nullptr;  // [num_kv_heads, >= num_tokens, head_dim] keys after RoPE
  const float* v = nullptr;  // same layout, values
  int64_t head_stride = 0;   // floats between consecutive KV heads
  int num_tokens = 0;
};

struct DenseDecodeParams {
  const float* q = nullptr;  // [num_q_heads, head_dim] after RoPE
  KvView kv;
  int num_q_heads = 0;
  int num_kv_heads = 0;  // query head h reads KV head h / (num_q_heads / num_kv_heads)
  int head_dim = 0;
  float scale = 0.0f;    // softmax scale, usually 1/sqrt(head_dim)
  float* out = nullptr;  // [num_q_heads, head_dim]
};

// Exact softmax attention of every query head over all num_tokens keys.
void DenseDecodeAttention(const DenseDecodeParams& p);

// The partial of query head row q over tokens [begin, end) of one KV head (used by the dense
// path and by every sparse path for its exact pieces).
void PartialOverTokenRange(const float* q /*[head_dim]*/, const float* k_head /*[T, head_dim]*/,
                           const float* v_head /*[T, head_dim]*/, int head_dim, float scale,
                           int begin, int end, PartialAttention& acc);

// The same over an explicit list of token indices.
void PartialOverTokenList(const float* q, const float* k_head, const float* v_head, int head_dim,
                          float scale, const int32_t* tokens, int count, PartialAttention& acc);

}  // namespace mpa::cpu
