#include "kernels/cpu/multipole/centroid_approximation.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace mpa::cpu {
namespace {

double RelativeError(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

// A cluster of N_c tokens whose keys all equal the centroid contributes exactly what the
// approximation adds: so N copies of (centroid key, mean value) as real tokens must give the
// same output as the multipole term with multiplicity N.
TEST(CentroidApproximationTest, EqualsNCopiesOfTheCentroidToken) {
  std::mt19937 rng(std::random_device{}());
  std::normal_distribution<float> normal;
  const int C = 20, d = 8;
  std::vector<float> logits2(C), values(C * d);
  std::vector<int32_t> counts(C);
  std::vector<uint8_t> selected(C);
  for (int c = 0; c < C; ++c) {
    logits2[c] = 3.0f * normal(rng);
    counts[c] = c % 7 == 3 ? 0 : 1 + rng() % 12;
    selected[c] = rng() % 3 == 0;
  }
  for (float& v : values) v = normal(rng);
  PartialAttention approx(d), copies(d);
  CentroidApproximationParams p{
      logits2.data(), values.data(), counts.data(), selected.data(), C, d};
  AccumulateCentroidApproximation(p, approx);
  for (int c = 0; c < C; ++c) {
    if (selected[c]) continue;
    for (int n = 0; n < counts[c]; ++n) AccumulatePartial(copies, logits2[c], 1.0f, &values[c * d]);
  }
  std::vector<float> a(d), b(d);
  FinalizePartial(approx, a.data());
  FinalizePartial(copies, b.data());
  EXPECT_LT(RelativeError(a, b), 1e-5);
  EXPECT_NEAR(approx.l * std::exp2(approx.m), copies.l * std::exp2(copies.m),
              1e-5 * copies.l * std::exp2(copies.m));
}

TEST(CentroidApproximationTest, AllSelectedAddsNothing) {
  const std::vector<float> logits2 = {1.0f, 2.0f};
  const std::vector<float> values = {1, 2, 3, 4};
  const std::vector<int32_t> counts = {3, 4};
  const std::vector<uint8_t> selected = {1, 1};
  PartialAttention acc(2);
  AccumulateCentroidApproximation(
      {logits2.data(), values.data(), counts.data(), selected.data(), 2, 2}, acc);
  EXPECT_TRUE(acc.empty());
}

// Merging (o, m, l) partials gives the same result in any order (and any grouping).
TEST(CentroidApproximationTest, MergingPartialsIsOrderIndependent) {
  std::mt19937 rng(std::random_device{}());
  std::normal_distribution<float> normal;
  const int d = 16, pieces = 9;
  std::vector<PartialAttention> parts;
  for (int i = 0; i < pieces; ++i) {
    PartialAttention p(d);
    const int n = i == 4 ? 0 : 1 + rng() % 10;  // one empty partial
    for (int t = 0; t < n; ++t) {
      std::vector<float> v(d);
      for (float& x : v) x = normal(rng);
      AccumulatePartial(p, 6.0f * normal(rng), 1.0f + rng() % 5, v.data());
    }
    parts.push_back(p);
  }
  auto merged = [&](const std::vector<int>& order) {
    PartialAttention acc(d);
    for (int i : order) MergePartial(acc, parts[i]);
    std::vector<float> out(d);
    FinalizePartial(acc, out.data());
    return out;
  };
  std::vector<int> order(pieces);
  for (int i = 0; i < pieces; ++i) order[i] = i;
  const std::vector<float> reference = merged(order);
  for (float x : reference) ASSERT_FALSE(std::isnan(x));
  for (int trial = 0; trial < 50; ++trial) {
    std::shuffle(order.begin(), order.end(), rng);
    EXPECT_LT(RelativeError(merged(order), reference), 1e-6);
  }
  // A tree of merges equals the left fold.
  PartialAttention left(d), right(d);
  for (int i = 0; i < pieces / 2; ++i) MergePartial(left, parts[i]);
  for (int i = pieces / 2; i < pieces; ++i) MergePartial(right, parts[i]);
  MergePartial(right, left);
  std::vector<float> tree(d);
  FinalizePartial(right, tree.data());
  EXPECT_LT(RelativeError(tree, reference), 1e-6);
}

}  // namespace
}  // namespace mpa::cpu
