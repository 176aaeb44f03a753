#include "client/latency_stats.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mpa::client {
namespace {

TEST(LatencyStatsTest, PercentilesInterpolateBetweenRanks) {
  // 1..101 shuffled: the q-quantile is exactly 1 + 100 q.
  std::vector<double> v;
  for (int i = 1; i <= 101; ++i) v.push_back(i);
  std::shuffle(v.begin(), v.end(), std::mt19937(std::random_device{}()));
  const Summary s = Summarize(v);
  EXPECT_EQ(s.count, 101u);
  EXPECT_DOUBLE_EQ(s.mean, 51.0);
  EXPECT_DOUBLE_EQ(s.min, 1.0);
  EXPECT_DOUBLE_EQ(s.max, 101.0);
  EXPECT_DOUBLE_EQ(s.p50, 51.0);
  EXPECT_DOUBLE_EQ(s.p90, 91.0);
  EXPECT_DOUBLE_EQ(s.p99, 100.0);
  // Between ranks: [0, 10] at q = 0.25 is 2.5.
  EXPECT_DOUBLE_EQ(Percentile({0.0, 10.0}, 0.25), 2.5);
}

TEST(LatencyStatsTest, RandomSamplesKeepOrderInvariants) {
  std::mt19937 rng(std::random_device{}());
  std::exponential_distribution<double> latency(100.0);
  std::vector<double> v(1 + rng() % 500);
  for (double& x : v) x = latency(rng);
  const Summary s = Summarize(v);
  EXPECT_LE(s.min, s.p50);
  EXPECT_LE(s.p50, s.p90);
  EXPECT_LE(s.p90, s.p99);
  EXPECT_LE(s.p99, s.max);
  EXPECT_GE(s.mean, s.min);
  EXPECT_LE(s.mean, s.max);
  EXPECT_FALSE(std::isnan(s.mean));
}

TEST(LatencyStatsTest, EmptyAndTable) {
  const Summary empty = Summarize({});
  EXPECT_EQ(empty.count, 0u);
  EXPECT_EQ(empty.p99, 0.0);
  const std::string table =
      FormatTable({{"time to first token", Summarize({0.001, 0.003})}}, 1e3, "ms");
  EXPECT_THAT(table, ::testing::HasSubstr("metric (ms)"));
  EXPECT_THAT(table, ::testing::HasSubstr("time to first token"));
  EXPECT_THAT(table, ::testing::HasSubstr("2.000"));  // mean 2 ms
}

}  // namespace
}  // namespace mpa::client
