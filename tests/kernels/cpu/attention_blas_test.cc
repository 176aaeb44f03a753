// The BLAS attention fast path against the plain reference, on awkward sizes.
#include "kernels/cpu/attention_blas.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace mpa::cpu {
namespace {

std::vector<float> Random(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

double RelativeL2(const std::vector<float>& a, const std::vector<float>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i])) return INFINITY;
    num += (a[i] - ref[i]) * double(a[i] - ref[i]);
    den += double(ref[i]) * ref[i];
  }
  return std::sqrt(num / den);
}

struct Shape {
  int head_dim, num_kv_heads, group, tokens;
};

class AttentionBlasTest : public ::testing::TestWithParam<Shape> {};

// fp32 throughout; BLAS sums in a different order than the reference loop, so the outputs
// agree to rounding: 1e-5 relative L2.
constexpr double kTolerance = 1e-5;

TEST_P(AttentionBlasTest, DecodeMatchesReference) {
  const Shape s = GetParam();
  std::mt19937 rng(s.head_dim * 131 + s.group * 17 + s.tokens);
  const int heads = s.num_kv_heads * s.group;
  const int capacity = s.tokens + 5;  // rows past num_tokens hold garbage that must be ignored
  auto k = Random(size_t(s.num_kv_heads) * capacity * s.head_dim, rng, 2.0f);
  auto v = Random(k.size(), rng);
  auto q = Random(size_t(heads) * s.head_dim, rng);
  DenseDecodeParams p;
  p.q = q.data();
  p.kv = {k.data(), v.data(), int64_t{capacity} * s.head_dim, s.tokens};
  p.num_q_heads = heads;
  p.num_kv_heads = s.num_kv_heads;
  p.head_dim = s.head_dim;
  p.scale = 1.0f / std::sqrt(float(s.head_dim));
  std::vector<float> ref(q.size()), out(q.size(), NAN);
  p.out = ref.data();
  DenseDecodeAttention(p);
  p.out = out.data();
  DenseDecodeAttentionBlas(p);
  EXPECT_LT(RelativeL2(out, ref), kTolerance);
}

TEST_P(AttentionBlasTest, CausalPrefillMatchesRowByRowReference) {
  const Shape s = GetParam();
  std::mt19937 rng(s.head_dim * 7 + s.group * 3 + s.tokens);
  const int heads = s.num_kv_heads * s.group;
  const int first = s.tokens / 3;  // a cached prefix, then new rows
  const int rows = s.tokens - first;
  const int capacity = s.tokens + 3;
  auto k = Random(size_t(s.num_kv_heads) * capacity * s.head_dim, rng, 2.0f);
  auto v = Random(k.size(), rng);
  auto q = Random(size_t(rows) * heads * s.head_dim, rng);
  const KvView kv{k.data(), v.data(), int64_t{capacity} * s.head_dim, s.tokens};
  const float scale = 1.0f / std::sqrt(float(s.head_dim));
  std::vector<float> ref(q.size()), out(q.size(), NAN);
  for (int r = 0; r < rows; ++r) {
    DenseDecodeParams p;
    p.q = &q[size_t(r) * heads * s.head_dim];
    p.kv = kv;
    p.kv.num_tokens = first + r + 1;
    p.num_q_heads = heads;
    p.num_kv_heads = s.num_kv_heads;
    p.head_dim = s.head_dim;
    p.scale = scale;
    p.out = &ref[size_t(r) * heads * s.head_dim];
    DenseDecodeAttention(p);
  }
  CausalPrefillParams p;
  p.q = q.data();
  p.kv = kv;
  p.num_rows = rows;
  p.first_position = first;
  p.num_q_heads = heads;
  p.num_kv_heads = s.num_kv_heads;
  p.head_dim = s.head_dim;
  p.scale = scale;
  p.out = out.data();
  CausalPrefillAttentionBlas(p);
  EXPECT_LT(RelativeL2(out, ref), kTolerance);
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionBlasTest,
                         ::testing::Values(Shape{8, 4, 2, 1}, Shape{8, 1, 1, 37},
                                           Shape{128, 2, 4, 301}, Shape{64, 3, 8, 700},
                                           Shape{128, 8, 1, 513}, Shape{16, 2, 3, 2},
                                           Shape{8, 2, 5, 270}));

}  // namespace
}  // namespace mpa::cpu
