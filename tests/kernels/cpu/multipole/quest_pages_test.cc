#include "kernels/cpu/multipole/quest_pages.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace mpa::cpu {
namespace {

// The Quest score of a page bounds every logit of every group head in it from above, and is
// attained when the page holds a single token.
TEST(QuestPagesTest, ScoreBoundsEveryLogitInThePage) {
  std::mt19937 rng(std::random_device{}());
  std::normal_distribution<float> normal;
  const int T = 150, d = 8, group = 2, P = 16, begin = 7, end = 142;
  std::vector<float> k(T * d), q(group * d);
  for (float& x : k) x = normal(rng);
  for (float& x : q) x = normal(rng);
  const int pages = (end - begin + P - 1) / P;
  std::vector<float> mn(pages * d), mx(pages * d), scores(pages);
  QuestPageBounds({k.data(), begin, end, P, 0, pages, d, mn.data(), mx.data()});
  QuestPageScores({q.data(), mn.data(), mx.data(), pages, group, d, scores.data()});
  for (int page = 0; page < pages; ++page) {
    float best = -INFINITY;
    for (int t = begin + page * P; t < std::min(end, begin + (page + 1) * P); ++t) {
      for (int h = 0; h < group; ++h) {
        float dot = 0.0f;
        for (int i = 0; i < d; ++i) dot += q[h * d + i] * k[t * d + i];
        best = std::max(best, dot);
      }
    }
    ASSERT_FALSE(std::isnan(scores[page]));
    EXPECT_GE(scores[page], best - 1e-5f) << page;
  }
  // A one-token page: the bound is the logit itself.
  std::vector<float> mn1(d), mx1(d);
  float s1 = 0.0f;
  QuestPageBounds({k.data(), 3, 4, 1, 0, 1, d, mn1.data(), mx1.data()});
  QuestPageScores({q.data(), mn1.data(), mx1.data(), 1, 1, d, &s1});
  float dot = 0.0f;
  for (int i = 0; i < d; ++i) dot += q[i] * k[3 * d + i];
  EXPECT_NEAR(s1, dot, 1e-5f);
}

}  // namespace
}  // namespace mpa::cpu
