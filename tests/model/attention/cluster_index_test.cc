#include "model/attention/cluster_index.h"

#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace mpa {
namespace {

MultipoleConfig SmallConfig(int levels) {
  MultipoleConfig c;
  c.sink_tokens = 4;
  c.cluster_interval = 16;
  c.tokens_per_centroid = 4;
  c.levels = levels;
  c.fine_tokens_per_centroid = 4;
  c.coarse_tokens_per_centroid = 16;
  c.block_tokens = 128;
  c.final_window_min = 64;
  c.final_window_max = 192;
  c.prefill_kmeans_iterations = 5;
  c.update_kmeans_iterations = 2;
  EXPECT_TRUE(c.Validate().ok());
  return c;
}

// Keys from a mixture of Gaussians, values random: [T, d] each.
struct Rows {
  std::vector<float> k, v;
  HeadRows view() const { return {k.data(), v.data()}; }
};
Rows MixtureRows(int T, int d, int centres, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> c(centres * d);
  for (float& x : c) x = 2.0f * normal(rng);
  Rows r{std::vector<float>(size_t(T) * d), std::vector<float>(size_t(T) * d)};
  for (int t = 0; t < T; ++t) {
    const int m = rng() % centres;
    for (int i = 0; i < d; ++i) {
      r.k[size_t(t) * d + i] = c[m * d + i] + 0.5f * normal(rng);
      r.v[size_t(t) * d + i] = normal(rng);
    }
  }
  return r;
}

class ClusterIndexTest : public ::testing::TestWithParam<int> {};

// Invariants hold after prefill clustering and after every online update, through several
// freezes; the final window stays within [final_window_min, final_window_max] once frozen
// blocks exist, and frozen blocks never change afterwards.
TEST_P(ClusterIndexTest, InvariantsHoldAfterBuildAndEveryUpdate) {
  const int levels = GetParam();
  const MultipoleConfig config = SmallConfig(levels);
  const int d = 8, T = 900;
  const Rows rows = MixtureRows(T, d, 12, std::random_device{}());
  ClusterIndex index(config, d, 99);
  index.Build(rows.view(), 4, 4 + 80);
  const HeadRows view = rows.view();
  ASSERT_TRUE(index.CheckInvariants(&view).ok()) << index.CheckInvariants(&view);
  EXPECT_EQ(index.fine().num_clusters(), 20);
  int updates = 0;
  std::vector<ClusterBlock> frozen_before;
  std::vector<int32_t> frozen_slots;
  for (int end = 4 + 96; end <= T - 32; end += 16) {
    const int64_t reclustered = index.Extend(view, end);
    ++updates;
    EXPECT_GE(reclustered, index.blocks().back().num_tokens());
    ASSERT_TRUE(index.CheckInvariants(&view).ok())
        << "after update " << updates << ": " << index.CheckInvariants(&view);
    ASSERT_EQ(index.region_end(), end);
    const ClusterBlock& last = index.blocks().back();
    EXPECT_LE(last.num_tokens(), config.final_window_max);
    if (index.blocks().size() > 1) EXPECT_GE(last.num_tokens(), config.final_window_min);
    // Frozen blocks seen before keep their slots exactly.
    for (size_t b = 0; b < frozen_before.size(); ++b) {
      ASSERT_EQ(index.blocks()[b].token_end, frozen_before[b].token_end);
      ASSERT_EQ(index.blocks()[b].fine_end, frozen_before[b].fine_end);
    }
    for (size_t s = 0; s < frozen_slots.size(); ++s) ASSERT_EQ(index.slots()[s], frozen_slots[s]);
    frozen_before.assign(index.blocks().begin(), index.blocks().end() - 1);
    frozen_slots.assign(index.slots().begin(),
                        index.slots().begin() + (last.token_begin - index.region_begin()));
  }
  EXPECT_GE(index.blocks().size(), 4u);  // 860 tokens: several blocks of 128 froze
  for (size_t b = 0; b + 1 < index.blocks().size(); ++b) {
    EXPECT_TRUE(index.blocks()[b].frozen);
    EXPECT_EQ(index.blocks()[b].num_tokens(), config.block_tokens);
  }
  if (levels == 2) EXPECT_GT(index.coarse().num_clusters(), 0);
}

TEST_P(ClusterIndexTest, BuildOfALongRegionFreezesBlocks) {
  const MultipoleConfig config = SmallConfig(GetParam());
  const int d = 8;
  const Rows rows = MixtureRows(700, d, 10, std::random_device{}());
  ClusterIndex index(config, d, 5);
  const HeadRows view = rows.view();
  index.Build(view, 4, 4 + 600);
  ASSERT_TRUE(index.CheckInvariants(&view).ok()) << index.CheckInvariants(&view);
  // 600 -> 472 -> 344 -> 216 -> 88: four frozen blocks, a final window of 88.
  ASSERT_EQ(index.blocks().size(), 5u);
  EXPECT_EQ(index.blocks().back().num_tokens(), 88);
}

TEST_P(ClusterIndexTest, SameSeedGivesSameClusters) {
  const MultipoleConfig config = SmallConfig(GetParam());
  const int d = 8;
  const Rows rows = MixtureRows(400, d, 10, std::random_device{}());
  const HeadRows view = rows.view();
  ClusterIndex a(config, d, 42), b(config, d, 42), c(config, d, 43);
  for (ClusterIndex* index : {&a, &b, &c}) {
    index->Build(view, 4, 164);
    for (int end = 180; end <= 356; end += 16) index->Extend(view, end);
  }
  EXPECT_EQ(a.slots(), b.slots());
  EXPECT_EQ(a.labels(), b.labels());
  EXPECT_EQ(a.fine().key_centroids, b.fine().key_centroids);
  EXPECT_EQ(a.fine().value_centroids, b.fine().value_centroids);
  EXPECT_EQ(a.coarse().counts, b.coarse().counts);
  EXPECT_NE(a.labels(), c.labels());  // another seed starts from other points
}

INSTANTIATE_TEST_SUITE_P(Levels, ClusterIndexTest, ::testing::Values(1, 2));

}  // namespace
}  // namespace mpa
