#include "kernels/cpu/multipole/sparse_attention.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace mpa::cpu {
namespace {

// Position ranges plus permuted slot ranges that together cover every token give dense
// attention; the token count is reported.
TEST(SparseAttentionTest, CoveringEveryTokenEqualsDense) {
  std::mt19937 rng(std::random_device{}());
  std::normal_distribution<float> normal;
  const int T = 97, d = 8;
  std::vector<float> q(d), k(T * d), v(T * d);
  for (float& x : q) x = normal(rng);
  for (float& x : k) x = normal(rng);
  for (float& x : v) x = normal(rng);
  // Sink [0, 5), recent [80, 97), the middle as a shuffled permutation cut in three runs.
  std::vector<int32_t> slots;
  for (int t = 5; t < 80; ++t) slots.push_back(t);
  std::shuffle(slots.begin(), slots.end(), rng);
  const TokenRange positions[] = {{0, 5}, {80, 97}};
  const TokenRange runs[] = {{0, 30}, {30, 31}, {31, 75}};
  SparseExactParams p;
  p.q = q.data();
  p.k_head = k.data();
  p.v_head = v.data();
  p.head_dim = d;
  p.scale = 0.35f;
  p.position_ranges = positions;
  p.num_position_ranges = 2;
  p.slots = slots.data();
  p.slot_ranges = runs;
  p.num_slot_ranges = 3;
  PartialAttention sparse(d), dense(d);
  EXPECT_EQ(AccumulateSparseExact(p, sparse), T);
  PartialOverTokenRange(q.data(), k.data(), v.data(), d, 0.35f, 0, T, dense);
  std::vector<float> a(d), b(d);
  FinalizePartial(sparse, a.data());
  FinalizePartial(dense, b.data());
  for (int i = 0; i < d; ++i) EXPECT_NEAR(a[i], b[i], 1e-5 * (1 + std::abs(b[i])));
}

}  // namespace
}  // namespace mpa::cpu
