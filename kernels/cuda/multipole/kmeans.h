// Lloyd's k-means on the GPU for many independent problems at once (every (layer, KV head, block)
// of keys a prompt or an online update clusters). The CPU twin is kernels/cpu/multipole/kmeans.h:
// the same passes (assign to the nearest centroid, ties to the lower id; move each centroid to the
// mean of its members; an emptied cluster takes the point farthest from its own centroid among
// clusters with more than one member, lowest point index on ties), seeded from the same points.
// Distances are |x|^2 + |c|^2 - 2 x.c (fp32 accumulators) rather than the reference's sum of
// squared differences, so a point almost equidistant from two centroids may take the other one; the
// parity test checks that every disagreement is such a near tie.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/common.h"

namespace mpa::cuda {

struct KMeansProblem {
  int64_t point_begin = 0;    // first row of `points` (and of labels)
  int num_points = 0;         // >= num_clusters >= 1
  int64_t cluster_begin = 0;  // first row of `centroids` (and of counts, seeds)
  int num_clusters = 0;
};

struct KMeansParams {
  const bf16* points = nullptr;             // [total_points, head_dim]
  const KMeansProblem* problems = nullptr;  // [num_problems] device
  int num_problems = 0;
  int head_dim = 0;  // a multiple of 8, <= 256
  int64_t total_points = 0;
  int64_t total_clusters = 0;
  int max_points = 0;    // host: the largest num_points (sizes the grids)
  int max_clusters = 0;  // host: the largest num_clusters
  // [total_clusters] device: the point (index inside its problem) each centroid starts from, -1
  // to keep the centroid given (running means of an online update); or null to keep them all.
  const int32_t* seeds = nullptr;
  // [total_points] device: each point's multiplicity (> 0) in the means (the coarse level of two
  // levels clusters fine centroids weighted by their token counts); null: all 1. The assignment
  // and the re-seeding of emptied clusters do not depend on them; counts stay member counts.
  const float* weights = nullptr;
  int iterations = 0;          // Lloyd passes; 0 only assigns
  float* centroids = nullptr;  // [total_clusters, head_dim] in/out
  int32_t* labels = nullptr;   // [total_points] out: cluster of each point, inside its problem
  int32_t* counts = nullptr;   // [total_clusters] out: members of each cluster
  void* workspace = nullptr;   // KMeansWorkspaceBytes
  size_t workspace_bytes = 0;
  // The assignment runs on the tensor cores for head_dim 64 and 128 (three bf16 terms per
  // centroid: the precision of the fp32 CUDA-core kernel); true keeps the CUDA-core kernel.
  bool cuda_core_assign = false;
};

size_t KMeansWorkspaceBytes(int64_t total_points, int64_t total_clusters, int head_dim);

// On return labels, counts and centroids agree (centroid c is the mean of the points labelled c;
// with iterations 0, labels are the nearest of the given centroids and counts their histogram).
// cudaErrorInvalidValue for unsupported head_dim, missing pointers or a short workspace.
cudaError_t KMeansLloyd(const KMeansParams& p, cudaStream_t stream);

}  // namespace mpa::cuda
