#include "kernels/cpu/multipole/kmeans.h"

#include <algorithm>
#include <numeric>
#include <vector>

namespace mpa::cpu {

float SquaredDistance(const float* a, const float* b, int dim) {
  float acc = 0.0f;
  for (int i = 0; i < dim; ++i) {
    const float d = a[i] - b[i];
    acc += d * d;
  }
  return acc;
}

int NearestCentroid(const float* point, const float* centroids, int num_clusters, int dim) {
  int best = 0;
  float best_d = SquaredDistance(point, centroids, dim);
  for (int c = 1; c < num_clusters; ++c) {
    const float d = SquaredDistance(point, centroids + int64_t{c} * dim, dim);
    if (d < best_d) {
      best_d = d;
      best = c;
    }
  }
  return best;
}

void SampleDistinct(int n, int count, uint64_t seed, int32_t* out) {
  std::vector<int32_t> pool(n);
  std::iota(pool.begin(), pool.end(), 0);
  SplitMix64 rng(seed);
  for (int i = 0; i < count; ++i) {
    const int j = i + static_cast<int>(rng.Below(static_cast<uint64_t>(n - i)));
    std::swap(pool[i], pool[j]);
    out[i] = pool[i];
  }
}

namespace {

void Assign(const KMeansParams& p) {
  for (int i = 0; i < p.num_points; ++i) {
    p.labels[i] =
        NearestCentroid(p.points + int64_t{i} * p.dim, p.centroids, p.num_clusters, p.dim);
  }
}

// Centroids <- weighted means of their members; empty clusters take the point farthest from its
// centroid (among clusters that keep at least one member), which then joins them.
void UpdateMeans(const KMeansParams& p) {
  const int d = p.dim;
  std::vector<double> sums(int64_t{p.num_clusters} * d, 0.0);
  std::vector<double> mass(p.num_clusters, 0.0);
  std::vector<int> members(p.num_clusters, 0);
  for (int i = 0; i < p.num_points; ++i) {
    const int c = p.labels[i];
    const double w = p.weights ? p.weights[i] : 1.0;
    const float* x = p.points + int64_t{i} * d;
    for (int j = 0; j < d; ++j) sums[int64_t{c} * d + j] += w * x[j];
    mass[c] += w;
    ++members[c];
  }
  for (int c = 0; c < p.num_clusters; ++c) {
    if (members[c] > 0) continue;
    // Farthest point among clusters that would not be emptied by losing it.
    int far = -1;
    float far_d = -1.0f;
    for (int i = 0; i < p.num_points; ++i) {
      const int owner = p.labels[i];
      if (members[owner] < 2) continue;
      const float* x = p.points + int64_t{i} * d;
      const float* centre = p.centroids + int64_t{owner} * d;
      const float dist = SquaredDistance(x, centre, d);
      if (dist > far_d) {
        far_d = dist;
        far = i;
      }
    }
    if (far < 0) break;  // fewer points than clusters: nothing left to move
    const int owner = p.labels[far];
    const double w = p.weights ? p.weights[far] : 1.0;
    const float* x = p.points + int64_t{far} * d;
    for (int j = 0; j < d; ++j) {
      sums[int64_t{owner} * d + j] -= w * x[j];
      sums[int64_t{c} * d + j] = w * x[j];
    }
    mass[owner] -= w;
    mass[c] = w;
    --members[owner];
    members[c] = 1;
    p.labels[far] = c;
  }
  for (int c = 0; c < p.num_clusters; ++c) {
    if (members[c] == 0 || mass[c] <= 0.0) continue;
    for (int j = 0; j < d; ++j) {
      p.centroids[int64_t{c} * d + j] = static_cast<float>(sums[int64_t{c} * d + j] / mass[c]);
    }
  }
}

}  // namespace

void KMeansLloyd(const KMeansParams& p) {
  if (p.num_points <= 0 || p.num_clusters <= 0) return;
  if (p.seed_from_points) {
    std::vector<int32_t> picks(p.num_clusters);
    SampleDistinct(p.num_points, p.num_clusters, p.seed, picks.data());
    for (int c = 0; c < p.num_clusters; ++c) {
      std::copy_n(p.points + int64_t{picks[c]} * p.dim, p.dim, p.centroids + int64_t{c} * p.dim);
    }
  }
  Assign(p);
  for (int it = 0; it < p.iterations; ++it) {
    if (it > 0) Assign(p);
    UpdateMeans(p);
  }
}

}  // namespace mpa::cpu
