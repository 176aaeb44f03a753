#include "kernels/cpu/multipole/kmeans.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace mpa::cpu {
namespace {

std::vector<float> RandomPoints(int n, int d, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> x(static_cast<size_t>(n) * d);
  for (float& v : x) v = normal(rng);
  return x;
}

double Inertia(const std::vector<float>& x, const std::vector<float>& c,
               const std::vector<int32_t>& labels, int d) {
  double s = 0.0;
  for (size_t i = 0; i < labels.size(); ++i) {
    s += SquaredDistance(&x[i * d], &c[size_t(labels[i]) * d], d);
  }
  return s;
}

struct Clustering {
  std::vector<float> centroids;
  std::vector<int32_t> labels;
};

Clustering Cluster(const std::vector<float>& x, int n, int d, int k, int iterations, uint64_t seed,
                   const float* weights = nullptr) {
  Clustering r{std::vector<float>(size_t(k) * d), std::vector<int32_t>(n)};
  KMeansParams p;
  p.points = x.data();
  p.weights = weights;
  p.num_points = n;
  p.dim = d;
  p.num_clusters = k;
  p.iterations = iterations;
  p.seed = seed;
  p.centroids = r.centroids.data();
  p.labels = r.labels.data();
  KMeansLloyd(p);
  return r;
}

TEST(KMeansTest, LabelsAreNearestAndCentroidsAreMeansWithNoEmptyCluster) {
  std::random_device rd;
  const uint32_t draw = rd();
  for (int d : {3, 8, 17}) {
    const int n = 301, k = 23;
    const std::vector<float> x = RandomPoints(n, d, draw + d);
    const Clustering r = Cluster(x, n, d, k, 6, draw);
    std::vector<double> sums(size_t(k) * d, 0.0);
    std::vector<int> counts(k, 0);
    for (int i = 0; i < n; ++i) {
      ASSERT_GE(r.labels[i], 0);
      ASSERT_LT(r.labels[i], k);
      ++counts[r.labels[i]];
      for (int j = 0; j < d; ++j) sums[size_t(r.labels[i]) * d + j] += x[size_t(i) * d + j];
    }
    for (int c = 0; c < k; ++c) {
      ASSERT_GT(counts[c], 0) << "cluster " << c << " empty, seed " << draw;
      for (int j = 0; j < d; ++j) {
        const double mean = sums[size_t(c) * d + j] / counts[c];
        ASSERT_NEAR(r.centroids[size_t(c) * d + j], mean, 1e-5 * (1 + std::abs(mean)));
      }
    }
    // One more assignment pass against the returned centroids moves (almost) nobody: Lloyd
    // after 6 passes; ties excluded, a label may only change if it strictly improves.
    for (int i = 0; i < n; ++i) {
      const int best = NearestCentroid(&x[size_t(i) * d], r.centroids.data(), k, d);
      const float mine =
          SquaredDistance(&x[size_t(i) * d], &r.centroids[size_t(r.labels[i]) * d], d);
      const float theirs = SquaredDistance(&x[size_t(i) * d], &r.centroids[size_t(best) * d], d);
      ASSERT_LE(theirs, mine);
    }
  }
}

TEST(KMeansTest, SameSeedSameClustersDifferentSeedDifferentInit) {
  const int n = 200, d = 8, k = 12;
  const std::vector<float> x = RandomPoints(n, d, std::random_device{}());
  const Clustering a = Cluster(x, n, d, k, 5, 77), b = Cluster(x, n, d, k, 5, 77);
  EXPECT_EQ(a.labels, b.labels);
  EXPECT_EQ(a.centroids, b.centroids);
  const Clustering c = Cluster(x, n, d, k, 0, 78), e = Cluster(x, n, d, k, 0, 77);
  EXPECT_NE(c.centroids, e.centroids);
}

TEST(KMeansTest, LloydPassesNeverIncreaseInertia) {
  const int n = 400, d = 6, k = 16;
  const std::vector<float> x = RandomPoints(n, d, std::random_device{}());
  double previous = INFINITY;
  for (int it : {1, 2, 4, 8}) {
    const Clustering r = Cluster(x, n, d, k, it, 5);
    const double inertia = Inertia(x, r.centroids, r.labels, d);
    EXPECT_LE(inertia, previous * (1 + 1e-6)) << it << " iterations";
    previous = inertia;
  }
}

TEST(KMeansTest, EmptyClusterIsReseededFromFarthestPoint) {
  // Start from centroids far from the data so every point picks cluster 0 and 1..3 are empty.
  const int n = 40, d = 2, k = 4;
  const std::vector<float> x = RandomPoints(n, d, std::random_device{}());
  std::vector<float> c(size_t(k) * d, 1000.0f);
  c[0] = c[1] = 0.0f;
  std::vector<int32_t> labels(n);
  KMeansParams p;
  p.points = x.data();
  p.num_points = n;
  p.dim = d;
  p.num_clusters = k;
  p.iterations = 1;
  p.seed_from_points = false;
  p.centroids = c.data();
  p.labels = labels.data();
  KMeansLloyd(p);
  std::vector<int> counts(k, 0);
  for (int l : labels) ++counts[l];
  for (int i = 0; i < k; ++i) EXPECT_GT(counts[i], 0) << "cluster " << i;
}

TEST(KMeansTest, WeightedCentroidsAreWeightedMeans) {
  const int n = 50, d = 4, k = 1;
  const std::vector<float> x = RandomPoints(n, d, std::random_device{}());
  std::vector<float> w(n);
  for (int i = 0; i < n; ++i) w[i] = 1.0f + i % 7;
  const Clustering r = Cluster(x, n, d, k, 2, 1, w.data());
  for (int j = 0; j < d; ++j) {
    double num = 0, den = 0;
    for (int i = 0; i < n; ++i) {
      num += w[i] * x[size_t(i) * d + j];
      den += w[i];
    }
    EXPECT_NEAR(r.centroids[j], num / den, 1e-5);
  }
}

TEST(KMeansTest, SampleDistinctGivesDistinctIndices) {
  std::vector<int32_t> out(30);
  SampleDistinct(31, 30, 9, out.data());
  std::vector<int> seen(31, 0);
  for (int i : out) {
    ASSERT_GE(i, 0);
    ASSERT_LT(i, 31);
    EXPECT_EQ(seen[i]++, 0);
  }
}

}  // namespace
}  // namespace mpa::cpu
