#include "kernels/cpu/attention_blas.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace mpa::cpu {

namespace {

// Rows of `rows` x `cols` scores (row r valid up to valid[r] exclusive) to probabilities.
void SoftmaxRows(float* s, int rows, int cols, const int* valid) {
  for (int r = 0; r < rows; ++r) {
    float* row = s + static_cast<int64_t>(r) * cols;
    const int n = valid[r];
    const float max = *std::max_element(row, row + n);
    float sum = 0.0f;
    for (int j = 0; j < n; ++j) {
      row[j] = std::exp(row[j] - max);
      sum += row[j];
    }
    const float inv = 1.0f / sum;
    for (int j = 0; j < n; ++j) row[j] *= inv;
    std::fill(row + n, row + cols, 0.0f);
  }
}

// Attention of `rows` query rows (row stride q_stride) against the first `cols` tokens of one
// KV head; row r sees valid[r] tokens. out rows have stride out_stride.
void AttendRows(const float* q, int64_t q_stride, int rows, const float* k, const float* v,
                int cols, int head_dim, float scale, const int* valid, float* out,
                int64_t out_stride, std::vector<float>& scores) {
  scores.resize(static_cast<size_t>(rows) * cols);
  // scores[rows, cols] = scale * q[rows, hd] . k[cols, hd]^T
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, cols, head_dim, scale, q, q_stride, k,
              head_dim, 0.0f, scores.data(), cols);
  SoftmaxRows(scores.data(), rows, cols, valid);
  // out[rows, hd] = scores[rows, cols] . v[cols, hd]
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, head_dim, cols, 1.0f, scores.data(),
              cols, v, head_dim, 0.0f, out, out_stride);
}

}  // namespace

void DenseDecodeAttentionBlas(const DenseDecodeParams& p) {
  const int group = p.num_q_heads / p.num_kv_heads;
  std::vector<float> scores;
  std::vector<int> valid(group, p.kv.num_tokens);
  // The query heads of one GQA group share the KV head: one product for the whole group.
  for (int kvh = 0; kvh < p.num_kv_heads; ++kvh) {
    const int64_t first = int64_t{kvh} * group * p.head_dim;
    AttendRows(p.q + first, p.head_dim, group, p.kv.k + kvh * p.kv.head_stride,
               p.kv.v + kvh * p.kv.head_stride, p.kv.num_tokens, p.head_dim, p.scale, valid.data(),
               p.out + first, p.head_dim, scores);
  }
}

void CausalPrefillAttentionBlas(const CausalPrefillParams& p) {
  const int group = p.num_q_heads / p.num_kv_heads;
  const int64_t row_stride = int64_t{p.num_q_heads} * p.head_dim;
  // Chunks of rows bound the score buffer ([chunk, tokens] floats) for long prompts.
  constexpr int kChunk = 256;
  std::vector<float> scores;
  std::vector<int> valid(kChunk);
  for (int r0 = 0; r0 < p.num_rows; r0 += kChunk) {
    const int rows = std::min(kChunk, p.num_rows - r0);
    const int cols = p.first_position + r0 + rows;  // tokens the last row of the chunk sees
    for (int i = 0; i < rows; ++i) valid[i] = p.first_position + r0 + i + 1;
    for (int h = 0; h < p.num_q_heads; ++h) {
      const int kvh = h / group;
      const int64_t offset = int64_t{r0} * row_stride + int64_t{h} * p.head_dim;
      AttendRows(p.q + offset, row_stride, rows, p.kv.k + kvh * p.kv.head_stride,
                 p.kv.v + kvh * p.kv.head_stride, cols, p.head_dim, p.scale, valid.data(),
                 p.out + offset, row_stride, scores);
    }
  }
}

}  // namespace mpa::cpu
