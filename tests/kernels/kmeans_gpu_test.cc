// Batched k-means on the GPU (kernels/cuda/multipole/kmeans.h) against the CPU twin
// (kernels/cpu/multipole/kmeans.h): the assignment pass (every disagreement must be a near tie in
// exact arithmetic), whole runs on well-separated data (identical labels and centroids), the
// re-seeding of an emptied cluster, and the invariants of every run (counts are the label
// histogram, centroids the means of their members, no empty cluster).
#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/multipole/kmeans.h"
#include "kernels/cuda/multipole/kmeans.h"
#include "tests/kernels/cuda_test_util.h"

namespace mpa::cuda {
namespace {

using testing::DeviceBuffer;

struct Problem {
  int points;
  int clusters;
};

// Host copies of a batch of problems: points are bf16 values (as the cache holds keys).
struct Batch {
  int dim = 0;
  std::vector<KMeansProblem> problems;
  std::vector<float> points;  // [total_points, dim]
  std::vector<uint16_t> point_bits;
  int64_t total_points = 0, total_clusters = 0;
  int max_points = 0, max_clusters = 0;
};

// Points around `blobs` centres per problem (spread `noise`), or plain N(0, 1) when blobs is 0.
Batch MakeBatch(const std::vector<Problem>& sizes, int dim, int blobs, float noise,
                std::mt19937_64& rng) {
  Batch b;
  b.dim = dim;
  for (const Problem& s : sizes) {
    KMeansProblem pr;
    pr.point_begin = b.total_points;
    pr.num_points = s.points;
    pr.cluster_begin = b.total_clusters;
    pr.num_clusters = s.clusters;
    b.problems.push_back(pr);
    b.total_points += s.points;
    b.total_clusters += s.clusters;
    b.max_points = std::max(b.max_points, s.points);
    b.max_clusters = std::max(b.max_clusters, s.clusters);
    std::vector<float> centres =
        testing::RandomNormal(static_cast<size_t>(std::max(blobs, 1)) * dim, rng, 4.0f);
    std::vector<float> x = testing::RandomNormal(static_cast<size_t>(s.points) * dim, rng, noise);
    std::uniform_int_distribution<int> pick(0, std::max(blobs, 1) - 1);
    for (int i = 0; blobs > 0 && i < s.points; ++i) {
      const int c = pick(rng);
      for (int d = 0; d < dim; ++d) x[static_cast<size_t>(i) * dim + d] += centres[c * dim + d];
    }
    b.points.insert(b.points.end(), x.begin(), x.end());
  }
  b.point_bits = testing::ToBf16(b.points);
  return b;
}

// Well-separated problems: one blob per cluster, and the points the CPU draws as seeds (for
// `seed`, SampleDistinct as in Seeds below) placed one in each blob, so no blob holds two seeds.
// (With more seeds than blobs allow, the points of a blob that holds two seeds sit between two
// centroids a fraction of the noise apart, and |x|^2 + |c|^2 - 2 x.c cannot rank them the way
// the reference's sum of squared differences does.)
Batch MakeSeparatedBatch(const std::vector<Problem>& sizes, int dim, float noise, uint64_t seed,
                         std::mt19937_64& rng) {
  Batch b = MakeBatch(sizes, dim, 0, noise, rng);
  for (size_t i = 0; i < b.problems.size(); ++i) {
    const KMeansProblem& pr = b.problems[i];
    std::vector<int32_t> picks(pr.num_clusters);
    cpu::SampleDistinct(pr.num_points, pr.num_clusters, seed + i, picks.data());
    const std::vector<float> centres =
        testing::RandomNormal(static_cast<size_t>(pr.num_clusters) * dim, rng, 4.0f);
    std::uniform_int_distribution<int> pick(0, pr.num_clusters - 1);
    std::vector<int> blob(pr.num_points);
    for (int& x : blob) x = pick(rng);
    for (int j = 0; j < pr.num_clusters; ++j) blob[picks[j]] = j;
    for (int p = 0; p < pr.num_points; ++p) {
      float* x = b.points.data() + (pr.point_begin + p) * dim;
      for (int d = 0; d < dim; ++d) x[d] += centres[blob[p] * dim + d];
    }
  }
  b.point_bits = testing::ToBf16(b.points);
  return b;
}

double Distance2(const float* a, const float* c, int dim) {
  double acc = 0.0;
  for (int d = 0; d < dim; ++d) acc += (double(a[d]) - c[d]) * (double(a[d]) - c[d]);
  return acc;
}

struct GpuResult {
  std::vector<float> centroids;
  std::vector<int32_t> labels, counts;
};

GpuResult RunGpu(const Batch& b, const std::vector<int32_t>* seeds, const std::vector<float>& start,
                 int iterations, bool cuda_core_assign = false,
                 const std::vector<float>* weights = nullptr) {
  DeviceBuffer<float> weight_buffer(weights ? *weights : std::vector<float>(1));
  DeviceBuffer<uint16_t> points(b.point_bits);
  DeviceBuffer<KMeansProblem> problems(b.problems);
  DeviceBuffer<float> centroids(start.empty() ? std::vector<float>(b.total_clusters * b.dim)
                                              : start);
  DeviceBuffer<int32_t> labels(b.total_points), counts(b.total_clusters);
  DeviceBuffer<int32_t> seed_buffer(seeds ? *seeds : std::vector<int32_t>(1));
  const size_t bytes = KMeansWorkspaceBytes(b.total_points, b.total_clusters, b.dim);
  DeviceBuffer<char> ws(bytes);
  KMeansParams p;
  p.points = reinterpret_cast<const bf16*>(points.get());
  p.problems = problems.get();
  p.num_problems = static_cast<int>(b.problems.size());
  p.head_dim = b.dim;
  p.total_points = b.total_points;
  p.total_clusters = b.total_clusters;
  p.max_points = b.max_points;
  p.max_clusters = b.max_clusters;
  p.seeds = seeds ? seed_buffer.get() : nullptr;
  p.iterations = iterations;
  p.centroids = centroids.get();
  p.labels = labels.get();
  p.counts = counts.get();
  p.workspace = ws.get();
  p.workspace_bytes = bytes;
  p.cuda_core_assign = cuda_core_assign;
  p.weights = weights ? weight_buffer.get() : nullptr;
  EXPECT_EQ(KMeansLloyd(p, nullptr), cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  return {centroids.Download(), labels.Download(), counts.Download()};
}

// Seeds as the CPU draws them (SampleDistinct with a per-problem seed).
std::vector<int32_t> Seeds(const Batch& b, uint64_t seed) {
  std::vector<int32_t> out;
  for (size_t i = 0; i < b.problems.size(); ++i) {
    std::vector<int32_t> picks(b.problems[i].num_clusters);
    cpu::SampleDistinct(b.problems[i].num_points, b.problems[i].num_clusters, seed + i,
                        picks.data());
    out.insert(out.end(), picks.begin(), picks.end());
  }
  return out;
}

// Counts are the histogram of the labels and centroids the (weighted) means of their members.
void ExpectConsistent(const Batch& b, const GpuResult& r,
                      const std::vector<float>* weights = nullptr) {
  for (const KMeansProblem& pr : b.problems) {
    std::vector<int> hist(pr.num_clusters, 0);
    std::vector<double> sums(static_cast<size_t>(pr.num_clusters) * b.dim, 0.0);
    std::vector<double> mass(pr.num_clusters, 0.0);
    for (int i = 0; i < pr.num_points; ++i) {
      const int c = r.labels[pr.point_begin + i];
      ASSERT_GE(c, 0);
      ASSERT_LT(c, pr.num_clusters);
      ++hist[c];
      const double w = weights ? (*weights)[pr.point_begin + i] : 1.0;
      mass[c] += w;
      for (int d = 0; d < b.dim; ++d) {
        sums[static_cast<size_t>(c) * b.dim + d] += w * b.points[(pr.point_begin + i) * b.dim + d];
      }
    }
    for (int c = 0; c < pr.num_clusters; ++c) {
      EXPECT_EQ(r.counts[pr.cluster_begin + c], hist[c]) << "cluster " << c;
      if (pr.num_points >= pr.num_clusters) EXPECT_GT(hist[c], 0) << "cluster " << c << " empty";
      for (int d = 0; hist[c] > 0 && d < b.dim; ++d) {
        const double want = sums[static_cast<size_t>(c) * b.dim + d] / mass[c];
        EXPECT_NEAR(r.centroids[(pr.cluster_begin + c) * b.dim + d], want,
                    1e-4 * (1.0 + std::fabs(want)));
      }
    }
  }
}

TEST(KMeansGpuTest, AssignmentDisagreesOnlyOnNearTies) {
  MPA_SKIP_WITHOUT_GPU();
  // Head dims 64 and 128 run the tensor-core assignment unless the CUDA-core one is asked for.
  for (const auto& [dim, cuda_core] :
       std::vector<std::pair<int, bool>>{{8, false}, {64, false}, {128, false}, {128, true}}) {
    const uint64_t seed = testing::FreshSeed();
    SCOPED_TRACE("dim " + std::to_string(dim) + (cuda_core ? " cuda-core" : "") + " seed " +
                 std::to_string(seed));
    std::mt19937_64 rng(seed);
    const Batch b = MakeBatch({{1000, 37}, {129, 129}, {4100, 300}, {65, 1}}, dim, 0, 1.0f, rng);
    std::vector<float> start = testing::RandomNormal(b.total_clusters * dim, rng);
    const GpuResult r = RunGpu(b, nullptr, start, 0, cuda_core);
    int disagreements = 0;
    for (const KMeansProblem& pr : b.problems) {
      const float* cents = start.data() + pr.cluster_begin * dim;
      for (int i = 0; i < pr.num_points; ++i) {
        const float* x = b.points.data() + (pr.point_begin + i) * dim;
        const int want = cpu::NearestCentroid(x, cents, pr.num_clusters, dim);
        const int got = r.labels[pr.point_begin + i];
        if (got == want) continue;
        ++disagreements;
        const double dg = Distance2(x, cents + static_cast<size_t>(got) * dim, dim);
        const double dw = Distance2(x, cents + static_cast<size_t>(want) * dim, dim);
        double scale = 0.0;
        for (int d = 0; d < dim; ++d) scale += double(x[d]) * x[d];
        EXPECT_LE(std::fabs(dg - dw), 1e-5 * (scale + dw) + 1e-6) << "point " << i;
      }
    }
    EXPECT_LE(disagreements, 5);
  }
}

// Every problem of a GPU run against the CPU twin's run from the same seeds (problem i seeded with
// seed + i, as Seeds draws them): identical labels, centroids within 1e-4.
void ExpectMatchesCpu(const Batch& b, const GpuResult& r, uint64_t seed, int iterations,
                      const std::vector<float>* weights = nullptr) {
  const int dim = b.dim;
  for (size_t i = 0; i < b.problems.size(); ++i) {
    const KMeansProblem& pr = b.problems[i];
    std::vector<float> cents(static_cast<size_t>(pr.num_clusters) * dim);
    std::vector<int32_t> labels(pr.num_points);
    cpu::KMeansParams kp;
    kp.points = b.points.data() + pr.point_begin * dim;
    kp.weights = weights ? weights->data() + pr.point_begin : nullptr;
    kp.num_points = pr.num_points;
    kp.dim = dim;
    kp.num_clusters = pr.num_clusters;
    kp.iterations = iterations;
    kp.seed = seed + i;
    kp.centroids = cents.data();
    kp.labels = labels.data();
    cpu::KMeansLloyd(kp);
    int mismatched = 0;
    for (int j = 0; j < pr.num_points; ++j) mismatched += labels[j] != r.labels[pr.point_begin + j];
    EXPECT_EQ(mismatched, 0) << "problem " << i << " iterations " << iterations;
    for (size_t j = 0; j < cents.size(); ++j) {
      EXPECT_NEAR(r.centroids[pr.cluster_begin * dim + j], cents[j],
                  1e-4 * (1.0 + std::fabs(cents[j])));
    }
  }
}

TEST(KMeansGpuTest, WellSeparatedRunsMatchTheCpu) {
  MPA_SKIP_WITHOUT_GPU();
  for (int dim : {8, 64, 128}) {
    const uint64_t seed = testing::FreshSeed();
    SCOPED_TRACE("dim " + std::to_string(dim) + " seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    const Batch b = MakeSeparatedBatch({{600, 12}, {2000, 40}, {333, 7}}, dim, 0.05f, seed, rng);
    const std::vector<int32_t> seeds = Seeds(b, seed);
    for (int iterations : {1, 3, 10}) {
      const GpuResult r = RunGpu(b, &seeds, {}, iterations);
      ExpectConsistent(b, r);
      ExpectMatchesCpu(b, r, seed, iterations);
    }
  }
}

// Weighted points (the coarse level of two levels clusters fine centroids weighted by their token
// counts): the same labels and weighted means as the CPU twin's weighted run.
TEST(KMeansGpuTest, WeightedRunsMatchTheCpu) {
  MPA_SKIP_WITHOUT_GPU();
  for (int dim : {8, 128}) {
    const uint64_t seed = testing::FreshSeed();
    SCOPED_TRACE("dim " + std::to_string(dim) + " seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    const Batch b = MakeSeparatedBatch({{600, 12}, {1024, 128}, {77, 7}}, dim, 0.05f, seed, rng);
    std::vector<float> weights(b.total_points);
    std::uniform_int_distribution<int> tokens(1, 30);
    for (float& w : weights) w = static_cast<float>(tokens(rng));
    const std::vector<int32_t> seeds = Seeds(b, seed);
    for (int iterations : {1, 5}) {
      const GpuResult r = RunGpu(b, &seeds, {}, iterations, false, &weights);
      ExpectConsistent(b, r, &weights);
      ExpectMatchesCpu(b, r, seed, iterations, &weights);
    }
  }
}

TEST(KMeansGpuTest, ReseedsAnEmptiedClusterLikeTheCpu) {
  MPA_SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(7);
  Batch b = MakeBatch({{300, 6}}, 64, 6, 0.1f, rng);
  // Points 0 and 1 identical and both seeds: cluster 1 loses every tie to cluster 0 and empties.
  std::copy_n(b.points.begin(), 64, b.points.begin() + 64);
  b.point_bits = testing::ToBf16(b.points);
  const std::vector<int32_t> seeds = {0, 1, 50, 100, 150, 200};
  std::vector<float> cents(6 * 64);
  for (int c = 0; c < 6; ++c) {
    std::copy_n(b.points.begin() + seeds[c] * 64, 64, cents.begin() + c * 64);
  }
  const GpuResult r = RunGpu(b, &seeds, {}, 1);
  ExpectConsistent(b, r);
  std::vector<int32_t> labels(300);
  cpu::KMeansParams kp;
  kp.points = b.points.data();
  kp.num_points = 300;
  kp.dim = 64;
  kp.num_clusters = 6;
  kp.iterations = 1;
  kp.seed_from_points = false;
  kp.centroids = cents.data();
  kp.labels = labels.data();
  cpu::KMeansLloyd(kp);
  EXPECT_EQ(std::count(r.labels.begin(), r.labels.end(), 1), 1);
  EXPECT_EQ(r.labels, labels);
}

TEST(KMeansGpuTest, RejectsBadShapes) {
  MPA_SKIP_WITHOUT_GPU();
  KMeansParams p;
  EXPECT_EQ(KMeansLloyd(p, nullptr), cudaErrorInvalidValue);
}

}  // namespace
}  // namespace mpa::cuda
