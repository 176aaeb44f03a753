// Clustering cost on the GPU at the Qwen3-8B shape (8 KV heads, head_dim 128, BF16 keys): the
// prompt clustering of a whole prompt (every layer's keys in blocks as ClusterIndex::Build cuts
// them: frozen blocks of 8192 while more than 12288 tokens remain, then the final window; one
// centroid per 16 tokens, 10 Lloyd passes) and one online update (the final window re-clustered
// with 3 passes from its running means, every 128 generated tokens), both for all 36 layers.
// Compare with the prefill and decode-step times of decode_step_bench on the same device.
//
// Usage: kmeans_bench [--out results.csv]
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "bench/cuda_check.h"
#include "bench/cuda_timing.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/multipole/kmeans.h"

namespace {

constexpr int kKvHeads = 8, kHeadDim = 128, kLayers = 36, kRatio = 16;

struct Run {
  std::string name;
  std::vector<int> blocks;  // points per problem of one KV head of one layer
  int iterations;
  bool seeded;  // seeded from points (prompt) or from running means (update)
};

// Blocks of a prompt's clustered region as ClusterIndex::Build cuts them.
std::vector<int> PromptBlocks(int region) {
  std::vector<int> blocks;
  while (region > 12288) {
    blocks.push_back(8192);
    region -= 8192;
  }
  blocks.push_back(region);
  return blocks;
}

}  // namespace

int main(int argc, char** argv) {
  std::string out_path;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--out") && i + 1 < argc) {
      out_path = argv[++i];
    } else {
      std::fprintf(stderr, "usage: %s [--out results.csv]\n", argv[0]);
      return 2;
    }
  }
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  FILE* csv = out_path.empty() ? nullptr : std::fopen(out_path.c_str(), "w");
  if (csv) {
    std::fprintf(csv, "# device=%s\n", prop.name);
    std::fprintf(csv,
                 "run,problems_per_layer,points_per_layer,iterations,layer_ms,model_ms,tflops,"
                 "cuda_core_layer_ms\n");
  }
  const std::vector<Run> runs = {
      {"prompt 32K", PromptBlocks(32768 - 10 - 256), 10, true},
      {"prompt 128K", PromptBlocks(131072 - 10 - 256), 10, true},
      {"update (final window 8192)", {8192}, 3, false},
      {"update (final window 12288)", {12288}, 3, false},
  };
  std::mt19937_64 rng(3);
  for (const Run& r : runs) {
    std::vector<mpa::cuda::KMeansProblem> problems;
    std::vector<int32_t> seeds;
    int64_t points = 0, clusters = 0;
    int max_points = 0, max_clusters = 0;
    for (int h = 0; h < kKvHeads; ++h) {
      for (int n : r.blocks) {
        mpa::cuda::KMeansProblem p;
        p.point_begin = points;
        p.num_points = n;
        p.cluster_begin = clusters;
        p.num_clusters = (n + kRatio - 1) / kRatio;
        std::vector<int32_t> pick(n);
        std::iota(pick.begin(), pick.end(), 0);
        std::shuffle(pick.begin(), pick.end(), rng);
        seeds.insert(seeds.end(), pick.begin(), pick.begin() + p.num_clusters);
        problems.push_back(p);
        points += n;
        clusters += p.num_clusters;
        max_points = std::max(max_points, n);
        max_clusters = std::max(max_clusters, p.num_clusters);
      }
    }
    mpa::cuda::bf16* x;
    mpa::cuda::KMeansProblem* d_problems;
    int32_t *d_seeds, *labels, *counts;
    float* centroids;
    void* ws;
    const size_t ws_bytes = mpa::cuda::KMeansWorkspaceBytes(points, clusters, kHeadDim);
    CHECK_CUDA(cudaMalloc(&x, points * kHeadDim * 2));
    CHECK_CUDA(mpa::cuda::FillNormalBf16(x, points * kHeadDim, 11, 0.0f, 1.0f, nullptr));
    CHECK_CUDA(cudaMalloc(&d_problems, problems.size() * sizeof(problems[0])));
    CHECK_CUDA(cudaMemcpy(d_problems, problems.data(), problems.size() * sizeof(problems[0]),
                          cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMalloc(&d_seeds, seeds.size() * 4));
    CHECK_CUDA(cudaMemcpy(d_seeds, seeds.data(), seeds.size() * 4, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMalloc(&labels, points * 4));
    CHECK_CUDA(cudaMalloc(&counts, clusters * 4));
    CHECK_CUDA(cudaMalloc(&centroids, clusters * kHeadDim * 4));
    CHECK_CUDA(cudaMalloc(&ws, ws_bytes));
    mpa::cuda::KMeansParams p;
    p.points = x;
    p.problems = d_problems;
    p.num_problems = static_cast<int>(problems.size());
    p.head_dim = kHeadDim;
    p.total_points = points;
    p.total_clusters = clusters;
    p.max_points = max_points;
    p.max_clusters = max_clusters;
    p.iterations = r.iterations;
    p.centroids = centroids;
    p.labels = labels;
    p.counts = counts;
    p.workspace = ws;
    p.workspace_bytes = ws_bytes;
    // An update starts from running means: seed once, then time runs from those centroids.
    p.seeds = d_seeds;
    CHECK_CUDA(mpa::cuda::KMeansLloyd(p, nullptr));
    if (!r.seeded) p.seeds = nullptr;
    const double t = TimeIt([&](int) { CHECK_CUDA(mpa::cuda::KMeansLloyd(p, nullptr)); }, 5, 5);
    // The same run with the assignment on CUDA cores (fp32), for comparison.
    p.cuda_core_assign = true;
    const double t_cc = TimeIt([&](int) { CHECK_CUDA(mpa::cuda::KMeansLloyd(p, nullptr)); }, 5, 5);
    p.cuda_core_assign = false;
    // Assignment products: 2 * points * clusters-of-its-problem * head_dim per pass.
    double flops = 0;
    for (const auto& pr : problems) flops += 2.0 * pr.num_points * pr.num_clusters * kHeadDim;
    flops *= r.iterations + 1;
    std::printf(
        "%-28s %3zu problems/layer %8lld points/layer, %2d passes: %8.3f ms/layer, "
        "%8.1f ms for %d layers, %.1f TFLOP/s in the assignment (CUDA-core assignment: %.3f "
        "ms/layer)\n",
        r.name.c_str(), problems.size(), static_cast<long long>(points), r.iterations, t * 1e3,
        t * 1e3 * kLayers, kLayers, flops / t * 1e-12, t_cc * 1e3);
    if (csv) {
      std::fprintf(csv, "%s,%zu,%lld,%d,%.4f,%.3f,%.2f,%.4f\n", r.name.c_str(), problems.size(),
                   static_cast<long long>(points), r.iterations, t * 1e3, t * 1e3 * kLayers,
                   flops / t * 1e-12, t_cc * 1e3);
    }
    for (void* ptr : {static_cast<void*>(x), static_cast<void*>(d_problems),
                      static_cast<void*>(d_seeds), static_cast<void*>(labels),
                      static_cast<void*>(counts), static_cast<void*>(centroids), ws}) {
      cudaFree(ptr);
    }
  }
  if (csv) std::fclose(csv);
  return 0;
}
