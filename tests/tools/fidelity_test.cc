// tools/eval/fidelity.cc: which positions count for long-range recall, and the scoring of a
// document against dense attention on the CPU engine (a tiny random model).
#include "tools/eval/fidelity.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "model/cpu/model.h"
#include "model/io/weights.h"

namespace mpa::eval {
namespace {

std::vector<int> Marked(const std::vector<bool>& marks) {
  std::vector<int> out;
  for (size_t i = 0; i < marks.size(); ++i) {
    if (marks[i]) out.push_back(static_cast<int>(i));
  }
  return out;
}

TEST(LongRangeCompletionsTest, MarksTheLastTokenOfARepeatedMultiTokenIdentifier) {
  // Tokens: 0 "int", 1 " foo", 2 "_bar", 3 ";", 4..9 filler, 10 " foo", 11 "_bar", 12 "(".
  std::vector<std::string> t = {"int", " foo", "_bar", ";",    "\n",   "x", "\n",
                                "y",   "\n",   "z",    " foo", "_bar", "("};
  // The previous occurrence ends at token 2; this one begins at token 10: 8 tokens apart.
  EXPECT_EQ(Marked(LongRangeCompletions(t, 7)), std::vector<int>{11});
  EXPECT_EQ(Marked(LongRangeCompletions(t, 8)), std::vector<int>{});
}

TEST(LongRangeCompletionsTest, SingleTokenIdentifiersAndNumbersAreNotCompletions) {
  std::vector<std::string> t = {"count", " =", " 0x", "1f",     ";",   "a",
                                "b",     "c",  "d",   " count", " 0x", "1f"};
  EXPECT_EQ(Marked(LongRangeCompletions(t, 2)), std::vector<int>{});
}

TEST(LongRangeCompletionsTest, OnlyTheLastSightingCounts) {
  // "ab" (2 tokens) at 0-1, again at 5-6, and at 12-13.
  std::vector<std::string> t = {"a", "b", " ", "1", " ", "a", "b",
                                " ", "2", " ", "3", " ", "a", "b"};
  EXPECT_EQ(Marked(LongRangeCompletions(t, 3)), (std::vector<int>{6, 13}));
  EXPECT_EQ(Marked(LongRangeCompletions(t, 5)), std::vector<int>{13});
  // The first sighting (ending at token 1) is 11 tokens before 12, but the last one only 6.
  EXPECT_EQ(Marked(LongRangeCompletions(t, 6)), std::vector<int>{});
}

TEST(LongRangeCompletionsTest, IdentifierEndingInsideATokenIsMarkedAtThatToken) {
  // "fo" + "o(" : the identifier foo ends inside token 1.
  std::vector<std::string> t = {"fo", "o(", ")", ";", "fo", "o("};
  EXPECT_EQ(Marked(LongRangeCompletions(t, 1)), std::vector<int>{5});
}

class ScoreDocumentTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_.architecture = Architecture::kLlama;
    config_.architecture_name = "LlamaForCausalLM";
    config_.vocab_size = 64;
    config_.hidden_size = 32;
    config_.intermediate_size = 64;
    config_.num_layers = 2;
    config_.num_heads = 4;
    config_.num_kv_heads = 2;
    config_.head_dim = 8;
    config_.max_position_embeddings = 1024;
    config_.rope_scaling.original_max_position_embeddings = 1024;
    ASSERT_TRUE(config_.Validate().ok()) << config_.Validate();
    // Random weights of std 0.02 give near-uniform attention, attention outputs that barely move
    // the residual stream, and near-uniform logits, where every mode agrees with dense; sharpen
    // the query/key products, let attention matter and spread the logits, as in a trained model.
    Weights w = RandomWeights(config_, 7);
    for (LayerWeights& layer : w.layers) {
      for (auto* m : {&layer.q_proj, &layer.k_proj, &layer.v_proj, &layer.o_proj}) {
        for (float& x : *m) x *= 15.0f;
      }
    }
    for (float& x : w.final_norm) x *= 40.0f;
    auto model = Model::FromWeights(config_, std::move(w), ModelOptions{});
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = *std::move(model);
    engine_ = MakeCpuEngine(model_.get());
    uint32_t state = 12345;
    for (int i = 0; i < 300; ++i) {
      state = state * 1664525u + 1013904223u;
      tokens_.push_back(static_cast<int32_t>((state >> 16) % config_.vocab_size));
    }
  }
  ModelConfig config_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<EvalEngine> engine_;
  std::vector<int32_t> tokens_;
};

TEST_F(ScoreDocumentTest, DenseAgainstDenseIsExactAndATinyBudgetIsNot) {
  std::vector<ModeSpec> modes(2);
  modes[0].name = "dense (second run)";
  modes[1].name = "multipole";
  modes[1].options.mode = AttentionMode::kMultipole;
  MultipoleConfig& c = modes[1].options.multipole;
  c.sink_tokens = 4;
  c.cluster_interval = 16;
  c.tokens_per_centroid = 4;
  c.block_tokens = 128;
  c.final_window_min = 64;
  c.final_window_max = 191;
  c.min_clustered_tokens = 32;
  c.token_budget = 4;
  std::vector<bool> long_range(tokens_.size(), false);
  long_range[250] = long_range[260] = true;
  auto r = ScoreDocument(*engine_, tokens_, 200, 64, long_range, modes);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->size(), 3u);
  const ModeTally& dense = (*r)[0];
  const ModeTally& again = (*r)[1];
  const ModeTally& sparse = (*r)[2];
  EXPECT_EQ(dense.steps, 64);
  EXPECT_EQ(dense.recall_n, 2);
  EXPECT_EQ(again.kl_sum, 0.0);
  EXPECT_EQ(again.kl_max, 0.0);
  EXPECT_EQ(again.top1, 64);
  EXPECT_EQ(again.nll_sum, dense.nll_sum);
  EXPECT_EQ(sparse.steps, 64);
  EXPECT_GT(sparse.mean_kl(), 1e-2) << "read exactly " << sparse.read_exactly();
  EXPECT_LT(sparse.read_exactly(), 0.5);
  EXPECT_GT(dense.perplexity(), 1.0);
}

// The CPU engine without its copy of the prefill: every mode prefills on its own.
class PrefillEveryModeEngine : public EvalEngine {
 public:
  explicit PrefillEveryModeEngine(EvalEngine* inner) : inner_(inner) {}
  const ModelConfig& config() const override { return inner_->config(); }
  const char* name() const override { return "cpu, no copies"; }
  absl::Status Supports(const AttentionOptions& o) const override { return inner_->Supports(o); }
  absl::StatusOr<std::unique_ptr<EvalSequence>> NewSequence(const AttentionOptions& o) override {
    return inner_->NewSequence(o);
  }
  absl::Status Prefill(EvalSequence& s, absl::Span<const int32_t> t, float* l) override {
    return inner_->Prefill(s, t, l);
  }
  absl::Status Decode(EvalSequence& s, int32_t t, float* l) override {
    return inner_->Decode(s, t, l);
  }

 private:
  EvalEngine* inner_;
};

TEST_F(ScoreDocumentTest, OnePrefillCopiedScoresAsAPrefillPerMode) {
  ASSERT_TRUE(engine_->can_clone());
  std::vector<ModeSpec> modes;
  for (AttentionMode mode :
       {AttentionMode::kMultipole, AttentionMode::kExactOnly, AttentionMode::kQuest}) {
    ModeSpec spec;
    spec.name = std::string(AttentionModeName(mode));
    spec.options.mode = mode;
    MultipoleConfig& c = spec.options.multipole;
    c.sink_tokens = 4;
    c.cluster_interval = 16;
    c.tokens_per_centroid = 4;
    c.block_tokens = 128;
    c.final_window_min = 64;
    c.final_window_max = 191;
    c.min_clustered_tokens = 32;
    c.token_budget = 16;
    modes.push_back(spec);
  }
  std::vector<bool> long_range(tokens_.size(), false);
  PrefillEveryModeEngine separate(engine_.get());
  auto copied = ScoreDocument(*engine_, tokens_, 220, 40, long_range, modes);
  auto own = ScoreDocument(separate, tokens_, 220, 40, long_range, modes);
  ASSERT_TRUE(copied.ok()) << copied.status();
  ASSERT_TRUE(own.ok()) << own.status();
  for (size_t m = 0; m < copied->size(); ++m) {
    EXPECT_EQ((*copied)[m].kl_sum, (*own)[m].kl_sum) << m;
    EXPECT_EQ((*copied)[m].nll_sum, (*own)[m].nll_sum) << m;
    EXPECT_EQ((*copied)[m].tokens_attended_exact, (*own)[m].tokens_attended_exact) << m;
  }
  EXPECT_GT((*copied)[1].kl_sum, 0.0);
}

TEST_F(ScoreDocumentTest, RefusesADocumentTooShortForItsSteps) {
  auto r = ScoreDocument(*engine_, tokens_, 250, 50, std::vector<bool>(300), {});
  EXPECT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("prefix + steps + 1"), std::string::npos) << r.status();
}

}  // namespace
}  // namespace mpa::eval
