// Multipole, exact-only and quest against dense on the real stories260K model, with the knobs
// of bench/multipole_accuracy_bench.cc (see bench/results/multipole_accuracy_stories260K.md).
#include "model/attention/attention_accuracy.h"

#include <cmath>
#include <filesystem>

#include "gtest/gtest.h"
#include "model/cpu/model.h"

namespace mpa {
namespace {

constexpr char kModelDir[] = MPA_SOURCE_DIR "/../shared/models/stories260K";

MultipoleConfig ScaledConfig() {
  MultipoleConfig c;
  c.sink_tokens = 4;
  c.cluster_interval = 16;
  c.tokens_per_centroid = 4;
  c.lookup_position = 64;
  c.block_tokens = 128;
  c.final_window_min = 64;
  c.final_window_max = 191;
  c.min_clustered_tokens = 32;
  return c;
}

class AttentionAccuracyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(kModelDir)) {
      GTEST_SKIP() << "stories260K is not present at ../shared/models/stories260K";
    }
    auto model = Model::Load(kModelDir, ModelOptions{});
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model);
  }
  std::vector<AccuracyResult> Measure(const std::vector<AttentionOptions>& modes, int steps) {
    auto r = MeasureAgainstDense(*model_, {1, 403, 407, 261, 378}, steps, modes);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : std::vector<AccuracyResult>{};
  }
  std::unique_ptr<Model> model_;
};

constexpr CentroidKeys kAllCentroidKeys[] = {
    CentroidKeys::kPostRope, CentroidKeys::kPreRopeRotatedMeans, CentroidKeys::kPreRope};

// The identity on a real model: a budget covering the whole clustered region reproduces dense
// attention, so the next-token distributions agree to rounding at every step, for every mode,
// both levels and every kind of centroid keys.
TEST_F(AttentionAccuracyTest, FullBudgetMatchesDenseOnTheRealModel) {
  std::vector<AttentionOptions> modes;
  for (AttentionMode mode :
       {AttentionMode::kMultipole, AttentionMode::kExactOnly, AttentionMode::kQuest}) {
    for (CentroidKeys keys : kAllCentroidKeys) {
      if (mode == AttentionMode::kQuest && keys != CentroidKeys::kPostRope) continue;
      for (int levels : {1, 2}) {
        AttentionOptions o;
        o.mode = mode;
        o.multipole = ScaledConfig();
        o.multipole.levels = levels;
        o.multipole.fine_tokens_per_centroid = 4;
        o.multipole.coarse_tokens_per_centroid = 16;
        o.multipole.centroid_keys = keys;
        o.multipole.token_budget_fraction = 1.0f;
        modes.push_back(o);
      }
    }
  }
  for (const AccuracyResult& r : Measure(modes, 200)) {
    SCOPED_TRACE(testing::Message() << AttentionModeName(r.options.mode) << " "
                                    << CentroidKeysName(r.options.multipole.centroid_keys)
                                    << " levels " << r.options.multipole.levels);
    EXPECT_GT(r.steps_compared, 100);
    EXPECT_EQ(r.top1_agreement, 1.0);
    EXPECT_LT(r.max_kl, 1e-8);
    EXPECT_DOUBLE_EQ(r.sparsity, 1.0);
  }
}

// The orderings the measured table shows with a clear margin (400 tokens, budgets 10/25/50%):
// with centroids scored at the query's true position (post-RoPE clustering, the default, and
// pre-RoPE clustering with rotated means) the multipole term lowers exact-only's KL by a factor
// >= 1.4 at every budget, and every mode's KL falls as the budget grows. With pre-RoPE
// centroids scored at a fixed lookup position the two are within noise of each other on this
// model, so no ordering is asserted for them; they must still track dense closely.
TEST_F(AttentionAccuracyTest, MultipoleBeatsExactOnlyWhereTheTableShowsAClearMargin) {
  const float budgets[] = {0.1f, 0.25f, 0.5f};
  std::vector<AttentionOptions> modes;
  for (CentroidKeys keys : kAllCentroidKeys) {
    for (AttentionMode mode : {AttentionMode::kMultipole, AttentionMode::kExactOnly}) {
      for (float b : budgets) {
        AttentionOptions o;
        o.mode = mode;
        o.multipole = ScaledConfig();
        o.multipole.centroid_keys = keys;
        o.multipole.token_budget_fraction = b;
        modes.push_back(o);
      }
    }
  }
  const std::vector<AccuracyResult> r = Measure(modes, 400);
  ASSERT_EQ(r.size(), 18u);
  auto at = [&](int keys, bool multipole, int b) -> const AccuracyResult& {
    return r[keys * 6 + (multipole ? 0 : 3) + b];
  };
  for (int b = 0; b < 3; ++b) {
    SCOPED_TRACE(testing::Message() << "budget " << budgets[b]);
    for (int keys = 0; keys < 3; ++keys) {
      SCOPED_TRACE(CentroidKeysName(kAllCentroidKeys[keys]));
      if (kAllCentroidKeys[keys] != CentroidKeys::kPreRope) {
        EXPECT_LT(at(keys, true, b).mean_kl * 1.4, at(keys, false, b).mean_kl);
      }
      for (bool multipole : {false, true}) {
        const AccuracyResult& x = at(keys, multipole, b);
        EXPECT_GT(x.steps_compared, 300);
        EXPECT_TRUE(std::isfinite(x.mean_kl));
        EXPECT_LT(x.mean_kl, 0.05);
        EXPECT_GT(x.top1_agreement, 0.9);
        EXPECT_LT(x.sparsity, 0.6);
        if (b > 0) EXPECT_LT(x.mean_kl, at(keys, multipole, b - 1).mean_kl);
      }
    }
  }
}

}  // namespace
}  // namespace mpa
