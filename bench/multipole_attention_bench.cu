// Multipole decode attention alone at the Qwen3-8B layer shape (32 query heads, 8 KV heads,
// head_dim 128, BF16, pages of 16 tokens in shuffled order), against our dense split-KV kernel on
// the same cache and against the byte floor (bytes read over the copy bandwidth measured in the
// same run). tools/bench_multipole_sdpa.py adds PyTorch SDPA (cuDNN, flash) in the same run.
//
// The clustered region (sink 10 tokens, recent window of cluster_interval 128 .. 255 tokens) is
// cut into one cluster per 16 tokens on average, at random cut points, so cluster sizes vary as
// k-means ones do; centroids are random, so the selected clusters are scattered over the region.
// The cluster-major slots reuse the position pages (slot s is read where a real cache keeps the
// s-th cluster-major row), which keeps the memory of one cache and the same access pattern.
//
// Usage: multipole_attention_bench [--out results.csv] [--quick]
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "bench/cuda_check.h"
#include "bench/cuda_timing.h"
#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/multipole/multipole_decode.h"

namespace {

constexpr int kQHeads = 32, kKvHeads = 8, kHeadDim = 128, kPage = 16;
constexpr int kSink = 10, kInterval = 128, kTokensPerCentroid = 16;

struct Budget {
  std::string name;
  double fraction;  // of the clustered region, or 0
  int tokens;       // fixed budget when fraction is 0
};

// One cache (batch sequences) with its clusters, on the device.
struct Cache {
  mpa::cuda::bf16 *k = nullptr, *v = nullptr, *kc = nullptr, *vc = nullptr, *q = nullptr;
  int32_t *table = nullptr, *lens = nullptr, *sink = nullptr, *cend = nullptr, *budget = nullptr,
          *begin = nullptr, *num_clusters = nullptr;
  uint8_t* approximate = nullptr;
  uintptr_t *kc_ptrs = nullptr, *vc_ptrs = nullptr, *begin_ptrs = nullptr;
};

template <typename T>
T* Upload(const std::vector<T>& host) {
  T* d = nullptr;
  CHECK_CUDA(cudaMalloc(&d, std::max<size_t>(host.size(), 1) * sizeof(T)));
  CHECK_CUDA(cudaMemcpy(d, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}

}  // namespace

int main(int argc, char** argv) {
  std::string out_path;
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--out") && i + 1 < argc) {
      out_path = argv[++i];
    } else if (!std::strcmp(argv[i], "--quick")) {
      quick = true;
    } else {
      std::fprintf(stderr, "usage: %s [--out results.csv] [--quick]\n", argv[0]);
      return 2;
    }
  }
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  const double copy_bw = CopyBandwidth();
  std::printf("device: %s, %d SMs, L2 %d MB; copy bandwidth %.0f GB/s (read + write)\n", prop.name,
              prop.multiProcessorCount, prop.l2CacheSize >> 20, copy_bw * 1e-9);
  int clock_khz = 0;
  CHECK_CUDA(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, 0));
  const double clock_mhz = clock_khz * 1e-3;  // clock64() ticks per microsecond
  long long* trace;
  CHECK_CUDA(cudaMalloc(&trace, 32 * sizeof(long long)));
  FILE* csv = out_path.empty() ? nullptr : std::fopen(out_path.c_str(), "w");
  if (csv) {
    std::fprintf(csv, "# device=%s copy_bw_gbs=%.1f\n", prop.name, copy_bw * 1e-9);
    std::fprintf(csv,
                 "context,batch,budget,levels,selected_tokens,bytes,time_us,floor_us,floor_frac,"
                 "dense_us,dense_floor_us,speedup_vs_dense,lookup_us,select_us\n");
  }
  std::printf("%7s %5s %-6s %9s %9s %9s %7s %9s %8s %8s %8s\n", "context", "batch", "budget",
              "sel/head", "MB read", "time us", "floor%", "dense us", "x dense", "lookup",
              "+select");

  struct Shape {
    int context, batch;
  };
  std::vector<Shape> shapes = {{32768, 1},  {32768, 4},  {32768, 16},
                               {131072, 1}, {131072, 4}, {131072, 16}};
  if (quick) shapes = {{32768, 1}, {131072, 4}};
  const std::vector<Budget> budgets = {{"5%", 0.05, 0}, {"10%", 0.10, 0}, {"512", 0.0, 512}};
  std::mt19937_64 rng(1234);
  for (const Shape& s : shapes) {
    const int pages_per_seq = s.context / kPage;
    const int64_t pages = static_cast<int64_t>(pages_per_seq) * s.batch;
    const size_t kv_elems = static_cast<size_t>(pages) * kKvHeads * kPage * kHeadDim;
    const double kv_bytes = 2.0 * kv_elems * 2;
    const int intervals = (s.context - kSink) / kInterval;
    const int cend = kSink + (intervals - 1) * kInterval;
    const int region = cend - kSink;
    const int clusters = (region + kTokensPerCentroid - 1) / kTokensPerCentroid;
    const int heads = s.batch * kKvHeads;
    // Bytes a call reads at least: both centroid tables, for the 5% budget: roughly
    // 2 * C * 256 + 0.05 * region * 512 per head. Enough caches that rotation defeats the L2.
    const double min_bytes = heads * (2.0 * clusters * kHeadDim * 2 + 0.05 * region * 512);
    const int copies = std::max(1, static_cast<int>(std::ceil(4.0 * prop.l2CacheSize / min_bytes)));
    std::vector<Cache> caches(copies);
    std::vector<int32_t> table(pages);
    for (int c = 0; c < copies; ++c) {
      Cache& x = caches[c];
      CHECK_CUDA(cudaMalloc(&x.k, kv_elems * 2));
      CHECK_CUDA(cudaMalloc(&x.v, kv_elems * 2));
      CHECK_CUDA(mpa::cuda::FillNormalBf16(x.k, kv_elems, 10 * c + 1, 0.0f, 1.0f, nullptr));
      CHECK_CUDA(mpa::cuda::FillNormalBf16(x.v, kv_elems, 10 * c + 2, 0.0f, 1.0f, nullptr));
      const size_t centroid_elems = static_cast<size_t>(heads) * clusters * kHeadDim;
      CHECK_CUDA(cudaMalloc(&x.kc, centroid_elems * 2));
      CHECK_CUDA(cudaMalloc(&x.vc, centroid_elems * 2));
      CHECK_CUDA(mpa::cuda::FillNormalBf16(x.kc, centroid_elems, 10 * c + 3, 0.0f, 0.5f, nullptr));
      CHECK_CUDA(mpa::cuda::FillNormalBf16(x.vc, centroid_elems, 10 * c + 4, 0.0f, 0.5f, nullptr));
      const size_t q_elems = static_cast<size_t>(s.batch) * kQHeads * kHeadDim;
      CHECK_CUDA(cudaMalloc(&x.q, q_elems * 2));
      CHECK_CUDA(mpa::cuda::FillNormalBf16(x.q, q_elems, 10 * c + 5, 0.0f, 1.0f, nullptr));
      std::iota(table.begin(), table.end(), 0);
      std::shuffle(table.begin(), table.end(), rng);
      x.table = Upload(table);
      x.lens = Upload(std::vector<int32_t>(s.batch, s.context));
      x.sink = Upload(std::vector<int32_t>(s.batch, kSink));
      x.cend = Upload(std::vector<int32_t>(s.batch, cend));
      x.budget = Upload(std::vector<int32_t>(s.batch, 0));
      x.approximate = Upload(std::vector<uint8_t>(s.batch, 1));
      x.num_clusters = Upload(std::vector<int32_t>(heads, clusters));
      // Random cut points: clusters of varying size, one per 16 tokens on average.
      std::vector<int32_t> begin;
      std::vector<uintptr_t> kp, vp, bp;
      for (int h = 0; h < heads; ++h) {
        std::vector<int32_t> cuts(region - 1);
        std::iota(cuts.begin(), cuts.end(), 1);
        std::shuffle(cuts.begin(), cuts.end(), rng);
        cuts.resize(clusters - 1);
        std::sort(cuts.begin(), cuts.end());
        begin.push_back(0);
        begin.insert(begin.end(), cuts.begin(), cuts.end());
        begin.push_back(region);
      }
      x.begin = Upload(begin);
      for (int h = 0; h < heads; ++h) {
        const size_t off = static_cast<size_t>(h) * clusters * kHeadDim;
        kp.push_back(reinterpret_cast<uintptr_t>(x.kc + off));
        vp.push_back(reinterpret_cast<uintptr_t>(x.vc + off));
        bp.push_back(
            reinterpret_cast<uintptr_t>(x.begin + static_cast<size_t>(h) * (clusters + 1)));
      }
      x.kc_ptrs = Upload(kp);
      x.vc_ptrs = Upload(vp);
      x.begin_ptrs = Upload(bp);
    }
    mpa::cuda::bf16* out;
    CHECK_CUDA(cudaMalloc(&out, static_cast<size_t>(s.batch) * kQHeads * kHeadDim * 2));
    const float scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));

    // Our dense kernel over the whole cache, same caches in rotation.
    const size_t dense_ws_bytes =
        mpa::cuda::DecodeAttentionWorkspaceBytes(s.batch, kQHeads, kHeadDim, 512);
    void* dense_ws;
    CHECK_CUDA(cudaMalloc(&dense_ws, dense_ws_bytes));
    mpa::cuda::DecodeAttentionParams dp;
    dp.batch = s.batch;
    dp.num_q_heads = kQHeads;
    dp.max_seq_len = s.context;
    dp.scale = scale;
    dp.out = out;
    dp.workspace = dense_ws;
    dp.workspace_bytes = dense_ws_bytes;
    const int dense_iters = std::min(2000, std::max(20, static_cast<int>(2e9 / kv_bytes)));
    const double dense_t = TimeIt(
        [&](int i) {
          const Cache& x = caches[i % copies];
          dp.q = x.q;
          dp.kv = {x.k, x.v, kKvHeads, kHeadDim, kPage};
          dp.block_table = {x.table, pages_per_seq};
          dp.seq_lens = x.lens;
          CHECK_CUDA(mpa::cuda::DecodeAttention(dp, nullptr));
        },
        dense_iters, 7);
    const double dense_floor = kv_bytes / copy_bw;

    mpa::cuda::MultipoleShape shape;
    shape.batch = s.batch;
    shape.num_q_heads = kQHeads;
    shape.num_kv_heads = kKvHeads;
    shape.head_dim = kHeadDim;
    shape.max_clusters = clusters;
    shape.max_seq_len = s.context;
    shape = mpa::cuda::ChooseMultipoleSplits(shape);
    // Room for up to four times the chosen exact splits too (the small batches' sweep below).
    mpa::cuda::MultipoleShape wide = shape;
    wide.exact_splits = std::min(4 * shape.exact_splits, 128);
    const size_t ws_bytes = std::max(mpa::cuda::MultipoleDecodeWorkspaceBytes(shape),
                                     mpa::cuda::MultipoleDecodeWorkspaceBytes(wide));
    void* ws;
    CHECK_CUDA(cudaMalloc(&ws, ws_bytes));
    const mpa::cuda::MultipoleWorkspace w = mpa::cuda::MultipoleWorkspaceLayout(ws, shape);

    for (const Budget& bud : budgets) {
      const int budget =
          bud.fraction > 0 ? static_cast<int>(std::ceil(bud.fraction * region)) : bud.tokens;
      for (Cache& x : caches) {
        CHECK_CUDA(cudaMemcpy(x.budget, std::vector<int32_t>(s.batch, budget).data(), s.batch * 4,
                              cudaMemcpyHostToDevice));
      }
      mpa::cuda::MultipoleDecodeParams p;
      p.pool_pages = pages;
      p.batch = s.batch;
      p.num_q_heads = kQHeads;
      p.max_seq_len = s.context;
      p.scale = scale;
      p.out = out;
      p.workspace = ws;
      p.workspace_bytes = ws_bytes;
      p.clusters.max_clusters = clusters;
      auto bind = [&](const Cache& x) {
        p.q = x.q;
        p.kv = {x.k, x.v, kKvHeads, kHeadDim, kPage};
        p.block_table = {x.table, pages_per_seq};
        p.seq_lens = x.lens;
        p.sink_end = x.sink;
        p.clustered_end = x.cend;
        p.token_budget = x.budget;
        p.approximate = x.approximate;
        // Slot s sits where position s of the sequence would: the same pages, a real run layout.
        p.clusters.pages = {x.table, pages_per_seq};
        p.clusters.key_centroids = reinterpret_cast<const mpa::cuda::bf16* const*>(x.kc_ptrs);
        p.clusters.value_centroids = reinterpret_cast<const mpa::cuda::bf16* const*>(x.vc_ptrs);
        p.clusters.cluster_begin = reinterpret_cast<const int32_t* const*>(x.begin_ptrs);
        p.clusters.num_clusters = x.num_clusters;
      };
      // Selected tokens per head (the same for every copy up to the random layout): from copy 0.
      bind(caches[0]);
      CHECK_CUDA(mpa::cuda::MultipoleDecode(p, nullptr));
      CHECK_CUDA(cudaDeviceSynchronize());
      std::vector<int32_t> selected(heads);
      CHECK_CUDA(cudaMemcpy(selected.data(), w.selected_tokens, heads * 4, cudaMemcpyDeviceToHost));
      const double selected_total = std::accumulate(selected.begin(), selected.end(), 0.0);
      const int recent = s.context - cend;
      // Bytes: centroids (K and V), exact rows (K and V), logits written once and read twice,
      // the rows list written and read.
      const double exact_rows = heads * static_cast<double>(kSink + recent) + selected_total;
      const double bytes = heads * 2.0 * clusters * kHeadDim * 2 + exact_rows * 2 * kHeadDim * 2 +
                           3.0 * s.batch * kQHeads * clusters * 4 + 2.0 * exact_rows * 4;
      const int iters = std::min(2000, std::max(50, static_cast<int>(4e8 / bytes)));
      // Stopped after the lookup (with the centroid value sums), after the selection (with the
      // approximation partial), and the whole call.
      double step_t[3];
      for (int stop = 1; stop <= 3; ++stop) {
        p.stop_after = stop == 3 ? 0 : stop;
        step_t[stop - 1] = TimeIt(
            [&](int i) {
              bind(caches[i % copies]);
              CHECK_CUDA(mpa::cuda::MultipoleDecode(p, nullptr));
            },
            iters, 7);
      }
      // The whole call on one stream (the timing above pipelines two halves of the batch on two
      // streams where there are enough heads): the pipelining's gain, measured here.
      p.stop_after = 0;
      p.pipeline_parts = 1;
      const double one_stream_t = TimeIt(
          [&](int i) {
            bind(caches[i % copies]);
            CHECK_CUDA(mpa::cuda::MultipoleDecode(p, nullptr));
          },
          iters, 7);
      // And always on two streams (the automatic choice pipelines only from 64 heads on).
      double two_streams_t = 0.0;
      if (s.batch >= 2) {
        p.pipeline_parts = 2;
        two_streams_t = TimeIt(
            [&](int i) {
              bind(caches[i % copies]);
              CHECK_CUDA(mpa::cuda::MultipoleDecode(p, nullptr));
            },
            iters, 7);
      }
      p.pipeline_parts = 0;
      // And with the selection launched as an ordinary kernel (not a programmatic dependent).
      p.programmatic_launch = false;
      const double no_pdl_t = TimeIt(
          [&](int i) {
            bind(caches[i % copies]);
            CHECK_CUDA(mpa::cuda::MultipoleDecode(p, nullptr));
          },
          iters, 7);
      p.programmatic_launch = true;
      std::printf(
          "  one stream %.1f us, two streams %.1f us, selection not programmatic %.1f us (the "
          "call as timed: %.1f us)\n",
          one_stream_t * 1e6, two_streams_t * 1e6, no_pdl_t * 1e6, step_t[2] * 1e6);
      // Small batches: the exact part's splits (one wave of blocks by default) at 2x and 4x.
      if (s.batch <= 4) {
        for (int mult : {2, 4}) {
          p.exact_splits = std::min(mult * shape.exact_splits, 128);
          const double split_t = TimeIt(
              [&](int i) {
                bind(caches[i % copies]);
                CHECK_CUDA(mpa::cuda::MultipoleDecode(p, nullptr));
              },
              iters, 7);
          std::printf("  exact splits %d (default %d): %.1f us\n", p.exact_splits,
                      shape.exact_splits, split_t * 1e6);
        }
        p.exact_splits = 0;
      }
      // The lookup on CUDA cores, for comparison with the tensor-core one above.
      p.stop_after = 1;
      p.kernel = mpa::cuda::DecodeKernel::kCudaCore;
      const double lookup_cc_t = TimeIt(
          [&](int i) {
            bind(caches[i % copies]);
            CHECK_CUDA(mpa::cuda::MultipoleDecode(p, nullptr));
          },
          iters, 7);
      p.kernel = mpa::cuda::DecodeKernel::kAuto;
      const double t = step_t[2];
      const double floor_t = bytes / copy_bw;
      // Where the selection of the first (sequence, KV head) spends its time: phase clocks of one
      // call (the third of three, caches warm as in the timing loop).
      p.stop_after = 0;
      p.trace = trace;
      for (int rep = 0; rep < 3; ++rep) {
        CHECK_CUDA(cudaMemset(trace, 0, 32 * sizeof(long long)));
        bind(caches[rep % copies]);
        CHECK_CUDA(mpa::cuda::MultipoleDecode(p, nullptr));
      }
      p.trace = nullptr;
      long long tr[32];
      CHECK_CUDA(cudaMemcpy(tr, trace, sizeof(tr), cudaMemcpyDeviceToHost));
      // Phase marks (cluster_selection.cu): 0 start, 1 normalisers, 2 scores, 3 histogram, 4 first
      // miss, 9 tail setup, 5 rule done, 11 selected clusters compacted, 6 rows written, 10
      // approximation setup, 7 selected terms, 8 merge; 16..19 counts.
      auto us = [&](int to, int from) {
        return tr[to] && tr[from] ? (tr[to] - tr[from]) / clock_mhz : 0.0;
      };
      std::printf(
          "  lookup on CUDA cores %.1f us; selection phases (us): start %.1f | scores %.1f | hist "
          "%.1f | miss %.1f | tail %.1f (rounds %.1f) | compact %.1f | rows %.1f | approx setup "
          "%.1f | selected terms %.1f | merge %.1f || bin keys %lld, tail rounds %lld of %lld "
          "candidates, %lld clusters selected\n",
          lookup_cc_t * 1e6, us(1, 0), us(2, 1), us(3, 2), us(4, 3), tr[4] ? us(5, 4) : us(5, 2),
          us(5, 9), us(11, 5), us(6, 11), us(10, 6), us(7, 10), us(8, 7), tr[16], tr[17], tr[18],
          tr[19]);
      std::printf("%7d %5d %-6s %9.0f %9.1f %9.1f %6.1f%% %9.1f %7.2fx %8.1f %8.1f\n", s.context,
                  s.batch, bud.name.c_str(), selected_total / heads, bytes / 1e6, t * 1e6,
                  100.0 * floor_t / t, dense_t * 1e6, dense_t / t, step_t[0] * 1e6,
                  step_t[1] * 1e6);
      if (csv) {
        std::fprintf(csv, "%d,%d,%s,1,%.0f,%.0f,%.3f,%.3f,%.4f,%.3f,%.3f,%.3f,%.3f,%.3f\n",
                     s.context, s.batch, bud.name.c_str(), selected_total / heads, bytes, t * 1e6,
                     floor_t * 1e6, floor_t / t, dense_t * 1e6, dense_floor * 1e6, dense_t / t,
                     step_t[0] * 1e6, step_t[1] * 1e6);
        std::fflush(csv);
      }
    }
    for (Cache& x : caches) {
      for (void* ptr :
           {static_cast<void*>(x.k), static_cast<void*>(x.v), static_cast<void*>(x.kc),
            static_cast<void*>(x.vc), static_cast<void*>(x.q), static_cast<void*>(x.table),
            static_cast<void*>(x.lens), static_cast<void*>(x.sink), static_cast<void*>(x.cend),
            static_cast<void*>(x.budget), static_cast<void*>(x.begin),
            static_cast<void*>(x.num_clusters), static_cast<void*>(x.approximate),
            static_cast<void*>(x.kc_ptrs), static_cast<void*>(x.vc_ptrs),
            static_cast<void*>(x.begin_ptrs)}) {
        cudaFree(ptr);
      }
    }
    cudaFree(out);
    cudaFree(ws);
    cudaFree(dense_ws);
  }
  cudaFree(trace);
  if (csv) std::fclose(csv);
  return 0;
}
