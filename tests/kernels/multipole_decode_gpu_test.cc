// Multipole decode on the GPU (kernels/cuda/multipole/) against its CPU twins
// (kernels/cpu/multipole/): centroid logits, scores, the budgeted selection (the CPU rule run on
// the GPU's scores must choose exactly the GPU's clusters), and the attention output (exact part
// over sink + recent + selected slots, multipole term over the rest). Also: a budget covering the
// whole region and an empty region both equal dense decode on the GPU.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <string>
#include <type_traits>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/multipole/centroid_approximation.h"
#include "kernels/cpu/multipole/centroid_lookup.h"
#include "kernels/cpu/multipole/cluster_selection.h"
#include "kernels/cpu/multipole/sparse_attention.h"
#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/multipole/multipole_decode.h"
#include "tests/kernels/cuda_test_util.h"

namespace mpa::cuda {
namespace {

using testing::DeviceBuffer;
using testing::RelativeL2;

struct SeqSpec {
  int len;
  int sink;
  int clustered_end;
  int clusters;  // per KV head (the region's tokens / clusters is the mean cluster size)
  int budget;    // clustered tokens attended exactly
  bool approximate;
  bool giant = false;  // one cluster holds half the region and points along the query
};

struct Case {
  int head_dim;
  int group;
  int num_kv_heads;
  std::vector<SeqSpec> seqs;
  DecodeKernel kernel = DecodeKernel::kAuto;
  int page_size = 16;
  int pipeline_parts = 0;  // MultipoleDecodeParams::pipeline_parts
  // Two levels: coarse clusters over runs of 1 .. 2 coarse_per - 1 consecutive fine clusters
  // (0: one level), expanded up to ceil(expansion x budget) tokens.
  int coarse_per = 0;
  float expansion = 4.0f;
  bool mixed = false;  // two levels: odd sequences have one level (CoarseLevel::two_level)
};

bool TwoLevelSequence(const Case& c, int b) { return c.coarse_per > 0 && !(c.mixed && b % 2); }

std::string Describe(const Case& c) {
  std::string s = "hd" + std::to_string(c.head_dim) + " g" + std::to_string(c.group) + " kv" +
                  std::to_string(c.num_kv_heads) +
                  (c.kernel == DecodeKernel::kCudaCore ? " cuda-core" : " auto") +
                  (c.pipeline_parts == 2 ? " two streams" : "");
  if (c.coarse_per > 0) {
    char levels[96];
    std::snprintf(levels, sizeof(levels), " two levels (coarse ~%d fine, expansion %g%s)",
                  c.coarse_per, c.expansion, c.mixed ? ", odd sequences one level" : "");
    s += levels;
  }
  for (const SeqSpec& q : c.seqs) {
    s += " [len " + std::to_string(q.len) + " sink " + std::to_string(q.sink) + " cend " +
         std::to_string(q.clustered_end) + " C " + std::to_string(q.clusters) + " budget " +
         std::to_string(q.budget) + (q.approximate ? " mp" : " exact-only") +
         (q.giant ? " giant" : "") + "]";
  }
  return s;
}

// The host side of one case: the pool (position pages and cluster-major pages, shuffled), the
// clusters of every (sequence, KV head) and their bf16 centroids.
struct Scene {
  int batch = 0, H = 0, G = 0, D = 0, page = 0;
  int max_pages = 1, max_cpages = 1, pool_pages = 0, max_clusters = 1, max_len = 1;
  std::vector<int32_t> table, ctable;  // [batch, max_pages], [batch, max_cpages]
  std::vector<float> k, v;             // [pool_pages, H, page, D] bf16 values
  std::vector<uint16_t> k_bits, v_bits;
  std::vector<float> q;  // [batch, H * G, D]
  std::vector<uint16_t> q_bits;
  // Per (b, h): cluster c holds slots [begin[c], begin[c + 1]); slot_pos[s] is its position.
  std::vector<std::vector<int32_t>> begin, slot_pos;
  std::vector<std::vector<float>> kc, vc;  // [C, D] bf16 values
  std::vector<std::vector<uint16_t>> kc_bits, vc_bits;
  // Two levels, per (b, h): coarse cluster c holds fine clusters [fine_of[c], fine_of[c + 1])
  // and slots [cbegin[c], cbegin[c + 1]); its centroids are the means of those slots' rows.
  int max_coarse = 0;
  std::vector<std::vector<int32_t>> fine_of, cbegin;
  std::vector<std::vector<float>> ckc, cvc;
  std::vector<std::vector<uint16_t>> ckc_bits, cvc_bits;

  size_t Row(int page_id, int h, int offset) const {
    return ((static_cast<size_t>(page_id) * H + h) * page + offset) * D;
  }
  size_t PosRow(int b, int h, int t) const {
    return Row(table[b * max_pages + t / page], h, t % page);
  }
  size_t SlotRow(int b, int h, int s) const {
    return Row(ctable[b * max_cpages + s / page], h, s % page);
  }
};

// Per cluster of `bounds` (slot ranges of one (b, h)), the fp32 means of its keys and values.
void SlotMeans(const Scene& s, int b, int h, const std::vector<int32_t>& bounds,
               const std::vector<int32_t>& slot_pos, std::vector<float>& kc,
               std::vector<float>& vc) {
  const int clusters = static_cast<int>(bounds.size()) - 1;
  kc.assign(static_cast<size_t>(clusters) * s.D, 0.0f);
  vc.assign(kc.size(), 0.0f);
  for (int cl = 0; cl < clusters; ++cl) {
    const int count = bounds[cl + 1] - bounds[cl];
    for (int slot = bounds[cl]; slot < bounds[cl + 1]; ++slot) {
      const size_t row = s.PosRow(b, h, slot_pos[slot]);
      for (int d = 0; d < s.D; ++d) {
        kc[static_cast<size_t>(cl) * s.D + d] += s.k[row + d];
        vc[static_cast<size_t>(cl) * s.D + d] += s.v[row + d];
      }
    }
    for (int d = 0; count > 0 && d < s.D; ++d) {
      kc[static_cast<size_t>(cl) * s.D + d] /= count;
      vc[static_cast<size_t>(cl) * s.D + d] /= count;
    }
  }
}

Scene MakeScene(const Case& c, std::mt19937_64& rng) {
  Scene s;
  s.batch = static_cast<int>(c.seqs.size());
  s.H = c.num_kv_heads;
  s.G = c.group;
  s.D = c.head_dim;
  s.page = c.page_size;
  std::vector<int> pos_pages, slot_pages;
  for (const SeqSpec& q : c.seqs) {
    pos_pages.push_back((q.len + s.page - 1) / s.page);
    slot_pages.push_back((q.clustered_end - q.sink + s.page - 1) / s.page);
    s.max_pages = std::max(s.max_pages, pos_pages.back());
    s.max_cpages = std::max(s.max_cpages, slot_pages.back());
    s.max_clusters = std::max(s.max_clusters, q.clusters);
    s.max_len = std::max(s.max_len, q.len);
  }
  s.pool_pages = std::accumulate(pos_pages.begin(), pos_pages.end(), 0) +
                 std::accumulate(slot_pages.begin(), slot_pages.end(), 0) + 2;
  std::vector<int32_t> order(s.pool_pages);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  s.table.assign(static_cast<size_t>(s.batch) * s.max_pages, -1);
  s.ctable.assign(static_cast<size_t>(s.batch) * s.max_cpages, -1);
  int next = 0;
  for (int b = 0; b < s.batch; ++b) {
    for (int i = 0; i < pos_pages[b]; ++i) s.table[b * s.max_pages + i] = order[next++];
    for (int i = 0; i < slot_pages[b]; ++i) s.ctable[b * s.max_cpages + i] = order[next++];
  }
  const size_t pool = static_cast<size_t>(s.pool_pages) * s.H * s.page * s.D;
  s.k = testing::RandomNormal(pool, rng);
  s.v = testing::RandomNormal(pool, rng);
  const int nq = s.H * s.G;
  s.q = testing::RandomNormal(static_cast<size_t>(s.batch) * nq * s.D, rng, 2.0f);
  s.q_bits = testing::ToBf16(s.q);

  // Clusters: skewed random labels over the region (sizes vary, some clusters may be empty), keys
  // pulled towards their cluster's mean so that scores differ.
  std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int b = 0; b < s.batch; ++b) {
    const SeqSpec& q = c.seqs[b];
    const int n = q.clustered_end - q.sink;
    for (int h = 0; h < s.H; ++h) {
      std::vector<int32_t> label(n);
      for (int i = 0; i < n; ++i) {
        const float u = uniform(rng);
        label[i] = std::min(q.clusters - 1, static_cast<int>(q.clusters * u * u));
        if (q.giant && i % 2 == 0) label[i] = q.clusters / 2;
      }
      std::vector<float> mu(static_cast<size_t>(q.clusters) * s.D);
      for (float& x : mu) x = 0.7f * normal(rng);
      if (q.giant) {  // the giant cluster points along the group's first query head
        for (int d = 0; d < s.D; ++d) {
          mu[static_cast<size_t>(q.clusters / 2) * s.D + d] =
              0.3f * s.q[(static_cast<size_t>(b) * nq + h * s.G) * s.D + d];
        }
      }
      for (int i = 0; i < n; ++i) {
        float* row = s.k.data() + s.PosRow(b, h, q.sink + i);
        for (int d = 0; d < s.D; ++d) {
          row[d] = mu[static_cast<size_t>(label[i]) * s.D + d] + 0.5f * row[d];
        }
      }
      std::vector<int32_t> begin(q.clusters + 1, 0);
      for (int l : label) ++begin[l + 1];
      for (int cl = 0; cl < q.clusters; ++cl) begin[cl + 1] += begin[cl];
      std::vector<int32_t> slot_pos(n);
      std::vector<int32_t> fill(begin.begin(), begin.end() - 1);
      for (int i = 0; i < n; ++i) slot_pos[fill[label[i]]++] = q.sink + i;
      s.begin.push_back(std::move(begin));
      s.slot_pos.push_back(std::move(slot_pos));
    }
  }
  s.k_bits = testing::ToBf16(s.k);
  s.v_bits = testing::ToBf16(s.v);
  // Cluster-major copies and centroids (fp32 means of the bf16 rows, rounded to bf16).
  for (int b = 0; b < s.batch; ++b) {
    const SeqSpec& q = c.seqs[b];
    for (int h = 0; h < s.H; ++h) {
      const size_t hb = static_cast<size_t>(b) * s.H + h;
      const std::vector<int32_t>& begin = s.begin[hb];
      const std::vector<int32_t>& slot_pos = s.slot_pos[hb];
      for (size_t slot = 0; slot < slot_pos.size(); ++slot) {
        const size_t from = s.PosRow(b, h, slot_pos[slot]), to = s.SlotRow(b, h, slot);
        std::copy_n(s.k_bits.begin() + from, s.D, s.k_bits.begin() + to);
        std::copy_n(s.v_bits.begin() + from, s.D, s.v_bits.begin() + to);
        std::copy_n(s.k.begin() + from, s.D, s.k.begin() + to);
        std::copy_n(s.v.begin() + from, s.D, s.v.begin() + to);
      }
      std::vector<float> kc, vc;
      SlotMeans(s, b, h, begin, slot_pos, kc, vc);
      s.kc_bits.push_back(testing::ToBf16(kc));
      s.vc_bits.push_back(testing::ToBf16(vc));
      s.kc.push_back(std::move(kc));
      s.vc.push_back(std::move(vc));
      if (c.coarse_per <= 0) continue;
      std::uniform_int_distribution<int> run(1, 2 * c.coarse_per - 1);
      std::vector<int32_t> fine_of = {0}, cbegin = {0};
      while (fine_of.back() < q.clusters) {
        fine_of.push_back(std::min(q.clusters, fine_of.back() + run(rng)));
        cbegin.push_back(begin[fine_of.back()]);
      }
      const int coarse = static_cast<int>(fine_of.size()) - 1;
      std::vector<float> ckc, cvc;
      SlotMeans(s, b, h, cbegin, slot_pos, ckc, cvc);
      s.max_coarse = std::max(s.max_coarse, coarse);
      s.ckc_bits.push_back(testing::ToBf16(ckc));
      s.cvc_bits.push_back(testing::ToBf16(cvc));
      s.ckc.push_back(std::move(ckc));
      s.cvc.push_back(std::move(cvc));
      s.fine_of.push_back(std::move(fine_of));
      s.cbegin.push_back(std::move(cbegin));
    }
  }
  return s;
}

// Device copies of a scene and one MultipoleDecode call.
struct DeviceScene {
  DeviceBuffer<uint16_t> q, k, v;
  DeviceBuffer<int32_t> table, ctable, lens, sink, cend, budget, num_clusters;
  DeviceBuffer<uint8_t> approximate;
  DeviceBuffer<uint16_t> kc, vc;
  DeviceBuffer<int32_t> begin;
  DeviceBuffer<uintptr_t> kc_ptrs, vc_ptrs, begin_ptrs;
  // Two levels (empty otherwise).
  DeviceBuffer<uint16_t> ckc, cvc;
  DeviceBuffer<int32_t> cbegin, fine_of, num_coarse;
  DeviceBuffer<uintptr_t> ckc_ptrs, cvc_ptrs, cbegin_ptrs, fine_of_ptrs;
  DeviceBuffer<uint8_t> two_level;

  static std::vector<int32_t> Field(const Case& c, int SeqSpec::*field) {
    std::vector<int32_t> out;
    for (const SeqSpec& q : c.seqs) out.push_back(q.*field);
    return out;
  }
  static std::vector<uint16_t> Concat(const std::vector<std::vector<uint16_t>>& parts) {
    std::vector<uint16_t> out;
    for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
    return out;
  }
  static std::vector<int32_t> ConcatInt(const std::vector<std::vector<int32_t>>& parts) {
    std::vector<int32_t> out;
    for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
    return out;
  }
  static std::vector<int32_t> Clusters(const Case& c, int H) {
    std::vector<int32_t> out;
    for (const SeqSpec& q : c.seqs) out.insert(out.end(), H, q.clusters);
    return out;
  }
  static std::vector<uint8_t> Approximate(const Case& c) {
    std::vector<uint8_t> out;
    for (const SeqSpec& q : c.seqs) out.push_back(q.approximate ? 1 : 0);
    return out;
  }

  DeviceScene(const Case& c, const Scene& s)
      : q(s.q_bits),
        k(s.k_bits),
        v(s.v_bits),
        table(s.table),
        ctable(s.ctable),
        lens(Field(c, &SeqSpec::len)),
        sink(Field(c, &SeqSpec::sink)),
        cend(Field(c, &SeqSpec::clustered_end)),
        budget(Field(c, &SeqSpec::budget)),
        num_clusters(Clusters(c, s.H)),
        approximate(Approximate(c)),
        kc(Concat(s.kc_bits)),
        vc(Concat(s.vc_bits)),
        begin(ConcatInt(s.begin)),
        kc_ptrs(s.kc_bits.size()),
        vc_ptrs(s.kc_bits.size()),
        begin_ptrs(s.kc_bits.size()),
        ckc(Concat(s.ckc_bits)),
        cvc(Concat(s.cvc_bits)),
        cbegin(ConcatInt(s.cbegin)),
        fine_of(ConcatInt(s.fine_of)),
        num_coarse(s.cbegin.size()),
        ckc_ptrs(s.cbegin.size()),
        cvc_ptrs(s.cbegin.size()),
        cbegin_ptrs(s.cbegin.size()),
        fine_of_ptrs(s.cbegin.size()),
        two_level(c.seqs.size()) {
    std::vector<uint8_t> flags;
    for (int b = 0; b < static_cast<int>(c.seqs.size()); ++b)
      flags.push_back(TwoLevelSequence(c, b));
    two_level.Upload(flags);
    if (!s.cbegin.empty()) {
      std::vector<uintptr_t> kp, vp, bp, fp;
      std::vector<int32_t> counts;
      size_t centroid_offset = 0, begin_offset = 0;
      for (size_t i = 0; i < s.cbegin.size(); ++i) {
        kp.push_back(reinterpret_cast<uintptr_t>(ckc.get() + centroid_offset));
        vp.push_back(reinterpret_cast<uintptr_t>(cvc.get() + centroid_offset));
        bp.push_back(reinterpret_cast<uintptr_t>(cbegin.get() + begin_offset));
        fp.push_back(reinterpret_cast<uintptr_t>(fine_of.get() + begin_offset));
        counts.push_back(static_cast<int32_t>(s.cbegin[i].size()) - 1);
        centroid_offset += s.ckc_bits[i].size();
        begin_offset += s.cbegin[i].size();
      }
      ckc_ptrs.Upload(kp);
      cvc_ptrs.Upload(vp);
      cbegin_ptrs.Upload(bp);
      fine_of_ptrs.Upload(fp);
      num_coarse.Upload(counts);
    }
    std::vector<uintptr_t> kp, vp, bp;
    size_t centroid_offset = 0, begin_offset = 0;
    for (size_t i = 0; i < s.kc_bits.size(); ++i) {
      kp.push_back(reinterpret_cast<uintptr_t>(kc.get() + centroid_offset));
      vp.push_back(reinterpret_cast<uintptr_t>(vc.get() + centroid_offset));
      bp.push_back(reinterpret_cast<uintptr_t>(begin.get() + begin_offset));
      centroid_offset += s.kc_bits[i].size();
      begin_offset += s.begin[i].size();
    }
    kc_ptrs.Upload(kp);
    vc_ptrs.Upload(vp);
    begin_ptrs.Upload(bp);
  }

  MultipoleDecodeParams Params(const Case& c, const Scene& s) const {
    MultipoleDecodeParams p;
    p.q = reinterpret_cast<const bf16*>(q.get());
    p.kv = {reinterpret_cast<bf16*>(k.get()), reinterpret_cast<bf16*>(v.get()), s.H, s.D, s.page};
    p.block_table = {table.get(), s.max_pages};
    p.pool_pages = s.pool_pages;
    p.seq_lens = lens.get();
    p.sink_end = sink.get();
    p.clustered_end = cend.get();
    p.token_budget = budget.get();
    p.approximate = approximate.get();
    p.clusters.pages = {ctable.get(), s.max_cpages};
    p.clusters.key_centroids = reinterpret_cast<const bf16* const*>(kc_ptrs.get());
    p.clusters.value_centroids = reinterpret_cast<const bf16* const*>(vc_ptrs.get());
    p.clusters.cluster_begin = reinterpret_cast<const int32_t* const*>(begin_ptrs.get());
    p.clusters.num_clusters = num_clusters.get();
    p.clusters.max_clusters = s.max_clusters;
    p.batch = s.batch;
    p.num_q_heads = s.H * s.G;
    p.max_seq_len = s.max_len;
    p.scale = 1.0f / std::sqrt(static_cast<float>(s.D));
    p.kernel = c.kernel;
    p.pipeline_parts = c.pipeline_parts;
    if (c.coarse_per > 0) {
      CoarseLevel& cl = p.clusters.coarse;
      cl.key_centroids = reinterpret_cast<const bf16* const*>(ckc_ptrs.get());
      cl.value_centroids = reinterpret_cast<const bf16* const*>(cvc_ptrs.get());
      cl.cluster_begin = reinterpret_cast<const int32_t* const*>(cbegin_ptrs.get());
      cl.fine_begin = reinterpret_cast<const int32_t* const*>(fine_of_ptrs.get());
      cl.num_clusters = num_coarse.get();
      cl.max_clusters = std::max(s.max_coarse, 1);
      cl.expansion = c.expansion;
      cl.two_level = c.mixed ? two_level.get() : nullptr;
    }
    return p;
  }
};

MultipoleShape ShapeOf(const MultipoleDecodeParams& p) {
  MultipoleShape shape;
  shape.batch = p.batch;
  shape.num_q_heads = p.num_q_heads;
  shape.num_kv_heads = p.kv.num_kv_heads;
  shape.head_dim = p.kv.head_dim;
  shape.max_clusters = p.clusters.max_clusters;
  shape.max_seq_len = p.max_seq_len;
  shape.exact_splits = p.exact_splits;
  shape.max_coarse_clusters =
      p.clusters.coarse.key_centroids != nullptr ? p.clusters.coarse.max_clusters : 0;
  return shape;
}

// Relative to the fp32 reference on the same bf16 inputs: summation order, exp2 rounding and the
// exact part's P carried in two bf16 terms (~16 bits) on the tensor-core path.
constexpr double kF32Bound = 1e-4;

template <typename T>
std::vector<T> Download(const T* ptr, size_t n) {
  std::vector<T> host(n);
  cudaMemcpy(host.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost);
  return host;
}

// One KV head's keys (or values) by position, [len, D].
std::vector<float> HeadCache(const Scene& s, int b, int h, int len, bool values) {
  std::vector<float> out(static_cast<size_t>(len) * s.D);
  for (int t = 0; t < len; ++t) {
    std::copy_n((values ? s.v : s.k).begin() + s.PosRow(b, h, t), s.D,
                out.begin() + static_cast<size_t>(t) * s.D);
  }
  return out;
}

// The exact part of one query head qg of (b, h): the sink and the recent window by position, the
// slot ranges through the scene's slot map (the CPU twin of the rows list).
cpu::PartialAttention ExactPart(const Scene& s, size_t hb, const SeqSpec& q, const float* qg,
                                const std::vector<float>& kh, const std::vector<float>& vh,
                                float scale, const std::vector<cpu::TokenRange>& ranges) {
  const cpu::TokenRange positions[2] = {{0, q.sink}, {q.clustered_end, q.len}};
  cpu::PartialAttention acc(s.D);
  cpu::SparseExactParams ep;
  ep.q = qg;
  ep.k_head = kh.data();
  ep.v_head = vh.data();
  ep.head_dim = s.D;
  ep.scale = scale;
  ep.position_ranges = positions;
  ep.num_position_ranges = 2;
  ep.slots = s.slot_pos[hb].data();
  ep.slot_ranges = ranges.data();
  ep.num_slot_ranges = static_cast<int>(ranges.size());
  cpu::AccumulateSparseExact(ep, acc);
  return acc;
}

// The centroid term of the clusters not selected (one query head's base-2 logits).
cpu::PartialAttention Approximation(const float* logits2, const std::vector<float>& value_centroids,
                                    const int32_t* counts, const uint8_t* selected, int clusters,
                                    int head_dim) {
  cpu::PartialAttention approx(head_dim);
  cpu::CentroidApproximationParams ap;
  ap.logits2 = logits2;
  ap.value_centroids = value_centroids.data();
  ap.counts = counts;
  ap.selected = selected;
  ap.num_clusters = clusters;
  ap.head_dim = head_dim;
  cpu::AccumulateCentroidApproximation(ap, approx);
  return approx;
}

// Two levels, after model/attention/multipole_attention.cc: the coarse logits, scores and
// expansion (the CPU rule on the GPU's coarse scores), the list of expanded fine clusters, the
// fine logits and scores of the listed clusters (the CPU lookup over every fine cluster with the
// counts of clusters outside the expanded ones set to 0), the fine selection (the CPU rule on the
// GPU's fine scores), and the output: exact over sink + recent + the selected fine clusters,
// the listed clusters not selected through their fine centroids, the coarse clusters not
// expanded through their coarse centroids. Returns the output's error.
void TwoLevelHead(const Case& c, const Scene& s, const MultipoleWorkspace& w, float scale, int b,
                  int h, std::vector<float>& want) {
  const size_t heads = static_cast<size_t>(s.batch) * s.H;
  const int nq = s.H * s.G;
  const int M = s.max_clusters, Mc = std::max(s.max_coarse, 1);
  const std::vector<float> clogits = Download(w.coarse_logits2, heads * s.G * Mc);
  const std::vector<float> cscores = Download(w.coarse_scores, heads * Mc);
  const std::vector<uint8_t> expanded = Download(w.coarse_expanded, heads * Mc);
  const std::vector<int32_t> expanded_tokens = Download(w.expanded_tokens, heads);
  const std::vector<int32_t> fine_ids = Download(w.fine_ids, heads * M);
  const std::vector<int32_t> fine_count = Download(w.fine_count, heads);
  const std::vector<float> logits = Download(w.logits2, heads * s.G * M);
  const std::vector<float> scores = Download(w.scores, heads * M);
  const std::vector<uint8_t> selected = Download(w.selected, heads * M);
  const std::vector<int32_t> selected_tokens = Download(w.selected_tokens, heads);
  int failures = 0;
  auto near = [](float x, float want_x) {
    return std::isinf(want_x) ? x == want_x
                              : std::fabs(x - want_x) <= 1e-4 * (1 + std::fabs(want_x));
  };
  {
    const SeqSpec& q = c.seqs[b];
    {
      const size_t hb = static_cast<size_t>(b) * s.H + h;
      char where[32];
      std::snprintf(where, sizeof(where), "b%d h%d", b, h);
      SCOPED_TRACE(where);
      const float* qh = s.q.data() + (static_cast<size_t>(b) * nq + h * s.G) * s.D;
      const std::vector<int32_t>& fine_of = s.fine_of[hb];
      const std::vector<int32_t>& cbegin = s.cbegin[hb];
      const int C = q.clusters, Cc = static_cast<int>(cbegin.size()) - 1;
      std::vector<int32_t> counts(C), ccounts(Cc);
      for (int cl = 0; cl < C; ++cl) counts[cl] = s.begin[hb][cl + 1] - s.begin[hb][cl];
      for (int cl = 0; cl < Cc; ++cl) ccounts[cl] = cbegin[cl + 1] - cbegin[cl];
      // 1. Coarse logits, scores, expansion.
      std::vector<float> ref_clogits(static_cast<size_t>(s.G) * Cc), ref_cscores(Cc);
      cpu::CentroidLookupParams lp;
      lp.q = qh;
      lp.key_centroids = s.ckc[hb].data();
      lp.counts = ccounts.data();
      lp.num_clusters = Cc;
      lp.group_size = s.G;
      lp.head_dim = s.D;
      lp.scale = scale;
      lp.logits2 = ref_clogits.data();
      lp.scores = ref_cscores.data();
      cpu::CentroidLookup(lp);
      for (int g = 0; g < s.G; ++g) {
        for (int cl = 0; cl < Cc; ++cl) {
          const float x = clogits[(hb * s.G + g) * Mc + cl];
          if (!near(x, ref_clogits[static_cast<size_t>(g) * Cc + cl]) && ++failures <= 5) {
            ADD_FAILURE() << "coarse logit g" << g << " c" << cl << ": " << x << " vs "
                          << ref_clogits[static_cast<size_t>(g) * Cc + cl];
          }
        }
      }
      std::vector<float> gpu_cscores(cscores.begin() + hb * Mc, cscores.begin() + hb * Mc + Cc);
      for (int cl = 0; cl < Cc; ++cl) {
        if (!(std::fabs(gpu_cscores[cl] - ref_cscores[cl]) <= 1e-4 * ref_cscores[cl] + 1e-7) &&
            ++failures <= 5) {
          ADD_FAILURE() << "coarse score c" << cl << ": " << gpu_cscores[cl] << " vs "
                        << ref_cscores[cl];
        }
      }
      std::vector<uint8_t> ref_expanded(Cc);
      cpu::ClusterSelectionParams sp;
      sp.scores = gpu_cscores.data();
      sp.counts = ccounts.data();
      sp.num_clusters = Cc;
      sp.token_budget = static_cast<int64_t>(
          std::ceil(static_cast<double>(q.budget) * static_cast<double>(c.expansion)));
      sp.selected = ref_expanded.data();
      EXPECT_EQ(expanded_tokens[hb], cpu::SelectClusters(sp));
      std::vector<int32_t> want_list;
      std::vector<int32_t> fine_counts(C, 0);
      for (int cl = 0; cl < Cc; ++cl) {
        if (expanded[hb * Mc + cl] != ref_expanded[cl] && ++failures <= 5) {
          ADD_FAILURE() << "expansion c" << cl << ": gpu " << int(expanded[hb * Mc + cl]) << " cpu "
                        << int(ref_expanded[cl]);
        }
        if (!ref_expanded[cl]) continue;
        for (int f = fine_of[cl]; f < fine_of[cl + 1]; ++f) {
          want_list.push_back(f);
          fine_counts[f] = counts[f];
        }
      }
      // 2. The list, the fine logits and scores of its entries, the fine selection.
      const int n = fine_count[hb];
      EXPECT_EQ(n, static_cast<int>(want_list.size()));
      if (n != static_cast<int>(want_list.size())) return;
      for (int i = 0; i < n; ++i) {
        EXPECT_EQ(fine_ids[hb * M + i], want_list[i]) << "list entry " << i;
      }
      std::vector<float> ref_logits(static_cast<size_t>(s.G) * C), ref_scores(C);
      lp.key_centroids = s.kc[hb].data();
      lp.counts = fine_counts.data();
      lp.num_clusters = C;
      lp.logits2 = ref_logits.data();
      lp.scores = ref_scores.data();
      cpu::CentroidLookup(lp);
      std::vector<float> gpu_scores(C, 0.0f);
      for (int i = 0; i < n; ++i) {
        const int f = want_list[i];
        gpu_scores[f] = scores[hb * M + i];
        for (int g = 0; g < s.G; ++g) {
          const float x = logits[(hb * s.G + g) * M + i];
          if (!near(x, ref_logits[static_cast<size_t>(g) * C + f]) && ++failures <= 5) {
            ADD_FAILURE() << "fine logit g" << g << " entry " << i << ": " << x << " vs "
                          << ref_logits[static_cast<size_t>(g) * C + f];
          }
        }
        if (!(std::fabs(gpu_scores[f] - ref_scores[f]) <= 1e-4 * ref_scores[f] + 1e-7) &&
            ++failures <= 5) {
          ADD_FAILURE() << "fine score entry " << i << ": " << gpu_scores[f] << " vs "
                        << ref_scores[f];
        }
      }
      std::vector<uint8_t> ref_selected(C), gpu_selected(C, 0);
      sp.scores = gpu_scores.data();
      sp.counts = fine_counts.data();
      sp.num_clusters = C;
      sp.token_budget = q.budget;
      sp.selected = ref_selected.data();
      EXPECT_EQ(selected_tokens[hb], cpu::SelectClusters(sp));
      for (int i = 0; i < n; ++i) gpu_selected[want_list[i]] = selected[hb * M + i];
      for (int f = 0; f < C; ++f) {
        if (gpu_selected[f] != ref_selected[f] && ++failures <= 5) {
          ADD_FAILURE() << "fine selection f" << f << ": gpu " << int(gpu_selected[f]) << " cpu "
                        << int(ref_selected[f]);
        }
      }
      // 3. The output.
      const std::vector<float> kh = HeadCache(s, b, h, q.len, false);
      const std::vector<float> vh = HeadCache(s, b, h, q.len, true);
      std::vector<cpu::TokenRange> ranges;
      for (int f = 0; f < C; ++f) {
        if (gpu_selected[f]) ranges.push_back({s.begin[hb][f], s.begin[hb][f + 1]});
      }
      for (int g = 0; g < s.G; ++g) {
        cpu::PartialAttention acc =
            ExactPart(s, hb, q, qh + static_cast<size_t>(g) * s.D, kh, vh, scale, ranges);
        if (q.approximate) {
          cpu::MergePartial(acc,
                            Approximation(ref_logits.data() + static_cast<size_t>(g) * C, s.vc[hb],
                                          fine_counts.data(), gpu_selected.data(), C, s.D));
          cpu::MergePartial(
              acc, Approximation(ref_clogits.data() + static_cast<size_t>(g) * Cc, s.cvc[hb],
                                 ccounts.data(), expanded.data() + hb * Mc, Cc, s.D));
        }
        cpu::FinalizePartial(acc, want.data() + (static_cast<size_t>(b) * nq + h * s.G + g) * s.D);
      }
    }
  }
}

// Runs one case, checks every intermediate against the CPU twins, returns the output's error.
double RunCase(const Case& c) {
  const uint64_t seed = testing::FreshSeed();
  SCOPED_TRACE(Describe(c) + " seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const Scene s = MakeScene(c, rng);
  const DeviceScene dev(c, s);
  MultipoleDecodeParams p = dev.Params(c, s);
  const int nq = s.H * s.G;
  DeviceBuffer<float> out(static_cast<size_t>(s.batch) * nq * s.D);
  p.out_f32 = out.get();
  const MultipoleShape shape = ShapeOf(p);
  const size_t bytes = MultipoleDecodeWorkspaceBytes(shape);
  DeviceBuffer<char> ws(bytes);
  p.workspace = ws.get();
  p.workspace_bytes = bytes;
  EXPECT_EQ(MultipoleDecode(p, nullptr), cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const MultipoleWorkspace w = MultipoleWorkspaceLayout(ws.get(), shape);
  const size_t heads = static_cast<size_t>(s.batch) * s.H;
  auto download = [](auto* ptr, size_t n) {
    std::vector<std::remove_cv_t<std::remove_pointer_t<decltype(ptr)>>> host(n);
    cudaMemcpy(host.data(), ptr, n * sizeof(host[0]), cudaMemcpyDeviceToHost);
    return host;
  };
  const std::vector<float> logits = download(w.logits2, heads * s.G * s.max_clusters);
  const std::vector<float> scores = download(w.scores, heads * s.max_clusters);
  const std::vector<uint8_t> selected = download(w.selected, heads * s.max_clusters);
  const std::vector<int32_t> selected_tokens = download(w.selected_tokens, heads);
  const std::vector<float> got = out.Download();

  std::vector<float> want(got.size());
  const float scale = p.scale;
  int logit_failures = 0, score_failures = 0, selection_failures = 0;
  for (int b = 0; b < s.batch; ++b) {
    const SeqSpec& q = c.seqs[b];
    for (int h = 0; h < s.H; ++h) {
      const size_t hb = static_cast<size_t>(b) * s.H + h;
      if (TwoLevelSequence(c, b)) {
        TwoLevelHead(c, s, w, scale, b, h, want);
        continue;
      }
      const int C = q.clusters;
      std::vector<int32_t> counts(C);
      for (int cl = 0; cl < C; ++cl) counts[cl] = s.begin[hb][cl + 1] - s.begin[hb][cl];
      const float* qh = s.q.data() + (static_cast<size_t>(b) * nq + h * s.G) * s.D;
      // 1. Centroid logits and scores.
      std::vector<float> ref_logits(static_cast<size_t>(s.G) * C), ref_scores(C);
      cpu::CentroidLookupParams lp;
      lp.q = qh;
      lp.key_centroids = s.kc[hb].data();
      lp.counts = counts.data();
      lp.num_clusters = C;
      lp.group_size = s.G;
      lp.head_dim = s.D;
      lp.scale = scale;
      lp.logits2 = ref_logits.data();
      lp.scores = ref_scores.data();
      cpu::CentroidLookup(lp);
      for (int g = 0; g < s.G; ++g) {
        for (int cl = 0; cl < s.max_clusters; ++cl) {
          const float x = logits[(hb * s.G + g) * s.max_clusters + cl];
          const float want_x = cl < C ? ref_logits[static_cast<size_t>(g) * C + cl] : -INFINITY;
          const bool ok = std::isinf(want_x)
                              ? x == want_x
                              : std::fabs(x - want_x) <= 1e-4 * (1 + std::fabs(want_x));
          if (!ok && ++logit_failures <= 3) {
            ADD_FAILURE() << "logit b" << b << " h" << h << " g" << g << " c" << cl << ": " << x
                          << " vs " << want_x;
          }
        }
      }
      std::vector<float> gpu_scores(scores.begin() + hb * s.max_clusters,
                                    scores.begin() + hb * s.max_clusters + C);
      for (int cl = 0; cl < C; ++cl) {
        if (!(std::fabs(gpu_scores[cl] - ref_scores[cl]) <= 1e-4 * ref_scores[cl] + 1e-7) &&
            ++score_failures <= 3) {
          ADD_FAILURE() << "score b" << b << " h" << h << " c" << cl << ": " << gpu_scores[cl]
                        << " vs " << ref_scores[cl];
        }
      }
      // 2. The CPU rule on the GPU's scores chooses exactly the GPU's clusters.
      std::vector<uint8_t> ref_selected(C);
      cpu::ClusterSelectionParams sp;
      sp.scores = gpu_scores.data();
      sp.counts = counts.data();
      sp.num_clusters = C;
      sp.token_budget = q.budget;
      sp.selected = ref_selected.data();
      const int64_t ref_tokens = cpu::SelectClusters(sp);
      for (int cl = 0; cl < s.max_clusters; ++cl) {
        const uint8_t want_flag = cl < C ? ref_selected[cl] : 0;
        if (selected[hb * s.max_clusters + cl] != want_flag && ++selection_failures <= 3) {
          ADD_FAILURE() << "selection b" << b << " h" << h << " c" << cl << ": gpu "
                        << int(selected[hb * s.max_clusters + cl]) << " cpu " << int(want_flag);
        }
      }
      EXPECT_EQ(selected_tokens[hb], ref_tokens) << "b" << b << " h" << h;

      // 3. The output: exact over sink + recent + the selected clusters' slots, the rest through
      // centroids, from contiguous per-head copies of the cache.
      const std::vector<float> kh = HeadCache(s, b, h, q.len, false);
      const std::vector<float> vh = HeadCache(s, b, h, q.len, true);
      std::vector<cpu::TokenRange> ranges;
      for (int cl = 0; cl < C; ++cl) {
        if (selected[hb * s.max_clusters + cl])
          ranges.push_back({s.begin[hb][cl], s.begin[hb][cl + 1]});
      }
      for (int g = 0; g < s.G; ++g) {
        cpu::PartialAttention acc =
            ExactPart(s, hb, q, qh + static_cast<size_t>(g) * s.D, kh, vh, scale, ranges);
        if (q.approximate) {
          cpu::MergePartial(
              acc, Approximation(ref_logits.data() + static_cast<size_t>(g) * C, s.vc[hb],
                                 counts.data(), selected.data() + hb * s.max_clusters, C, s.D));
        }
        cpu::FinalizePartial(acc, want.data() + (static_cast<size_t>(b) * nq + h * s.G + g) * s.D);
      }
    }
  }
  return RelativeL2(got, want);
}

// Dense decode on the GPU over the same positions (the identity a full budget must reproduce).
std::vector<float> DenseOnGpu(const Case& c, const Scene& s, const DeviceScene& dev) {
  const int nq = s.H * s.G;
  DeviceBuffer<float> out(static_cast<size_t>(s.batch) * nq * s.D);
  const size_t bytes = DecodeAttentionWorkspaceBytes(s.batch, nq, s.D, 64);
  DeviceBuffer<char> ws(bytes);
  DecodeAttentionParams p;
  p.q = reinterpret_cast<const bf16*>(dev.q.get());
  p.kv = {reinterpret_cast<bf16*>(dev.k.get()), reinterpret_cast<bf16*>(dev.v.get()), s.H, s.D,
          s.page};
  p.block_table = {dev.table.get(), s.max_pages};
  p.seq_lens = dev.lens.get();
  p.batch = s.batch;
  p.num_q_heads = nq;
  p.max_seq_len = s.max_len;
  p.scale = 1.0f / std::sqrt(static_cast<float>(s.D));
  p.out_f32 = out.get();
  p.workspace = ws.get();
  p.workspace_bytes = bytes;
  EXPECT_EQ(DecodeAttention(p, nullptr), cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  return out.Download();
}

double MultipoleVersusDense(const Case& c) {
  const uint64_t seed = testing::FreshSeed();
  SCOPED_TRACE(Describe(c) + " seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const Scene s = MakeScene(c, rng);
  const DeviceScene dev(c, s);
  MultipoleDecodeParams p = dev.Params(c, s);
  DeviceBuffer<float> out(static_cast<size_t>(s.batch) * s.H * s.G * s.D);
  p.out_f32 = out.get();
  const size_t bytes = MultipoleDecodeWorkspaceBytes(ShapeOf(p));
  DeviceBuffer<char> ws(bytes);
  p.workspace = ws.get();
  p.workspace_bytes = bytes;
  EXPECT_EQ(MultipoleDecode(p, nullptr), cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  return RelativeL2(out.Download(), DenseOnGpu(c, s, dev));
}

std::vector<SeqSpec> MixedSequences() {
  return {
      {300, 4, 300 - 129, 23, 50, true},          // a budget smaller than the region
      {1000, 10, 1000 - 200, 97, 100000, false},  // everything fits (exact-only)
      {77, 0, 77 - 13, 9, 0, true},               // budget 0: centroids only
      {530, 10, 530 - 140, 61, 1, true},          // budget 1: the boundary rule
      {700, 10, 700 - 150, 40, 200, true, true},  // a giant cluster larger than the budget
  };
}

TEST(MultipoleDecodeGpuTest, MatchesCpuTwinsOnAwkwardShapes) {
  MPA_SKIP_WITHOUT_GPU();
  for (int hd : {8, 64, 128}) {
    for (int group : {1, 2, 4, 8}) {
      Case c{hd, group, 2, MixedSequences()};
      EXPECT_LT(RunCase(c), kF32Bound) << Describe(c);
    }
  }
  for (int hd : {24, 64, 128}) {
    Case c{hd, 4, 3, MixedSequences(), DecodeKernel::kCudaCore};
    EXPECT_LT(RunCase(c), kF32Bound) << Describe(c);
  }
}

// The batch in two halves on two streams: each half checked against the CPU twins, and the whole
// output equal to the one-stream call's up to the order of the approximation's fp32 sums (its
// shared-memory atomics make even two one-stream calls differ in the last bits).
TEST(MultipoleDecodeGpuTest, TwoStreamsMatchOneStream) {
  MPA_SKIP_WITHOUT_GPU();
  for (int hd : {8, 64, 128}) {
    for (int group : {1, 4}) {
      Case c{hd, group, 2, MixedSequences()};
      c.pipeline_parts = 2;
      EXPECT_LT(RunCase(c), kF32Bound) << Describe(c);

      std::mt19937_64 rng(testing::FreshSeed());
      const Scene s = MakeScene(c, rng);
      const DeviceScene dev(c, s);
      MultipoleDecodeParams p = dev.Params(c, s);
      const size_t n = static_cast<size_t>(s.batch) * s.H * s.G * s.D;
      DeviceBuffer<float> one(n), two(n);
      const size_t bytes = MultipoleDecodeWorkspaceBytes(ShapeOf(p));
      DeviceBuffer<char> ws(bytes);
      p.workspace = ws.get();
      p.workspace_bytes = bytes;
      p.out_f32 = one.get();
      p.pipeline_parts = 1;
      EXPECT_EQ(MultipoleDecode(p, nullptr), cudaSuccess);
      p.out_f32 = two.get();
      p.pipeline_parts = 2;
      EXPECT_EQ(MultipoleDecode(p, nullptr), cudaSuccess);
      EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      const std::vector<float> a = one.Download(), b = two.Download();
      EXPECT_LT(RelativeL2(b, a), 1e-6) << Describe(c);
    }
  }
}

// Two levels against the CPU twins: the sequences' edges (budget 0 and 1, everything fitting,
// exact-only, a giant cluster), an integral and a fractional expansion, both lookups, two streams.
TEST(MultipoleDecodeGpuTest, TwoLevelsMatchCpuTwins) {
  MPA_SKIP_WITHOUT_GPU();
  for (int hd : {8, 64, 128}) {
    for (int group : {1, 2, 4, 8}) {
      Case c{hd, group, 2, MixedSequences()};
      c.coarse_per = 4;
      c.expansion = group % 2 == 0 ? 4.0f : 1.5f;
      EXPECT_LT(RunCase(c), kF32Bound) << Describe(c);
    }
  }
  // Sequences of one and two levels in one call (the one-level ones as a one-level call reads
  // them), on one and two streams.
  for (int parts : {1, 2}) {
    Case c{64, 2, 2, MixedSequences()};
    c.coarse_per = 4;
    c.mixed = true;
    c.pipeline_parts = parts;
    EXPECT_LT(RunCase(c), kF32Bound) << Describe(c);
  }
  for (int parts : {1, 2}) {
    Case c{128, 4, 3, MixedSequences(), DecodeKernel::kCudaCore};
    c.coarse_per = 8;
    c.pipeline_parts = parts;
    EXPECT_LT(RunCase(c), kF32Bound) << Describe(c);
    c.kernel = DecodeKernel::kAuto;
    EXPECT_LT(RunCase(c), kF32Bound) << Describe(c);
  }
  // A long region: thousands of fine clusters, more than one lookup block of coarse ones.
  Case c{128, 4, 1, {{40000, 10, 39800, 4000, 2000, true}, {5000, 10, 4800, 700, 512, true}}};
  c.coarse_per = 6;
  EXPECT_LT(RunCase(c), kF32Bound) << Describe(c);
}

TEST(MultipoleDecodeGpuTest, SortsTheLargestClusterCount) {
  MPA_SKIP_WITHOUT_GPU();
  const int C = kMaxClustersPerHead;
  Case c{
      128, 4, 1, {{C * 4 + 300, 10, C * 4 + 10, C, 3000, true}, {5000, 10, 4800, 700, 512, true}}};
  EXPECT_LT(RunCase(c), kF32Bound) << Describe(c);
}

TEST(MultipoleDecodeGpuTest, FullBudgetEqualsDense) {
  MPA_SKIP_WITHOUT_GPU();
  for (int hd : {8, 64, 128}) {
    for (int group : {1, 4, 8}) {
      for (bool approximate : {true, false}) {
        Case c{hd,
               group,
               2,
               {{513, 10, 385, 37, 1 << 30, approximate}, {2000, 0, 1900, 150, 1900, approximate}}};
        EXPECT_LT(MultipoleVersusDense(c), kF32Bound) << Describe(c);
        c.coarse_per = 5;  // two levels: everything expanded, every fine cluster selected
        EXPECT_LT(MultipoleVersusDense(c), kF32Bound) << Describe(c);
      }
    }
  }
}

TEST(MultipoleDecodeGpuTest, NoClusteredRegionIsDense) {
  MPA_SKIP_WITHOUT_GPU();
  for (int hd : {8, 128}) {
    Case c{hd, 4, 2, {{300, 10, 10, 0, 128, true}, {17, 17, 17, 0, 0, true}}};
    EXPECT_LT(MultipoleVersusDense(c), kF32Bound) << Describe(c);
  }
}

TEST(MultipoleDecodeGpuTest, RejectsUnsupportedShapes) {
  MPA_SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(1);
  Case c{64, 4, 1, {{300, 4, 200, 20, 64, true}}};
  const Scene s = MakeScene(c, rng);
  const DeviceScene dev(c, s);
  MultipoleDecodeParams p = dev.Params(c, s);
  DeviceBuffer<float> out(static_cast<size_t>(4) * 64);
  p.out_f32 = out.get();
  const size_t bytes = MultipoleDecodeWorkspaceBytes(ShapeOf(p));
  DeviceBuffer<char> ws(bytes);
  p.workspace = ws.get();
  p.workspace_bytes = bytes;
  MultipoleDecodeParams bad = p;
  bad.clusters.max_clusters = kMaxClustersPerHead + 1;
  EXPECT_EQ(MultipoleDecode(bad, nullptr), cudaErrorInvalidValue);
  bad = p;
  bad.workspace_bytes = bytes - 1;
  EXPECT_EQ(MultipoleDecode(bad, nullptr), cudaErrorInvalidValue);
  bad = p;
  bad.pool_pages = int64_t{1} << 40;
  EXPECT_EQ(MultipoleDecode(bad, nullptr), cudaErrorInvalidValue);
  bad = p;
  bad.num_q_heads = 3;
  EXPECT_EQ(MultipoleDecode(bad, nullptr), cudaErrorInvalidValue);
  // Two levels: an incomplete coarse level, a bad expansion, a one-level workspace.
  Case two = c;
  two.coarse_per = 3;
  const Scene s2 = MakeScene(two, rng);
  const DeviceScene dev2(two, s2);
  MultipoleDecodeParams p2 = dev2.Params(two, s2);
  p2.out_f32 = out.get();
  const size_t bytes2 = MultipoleDecodeWorkspaceBytes(ShapeOf(p2));
  DeviceBuffer<char> ws2(bytes2);
  p2.workspace = ws2.get();
  p2.workspace_bytes = bytes2;
  EXPECT_GT(bytes2, bytes);
  bad = p2;
  bad.clusters.coarse.fine_begin = nullptr;
  EXPECT_EQ(MultipoleDecode(bad, nullptr), cudaErrorInvalidValue);
  for (float e : {0.0f, -1.0f, NAN, INFINITY}) {
    bad = p2;
    bad.clusters.coarse.expansion = e;
    EXPECT_EQ(MultipoleDecode(bad, nullptr), cudaErrorInvalidValue) << e;
  }
  bad = p2;
  bad.workspace_bytes = bytes;  // a one-level workspace is too small
  EXPECT_EQ(MultipoleDecode(bad, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(MultipoleDecode(p2, nullptr), cudaSuccess);
  EXPECT_EQ(MultipoleDecode(p, nullptr), cudaSuccess);
}

}  // namespace
}  // namespace mpa::cuda
