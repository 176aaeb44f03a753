#include "kernels/cpu/multipole/centroid_lookup.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/attention.h"

namespace mpa::cpu {
namespace {

// score[c] = sum_h exp(s_hc) / sum_j N_j exp(s_hj), in double from the definition.
TEST(CentroidLookupTest, MatchesTheCountWeightedSoftmaxSummedOverTheGroup) {
  std::mt19937 rng(std::random_device{}());
  std::normal_distribution<float> normal;
  for (int group : {1, 2, 4, 8}) {
    const int C = 37, d = 16;
    std::vector<float> q(group * d), k(C * d);
    std::vector<int32_t> counts(C);
    for (float& v : q) v = normal(rng);
    for (float& v : k) v = normal(rng);
    for (int c = 0; c < C; ++c) counts[c] = c % 9 == 4 ? 0 : 1 + rng() % 20;
    std::vector<float> logits2(group * C), scores(C);
    CentroidLookupParams p;
    p.q = q.data();
    p.key_centroids = k.data();
    p.counts = counts.data();
    p.num_clusters = C;
    p.group_size = group;
    p.head_dim = d;
    p.scale = 1.0f / std::sqrt(float(d));
    p.logits2 = logits2.data();
    p.scores = scores.data();
    CentroidLookup(p);
    std::vector<double> expected(C, 0.0);
    for (int h = 0; h < group; ++h) {
      std::vector<double> s(C);
      double denom = 0.0;
      for (int c = 0; c < C; ++c) {
        double dot = 0.0;
        for (int i = 0; i < d; ++i) dot += double(q[h * d + i]) * k[c * d + i];
        s[c] = dot * p.scale;
        if (counts[c] > 0) {
          denom += counts[c] * std::exp(s[c]);
          EXPECT_NEAR(logits2[h * C + c], s[c] * kLog2e, 1e-4 * (1 + std::abs(s[c])));
        } else {
          EXPECT_EQ(logits2[h * C + c], -INFINITY);
        }
      }
      for (int c = 0; c < C; ++c) {
        if (counts[c] > 0) expected[c] += std::exp(s[c]) / denom;
      }
    }
    double mass = 0.0;
    for (int c = 0; c < C; ++c) {
      ASSERT_FALSE(std::isnan(scores[c]));
      EXPECT_NEAR(scores[c], expected[c], 1e-5 * expected[c] + 1e-9) << c;
      mass += counts[c] * double(scores[c]);
    }
    EXPECT_NEAR(mass, group, 1e-4 * group);  // each head's estimate sums to one over tokens
  }
}

TEST(CentroidLookupTest, LargeLogitsDoNotOverflow) {
  const int C = 3, d = 2;
  const std::vector<float> q = {400.0f, 0.0f};
  const std::vector<float> k = {1.0f, 0.0f, 0.9f, 0.0f, -1.0f, 0.0f};
  const std::vector<int32_t> counts = {2, 3, 4};
  std::vector<float> logits2(C), scores(C);
  CentroidLookupParams p{q.data(), k.data(),       counts.data(), C, 1, d,
                         1.0f,     logits2.data(), scores.data()};
  CentroidLookup(p);
  EXPECT_NEAR(scores[0], 0.5f, 1e-6);
  EXPECT_GE(scores[1], 0.0f);
  EXPECT_LT(scores[1], 1e-6);
  EXPECT_FALSE(std::isnan(scores[2]));
}

}  // namespace
}  // namespace mpa::cpu
