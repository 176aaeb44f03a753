// The cluster-major layout on the GPU (kernels/cuda/multipole/cluster_layout.h) against a plain
// host construction from the same k-means labels: gathered keys, cluster_begin (prefix of counts),
// slots (stable counting sort: positions ascending inside a cluster, as ClusterIndex::slots()),
// K and V rows copied to their slots, key centroids (the k-means means) and value centroids (the
// means of the clusters' values). And the in-place layout: a region reordered where it lies, then
// partly re-clustered (an online update freezing a block), its rows located and gathered back in
// position order.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/multipole/cluster_layout.h"
#include "kernels/cuda/multipole/kmeans.h"
#include "tests/kernels/cuda_test_util.h"

namespace mpa::cuda {
namespace {

using testing::DeviceBuffer;

TEST(ClusterLayoutGpuTest, MatchesHostConstruction) {
  MPA_SKIP_WITHOUT_GPU();
  for (int dim : {8, 64, 128}) {
    const uint64_t seed = testing::FreshSeed();
    SCOPED_TRACE("dim " + std::to_string(dim) + " seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    const int heads = 3, page = 16, len = 1500, sink = 7;
    // Blocks of the region [sink, sink + 1300): sizes 500 and 800, one cluster per 9 tokens.
    const std::vector<int> block_sizes = {500, 800};
    testing::HostPagedCache cache({len}, heads, dim, page, rng);
    const int region = 1300;
    const int slot_pages = (region + page - 1) / page;
    // Slot pages: fresh pages after the cache's (the cache keeps 3 spare pages; add more).
    const int pool_pages = static_cast<int>(cache.k.size() / (size_t(heads) * page * dim));
    const size_t page_elems = size_t(heads) * page * dim;
    std::vector<uint16_t> k_bits = cache.k_bits, v_bits = cache.v_bits;
    k_bits.resize((pool_pages + slot_pages) * page_elems, 0x7fc0);
    v_bits.resize(k_bits.size(), 0x7fc0);
    std::vector<int32_t> slot_table(slot_pages);
    std::iota(slot_table.begin(), slot_table.end(), pool_pages);
    std::shuffle(slot_table.begin(), slot_table.end(), rng);

    std::vector<ClusterJob> jobs;
    std::vector<KMeansProblem> problems;
    int64_t points = 0, clusters_total = 0;
    int max_points = 0, max_clusters = 0;
    const int cluster_stride = 200;
    for (int h = 0; h < heads; ++h) {
      int first = sink, slot = 0, cluster = 0;
      for (int n : block_sizes) {
        ClusterJob j;
        j.kv_head = h;
        j.first_position = first;
        j.num_points = n;
        j.point_begin = points;
        j.first_slot = slot;
        j.first_cluster = cluster;
        j.num_clusters = (n + 8) / 9;
        j.centroid_begin = clusters_total;
        jobs.push_back(j);
        problems.push_back({points, n, clusters_total, j.num_clusters});
        points += n;
        clusters_total += j.num_clusters;
        max_points = std::max(max_points, n);
        max_clusters = std::max(max_clusters, j.num_clusters);
        first += n;
        slot += n;
        cluster += j.num_clusters;
      }
    }
    std::vector<int32_t> seeds;
    for (const ClusterJob& j : jobs) {
      std::vector<int32_t> pick(j.num_points);
      std::iota(pick.begin(), pick.end(), 0);
      std::shuffle(pick.begin(), pick.end(), rng);
      seeds.insert(seeds.end(), pick.begin(), pick.begin() + j.num_clusters);
    }

    DeviceBuffer<uint16_t> dk(k_bits), dv(v_bits);
    DeviceBuffer<int32_t> dtable(cache.table), dslots(slot_table), dseeds(seeds);
    DeviceBuffer<ClusterJob> djobs(jobs);
    DeviceBuffer<KMeansProblem> dproblems(problems);
    DeviceBuffer<uint16_t> dpoints(points * dim), dvalues(points * dim);
    DeviceBuffer<int32_t> labels(points), counts(clusters_total);
    DeviceBuffer<float> centroids(clusters_total * dim);
    DeviceBuffer<int32_t> begin(heads * (cluster_stride + 1)), positions(heads * region);
    DeviceBuffer<uint16_t> kc(heads * cluster_stride * dim), vc(heads * cluster_stride * dim);
    const size_t ws_bytes = KMeansWorkspaceBytes(points, clusters_total, dim);
    DeviceBuffer<char> ws(ws_bytes);

    ClusterLayoutParams lp;
    lp.kv = {reinterpret_cast<bf16*>(dk.get()), reinterpret_cast<bf16*>(dv.get()), heads, dim,
             page};
    lp.pages = dtable.get();
    lp.slot_pages = dslots.get();
    lp.jobs = djobs.get();
    lp.num_jobs = static_cast<int>(jobs.size());
    lp.max_points = max_points;
    lp.max_clusters = max_clusters;
    lp.labels = labels.get();
    lp.counts = counts.get();
    lp.centroids = centroids.get();
    lp.cluster_stride = cluster_stride;
    lp.slot_stride = region;
    lp.cluster_begin = begin.get();
    lp.key_centroids = reinterpret_cast<bf16*>(kc.get());
    lp.value_centroids = reinterpret_cast<bf16*>(vc.get());
    lp.slot_positions = positions.get();
    ASSERT_EQ(GatherRows(lp, reinterpret_cast<bf16*>(dpoints.get()),
                         reinterpret_cast<bf16*>(dvalues.get()), nullptr),
              cudaSuccess);
    KMeansParams kp;
    kp.points = reinterpret_cast<const bf16*>(dpoints.get());
    kp.problems = dproblems.get();
    kp.num_problems = static_cast<int>(problems.size());
    kp.head_dim = dim;
    kp.total_points = points;
    kp.total_clusters = clusters_total;
    kp.max_points = max_points;
    kp.max_clusters = max_clusters;
    kp.seeds = dseeds.get();
    kp.iterations = 3;
    kp.centroids = centroids.get();
    kp.labels = labels.get();
    kp.counts = counts.get();
    kp.workspace = ws.get();
    kp.workspace_bytes = ws_bytes;
    ASSERT_EQ(KMeansLloyd(kp, nullptr), cudaSuccess);
    ASSERT_EQ(BuildClusterLayout(lp, reinterpret_cast<const bf16*>(dpoints.get()),
                                 reinterpret_cast<const bf16*>(dvalues.get()), nullptr),
              cudaSuccess);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);

    const std::vector<uint16_t> got_points = dpoints.Download();
    const std::vector<int32_t> got_labels = labels.Download(), got_counts = counts.Download();
    const std::vector<float> got_centroids = centroids.Download();
    const std::vector<int32_t> got_begin = begin.Download(), got_positions = positions.Download();
    const std::vector<uint16_t> got_k = dk.Download(), got_v = dv.Download();
    const std::vector<uint16_t> got_kc = kc.Download(), got_vc = vc.Download();
    auto slot_row = [&](int h, int s) {
      return ((size_t(slot_table[s / page]) * heads + h) * page + s % page) * dim;
    };
    for (const ClusterJob& j : jobs) {
      // Gathered keys are the cache's rows in position order.
      for (int i = 0; i < j.num_points; ++i) {
        ASSERT_TRUE(
            std::equal(got_points.begin() + (j.point_begin + i) * dim,
                       got_points.begin() + (j.point_begin + i + 1) * dim,
                       cache.k_bits.begin() + cache.Index(0, j.kv_head, j.first_position + i)));
      }
      // Host construction from the GPU's labels.
      std::vector<int> hist(j.num_clusters, 0);
      for (int i = 0; i < j.num_points; ++i) ++hist[got_labels[j.point_begin + i]];
      std::vector<int> want_begin(j.num_clusters + 1, j.first_slot);
      for (int c = 0; c < j.num_clusters; ++c) want_begin[c + 1] = want_begin[c] + hist[c];
      std::vector<int> fill(want_begin.begin(), want_begin.end() - 1);
      std::vector<int> want_positions(j.num_points);
      for (int i = 0; i < j.num_points; ++i) {
        want_positions[fill[got_labels[j.point_begin + i]]++ - j.first_slot] = j.first_position + i;
      }
      const int32_t* head_begin = got_begin.data() + j.kv_head * (cluster_stride + 1);
      for (int c = 0; c <= j.num_clusters; ++c) {
        ASSERT_EQ(head_begin[j.first_cluster + c], want_begin[c]) << "cluster " << c;
        if (c < j.num_clusters) ASSERT_EQ(got_counts[j.centroid_begin + c], hist[c]);
      }
      for (int i = 0; i < j.num_points; ++i) {
        const int s = j.first_slot + i;
        ASSERT_EQ(got_positions[j.kv_head * region + s], want_positions[i]) << "slot " << s;
        const size_t src = cache.Index(0, j.kv_head, want_positions[i]);
        ASSERT_TRUE(std::equal(got_k.begin() + slot_row(j.kv_head, s),
                               got_k.begin() + slot_row(j.kv_head, s) + dim,
                               cache.k_bits.begin() + src));
        ASSERT_TRUE(std::equal(got_v.begin() + slot_row(j.kv_head, s),
                               got_v.begin() + slot_row(j.kv_head, s) + dim,
                               cache.v_bits.begin() + src));
      }
      for (int c = 0; c < j.num_clusters; ++c) {
        const size_t out = (size_t(j.kv_head) * cluster_stride + j.first_cluster + c) * dim;
        for (int d = 0; d < dim; ++d) {
          double vsum = 0.0;
          for (int s = want_begin[c]; s < want_begin[c + 1]; ++s) {
            vsum += cache.v[cache.Index(0, j.kv_head, want_positions[s - j.first_slot]) + d];
          }
          const float want_v = hist[c] > 0 ? static_cast<float>(vsum / hist[c]) : 0.0f;
          const float want_k = got_centroids[(j.centroid_begin + c) * dim + d];
          EXPECT_NEAR(testing::Bf16ToFloat(got_kc[out + d]), want_k,
                      4e-3 * std::fabs(want_k) + 1e-6);
          EXPECT_NEAR(testing::Bf16ToFloat(got_vc[out + d]), want_v,
                      4e-3 * std::fabs(want_v) + 1e-5);
        }
      }
    }
  }
}

TEST(ClusterLayoutGpuTest, InPlaceLayoutKeepsEveryRowAndReadsBackInPositionOrder) {
  MPA_SKIP_WITHOUT_GPU();
  for (int dim : {8, 128}) {
    const uint64_t seed = testing::FreshSeed();
    SCOPED_TRACE("dim " + std::to_string(dim) + " seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    const int heads = 2, page = 16, len = 1400, sink = 7, region = 1300;
    testing::HostPagedCache cache({len}, heads, dim, page, rng);
    const int cluster_stride = 200;
    DeviceBuffer<uint16_t> dk(cache.k_bits), dv(cache.v_bits);
    DeviceBuffer<int32_t> dtable(cache.table);
    DeviceBuffer<int32_t> begin(heads * (cluster_stride + 1)), positions(heads * region);
    DeviceBuffer<uint16_t> kc(heads * cluster_stride * dim), vc(heads * cluster_stride * dim);

    // Round 1 lays out [7, 507) and [507, 1007); round 2 re-clusters [507, 1307) as [507, 807)
    // and [807, 1307), the first 500 of its rows reordered by round 1.
    struct Block {
      int first, last, first_cluster;
    };
    const std::vector<std::vector<Block>> rounds = {{{7, 507, 0}, {507, 1007, 60}},
                                                    {{507, 807, 60}, {807, 1307, 100}}};
    const std::vector<int> laid_out_end = {sink, 1007};
    for (size_t r = 0; r < rounds.size(); ++r) {
      SCOPED_TRACE("round " + std::to_string(r));
      std::vector<ClusterJob> jobs;
      std::vector<KMeansProblem> problems;
      int64_t points = 0, clusters_total = 0;
      int max_points = 0, max_clusters = 0;
      for (int h = 0; h < heads; ++h) {
        for (const Block& b : rounds[r]) {
          ClusterJob j;
          j.kv_head = h;
          j.first_position = b.first;
          j.num_points = b.last - b.first;
          j.point_begin = points;
          j.first_slot = b.first - sink;
          j.first_cluster = b.first_cluster;
          j.num_clusters = (j.num_points + 9) / 10;
          j.centroid_begin = clusters_total;
          jobs.push_back(j);
          problems.push_back({points, j.num_points, clusters_total, j.num_clusters});
          points += j.num_points;
          clusters_total += j.num_clusters;
          max_points = std::max(max_points, j.num_points);
          max_clusters = std::max(max_clusters, j.num_clusters);
        }
      }
      std::vector<int32_t> seeds;
      for (const ClusterJob& j : jobs) {
        std::vector<int32_t> pick(j.num_points);
        std::iota(pick.begin(), pick.end(), 0);
        std::shuffle(pick.begin(), pick.end(), rng);
        seeds.insert(seeds.end(), pick.begin(), pick.begin() + j.num_clusters);
      }
      DeviceBuffer<ClusterJob> djobs(jobs);
      DeviceBuffer<KMeansProblem> dproblems(problems);
      DeviceBuffer<int32_t> dseeds(seeds);
      DeviceBuffer<uint16_t> dpoints(points * dim), dvalues(points * dim);
      DeviceBuffer<int32_t> labels(points), counts(clusters_total);
      DeviceBuffer<float> centroids(clusters_total * dim);
      const int range_first = rounds[r].front().first, range_last = rounds[r].back().last;
      DeviceBuffer<int32_t> position_rows(heads * (range_last - range_first));
      const size_t ws_bytes = KMeansWorkspaceBytes(points, clusters_total, dim);
      DeviceBuffer<char> ws(ws_bytes);

      ClusterLayoutParams lp;
      lp.kv = {reinterpret_cast<bf16*>(dk.get()), reinterpret_cast<bf16*>(dv.get()), heads, dim,
               page};
      lp.pages = dtable.get();
      lp.slot_pages = dtable.get();
      lp.slot_row_offset = sink;
      lp.jobs = djobs.get();
      lp.num_jobs = static_cast<int>(jobs.size());
      lp.max_points = max_points;
      lp.max_clusters = max_clusters;
      lp.labels = labels.get();
      lp.counts = counts.get();
      lp.centroids = centroids.get();
      lp.cluster_stride = cluster_stride;
      lp.slot_stride = region;
      lp.cluster_begin = begin.get();
      lp.key_centroids = reinterpret_cast<bf16*>(kc.get());
      lp.value_centroids = reinterpret_cast<bf16*>(vc.get());
      lp.slot_positions = positions.get();
      if (laid_out_end[r] > range_first) {
        lp.position_rows_begin = range_first;
        lp.position_rows_stride = range_last - range_first;
        ASSERT_EQ(LocatePositions(lp, range_first - sink, range_last - range_first,
                                  laid_out_end[r] - sink, position_rows.get(), nullptr),
                  cudaSuccess);
        lp.position_rows = position_rows.get();
      }
      ASSERT_EQ(GatherRows(lp, reinterpret_cast<bf16*>(dpoints.get()),
                           reinterpret_cast<bf16*>(dvalues.get()), nullptr),
                cudaSuccess);
      KMeansParams kp;
      kp.points = reinterpret_cast<const bf16*>(dpoints.get());
      kp.problems = dproblems.get();
      kp.num_problems = static_cast<int>(problems.size());
      kp.head_dim = dim;
      kp.total_points = points;
      kp.total_clusters = clusters_total;
      kp.max_points = max_points;
      kp.max_clusters = max_clusters;
      kp.seeds = dseeds.get();
      kp.iterations = 2;
      kp.centroids = centroids.get();
      kp.labels = labels.get();
      kp.counts = counts.get();
      kp.workspace = ws.get();
      kp.workspace_bytes = ws_bytes;
      ASSERT_EQ(KMeansLloyd(kp, nullptr), cudaSuccess);
      ASSERT_EQ(BuildClusterLayout(lp, reinterpret_cast<const bf16*>(dpoints.get()),
                                   reinterpret_cast<const bf16*>(dvalues.get()), nullptr),
                cudaSuccess);
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);

      const std::vector<uint16_t> got_points = dpoints.Download(), got_values = dvalues.Download();
      const std::vector<int32_t> got_positions = positions.Download();
      const std::vector<uint16_t> got_k = dk.Download(), got_v = dv.Download();
      for (const ClusterJob& j : jobs) {
        // Gathered rows: the original rows, position order, wherever they lie now.
        for (int i = 0; i < j.num_points; ++i) {
          const size_t want = cache.Index(0, j.kv_head, j.first_position + i);
          ASSERT_TRUE(std::equal(got_points.begin() + (j.point_begin + i) * dim,
                                 got_points.begin() + (j.point_begin + i + 1) * dim,
                                 cache.k_bits.begin() + want))
              << "point " << i;
          ASSERT_TRUE(std::equal(got_values.begin() + (j.point_begin + i) * dim,
                                 got_values.begin() + (j.point_begin + i + 1) * dim,
                                 cache.v_bits.begin() + want));
        }
      }
      // Every row of the sequence: a slot's row holds its position's original K and V (each
      // position exactly once); rows outside the laid-out region are untouched.
      const int laid_out = rounds[r].back().last;
      for (int h = 0; h < heads; ++h) {
        std::vector<int> seen(len, 0);
        for (int row = 0; row < len; ++row) {
          int pos = row;
          if (row >= sink && row < laid_out) {
            pos = got_positions[h * region + row - sink];
            ASSERT_GE(pos, sink);
            ASSERT_LT(pos, laid_out);
          }
          ++seen[pos];
          const size_t at = cache.Index(0, h, row), want = cache.Index(0, h, pos);
          ASSERT_TRUE(
              std::equal(got_k.begin() + at, got_k.begin() + at + dim, cache.k_bits.begin() + want))
              << "head " << h << " row " << row << " position " << pos;
          ASSERT_TRUE(std::equal(got_v.begin() + at, got_v.begin() + at + dim,
                                 cache.v_bits.begin() + want));
        }
        for (int pos = 0; pos < len; ++pos) ASSERT_EQ(seen[pos], 1) << "position " << pos;
      }
    }
  }
}

}  // namespace
}  // namespace mpa::cuda
