#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>

namespace mpa::cpu {

namespace {

float Dot(const float* a, const float* b, int n) {
  float acc = 0.0f;
  for (int i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

}  // namespace

void AccumulatePartial(PartialAttention& acc, float s2, float w, const float* v) {
  const int d = static_cast<int>(acc.o.size());
  if (s2 > acc.m) {
    const float rescale = acc.l == 0.0f ? 0.0f : std::exp2(acc.m - s2);
    for (int i = 0; i < d; ++i) acc.o[i] *= rescale;
    acc.l *= rescale;
    acc.m = s2;
  }
  const float p = w * std::exp2(s2 - acc.m);
  acc.l += p;
  for (int i = 0; i < d; ++i) acc.o[i] += p * v[i];
}

void MergePartial(PartialAttention& acc, const PartialAttention& other) {
  if (other.empty()) return;
  if (acc.empty()) {
    acc = other;
    return;
  }
  const float m = std::max(acc.m, other.m);
  const float a = std::exp2(acc.m - m);
  const float b = std::exp2(other.m - m);
  for (size_t i = 0; i < acc.o.size(); ++i) acc.o[i] = acc.o[i] * a + other.o[i] * b;
  acc.l = acc.l * a + other.l * b;
  acc.m = m;
}

void FinalizePartial(const PartialAttention& p, float* out) {
  const float inv = p.l > 0.0f ? 1.0f / p.l : 0.0f;
  for (size_t i = 0; i < p.o.size(); ++i) out[i] = p.o[i] * inv;
}

void PartialOverTokenRange(const float* q, const float* k_head, const float* v_head, int head_dim,
                           float scale, int begin, int end, PartialAttention& acc) {
  const float s2_scale = scale * kLog2e;
  for (int t = begin; t < end; ++t) {
    const float s2 = Dot(q, k_head + int64_t{t} * head_dim, head_dim) * s2_scale;
    AccumulatePartial(acc, s2, 1.0f, v_head + int64_t{t} * head_dim);
  }
}

void PartialOverTokenList(const float* q, const float* k_head, const float* v_head, int head_dim,
                          float scale, const int32_t* tokens, int count, PartialAttention& acc) {
  const float s2_scale = scale * kLog2e;
  for (int i = 0; i < count; ++i) {
    const int64_t t = tokens[i];
    const float s2 = Dot(q, k_head + t * head_dim, head_dim) * s2_scale;
    AccumulatePartial(acc, s2, 1.0f, v_head + t * head_dim);
  }
}

void DenseDecodeAttention(const DenseDecodeParams& p) {
  const int group = p.num_q_heads / p.num_kv_heads;
  for (int h = 0; h < p.num_q_heads; ++h) {
    const int kvh = h / group;
    PartialAttention acc(p.head_dim);
    PartialOverTokenRange(p.q + int64_t{h} * p.head_dim, p.kv.k + kvh * p.kv.head_stride,
                          p.kv.v + kvh * p.kv.head_stride, p.head_dim, p.scale, 0, p.kv.num_tokens,
                          acc);
    FinalizePartial(acc, p.out + int64_t{h} * p.head_dim);
  }
}

}  // namespace mpa::cpu
