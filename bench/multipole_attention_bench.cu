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
// Two levels (the hierarchical option, DESIGN.md section 5): fine clusters of 8 tokens on average
// under coarse clusters of 8 fine ones on average (1 centroid per 64 tokens), cut the same way,
// coarse clusters expanded up to 4 x the budget; each budget runs one level, then two.
//
// Usage: multipole_attention_bench [--out results.csv] [--quick] [--levels 1|2|12]
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
constexpr int kFineTokens = 8, kFinePerCoarse = 8;  // two levels
constexpr float kExpansion = 4.0f;

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

// One level of a two-level hierarchy on the device: per head, centroid tables and bounds.
struct Level {
  mpa::cuda::bf16 *kc = nullptr, *vc = nullptr;
  int32_t *begin = nullptr, *fine_of = nullptr, *num = nullptr;
  uintptr_t *kc_ptrs = nullptr, *vc_ptrs = nullptr, *begin_ptrs = nullptr, *fine_of_ptrs = nullptr;
  int max_clusters = 0;
};

template <typename T>
T* Upload(const std::vector<T>& host) {
  T* d = nullptr;
  CHECK_CUDA(cudaMalloc(&d, std::max<size_t>(host.size(), 1) * sizeof(T)));
  CHECK_CUDA(cudaMemcpy(d, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}

// Sorted random cut points: n items in `parts` runs of varying size (every run non-empty).
std::vector<int32_t> RandomBounds(int n, int parts, std::mt19937_64& rng) {
  std::vector<int32_t> cuts(n - 1);
  std::iota(cuts.begin(), cuts.end(), 1);
  std::shuffle(cuts.begin(), cuts.end(), rng);
  cuts.resize(parts - 1);
  std::sort(cuts.begin(), cuts.end());
  std::vector<int32_t> bounds = {0};
  bounds.insert(bounds.end(), cuts.begin(), cuts.end());
  bounds.push_back(n);
  return bounds;
}

// A level's device tables from per-head bounds (and, for a coarse level, its fine runs); random
// centroids. Every head has the same cluster count.
Level MakeLevel(const std::vector<std::vector<int32_t>>& begin,
                const std::vector<std::vector<int32_t>>& fine_of, uint64_t seed) {
  Level l;
  const int heads = static_cast<int>(begin.size());
  l.max_clusters = static_cast<int>(begin[0].size()) - 1;
  const size_t elems = static_cast<size_t>(heads) * l.max_clusters * kHeadDim;
  CHECK_CUDA(cudaMalloc(&l.kc, elems * 2));
  CHECK_CUDA(cudaMalloc(&l.vc, elems * 2));
  CHECK_CUDA(mpa::cuda::FillNormalBf16(l.kc, elems, seed, 0.0f, 0.5f, nullptr));
  CHECK_CUDA(mpa::cuda::FillNormalBf16(l.vc, elems, seed + 1, 0.0f, 0.5f, nullptr));
  std::vector<int32_t> flat, flat_fine;
  for (const auto& b : begin) flat.insert(flat.end(), b.begin(), b.end());
  for (const auto& f : fine_of) flat_fine.insert(flat_fine.end(), f.begin(), f.end());
  l.begin = Upload(flat);
  if (!fine_of.empty()) l.fine_of = Upload(flat_fine);
  l.num = Upload(std::vector<int32_t>(heads, l.max_clusters));
  std::vector<uintptr_t> kp, vp, bp, fp;
  for (int h = 0; h < heads; ++h) {
    const size_t off = static_cast<size_t>(h) * l.max_clusters * kHeadDim;
    const size_t boff = static_cast<size_t>(h) * (l.max_clusters + 1);
    kp.push_back(reinterpret_cast<uintptr_t>(l.kc + off));
    vp.push_back(reinterpret_cast<uintptr_t>(l.vc + off));
    bp.push_back(reinterpret_cast<uintptr_t>(l.begin + boff));
    if (l.fine_of != nullptr) fp.push_back(reinterpret_cast<uintptr_t>(l.fine_of + boff));
  }
  l.kc_ptrs = Upload(kp);
  l.vc_ptrs = Upload(vp);
  l.begin_ptrs = Upload(bp);
  if (l.fine_of != nullptr) l.fine_of_ptrs = Upload(fp);
  return l;
}

void FreeLevel(Level& l) {
  for (void* ptr : {static_cast<void*>(l.kc), static_cast<void*>(l.vc), static_cast<void*>(l.begin),
                    static_cast<void*>(l.fine_of), static_cast<void*>(l.num),
                    static_cast<void*>(l.kc_ptrs), static_cast<void*>(l.vc_ptrs),
                    static_cast<void*>(l.begin_ptrs), static_cast<void*>(l.fine_of_ptrs)}) {
    cudaFree(ptr);
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string out_path;
  bool quick = false;
  bool one_level = true, two_levels = true;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--out") && i + 1 < argc) {
      out_path = argv[++i];
    } else if (!std::strcmp(argv[i], "--quick")) {
      quick = true;
    } else if (!std::strcmp(argv[i], "--levels") && i + 1 < argc) {
      const std::string v = argv[++i];
      one_level = v.find('1') != std::string::npos;
      two_levels = v.find('2') != std::string::npos;
    } else {
      std::fprintf(stderr, "usage: %s [--out results.csv] [--quick] [--levels 1|2|12]\n", argv[0]);
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
    // Two levels: per copy, fine clusters (1 per kFineTokens tokens) under coarse clusters of
    // kFinePerCoarse fine ones on average, each cut at random points.
    const int fine_clusters = (region + kFineTokens - 1) / kFineTokens;
    const int coarse_clusters = (fine_clusters + kFinePerCoarse - 1) / kFinePerCoarse;
    std::vector<Level> fine2, coarse2;
    for (int c = 0; two_levels && c < copies; ++c) {
      std::vector<std::vector<int32_t>> fb, cb, cf;
      for (int h = 0; h < heads; ++h) {
        fb.push_back(RandomBounds(region, fine_clusters, rng));
        cf.push_back(RandomBounds(fine_clusters, coarse_clusters, rng));
        std::vector<int32_t> slots;
        for (int32_t f : cf.back()) slots.push_back(fb.back()[f]);
        cb.push_back(std::move(slots));
      }
      fine2.push_back(MakeLevel(fb, {}, 100 * c + 6));
      coarse2.push_back(MakeLevel(cb, cf, 100 * c + 8));
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
    mpa::cuda::MultipoleShape shape2 = shape;
    shape2.max_clusters = fine_clusters;
    shape2.max_coarse_clusters = coarse_clusters;
    const size_t ws2_bytes = two_levels ? mpa::cuda::MultipoleDecodeWorkspaceBytes(shape2) : 0;
    void* ws2 = nullptr;
    if (two_levels) CHECK_CUDA(cudaMalloc(&ws2, ws2_bytes));
    const mpa::cuda::MultipoleWorkspace w2 = two_levels
                                                 ? mpa::cuda::MultipoleWorkspaceLayout(ws2, shape2)
                                                 : mpa::cuda::MultipoleWorkspace{};

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
      if (one_level) {
        // Selected tokens per head (the same for every copy up to the random layout): from copy 0.
        bind(caches[0]);
        CHECK_CUDA(mpa::cuda::MultipoleDecode(p, nullptr));
        CHECK_CUDA(cudaDeviceSynchronize());
        std::vector<int32_t> selected(heads);
        CHECK_CUDA(
            cudaMemcpy(selected.data(), w.selected_tokens, heads * 4, cudaMemcpyDeviceToHost));
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
        // Phase marks (cluster_selection.cu): 0 start, 1 normalisers, 2 scores, 3 histogram, 4
        // first miss, 9 tail setup, 5 rule done, 11 selected clusters compacted, 6 rows written, 10
        // approximation setup, 7 selected terms, 8 merge; 16..19 counts.
        auto us = [&](int to, int from) {
          return tr[to] && tr[from] ? (tr[to] - tr[from]) / clock_mhz : 0.0;
        };
        std::printf(
            "  lookup on CUDA cores %.1f us; selection phases (us): start %.1f | scores %.1f | "
            "hist "
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
      }  // one level

      if (two_levels) {
        // The same caches and budget with the two-level hierarchy.
        mpa::cuda::MultipoleDecodeParams p2;
        int stop2 = 0;
        auto bind2 = [&](int i) {
          bind(caches[i]);
          p2 = p;
          p2.workspace = ws2;
          p2.workspace_bytes = ws2_bytes;
          p2.stop_after = stop2;
          const Level& f = fine2[i];
          const Level& c = coarse2[i];
          p2.clusters.key_centroids = reinterpret_cast<const mpa::cuda::bf16* const*>(f.kc_ptrs);
          p2.clusters.value_centroids = reinterpret_cast<const mpa::cuda::bf16* const*>(f.vc_ptrs);
          p2.clusters.cluster_begin = reinterpret_cast<const int32_t* const*>(f.begin_ptrs);
          p2.clusters.num_clusters = f.num;
          p2.clusters.max_clusters = f.max_clusters;
          mpa::cuda::CoarseLevel& cl = p2.clusters.coarse;
          cl.key_centroids = reinterpret_cast<const mpa::cuda::bf16* const*>(c.kc_ptrs);
          cl.value_centroids = reinterpret_cast<const mpa::cuda::bf16* const*>(c.vc_ptrs);
          cl.cluster_begin = reinterpret_cast<const int32_t* const*>(c.begin_ptrs);
          cl.fine_begin = reinterpret_cast<const int32_t* const*>(c.fine_of_ptrs);
          cl.num_clusters = c.num;
          cl.max_clusters = c.max_clusters;
          cl.expansion = kExpansion;
        };
        bind2(0);
        CHECK_CUDA(mpa::cuda::MultipoleDecode(p2, nullptr));
        CHECK_CUDA(cudaDeviceSynchronize());
        std::vector<int32_t> sel2(heads), listed(heads), expanded(heads);
        CHECK_CUDA(cudaMemcpy(sel2.data(), w2.selected_tokens, heads * 4, cudaMemcpyDeviceToHost));
        CHECK_CUDA(cudaMemcpy(listed.data(), w2.fine_count, heads * 4, cudaMemcpyDeviceToHost));
        CHECK_CUDA(
            cudaMemcpy(expanded.data(), w2.expanded_tokens, heads * 4, cudaMemcpyDeviceToHost));
        const double sel2_total = std::accumulate(sel2.begin(), sel2.end(), 0.0);
        const double listed_total = std::accumulate(listed.begin(), listed.end(), 0.0);
        const double expanded_total = std::accumulate(expanded.begin(), expanded.end(), 0.0);
        const int recent = s.context - cend;
        // Bytes: coarse centroids (K and V), the listed fine centroids (K and V), exact rows (K
        // and V), both levels' logits written once and read twice, the list (ids and bounds)
        // and the rows list written and read.
        const double exact_rows = heads * static_cast<double>(kSink + recent) + sel2_total;
        const double bytes = heads * 2.0 * coarse_clusters * kHeadDim * 2 +
                             listed_total * 2 * kHeadDim * 2 + exact_rows * 2 * kHeadDim * 2 +
                             3.0 * s.batch * kQHeads * coarse_clusters * 4 +
                             3.0 * listed_total * (kQHeads / kKvHeads) * 4 +
                             2.0 * listed_total * 8 + 2.0 * exact_rows * 4;
        const int iters = std::min(2000, std::max(50, static_cast<int>(4e8 / bytes)));
        double step_t[3];
        for (int stop = 1; stop <= 3; ++stop) {
          stop2 = stop == 3 ? 0 : stop;
          step_t[stop - 1] = TimeIt(
              [&](int i) {
                bind2(i % copies);
                CHECK_CUDA(mpa::cuda::MultipoleDecode(p2, nullptr));
              },
              iters, 7);
        }
        stop2 = 0;
        const double t = step_t[2];
        const double floor_t = bytes / copy_bw;
        std::printf(
            "  two levels: %d coarse clusters per head, %.0f tokens expanded and %.0f fine "
            "clusters listed per head (of %d)\n",
            coarse_clusters, expanded_total / heads, listed_total / heads, fine_clusters);
        std::printf("%7d %5d %-6s %9.0f %9.1f %9.1f %6.1f%% %9.1f %7.2fx %8.1f %8.1f  (2 levels)\n",
                    s.context, s.batch, bud.name.c_str(), sel2_total / heads, bytes / 1e6, t * 1e6,
                    100.0 * floor_t / t, dense_t * 1e6, dense_t / t, step_t[0] * 1e6,
                    step_t[1] * 1e6);
        if (csv) {
          std::fprintf(csv, "%d,%d,%s,2,%.0f,%.0f,%.3f,%.3f,%.4f,%.3f,%.3f,%.3f,%.3f,%.3f\n",
                       s.context, s.batch, bud.name.c_str(), sel2_total / heads, bytes, t * 1e6,
                       floor_t * 1e6, floor_t / t, dense_t * 1e6, dense_floor * 1e6, dense_t / t,
                       step_t[0] * 1e6, step_t[1] * 1e6);
          std::fflush(csv);
        }
      }
    }
    for (Level& l : fine2) FreeLevel(l);
    for (Level& l : coarse2) FreeLevel(l);
    if (ws2 != nullptr) cudaFree(ws2);
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
