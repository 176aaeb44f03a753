// Prefill attention alone at the Qwen3-8B layer shape (32 query heads, 8 KV heads, head_dim 128;
// one head_dim 64 row), BF16, pages of 16 tokens handed out in shuffled order: the tensor-core and
// CUDA-core kernels against the bf16 matrix-rate floor. FLOPs count only the causal half: chunk
// of n new tokens after p cached ones = 4 * head_dim * q_heads * (n p + n (n + 1) / 2) per
// sequence.
//
// Usage: prefill_attention_bench [--out results.csv] [--tflops 790]
// Prints a table; --out writes one CSV row per (case, kernel) for tools/bench_prefill_sdpa.py.
// Kernels: tensor (4 warps / 64 query rows per block), tensor_8warps (128 rows), cuda_core; the
// library's default is tensor_8warps at head_dim 128 and tensor at 64.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "bench/cuda_check.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/prefill_attention.h"

namespace {

constexpr int kQHeads = 32, kKvHeads = 8, kPage = 16;

// Median over `trials` of the mean time of `iters` back-to-back calls, in seconds.
template <typename Fn>
double TimeIt(Fn&& fn, int iters, int trials) {
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  for (int i = 0; i < 2; ++i) fn();
  CHECK_CUDA(cudaDeviceSynchronize());
  std::vector<double> times;
  for (int t = 0; t < trials; ++t) {
    CHECK_CUDA(cudaEventRecord(start));
    for (int i = 0; i < iters; ++i) fn();
    CHECK_CUDA(cudaEventRecord(stop));
    CHECK_CUDA(cudaEventSynchronize(stop));
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
    times.push_back(ms * 1e-3 / iters);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

struct Case {
  int head_dim;
  int batch;
  int prefix;      // cached tokens before the chunk
  int chunk;       // new tokens per sequence
  bool cuda_core;  // also time the CUDA-core kernel
};

}  // namespace

int main(int argc, char** argv) {
  std::string out_path;
  double tflops = 790.0;  // dense bf16 matrix rate measured on the H200 (8192^3 product)
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--out") && i + 1 < argc) {
      out_path = argv[++i];
    } else if (!std::strcmp(argv[i], "--tflops") && i + 1 < argc) {
      tflops = std::atof(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: %s [--out results.csv] [--tflops 790]\n", argv[0]);
      return 2;
    }
  }
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  FILE* csv = out_path.empty() ? nullptr : std::fopen(out_path.c_str(), "w");
  if (csv) {
    std::fprintf(csv, "# device=%s floor_tflops=%.1f\n", prop.name, tflops);
    std::fprintf(csv,
                 "head_dim,batch,prefix,chunk,kernel,flop,time_us,tflops,floor_us,floor_frac\n");
  }
  const std::vector<Case> cases = {
      {128, 1, 0, 1024, true},   {128, 1, 0, 4096, true}, {128, 1, 0, 8192, true},
      {128, 1, 0, 16384, false}, {128, 8, 0, 2048, true}, {128, 1, 8192, 2048, false},
      {64, 1, 0, 8192, true},
  };
  std::printf("%-28s %-10s %10s %9s %8s\n", "case", "kernel", "time_us", "TFLOP/s", "floor%");
  for (const Case& c : cases) {
    const int hd = c.head_dim, len = c.prefix + c.chunk;
    const int pages_per_seq = (len + kPage - 1) / kPage;
    const int num_pages = pages_per_seq * c.batch;
    const int64_t rows = static_cast<int64_t>(c.batch) * c.chunk;
    const int64_t kv_elems = static_cast<int64_t>(num_pages) * kKvHeads * kPage * hd;
    mpa::cuda::bf16 *q, *k, *v, *out;
    int32_t *table, *lens, *starts;
    CHECK_CUDA(cudaMalloc(&q, rows * kQHeads * hd * 2));
    CHECK_CUDA(cudaMalloc(&out, rows * kQHeads * hd * 2));
    CHECK_CUDA(cudaMalloc(&k, kv_elems * 2));
    CHECK_CUDA(cudaMalloc(&v, kv_elems * 2));
    CHECK_CUDA(mpa::cuda::FillNormalBf16(q, rows * kQHeads * hd, 1, 0.0f, 1.0f, nullptr));
    CHECK_CUDA(mpa::cuda::FillNormalBf16(k, kv_elems, 2, 0.0f, 1.0f, nullptr));
    CHECK_CUDA(mpa::cuda::FillNormalBf16(v, kv_elems, 3, 0.0f, 1.0f, nullptr));
    std::vector<int32_t> h_table(num_pages);
    std::iota(h_table.begin(), h_table.end(), 0);
    std::shuffle(h_table.begin(), h_table.end(), std::mt19937(7));
    std::vector<int32_t> h_lens(c.batch, len), h_starts(c.batch + 1);
    for (int b = 0; b <= c.batch; ++b) h_starts[b] = b * c.chunk;
    CHECK_CUDA(cudaMalloc(&table, num_pages * 4));
    CHECK_CUDA(cudaMalloc(&lens, c.batch * 4));
    CHECK_CUDA(cudaMalloc(&starts, (c.batch + 1) * 4));
    CHECK_CUDA(cudaMemcpy(table, h_table.data(), num_pages * 4, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(lens, h_lens.data(), c.batch * 4, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(starts, h_starts.data(), (c.batch + 1) * 4, cudaMemcpyHostToDevice));

    mpa::cuda::PrefillAttentionParams p;
    p.q = q;
    p.q_starts = starts;
    p.kv = {k, v, kKvHeads, hd, kPage};
    p.block_table = {table, pages_per_seq};
    p.seq_lens = lens;
    p.batch = c.batch;
    p.num_q_heads = kQHeads;
    p.max_new_tokens = c.chunk;
    p.scale = 1.0f / std::sqrt(static_cast<float>(hd));
    p.out = out;
    const double n = c.chunk, pre = c.prefix;
    const double flop = 4.0 * hd * kQHeads * c.batch * (n * pre + n * (n + 1) / 2);
    const double floor_s = flop / (tflops * 1e12);
    char name[64];
    std::snprintf(name, sizeof(name), "hd%d b%d prefix%d chunk%d", hd, c.batch, c.prefix, c.chunk);
    // Variants: the tensor-core kernel with 4 and 8 warps per block, the CUDA-core
    // kernel where its time is affordable.
    for (const int variant : {0, 1, 2}) {
      const bool tensor = variant < 2;
      if (!tensor && !c.cuda_core) continue;
      p.kernel =
          tensor ? mpa::cuda::PrefillKernel::kTensorCore : mpa::cuda::PrefillKernel::kCudaCore;
      p.tensor_core_warps = variant == 1 ? 8 : 4;
      // ~0.2 s per trial for the tensor-core kernel, a few calls for the CUDA-core one.
      const int iters = tensor ? std::max(3, static_cast<int>(0.2 / (flop / 3e14))) : 2;
      const double t = TimeIt([&] { CHECK_CUDA(mpa::cuda::PrefillAttention(p, nullptr)); }, iters,
                              tensor ? 5 : 3);
      CHECK_CUDA(cudaDeviceSynchronize());
      const char* kname = variant == 0 ? "tensor" : variant == 1 ? "tensor_8warps" : "cuda_core";
      std::printf("%-28s %-10s %10.1f %9.1f %7.1f%%\n", name, kname, t * 1e6, flop / t * 1e-12,
                  100.0 * floor_s / t);
      if (csv) {
        std::fprintf(csv, "%d,%d,%d,%d,%s,%.0f,%.3f,%.2f,%.3f,%.4f\n", hd, c.batch, c.prefix,
                     c.chunk, kname, flop, t * 1e6, flop / t * 1e-12, floor_s * 1e6, floor_s / t);
      }
    }
    cudaFree(q);
    cudaFree(out);
    cudaFree(k);
    cudaFree(v);
    cudaFree(table);
    cudaFree(lens);
    cudaFree(starts);
  }
  if (csv) std::fclose(csv);
  return 0;
}
