// The Quest baseline on the GPU (kernels/cuda/multipole/quest_pages.cu, and MultipoleDecode with
// `quest`) against its CPU twins (kernels/cpu/multipole/quest_pages.cc, cluster_selection.cc,
// sparse_attention.cc): page bounds equal to the bit (also when built in two steps, as the online
// update does), page scores equal to the bit, the CPU rule on the GPU's scores chooses exactly
// the GPU's pages, and the output equals exact attention over sink + recent + selected pages.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/multipole/cluster_selection.h"
#include "kernels/cpu/multipole/quest_pages.h"
#include "kernels/cpu/multipole/sparse_attention.h"
#include "kernels/cuda/multipole/multipole_decode.h"
#include "tests/kernels/cuda_test_util.h"

namespace mpa::cuda {
namespace {

using testing::DeviceBuffer;
using testing::HostPagedCache;
using testing::RelativeL2;

struct QuestSeq {
  int len;
  int sink;
  int paged_end;  // the region [sink, paged_end) is cut into pages
  int budget;
};

struct QuestCase {
  int head_dim;
  int group;
  int num_kv_heads;
  int page_tokens;
  std::vector<QuestSeq> seqs;
  DecodeKernel kernel = DecodeKernel::kAuto;
};

std::string Describe(const QuestCase& c) {
  std::string s = "hd" + std::to_string(c.head_dim) + " g" + std::to_string(c.group) + " kv" +
                  std::to_string(c.num_kv_heads) + " P" + std::to_string(c.page_tokens) +
                  (c.kernel == DecodeKernel::kCudaCore ? " cuda-core" : "");
  for (const QuestSeq& q : c.seqs) {
    s += " [len " + std::to_string(q.len) + " sink " + std::to_string(q.sink) + " end " +
         std::to_string(q.paged_end) + " budget " + std::to_string(q.budget) + "]";
  }
  return s;
}

// Same bound as the multipole decode test: fp32 reference on the same bf16 inputs.
constexpr double kF32Bound = 1e-4;

int PagesOf(const QuestSeq& q, int P) { return (q.paged_end - q.sink + P - 1) / P; }

// Runs a case; returns the output's relative L2 error against the CPU reference.
double RunQuest(const QuestCase& c) {
  const uint64_t seed = testing::FreshSeed();
  SCOPED_TRACE(Describe(c) + " seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const int B = static_cast<int>(c.seqs.size()), H = c.num_kv_heads, G = c.group, D = c.head_dim,
            P = c.page_tokens, nq = H * G;
  std::vector<int> lens;
  int max_pages = 1, max_len = 1;
  for (const QuestSeq& q : c.seqs) {
    lens.push_back(q.len);
    max_pages = std::max(max_pages, PagesOf(q, P));
    max_len = std::max(max_len, q.len);
  }
  const HostPagedCache cache(lens, H, D, 16, rng);
  std::vector<float> q = testing::RandomNormal(static_cast<size_t>(B) * nq * D, rng, 2.0f);
  const std::vector<uint16_t> q_bits = testing::ToBf16(q);
  const int pool_pages = static_cast<int>(cache.k.size() / (static_cast<size_t>(H) * 16 * D));

  DeviceBuffer<uint16_t> dq(q_bits), dk(cache.k_bits), dv(cache.v_bits);
  DeviceBuffer<int32_t> table(cache.table);
  const PagedKvCache kv{reinterpret_cast<bf16*>(dk.get()), reinterpret_cast<bf16*>(dv.get()), H, D,
                        16};
  // Per sequence: [H, max_pages, D] bounds and [max_pages + 1] page starts.
  const size_t per_seq = static_cast<size_t>(H) * max_pages * D;
  DeviceBuffer<uint16_t> page_min(B * per_seq), page_max(B * per_seq);
  DeviceBuffer<int32_t> page_begin(static_cast<size_t>(B) * (max_pages + 1));
  for (int b = 0; b < B; ++b) {
    const QuestSeq& s = c.seqs[b];
    const int pages = PagesOf(s, P);
    if (pages == 0) continue;
    QuestPageBoundsParams bp;
    bp.kv = kv;
    bp.pages = table.get() + b * cache.max_pages;
    bp.region_begin = s.sink;
    bp.page_tokens = P;
    bp.page_min = reinterpret_cast<bf16*>(page_min.get() + b * per_seq);
    bp.page_max = reinterpret_cast<bf16*>(page_max.get() + b * per_seq);
    bp.head_stride = static_cast<int64_t>(max_pages) * D;
    bp.page_begin = page_begin.get() + b * (max_pages + 1);
    // Two steps, as the online update: the first half of the region, then from the page that
    // held its end (recomputed whole) to the end.
    const int mid = s.sink + (s.paged_end - s.sink) / 2;
    if (mid > s.sink) {
      bp.region_end = mid;
      bp.first_page = 0;
      bp.end_page = (mid - s.sink + P - 1) / P;
      if (QuestPageBounds(bp, nullptr) != cudaSuccess) {
        ADD_FAILURE() << "QuestPageBounds refused the first half of b" << b;
        return 1.0;
      }
    }
    bp.region_end = s.paged_end;
    bp.first_page = (mid - s.sink) / P;
    bp.end_page = pages;
    if (QuestPageBounds(bp, nullptr) != cudaSuccess) {
      ADD_FAILURE() << "QuestPageBounds refused the rest of b" << b;
      return 1.0;
    }
  }
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);

  // Bounds to the bit against the CPU twin.
  const std::vector<uint16_t> got_min = page_min.Download(), got_max = page_max.Download();
  const std::vector<int32_t> got_begin = page_begin.Download();
  std::vector<std::vector<float>> ref_min(B * H), ref_max(B * H);
  std::vector<std::vector<float>> kc(B), vc(B);
  int bound_failures = 0;
  for (int b = 0; b < B; ++b) {
    const QuestSeq& s = c.seqs[b];
    const int pages = PagesOf(s, P);
    cache.Contiguous(b, kc[b], vc[b]);
    for (int i = 0; i < pages; ++i) {
      EXPECT_EQ(got_begin[b * (max_pages + 1) + i], i * P) << "b" << b << " page " << i;
    }
    if (pages > 0) {
      EXPECT_EQ(got_begin[b * (max_pages + 1) + pages], s.paged_end - s.sink) << "b" << b;
    }
    for (int h = 0; h < H; ++h) {
      std::vector<float>& mn = ref_min[b * H + h];
      std::vector<float>& mx = ref_max[b * H + h];
      mn.assign(static_cast<size_t>(std::max(pages, 1)) * D, 0.0f);
      mx.assign(mn.size(), 0.0f);
      cpu::QuestPageBoundsParams rp;
      rp.k_head = kc[b].data() + static_cast<size_t>(h) * s.len * D;
      rp.region_begin = s.sink;
      rp.region_end = s.paged_end;
      rp.page_tokens = P;
      rp.first_page = 0;
      rp.end_page = pages;
      rp.head_dim = D;
      rp.page_min = mn.data();
      rp.page_max = mx.data();
      cpu::QuestPageBounds(rp);
      for (int i = 0; i < pages * D; ++i) {
        const size_t at = b * per_seq + static_cast<size_t>(h) * max_pages * D + i;
        if ((testing::Bf16ToFloat(got_min[at]) != mn[i] ||
             testing::Bf16ToFloat(got_max[at]) != mx[i]) &&
            ++bound_failures <= 3) {
          ADD_FAILURE() << "bounds b" << b << " h" << h << " page " << i / D << " dim " << i % D
                        << ": gpu " << testing::Bf16ToFloat(got_min[at]) << ".."
                        << testing::Bf16ToFloat(got_max[at]) << " cpu " << mn[i] << ".." << mx[i];
        }
      }
    }
  }

  // The decode step: pages as clusters in position order.
  std::vector<int32_t> sink, cend, budget, clusters;
  std::vector<uintptr_t> min_ptrs, max_ptrs, begin_ptrs;
  for (int b = 0; b < B; ++b) {
    const QuestSeq& s = c.seqs[b];
    sink.push_back(s.sink);
    cend.push_back(s.paged_end);
    budget.push_back(s.budget);
    for (int h = 0; h < H; ++h) {
      clusters.push_back(PagesOf(s, P));
      const size_t at = b * per_seq + static_cast<size_t>(h) * max_pages * D;
      min_ptrs.push_back(reinterpret_cast<uintptr_t>(page_min.get() + at));
      max_ptrs.push_back(reinterpret_cast<uintptr_t>(page_max.get() + at));
      begin_ptrs.push_back(reinterpret_cast<uintptr_t>(page_begin.get() + b * (max_pages + 1)));
    }
  }
  DeviceBuffer<int32_t> dlens(std::vector<int32_t>(lens.begin(), lens.end())), dsink(sink),
      dcend(cend), dbudget(budget), dclusters(clusters);
  // approximate = 1 everywhere: a Quest sequence must ignore it.
  DeviceBuffer<uint8_t> approximate(std::vector<uint8_t>(B, 1)), quest(std::vector<uint8_t>(B, 1));
  DeviceBuffer<uintptr_t> dmin(min_ptrs), dmax(max_ptrs), dbegin(begin_ptrs);
  MultipoleDecodeParams p;
  p.q = reinterpret_cast<const bf16*>(dq.get());
  p.kv = kv;
  p.block_table = {table.get(), cache.max_pages};
  p.pool_pages = pool_pages;
  p.seq_lens = dlens.get();
  p.sink_end = dsink.get();
  p.clustered_end = dcend.get();
  p.token_budget = dbudget.get();
  p.approximate = approximate.get();
  p.quest = quest.get();
  p.clusters.pages = p.block_table;
  p.clusters.slots_after_sink = true;
  p.clusters.key_centroids = reinterpret_cast<const bf16* const*>(dmin.get());
  p.clusters.value_centroids = reinterpret_cast<const bf16* const*>(dmax.get());
  p.clusters.cluster_begin = reinterpret_cast<const int32_t* const*>(dbegin.get());
  p.clusters.num_clusters = dclusters.get();
  p.clusters.max_clusters = max_pages;
  p.batch = B;
  p.num_q_heads = nq;
  p.max_seq_len = max_len;
  p.scale = 1.0f / std::sqrt(static_cast<float>(D));
  p.kernel = c.kernel;
  DeviceBuffer<float> out(static_cast<size_t>(B) * nq * D);
  p.out_f32 = out.get();
  MultipoleShape shape;
  shape.batch = B;
  shape.num_q_heads = nq;
  shape.num_kv_heads = H;
  shape.head_dim = D;
  shape.max_clusters = max_pages;
  shape.max_seq_len = max_len;
  const size_t bytes = MultipoleDecodeWorkspaceBytes(shape);
  DeviceBuffer<char> ws(bytes);
  p.workspace = ws.get();
  p.workspace_bytes = bytes;
  EXPECT_EQ(MultipoleDecode(p, nullptr), cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const MultipoleWorkspace w = MultipoleWorkspaceLayout(ws.get(), shape);
  std::vector<float> scores(static_cast<size_t>(B) * H * max_pages);
  std::vector<uint8_t> selected(scores.size());
  std::vector<int32_t> selected_tokens(static_cast<size_t>(B) * H);
  cudaMemcpy(scores.data(), w.scores, scores.size() * sizeof(float), cudaMemcpyDeviceToHost);
  cudaMemcpy(selected.data(), w.selected, selected.size(), cudaMemcpyDeviceToHost);
  cudaMemcpy(selected_tokens.data(), w.selected_tokens, selected_tokens.size() * sizeof(int32_t),
             cudaMemcpyDeviceToHost);
  const std::vector<float> got = out.Download();

  std::vector<float> want(got.size());
  int score_failures = 0, selection_failures = 0;
  bool negative_score = false;
  for (int b = 0; b < B; ++b) {
    const QuestSeq& s = c.seqs[b];
    const int pages = PagesOf(s, P);
    std::vector<int32_t> counts(pages);
    for (int i = 0; i < pages; ++i) counts[i] = std::min(P, s.paged_end - s.sink - i * P);
    for (int h = 0; h < H; ++h) {
      const size_t hb = static_cast<size_t>(b) * H + h;
      const float* qh = q.data() + (static_cast<size_t>(b) * nq + h * G) * D;
      std::vector<float> ref_scores(pages);
      cpu::QuestPageScoreParams sp;
      sp.q = qh;
      sp.page_min = ref_min[hb].data();
      sp.page_max = ref_max[hb].data();
      sp.num_pages = pages;
      sp.group_size = G;
      sp.head_dim = D;
      sp.scores = ref_scores.data();
      cpu::QuestPageScores(sp);
      std::vector<float> gpu_scores(scores.begin() + hb * max_pages,
                                    scores.begin() + hb * max_pages + pages);
      for (int i = 0; i < pages; ++i) {
        negative_score |= ref_scores[i] < 0.0f;
        if (gpu_scores[i] != ref_scores[i] && ++score_failures <= 3) {
          ADD_FAILURE() << "score b" << b << " h" << h << " page " << i << ": " << gpu_scores[i]
                        << " vs " << ref_scores[i];
        }
      }
      std::vector<uint8_t> ref_selected(pages);
      cpu::ClusterSelectionParams sel;
      sel.scores = gpu_scores.data();
      sel.counts = counts.data();
      sel.num_clusters = pages;
      sel.token_budget = s.budget;
      sel.selected = ref_selected.data();
      const int64_t ref_tokens = pages > 0 ? cpu::SelectClusters(sel) : 0;
      for (int i = 0; i < max_pages; ++i) {
        const uint8_t want_flag = i < pages ? ref_selected[i] : 0;
        if (selected[hb * max_pages + i] != want_flag && ++selection_failures <= 3) {
          ADD_FAILURE() << "selection b" << b << " h" << h << " page " << i << ": gpu "
                        << int(selected[hb * max_pages + i]) << " cpu " << int(want_flag);
        }
      }
      EXPECT_EQ(selected_tokens[hb], ref_tokens) << "b" << b << " h" << h;
      std::vector<cpu::TokenRange> ranges = {{0, s.sink}, {s.paged_end, s.len}};
      for (int i = 0; i < pages; ++i) {
        if (ref_selected[i]) ranges.push_back({s.sink + i * P, s.sink + i * P + counts[i]});
      }
      for (int g = 0; g < G; ++g) {
        cpu::PartialAttention acc(D);
        cpu::SparseExactParams ep;
        ep.q = qh + static_cast<size_t>(g) * D;
        ep.k_head = kc[b].data() + static_cast<size_t>(h) * s.len * D;
        ep.v_head = vc[b].data() + static_cast<size_t>(h) * s.len * D;
        ep.head_dim = D;
        ep.scale = p.scale;
        ep.position_ranges = ranges.data();
        ep.num_position_ranges = static_cast<int>(ranges.size());
        cpu::AccumulateSparseExact(ep, acc);
        cpu::FinalizePartial(acc, want.data() + (static_cast<size_t>(b) * nq + h * G + g) * D);
      }
    }
  }
  if (P == 1) {
    EXPECT_TRUE(negative_score) << "one-token pages should give some negative bounds";
  }
  return RelativeL2(got, want);
}

TEST(QuestDecodeGpuTest, MatchesCpuTwinsOnAwkwardShapes) {
  MPA_SKIP_WITHOUT_GPU();
  for (int hd : {8, 64, 128}) {
    for (int group : {1, 2, 4, 8}) {
      for (int P : {16, 5}) {
        QuestCase c{hd,
                    group,
                    2,
                    P,
                    {{700, 10, 560, 120},   // several pages over the budget
                     {300, 4, 260, 3},      // budget below one page: the boundary rule
                     {1000, 0, 900, 0},     // no budget: sink + recent only
                     {513, 10, 385, 1000},  // budget covers the region: dense
                     {40, 10, 10, 64}}};    // no paged region
        EXPECT_LT(RunQuest(c), kF32Bound) << Describe(c);
      }
    }
  }
}

TEST(QuestDecodeGpuTest, NegativeBoundsAndCudaCoreKernel) {
  MPA_SKIP_WITHOUT_GPU();
  for (DecodeKernel kernel : {DecodeKernel::kAuto, DecodeKernel::kCudaCore}) {
    // One-token pages: the bound is the logit itself, negative for about half the tokens.
    QuestCase c{64, 4, 3, 1, {{600, 8, 500, 100}, {333, 0, 300, 17}}, kernel};
    EXPECT_LT(RunQuest(c), kF32Bound) << Describe(c);
  }
}

TEST(QuestDecodeGpuTest, ManyPages) {
  MPA_SKIP_WITHOUT_GPU();
  // 8192 pages of one token at head_dim 128 (the selection's histogram and tail at scale).
  QuestCase c{128, 4, 2, 1, {{8400, 10, 8202, 400}}};
  EXPECT_LT(RunQuest(c), kF32Bound) << Describe(c);
}

}  // namespace
}  // namespace mpa::cuda
