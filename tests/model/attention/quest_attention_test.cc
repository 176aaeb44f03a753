#include "model/attention/quest_attention.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "model/attention/cpu_attention_backend.h"
#include "model/attention/multipole_attention.h"
#include "model/runtime/kv_cache.h"

namespace mpa {
namespace {

double RelativeError(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i])) return INFINITY;
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

struct Fixture {
  ModelConfig mc;
  std::unique_ptr<Rope> rope;
  std::unique_ptr<CpuAttentionBackend> backend;
  Fixture() {
    mc.num_heads = 6;
    mc.num_kv_heads = 2;
    mc.head_dim = 8;
    mc.num_layers = 1;
    rope = std::make_unique<Rope>(mc);
    backend = std::make_unique<CpuAttentionBackend>(mc, *rope);
  }
  // Fills `seqs` with the same T random tokens (keys rotated at their positions) and runs
  // OnAppend as a prefill would.
  void Fill(std::vector<SequenceState*> seqs, int T, std::mt19937& rng) {
    std::normal_distribution<float> normal;
    const int d = mc.head_dim;
    for (SequenceState* s : seqs) {
      ASSERT_TRUE(s->Reserve(T).ok());
      std::vector<int32_t> ids(T, 1);
      s->CommitTokens(ids.data(), T);
    }
    for (int t = 0; t < T; ++t) {
      for (int h = 0; h < mc.num_kv_heads; ++h) {
        std::vector<float> k(d), v(d);
        for (int i = 0; i < d; ++i) {
          k[i] = normal(rng);
          v[i] = normal(rng);
        }
        for (SequenceState* s : seqs) std::copy(k.begin(), k.end(), s->layer(0).RawKeyRow(h, t));
        rope->Apply(k.data(), 1, t);
        for (SequenceState* s : seqs) {
          std::copy(k.begin(), k.end(), s->layer(0).KeyRow(h, t));
          std::copy(v.begin(), v.end(), s->layer(0).ValueRow(h, t));
        }
      }
    }
    for (SequenceState* s : seqs) backend->OnAppend(0, *s, 0);
  }
};

MultipoleConfig SmallConfig() {
  MultipoleConfig c;
  c.sink_tokens = 4;
  c.cluster_interval = 16;
  c.min_clustered_tokens = 32;
  c.block_tokens = 128;
  c.final_window_min = 64;
  c.final_window_max = 192;
  c.tokens_per_centroid = 4;
  return c;
}

TEST(QuestAttentionTest, FullBudgetEqualsDense) {
  Fixture f;
  AttentionOptions quest_options;
  quest_options.mode = AttentionMode::kQuest;
  quest_options.multipole = SmallConfig();
  quest_options.multipole.token_budget_fraction = 1.0f;
  SequenceState quest(nullptr, 1, 2, 8, quest_options);
  SequenceState dense(nullptr, 1, 2, 8, AttentionOptions{});
  std::mt19937 rng(std::random_device{}());
  f.Fill({&quest, &dense}, 333, rng);
  std::normal_distribution<float> normal;
  std::vector<float> q(6 * 8), a(q.size()), b(q.size());
  for (float& x : q) x = normal(rng);
  f.backend->Decode(0, quest, q.data(), q.data(), a.data());
  f.backend->Decode(0, dense, q.data(), q.data(), b.data());
  EXPECT_LT(RelativeError(a, b), 1e-5);
  EXPECT_DOUBLE_EQ(quest.stats().sparsity(), 1.0);
}

// With pages of 5 tokens the region (a multiple of 16) ends in a partial page; a small budget
// reads the sink, the recent window and at most the budget of page tokens.
TEST(QuestAttentionTest, SmallBudgetReadsSinkRecentAndBudgetedPages) {
  Fixture f;
  AttentionOptions options;
  options.mode = AttentionMode::kQuest;
  options.multipole = SmallConfig();
  options.multipole.quest_page_tokens = 5;
  options.multipole.token_budget = 40;
  SequenceState seq(nullptr, 1, 2, 8, options);
  std::mt19937 rng(std::random_device{}());
  const int T = 300;
  f.Fill({&seq}, T, rng);
  std::normal_distribution<float> normal;
  std::vector<float> q(6 * 8), out(q.size());
  for (float& x : q) x = normal(rng);
  f.backend->Decode(0, seq, q.data(), q.data(), out.data());
  const CachePartition part = PartitionCache(T, options.multipole);
  const int64_t always = part.sink_end + (T - part.clustered_end);
  EXPECT_GT(seq.stats().tokens_attended_exact, 2 * always);
  EXPECT_LE(seq.stats().tokens_attended_exact, 2 * (always + 40));
  for (float x : out) ASSERT_FALSE(std::isnan(x));
  auto* state = dynamic_cast<QuestSequenceState*>(seq.backend_state().get());
  ASSERT_NE(state, nullptr);
  EXPECT_EQ(state->layers[0].paged_end, part.clustered_end);
}

}  // namespace
}  // namespace mpa
