// Lloyd's k-means with squared L2 distance, plain fp32: the clustering step of Multipole
// Attention (keys of one KV head, one block at a time). Deterministic: the same inputs and seed
// give the same centroids and labels on every machine.
#pragma once

#include <cstdint>

namespace mpa::cpu {

struct KMeansParams {
  const float* points = nullptr;   // [num_points, dim]
  const float* weights = nullptr;  // [num_points] multiplicities (> 0), or null for all 1
  int num_points = 0;
  int dim = 0;
  int num_clusters = 0;  // 1 <= num_clusters <= num_points
  int iterations = 0;    // Lloyd passes (assign, then recompute means); 0 only assigns
  // true: centroids are seeded from num_clusters distinct points chosen by `seed`;
  // false: `centroids` holds the starting centroids (e.g. running means of an online update).
  bool seed_from_points = true;
  uint64_t seed = 0;
  float* centroids = nullptr;  // [num_clusters, dim] in/out: weighted means of their members
  int32_t* labels = nullptr;   // [num_points] out: the nearest centroid of each point
};

// Runs `iterations` Lloyd passes. Each pass assigns every point to its nearest centroid (ties go
// to the lower cluster id), then moves every centroid to the weighted mean of its members. A
// cluster left empty is re-seeded with the point farthest from its own centroid among clusters
// with more than one member, so no cluster is empty on return (num_clusters <= num_points).
// On return labels and centroids agree: centroid c is the mean of the points labelled c.
// With iterations == 0 the points are only assigned (centroids untouched).
void KMeansLloyd(const KMeansParams& p);

// Squared L2 distance of two [dim] rows.
float SquaredDistance(const float* a, const float* b, int dim);

// Index of the centroid nearest to `point` (ties: lowest index). centroids: [num_clusters, dim].
int NearestCentroid(const float* point, const float* centroids, int num_clusters, int dim);

// A small deterministic generator (splitmix64) so seeds mean the same thing everywhere.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n) (n > 0); the modulo bias is negligible for the sizes used here.
  uint64_t Below(uint64_t n) { return Next() % n; }

 private:
  uint64_t state_;
};

// Writes `count` distinct indices in [0, n) chosen by `seed` (partial Fisher-Yates), in the
// order drawn. out: [count], count <= n.
void SampleDistinct(int n, int count, uint64_t seed, int32_t* out);

}  // namespace mpa::cpu
