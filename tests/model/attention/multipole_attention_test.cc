#include "model/attention/multipole_attention.h"

#include <cmath>
#include <random>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/cpu/attention.h"
#include "model/attention/cpu_attention_backend.h"
#include "model/config/model_config.h"
#include "model/runtime/kv_cache.h"
#include "model/runtime/rope.h"

namespace mpa {
namespace {

double RelativeError(const float* a, const float* b, int n) {
  double num = 0.0, den = 0.0;
  for (int i = 0; i < n; ++i) {
    if (std::isnan(a[i])) return INFINITY;
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

MultipoleConfig SmallConfig(int levels) {
  MultipoleConfig c;
  c.sink_tokens = 4;
  c.cluster_interval = 16;
  c.tokens_per_centroid = 8;
  c.levels = levels;
  c.fine_tokens_per_centroid = 4;
  c.coarse_tokens_per_centroid = 32;
  c.block_tokens = 256;
  c.final_window_min = 128;
  c.final_window_max = 383;
  c.min_clustered_tokens = 32;
  c.prefill_kmeans_iterations = 8;
  c.update_kmeans_iterations = 3;
  EXPECT_TRUE(c.Validate().ok()) << c.Validate();
  return c;
}

// One KV head's cache drawn from a mixture of Gaussians (keys near `centres` centres, values
// near a per-centre mean), with queries near some centres. RoPE is left out (keys "after RoPE"
// equal keys before it, and the lookup query equals the true one) so the test isolates the
// algorithm from positions.
struct Scene {
  int T, d, group;
  std::vector<float> k, v, q;
  std::vector<float> centres;
};
Scene MixtureScene(int T, int d, int group, int centres, std::mt19937& rng) {
  std::normal_distribution<float> normal;
  Scene s{T,
          d,
          group,
          std::vector<float>(size_t(T) * d),
          std::vector<float>(size_t(T) * d),
          std::vector<float>(size_t(group) * d),
          std::vector<float>(size_t(centres) * d)};
  std::vector<float> value_means(size_t(centres) * d);
  for (float& x : s.centres) x = normal(rng);
  for (float& x : value_means) x = normal(rng);
  for (int t = 0; t < T; ++t) {
    const int m = rng() % centres;
    for (int i = 0; i < d; ++i) {
      s.k[size_t(t) * d + i] = s.centres[m * d + i] + 0.3f * normal(rng);
      s.v[size_t(t) * d + i] = value_means[m * d + i] + 0.5f * normal(rng);
    }
  }
  for (int h = 0; h < group; ++h) {
    const int m = rng() % centres;
    for (int i = 0; i < d; ++i) s.q[h * d + i] = 1.5f * s.centres[m * d + i] + 0.3f * normal(rng);
  }
  return s;
}

constexpr CentroidKeys kAllCentroidKeys[] = {
    CentroidKeys::kPostRope, CentroidKeys::kPreRopeRotatedMeans, CentroidKeys::kPreRope};

// Runs MultipoleHeadAttention on a scene with the cluster index built over the middle from the
// rows `keys` clusters (the scene's keys stand for both pre- and post-RoPE keys).
std::vector<float> SceneAttention(const Scene& s, const MultipoleConfig& config, int64_t budget,
                                  bool approximate, MultipoleHeadResult* result,
                                  CentroidKeys keys = CentroidKeys::kPostRope) {
  CachePartition part = PartitionCache(s.T, config);
  ClusterIndex index(config, s.d, 7);
  const HeadRows rows{s.k.data(), s.v.data(),
                      keys == CentroidKeys::kPreRopeRotatedMeans ? s.k.data() : nullptr};
  index.Build(rows, part.sink_end, part.clustered_end);
  EXPECT_TRUE(index.CheckInvariants(&rows).ok());
  std::vector<float> out(size_t(s.group) * s.d);
  MultipoleHeadParams p;
  p.index = &index;
  p.partition = part;
  p.q_rot = s.q.data();
  p.q_lookup = s.q.data();
  p.k_head = s.k.data();
  p.v_head = s.v.data();
  p.group_size = s.group;
  p.head_dim = s.d;
  p.scale = 1.0f / std::sqrt(float(s.d));
  p.token_budget = budget;
  p.coarse_expansion = config.coarse_expansion;
  p.approximate = approximate;
  p.centroid_keys = keys;
  p.out = out.data();
  MultipoleHeadResult r = MultipoleHeadAttention(p);
  if (result != nullptr) *result = r;
  return out;
}

std::vector<float> SceneDense(const Scene& s) {
  std::vector<float> out(size_t(s.group) * s.d);
  for (int h = 0; h < s.group; ++h) {
    cpu::PartialAttention acc(s.d);
    cpu::PartialOverTokenRange(&s.q[h * s.d], s.k.data(), s.v.data(), s.d,
                               1.0f / std::sqrt(float(s.d)), 0, s.T, acc);
    cpu::FinalizePartial(acc, &out[h * s.d]);
  }
  return out;
}

TEST(PartitionCacheTest, RecentWindowHoldsOneToTwoIntervals) {
  MultipoleConfig c;
  c.sink_tokens = 10;
  c.cluster_interval = 16;
  for (int T = 0; T < 400; ++T) {
    const CachePartition p = PartitionCache(T, c);
    ASSERT_EQ(p.sink_end, std::min(T, 10));
    ASSERT_EQ(p.clustered_tokens() % 16, 0);
    ASSERT_GE(p.clustered_tokens(), 0);
    if (T - p.sink_end >= 32) {
      ASSERT_GE(T - p.clustered_end, 16) << T;
      ASSERT_LT(T - p.clustered_end, 32) << T;
    } else {
      ASSERT_EQ(p.clustered_tokens(), 0) << T;
    }
  }
  c.token_budget_fraction = 0.1f;
  EXPECT_EQ(TokenBudget(c, 95), 10);  // ceil(9.5)
  c.token_budget_fraction = 0.0f;
  c.token_budget = 17;
  EXPECT_EQ(TokenBudget(c, 95), 17);
}

// The first identity of every backend: a budget covering every clustered token reproduces dense
// attention to rounding, for both levels, GQA groups 1..8, awkward sizes, every kind of centroid
// keys, with and without the approximation term.
TEST(MultipoleHeadAttentionTest, FullBudgetEqualsDense) {
  std::mt19937 rng(std::random_device{}());
  for (int levels : {1, 2}) {
    for (int d : {8, 128}) {
      for (int group : {1, 3, 8}) {
        const MultipoleConfig config = SmallConfig(levels);
        const Scene s = MixtureScene(301, d, group, 9, rng);
        const std::vector<float> dense = SceneDense(s);
        for (CentroidKeys keys : kAllCentroidKeys) {
          for (bool approximate : {false, true}) {
            MultipoleHeadResult r;
            const std::vector<float> out =
                SceneAttention(s, config, 1 << 20, approximate, &r, keys);
            EXPECT_LT(RelativeError(out.data(), dense.data(), group * d), 1e-5)
                << "levels " << levels << " d " << d << " group " << group << " keys "
                << CentroidKeysName(keys) << " approximate " << approximate;
            EXPECT_EQ(r.tokens_exact, s.T);
          }
        }
      }
    }
  }
}

TEST(MultipoleHeadAttentionTest, ZeroBudgetReadsOnlySinkAndRecent) {
  std::mt19937 rng(std::random_device{}());
  const MultipoleConfig config = SmallConfig(1);
  const Scene s = MixtureScene(301, 8, 2, 9, rng);
  MultipoleHeadResult r;
  const std::vector<float> out = SceneAttention(s, config, 0, true, &r);
  const CachePartition part = PartitionCache(s.T, config);
  EXPECT_EQ(r.tokens_exact, part.sink_end + (s.T - part.clustered_end));
  EXPECT_EQ(r.clustered_selected, 0);
  for (float x : out) ASSERT_FALSE(std::isnan(x));
}

// On clustered keys the error falls as the budget grows, and the multipole term beats dropping
// the unselected clusters at every budget, on average over many draws.
TEST(MultipoleHeadAttentionTest, ErrorFallsWithBudgetAndApproximationBeatsExactOnly) {
  const uint32_t seed = std::random_device{}();
  std::mt19937 rng(seed);
  for (int levels : {1, 2}) {
    const MultipoleConfig config = SmallConfig(levels);
    const double fractions[] = {0.05, 0.1, 0.25, 0.5};
    const int draws = 40;
    std::vector<double> multipole(4, 0.0), exact_only(4, 0.0);
    for (int draw = 0; draw < draws; ++draw) {
      const Scene s = MixtureScene(1000, 16, 4, 24, rng);
      const std::vector<float> dense = SceneAttention(s, config, 1 << 20, true, nullptr);
      const int clustered = PartitionCache(s.T, config).clustered_tokens();
      for (int b = 0; b < 4; ++b) {
        const int64_t budget = std::llround(fractions[b] * clustered);
        const std::vector<float> mp = SceneAttention(s, config, budget, true, nullptr);
        const std::vector<float> ex = SceneAttention(s, config, budget, false, nullptr);
        multipole[b] += RelativeError(mp.data(), dense.data(), s.group * s.d) / draws;
        exact_only[b] += RelativeError(ex.data(), dense.data(), s.group * s.d) / draws;
      }
    }
    for (int b = 0; b < 4; ++b) {
      SCOPED_TRACE(testing::Message()
                   << "levels " << levels << " budget " << fractions[b] << " seed " << seed);
      EXPECT_LT(multipole[b], exact_only[b]);
      if (b > 0) {
        EXPECT_LT(multipole[b], multipole[b - 1]);
        EXPECT_LT(exact_only[b], exact_only[b - 1]);
      }
      printf("levels %d budget %.2f: multipole %.4f exact-only %.4f\n", levels, fractions[b],
             multipole[b], exact_only[b]);
    }
  }
}

// Through the engine's types: a SequenceState filled with random rows (keys rotated with the
// real RoPE), the backend's OnAppend/Decode in multipole mode, one token at a time; for both
// levels and every kind of centroid keys.
class EngineMultipoleTest : public ::testing::TestWithParam<std::tuple<int, CentroidKeys>> {};

TEST_P(EngineMultipoleTest, FullBudgetEqualsDenseAndInvariantsHoldAfterEveryUpdate) {
  const auto [levels, keys] = GetParam();
  ModelConfig mc;
  mc.num_heads = 8;
  mc.num_kv_heads = 2;
  mc.head_dim = 16;
  mc.num_layers = 2;
  mc.rope_theta = 10000.0;
  const Rope rope(mc);
  CpuAttentionBackend backend(mc, rope);
  AttentionOptions options;
  options.mode = AttentionMode::kMultipole;
  options.multipole = SmallConfig(levels);
  options.multipole.centroid_keys = keys;
  options.multipole.token_budget_fraction = 1.0f;
  options.multipole.lookup_position = 100;
  SequenceState seq(nullptr, mc.num_layers, mc.num_kv_heads, mc.head_dim, options);
  AttentionOptions dense_options;
  SequenceState dense_seq(nullptr, mc.num_layers, mc.num_kv_heads, mc.head_dim, dense_options);

  std::mt19937 rng(std::random_device{}());
  std::normal_distribution<float> normal;
  const int d = mc.head_dim, q_dim = mc.num_heads * d;
  auto append = [&](int count, bool decode) {
    const int first = seq.num_tokens();
    ASSERT_TRUE(seq.Reserve(count).ok());
    ASSERT_TRUE(dense_seq.Reserve(count).ok());
    std::vector<int32_t> ids(count, 1);
    seq.CommitTokens(ids.data(), count);
    dense_seq.CommitTokens(ids.data(), count);
    for (int layer = 0; layer < mc.num_layers; ++layer) {
      for (int t = first; t < first + count; ++t) {
        for (int h = 0; h < mc.num_kv_heads; ++h) {
          std::vector<float> k(d), v(d);
          for (int i = 0; i < d; ++i) {
            k[i] = normal(rng) + (t % 5);  // some structure for the clusters
            v[i] = normal(rng);
          }
          for (SequenceState* s : {&seq, &dense_seq}) {
            std::copy(k.begin(), k.end(), s->layer(layer).RawKeyRow(h, t));
            std::copy(v.begin(), v.end(), s->layer(layer).ValueRow(h, t));
          }
          rope.Apply(k.data(), 1, t);
          for (SequenceState* s : {&seq, &dense_seq}) {
            std::copy(k.begin(), k.end(), s->layer(layer).KeyRow(h, t));
          }
        }
      }
      backend.OnAppend(layer, seq, first);
      backend.OnAppend(layer, dense_seq, first);
      if (!decode) continue;
      std::vector<float> q_raw(q_dim), q_rot, out(q_dim), want(q_dim);
      for (float& x : q_raw) x = normal(rng);
      q_rot = q_raw;
      rope.Apply(q_rot.data(), mc.num_heads, seq.num_tokens() - 1);
      backend.Decode(layer, seq, q_rot.data(), q_raw.data(), out.data());
      backend.Decode(layer, dense_seq, q_rot.data(), q_raw.data(), want.data());
      ASSERT_LT(RelativeError(out.data(), want.data(), q_dim), 1e-5) << "T " << seq.num_tokens();
    }
  };
  append(150, /*decode=*/false);  // prefill: 150 - 4 sink -> 128 clustered
  auto* state = dynamic_cast<MultipoleSequenceState*>(seq.backend_state().get());
  ASSERT_NE(state, nullptr);
  for (int layer = 0; layer < mc.num_layers; ++layer) {
    ASSERT_EQ(state->layers[layer].clustered_end, 4 + 128);
    for (int h = 0; h < mc.num_kv_heads; ++h) {
      const HeadRows rows = ClusteringRows(seq.layer(layer), h, keys);
      const absl::Status s = state->layers[layer].heads[h].CheckInvariants(&rows);
      ASSERT_TRUE(s.ok()) << s;
    }
  }
  EXPECT_GT(seq.stats().prefill_cluster_seconds, 0.0);
  int last_end = state->layers[0].clustered_end;
  for (int step = 0; step < 420; ++step) {
    append(1, /*decode=*/true);
    state = dynamic_cast<MultipoleSequenceState*>(seq.backend_state().get());
    if (state->layers[0].clustered_end == last_end) continue;
    last_end = state->layers[0].clustered_end;
    for (int layer = 0; layer < mc.num_layers; ++layer) {  // invariants after every update
      for (int h = 0; h < mc.num_kv_heads; ++h) {
        const HeadRows rows = ClusteringRows(seq.layer(layer), h, keys);
        const absl::Status s = state->layers[layer].heads[h].CheckInvariants(&rows);
        ASSERT_TRUE(s.ok()) << "T " << seq.num_tokens() << ": " << s;
      }
    }
  }
  EXPECT_EQ(seq.stats().cluster_updates, int64_t{mc.num_layers} * (last_end - 132) / 16);
  EXPECT_GT(seq.stats().tokens_reclustered, 0);
  EXPECT_GT(seq.stats().centroids_scored, 0);
  EXPECT_DOUBLE_EQ(seq.stats().sparsity(), 1.0);             // the full budget reads everything
  EXPECT_GT(state->layers[0].heads[0].blocks().size(), 1u);  // 540 clustered: blocks froze
}

// With a small budget the sequence reads a fraction of its cache, and exact-only reads the same
// tokens as multipole (the same selection) but gives a different output.
TEST_P(EngineMultipoleTest, SmallBudgetReadsAFractionAndExactOnlySharesTheSelection) {
  ModelConfig mc;
  mc.num_heads = 4;
  mc.num_kv_heads = 2;
  mc.head_dim = 8;
  mc.num_layers = 1;
  const Rope rope(mc);
  CpuAttentionBackend backend(mc, rope);
  AttentionOptions options;
  options.mode = AttentionMode::kMultipole;
  options.multipole = SmallConfig(std::get<0>(GetParam()));
  options.multipole.centroid_keys = std::get<1>(GetParam());
  options.multipole.token_budget = 24;
  SequenceState seq(nullptr, 1, mc.num_kv_heads, mc.head_dim, options);
  AttentionOptions exact_options = options;
  exact_options.mode = AttentionMode::kExactOnly;
  SequenceState exact(nullptr, 1, mc.num_kv_heads, mc.head_dim, exact_options);
  std::mt19937 rng(std::random_device{}());
  std::normal_distribution<float> normal;
  const int T = 400, d = mc.head_dim;
  for (SequenceState* s : {&seq, &exact}) {
    ASSERT_TRUE(s->Reserve(T).ok());
    std::vector<int32_t> ids(T, 1);
    s->CommitTokens(ids.data(), T);
  }
  for (int t = 0; t < T; ++t) {
    for (int h = 0; h < mc.num_kv_heads; ++h) {
      for (int i = 0; i < d; ++i) {
        const float k = normal(rng), v = normal(rng);
        for (SequenceState* s : {&seq, &exact}) {
          s->layer(0).RawKeyRow(h, t)[i] = k;
          s->layer(0).KeyRow(h, t)[i] = k;
          s->layer(0).ValueRow(h, t)[i] = v;
        }
      }
    }
  }
  std::vector<float> q(mc.num_heads * d), a(q.size()), b(q.size());
  for (float& x : q) x = normal(rng);
  for (SequenceState* s : {&seq, &exact}) backend.OnAppend(0, *s, 0);
  backend.Decode(0, seq, q.data(), q.data(), a.data());
  backend.Decode(0, exact, q.data(), q.data(), b.data());
  EXPECT_EQ(seq.stats().tokens_attended_exact, exact.stats().tokens_attended_exact);
  EXPECT_LT(seq.stats().sparsity(), 0.35);
  EXPECT_GT(RelativeError(a.data(), b.data(), int(q.size())), 1e-4);
}

INSTANTIATE_TEST_SUITE_P(LevelsAndCentroidKeys, EngineMultipoleTest,
                         ::testing::Combine(::testing::Values(1, 2),
                                            ::testing::ValuesIn(kAllCentroidKeys)),
                         [](const auto& info) {
                           return absl::StrCat("Levels", std::get<0>(info.param), "_",
                                               CentroidKeysName(std::get<1>(info.param)));
                         });

// Which cache rows each kind of centroid keys clusters.
TEST(ClusteringRowsTest, EachVariantReadsItsKeys) {
  SequenceState seq(nullptr, 1, 2, 8, AttentionOptions{});
  ASSERT_TRUE(seq.Reserve(4).ok());
  LayerKv& kv = seq.layer(0);
  const HeadRows post = ClusteringRows(kv, 1, CentroidKeys::kPostRope);
  EXPECT_EQ(post.keys, kv.KeyRow(1, 0));
  EXPECT_EQ(post.v, kv.ValueRow(1, 0));
  EXPECT_EQ(post.rotated_keys, nullptr);
  const HeadRows means = ClusteringRows(kv, 1, CentroidKeys::kPreRopeRotatedMeans);
  EXPECT_EQ(means.keys, kv.RawKeyRow(1, 0));
  EXPECT_EQ(means.v, kv.ValueRow(1, 0));
  EXPECT_EQ(means.rotated_keys, kv.KeyRow(1, 0));
  const HeadRows pre = ClusteringRows(kv, 1, CentroidKeys::kPreRope);
  EXPECT_EQ(pre.keys, kv.RawKeyRow(1, 0));
  EXPECT_EQ(pre.v, kv.ValueRow(1, 0));
  EXPECT_EQ(pre.rotated_keys, nullptr);
}

// With post-RoPE centroid keys the index clusters the cached post-RoPE keys, at the end of
// prefill and at every online update. The scene: post-RoPE keys near 4 centres that are one
// vector rotated to 4 positions (c_m = RoPE(c_0, 37 m); token t near c_{t % 4}), well apart with
// a small rope_theta (every frequency turns by radians over 37 positions). A pre-RoPE key is its
// row rotated back by its position, c_0 rotated to 37 m - t: every centre's pre-RoPE keys lie
// along one curve, interleaved. Clustering the post-RoPE keys gives clusters that each hold one
// centre's tokens; clustering the pre-RoPE keys (both other variants) mixes the centres.
TEST(EngineMultipoleTest, PostRopeClustersTheRotatedKeys) {
  ModelConfig mc;
  mc.num_heads = 2;
  mc.num_kv_heads = 1;
  mc.head_dim = 16;
  mc.num_layers = 1;
  mc.rope_theta = 100.0;
  const Rope rope(mc);
  CpuAttentionBackend backend(mc, rope);
  const int d = mc.head_dim, num_centres = 4, prompt = 300, decoded = 100;
  std::mt19937 rng(std::random_device{}());
  std::normal_distribution<float> normal;
  std::vector<float> centres(size_t(num_centres) * d);  // [num_centres, d]
  for (int i = 0; i < d; ++i) centres[i] = 2.0f * normal(rng);
  for (int m = 1; m < num_centres; ++m) {
    std::copy_n(centres.begin(), d, centres.begin() + m * d);
    rope.Apply(&centres[m * d], 1, 37 * m);
  }

  for (CentroidKeys keys : kAllCentroidKeys) {
    SCOPED_TRACE(CentroidKeysName(keys));
    AttentionOptions options;
    options.mode = AttentionMode::kMultipole;
    options.multipole = SmallConfig(1);
    options.multipole.centroid_keys = keys;
    SequenceState seq(nullptr, 1, 1, d, options);
    auto append = [&](int count) {
      const int first = seq.num_tokens();
      ASSERT_TRUE(seq.Reserve(count).ok());
      std::vector<int32_t> ids(count, 1);
      seq.CommitTokens(ids.data(), count);
      for (int t = first; t < first + count; ++t) {
        float* k_rot = seq.layer(0).KeyRow(0, t);
        float* k_raw = seq.layer(0).RawKeyRow(0, t);
        for (int i = 0; i < d; ++i) {
          k_rot[i] = centres[(t % num_centres) * d + i] + 0.05f * normal(rng);
          seq.layer(0).ValueRow(0, t)[i] = normal(rng);
        }
        std::copy(k_rot, k_rot + d, k_raw);
        rope.Apply(k_raw, 1, -t);  // the pre-RoPE key that RoPE at t turns into k_rot
      }
      backend.OnAppend(0, seq, first);
    };
    append(prompt);
    for (int step = 0; step < decoded; ++step) append(1);
    if (HasFatalFailure()) return;

    auto* state = dynamic_cast<MultipoleSequenceState*>(seq.backend_state().get());
    ASSERT_NE(state, nullptr);
    ASSERT_EQ(state->layers[0].heads.size(), 1u);
    const ClusterIndex& index = state->layers[0].heads[0];
    EXPECT_GT(seq.stats().cluster_updates, 0);  // online updates ran too
    EXPECT_GT(index.region_end(), prompt);
    const HeadRows rows = ClusteringRows(seq.layer(0), 0, keys);
    const absl::Status invariants = index.CheckInvariants(&rows);
    EXPECT_TRUE(invariants.ok()) << invariants;

    // A cluster is pure if all its tokens come from one centre.
    const ClusterLevel& fine = index.fine();
    int pure = 0;
    for (int c = 0; c < fine.num_clusters(); ++c) {
      bool same = true;
      for (int s = fine.ranges[c].begin; s < fine.ranges[c].end; ++s) {
        same = same &&
               index.slots()[s] % num_centres == index.slots()[fine.ranges[c].begin] % num_centres;
      }
      pure += same;
    }
    if (keys == CentroidKeys::kPostRope) {
      EXPECT_EQ(pure, fine.num_clusters());
      // The key centroids are means of post-RoPE keys: near their centre (8 sigma of one key's
      // noise).
      for (int c = 0; c < fine.num_clusters(); ++c) {
        const int centre = index.slots()[fine.ranges[c].begin] % num_centres;
        for (int i = 0; i < d; ++i) {
          EXPECT_NEAR(fine.key_centroids[int64_t{c} * d + i], centres[centre * d + i], 0.4f);
        }
      }
    } else {
      EXPECT_LT(pure, fine.num_clusters() / 2);
    }
  }
}

// ceil(fraction x clustered tokens) for the fraction the user wrote, not for its fp32 image.
TEST(TokenBudgetTest, DecimalFractionsRoundAsWritten) {
  MultipoleConfig c;
  const struct {
    float fraction;
    int clustered;
    int64_t want;
  } cases[] = {{0.1f, 1000, 100},     {0.1f, 1001, 101},  {0.25f, 1000, 250}, {0.5f, 1, 1},
               {0.3f, 10, 3},         {0.01f, 100, 1},    {1.0f, 777, 777},   {0.1f, 0, 0},
               {0.7f, 100000, 70000}, {0.001f, 10001, 11}};
  for (const auto& k : cases) {
    c.token_budget_fraction = k.fraction;
    EXPECT_EQ(TokenBudget(c, k.clustered), k.want) << k.fraction << " x " << k.clustered;
  }
}

// min_clustered_tokens = 0 with a sink: while the cache is shorter than sink + 2 intervals the
// clustered region is empty, and the first interval that joins it later must still be attended
// (a full budget reproduces dense attention at every step, whatever the cache length).
TEST(EngineMultipoleEdgeTest, NoMinimumClusteredLengthStillAttendsEveryToken) {
  ModelConfig mc;
  mc.num_heads = 4;
  mc.num_kv_heads = 2;
  mc.head_dim = 8;
  mc.num_layers = 1;
  mc.rope_theta = 10000.0;
  const Rope rope(mc);
  CpuAttentionBackend backend(mc, rope);
  AttentionOptions options;
  options.mode = AttentionMode::kMultipole;
  options.multipole = SmallConfig(1);
  options.multipole.min_clustered_tokens = 0;
  options.multipole.token_budget_fraction = 1.0f;
  ASSERT_TRUE(options.multipole.Validate().ok());
  SequenceState seq(nullptr, mc.num_layers, mc.num_kv_heads, mc.head_dim, options);
  SequenceState dense_seq(nullptr, mc.num_layers, mc.num_kv_heads, mc.head_dim, AttentionOptions{});

  std::mt19937 rng(std::random_device{}());
  std::normal_distribution<float> normal;
  const int d = mc.head_dim, q_dim = mc.num_heads * d;
  auto append = [&](int count, bool decode) {
    const int first = seq.num_tokens();
    ASSERT_TRUE(seq.Reserve(count).ok());
    ASSERT_TRUE(dense_seq.Reserve(count).ok());
    std::vector<int32_t> ids(count, 1);
    seq.CommitTokens(ids.data(), count);
    dense_seq.CommitTokens(ids.data(), count);
    for (int t = first; t < first + count; ++t) {
      for (int h = 0; h < mc.num_kv_heads; ++h) {
        std::vector<float> k(d), v(d);
        for (int i = 0; i < d; ++i) {
          k[i] = normal(rng);
          v[i] = normal(rng);
        }
        for (SequenceState* s : {&seq, &dense_seq}) {
          std::copy(k.begin(), k.end(), s->layer(0).RawKeyRow(h, t));
          std::copy(v.begin(), v.end(), s->layer(0).ValueRow(h, t));
        }
        rope.Apply(k.data(), 1, t);
        for (SequenceState* s : {&seq, &dense_seq}) {
          std::copy(k.begin(), k.end(), s->layer(0).KeyRow(h, t));
        }
      }
    }
    backend.OnAppend(0, seq, first);
    backend.OnAppend(0, dense_seq, first);
    if (!decode) return;
    std::vector<float> q_raw(q_dim), out(q_dim), want(q_dim);
    for (float& x : q_raw) x = normal(rng);
    std::vector<float> q_rot = q_raw;
    rope.Apply(q_rot.data(), mc.num_heads, seq.num_tokens() - 1);
    backend.Decode(0, seq, q_rot.data(), q_raw.data(), out.data());
    backend.Decode(0, dense_seq, q_rot.data(), q_raw.data(), want.data());
    ASSERT_LT(RelativeError(out.data(), want.data(), q_dim), 1e-5) << "T " << seq.num_tokens();
  };
  append(10, /*decode=*/false);  // 10 tokens: sink 4, no clustered region yet
  for (int step = 0; step < 80; ++step) {
    append(1, /*decode=*/true);
    if (HasFatalFailure()) return;
  }
  EXPECT_DOUBLE_EQ(seq.stats().sparsity(), 1.0);
}

}  // namespace
}  // namespace mpa
