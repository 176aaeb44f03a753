#include "kernels/cpu/multipole/cluster_selection.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace mpa::cpu {
namespace {

struct Result {
  std::vector<uint8_t> selected;
  int64_t tokens;
};

Result Select(const std::vector<float>& scores, const std::vector<int32_t>& counts,
              int64_t budget) {
  Result r{std::vector<uint8_t>(scores.size(), 7), 0};
  ClusterSelectionParams p;
  p.scores = scores.data();
  p.counts = counts.data();
  p.num_clusters = static_cast<int>(scores.size());
  p.token_budget = budget;
  p.selected = r.selected.data();
  r.tokens = SelectClusters(p);
  return r;
}

TEST(ClusterSelectionTest, TakesClustersInScoreOrderSkippingThoseThatDoNotFit) {
  //                 c0    c1    c2    c3    c4
  const std::vector<float> scores = {0.1f, 0.9f, 0.5f, 0.7f, 0.3f};
  const std::vector<int32_t> counts = {2, 4, 3, 5, 1};
  // Rank: c1(4) c3(5) c2(3) c4(1) c0(2). Budget 8: c1 (4), c3 does not fit, c2 (7), c4 (8).
  const Result r = Select(scores, counts, 8);
  EXPECT_EQ(r.selected, (std::vector<uint8_t>{0, 1, 1, 0, 1}));
  EXPECT_EQ(r.tokens, 8);
}

TEST(ClusterSelectionTest, TopClusterLargerThanBudgetIsSelectedAlone) {
  const std::vector<float> scores = {0.2f, 0.9f, 0.1f};
  const std::vector<int32_t> counts = {1, 10, 1};
  const Result r = Select(scores, counts, 3);
  EXPECT_EQ(r.selected, (std::vector<uint8_t>{0, 1, 0}));
  EXPECT_EQ(r.tokens, 10);
}

TEST(ClusterSelectionTest, EverythingFitsSelectsEverything) {
  const std::vector<float> scores = {0.2f, 0.9f, 0.1f, 0.4f};
  const std::vector<int32_t> counts = {3, 1, 2, 4};
  for (int64_t budget : {10, 11, 1000}) {
    const Result r = Select(scores, counts, budget);
    EXPECT_EQ(r.selected, (std::vector<uint8_t>{1, 1, 1, 1})) << budget;
    EXPECT_EQ(r.tokens, 10);
  }
}

TEST(ClusterSelectionTest, ZeroBudgetSelectsNothing) {
  const Result r = Select({0.5f, 0.6f}, {1, 1}, 0);
  EXPECT_EQ(r.selected, (std::vector<uint8_t>{0, 0}));
  EXPECT_EQ(r.tokens, 0);
}

TEST(ClusterSelectionTest, EmptyClustersAreNeverSelectedEvenWithTheTopScore) {
  const std::vector<float> scores = {0.0f, 0.9f, 0.3f};
  const std::vector<int32_t> counts = {0, 0, 2};
  const Result r = Select(scores, counts, 5);
  EXPECT_EQ(r.selected, (std::vector<uint8_t>{0, 0, 1}));
  EXPECT_EQ(r.tokens, 2);
  const Result none = Select({1.0f}, {0}, 5);
  EXPECT_EQ(none.selected, (std::vector<uint8_t>{0}));
  EXPECT_EQ(none.tokens, 0);
}

TEST(ClusterSelectionTest, TiesGoToTheLowerIndex) {
  const std::vector<float> scores = {0.5f, 0.5f, 0.5f};
  const std::vector<int32_t> counts = {2, 2, 2};
  const Result r = Select(scores, counts, 4);
  EXPECT_EQ(r.selected, (std::vector<uint8_t>{1, 1, 0}));
}

TEST(ClusterSelectionTest, NaNScoresRankLast) {
  const std::vector<float> scores = {NAN, 0.1f};
  const std::vector<int32_t> counts = {1, 1};
  const Result r = Select(scores, counts, 1);
  EXPECT_EQ(r.selected, (std::vector<uint8_t>{0, 1}));
}

// Property: on random inputs the selection never exceeds the budget unless the boundary rule
// applies (then it is exactly the top cluster); it reports the tokens it selected; and no
// unselected non-empty cluster would still have fitted (the budget is used greedily).
TEST(ClusterSelectionTest, RandomSelectionsRespectTheBudgetRule) {
  std::mt19937 rng(std::random_device{}());
  for (int trial = 0; trial < 2000; ++trial) {
    const int n = 1 + rng() % 40;
    std::vector<float> scores(n);
    std::vector<int32_t> counts(n);
    int64_t total = 0;
    for (int c = 0; c < n; ++c) {
      scores[c] = static_cast<float>(rng() % 50) / 7.0f;  // frequent ties
      counts[c] = rng() % 4 == 0 ? 0 : 1 + rng() % 30;
      total += counts[c];
    }
    const int64_t budget = rng() % (total + 20);
    const Result r = Select(scores, counts, budget);
    int64_t tokens = 0;
    int top = -1;
    for (int c = 0; c < n; ++c) {
      ASSERT_TRUE(r.selected[c] == 0 || r.selected[c] == 1);
      if (r.selected[c]) {
        ASSERT_GT(counts[c], 0);
        tokens += counts[c];
      }
      if (counts[c] > 0 && (top < 0 || scores[c] > scores[top])) top = c;
    }
    ASSERT_EQ(tokens, r.tokens);
    if (tokens > budget) {
      ASSERT_GT(budget, 0);
      ASSERT_GT(counts[top], budget);
      ASSERT_EQ(tokens, counts[top]);
    } else {
      for (int c = 0; c < n; ++c) {
        if (!r.selected[c] && counts[c] > 0) ASSERT_GT(tokens + counts[c], budget);
      }
    }
    if (budget >= total) ASSERT_EQ(tokens, total);
  }
}

}  // namespace
}  // namespace mpa::cpu
