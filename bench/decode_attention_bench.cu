// Decode attention alone at the Qwen3-8B layer shape (32 query heads, 8 KV heads, head_dim 128,
// BF16, pages of 16 tokens handed out in shuffled order), against the byte floor: the KV bytes
// over the device-to-device copy bandwidth measured in the same run.
//
// Usage: decode_attention_bench [--out results.csv] [--sweep]
// Prints a table; --out writes one CSV row per (context, batch, variant); --sweep also times
// other split counts and tensor-core kernel shapes (warps per block, ring stages) for tuning notes.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "bench/cuda_check.h"
#include "bench/cuda_timing.h"
#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/elementwise.h"

namespace {

constexpr int kQHeads = 32, kKvHeads = 8, kHeadDim = 128, kPage = 16;

struct Shape {
  int context;
  int batch;
};

}  // namespace

int main(int argc, char** argv) {
  std::string out_path;
  bool sweep = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--out") && i + 1 < argc) {
      out_path = argv[++i];
    } else if (!std::strcmp(argv[i], "--sweep")) {
      sweep = true;
    } else {
      std::fprintf(stderr, "usage: %s [--out results.csv] [--sweep]\n", argv[0]);
      return 2;
    }
  }
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  const double copy_bw = CopyBandwidth();
  std::printf("device: %s, %d SMs, L2 %d MB; copy bandwidth %.0f GB/s (read + write)\n", prop.name,
              prop.multiProcessorCount, prop.l2CacheSize >> 20, copy_bw * 1e-9);
  FILE* csv = out_path.empty() ? nullptr : std::fopen(out_path.c_str(), "w");
  if (csv) {
    std::fprintf(csv, "# device=%s copy_bw_gbs=%.1f\n", prop.name, copy_bw * 1e-9);
    std::fprintf(
        csv, "context,batch,variant,splits,kv_bytes,time_us,achieved_gbs,floor_us,floor_frac\n");
  }
  std::printf("%8s %5s %-12s %6s %10s %10s %10s %10s %8s\n", "context", "batch", "variant",
              "splits", "KV MB", "time us", "GB/s", "floor us", "floor%");

  const std::vector<Shape> shapes = {{8192, 1},   {8192, 4},   {8192, 16},  {32768, 1},  {32768, 4},
                                     {32768, 16}, {131072, 1}, {131072, 4}, {131072, 16}};
  std::mt19937_64 rng(1234);
  for (const Shape& s : shapes) {
    const int pages_per_seq = s.context / kPage;
    const int64_t pages = static_cast<int64_t>(pages_per_seq) * s.batch;
    const size_t kv_elems = static_cast<size_t>(pages) * kKvHeads * kPage * kHeadDim;
    const double kv_bytes = 2.0 * kv_elems * 2;
    // Several caches in rotation so that small shapes are read from memory, not from L2.
    const int copies = std::max(1, static_cast<int>(std::ceil(4.0 * prop.l2CacheSize / kv_bytes)));
    std::vector<mpa::cuda::bf16*> k(copies), v(copies);
    for (int c = 0; c < copies; ++c) {
      CHECK_CUDA(cudaMalloc(&k[c], kv_elems * 2));
      CHECK_CUDA(cudaMalloc(&v[c], kv_elems * 2));
      CHECK_CUDA(mpa::cuda::FillNormalBf16(k[c], kv_elems, 2 * c + 1, 0.0f, 1.0f, nullptr));
      CHECK_CUDA(mpa::cuda::FillNormalBf16(v[c], kv_elems, 2 * c + 2, 0.0f, 1.0f, nullptr));
    }
    std::vector<int32_t> table(pages);
    std::iota(table.begin(), table.end(), 0);
    std::shuffle(table.begin(), table.end(), rng);
    std::vector<int32_t> lens(s.batch, s.context);
    int32_t *d_table, *d_lens;
    mpa::cuda::bf16 *q, *out;
    CHECK_CUDA(cudaMalloc(&d_table, pages * 4));
    CHECK_CUDA(cudaMalloc(&d_lens, s.batch * 4));
    CHECK_CUDA(cudaMemcpy(d_table, table.data(), pages * 4, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(d_lens, lens.data(), s.batch * 4, cudaMemcpyHostToDevice));
    const size_t q_elems = static_cast<size_t>(s.batch) * kQHeads * kHeadDim;
    CHECK_CUDA(cudaMalloc(&q, q_elems * 2));
    CHECK_CUDA(cudaMalloc(&out, q_elems * 2));
    CHECK_CUDA(mpa::cuda::FillNormalBf16(q, q_elems, 99, 0.0f, 1.0f, nullptr));
    const size_t ws_bytes =
        mpa::cuda::DecodeAttentionWorkspaceBytes(s.batch, kQHeads, kHeadDim, 512);
    void* ws;
    CHECK_CUDA(cudaMalloc(&ws, ws_bytes));

    using mpa::cuda::DecodeKernel;
    struct Variant {
      std::string name;
      DecodeKernel kernel;
      int splits;
      int unroll;  // CUDA-core kernel: tokens per thread per stage
      int warps;   // tensor-core kernel: warps per block
      int stages;
    };
    const int auto_splits =
        mpa::cuda::ChooseDecodeSplits(s.batch, kKvHeads, s.context, kPage, kHeadDim);
    const int cuda_core_splits = mpa::cuda::ChooseDecodeSplits(s.batch, kKvHeads, s.context, kPage,
                                                               kHeadDim, DecodeKernel::kCudaCore);
    // "default" is what the model runs (the tensor-core kernel on this shape); "cuda_core" is the
    // previous kernel, kept for the shapes the tensor-core one does not cover.
    std::vector<Variant> variants = {{"default", DecodeKernel::kAuto, 0, 0, 0, 0},
                                     {"cuda_core", DecodeKernel::kCudaCore, 0, 0, 0, 0}};
    if (sweep) {
      variants.push_back({"tc_w4_st2", DecodeKernel::kTensorCore, 0, 0, 4, 2});
      variants.push_back({"tc_w4_st4", DecodeKernel::kTensorCore, 0, 0, 4, 4});
      variants.push_back({"tc_w8_st3", DecodeKernel::kTensorCore, 0, 0, 8, 3});
      variants.push_back({"splits_x2", DecodeKernel::kAuto, auto_splits * 2, 0, 0, 0});
      variants.push_back(
          {"splits_half", DecodeKernel::kAuto, std::max(auto_splits / 2, 1), 0, 0, 0});
    }
    for (const Variant& var : variants) {
      mpa::cuda::DecodeAttentionParams p;
      p.q = q;
      p.block_table = {d_table, pages_per_seq};
      p.seq_lens = d_lens;
      p.batch = s.batch;
      p.num_q_heads = kQHeads;
      p.max_seq_len = s.context;
      p.scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));
      p.num_splits = var.splits;
      p.kernel = var.kernel;
      p.tokens_per_thread = var.unroll;
      p.warps_per_block = var.warps;
      p.pipeline_stages = var.stages;
      p.out = out;
      p.workspace = ws;
      p.workspace_bytes = ws_bytes;
      const int iters = std::max(20, static_cast<int>(2e9 / kv_bytes));
      const double t = TimeIt(
          [&](int i) {
            p.kv = {k[i % copies], v[i % copies], kKvHeads, kHeadDim, kPage};
            CHECK_CUDA(mpa::cuda::DecodeAttention(p, nullptr));
          },
          std::min(iters, 2000), 7);
      const double floor_t = kv_bytes / copy_bw;
      const int splits = var.splits > 0                          ? var.splits
                         : var.kernel == DecodeKernel::kCudaCore ? cuda_core_splits
                                                                 : auto_splits;
      std::printf("%8d %5d %-12s %6d %10.1f %10.1f %10.0f %10.1f %7.1f%%\n", s.context, s.batch,
                  var.name.c_str(), splits, kv_bytes / 1e6, t * 1e6, kv_bytes / t * 1e-9,
                  floor_t * 1e6, 100.0 * floor_t / t);
      if (csv) {
        std::fprintf(csv, "%d,%d,%s,%d,%.0f,%.3f,%.1f,%.3f,%.4f\n", s.context, s.batch,
                     var.name.c_str(), splits, kv_bytes, t * 1e6, kv_bytes / t * 1e-9,
                     floor_t * 1e6, floor_t / t);
      }
    }
    for (int c = 0; c < copies; ++c) {
      cudaFree(k[c]);
      cudaFree(v[c]);
    }
    cudaFree(d_table);
    cudaFree(d_lens);
    cudaFree(q);
    cudaFree(out);
    cudaFree(ws);
  }
  if (csv) std::fclose(csv);
  return 0;
}
