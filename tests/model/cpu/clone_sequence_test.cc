// Model::CloneSequence: a clone of a dense-prefilled sequence, given a mode, decodes exactly as a
// sequence of that mode prefilled with the same tokens (the clusters or Quest pages built at the
// end of a prefill are the same), for every mode and both levels, bit for bit.
#include <cstdint>
#include <vector>

#include "gtest/gtest.h"
#include "model/cpu/model.h"
#include "model/io/weights.h"

namespace mpa {
namespace {

ModelConfig SmallConfig() {
  ModelConfig c;
  c.architecture = Architecture::kQwen3;
  c.architecture_name = "Qwen3ForCausalLM";
  c.qk_norm = true;
  c.vocab_size = 96;
  c.hidden_size = 32;
  c.intermediate_size = 64;
  c.num_layers = 2;
  c.num_heads = 8;
  c.num_kv_heads = 2;
  c.head_dim = 8;
  c.max_position_embeddings = 2048;
  c.rope_scaling.original_max_position_embeddings = 2048;
  return c;
}

MultipoleConfig ScaledKnobs(int levels) {
  MultipoleConfig m;
  m.sink_tokens = 4;
  m.cluster_interval = 16;
  m.tokens_per_centroid = 4;
  m.levels = levels;
  m.coarse_tokens_per_centroid = 16;
  m.fine_tokens_per_centroid = 4;
  m.block_tokens = 128;
  m.final_window_min = 64;
  m.final_window_max = 191;
  m.min_clustered_tokens = 32;
  m.token_budget = 24;
  return m;
}

TEST(CloneSequenceTest, CloneDecodesAsAPrefilledSequenceOfItsMode) {
  const ModelConfig config = SmallConfig();
  ASSERT_TRUE(config.Validate().ok()) << config.Validate();
  auto model = Model::FromWeights(config, RandomWeights(config, 11), ModelOptions{});
  ASSERT_TRUE(model.ok()) << model.status();
  std::vector<int32_t> tokens;
  uint32_t state = 99;
  for (int i = 0; i < 300; ++i) {
    state = state * 1664525u + 1013904223u;
    tokens.push_back(static_cast<int32_t>((state >> 16) % config.vocab_size));
  }
  const int prefix = 260;
  const int vocab = config.vocab_size;
  auto dense = (*model)->NewSequence({});
  std::vector<float> ignored(vocab);
  ASSERT_TRUE(
      (*model)->Prefill(*dense, absl::MakeSpan(tokens).subspan(0, prefix), ignored.data()).ok());
  struct Case {
    AttentionMode mode;
    int levels;
  };
  for (Case c : {Case{AttentionMode::kDense, 1}, Case{AttentionMode::kMultipole, 1},
                 Case{AttentionMode::kMultipole, 2}, Case{AttentionMode::kExactOnly, 1},
                 Case{AttentionMode::kQuest, 1}}) {
    AttentionOptions options;
    options.mode = c.mode;
    options.multipole = ScaledKnobs(c.levels);
    auto prefilled = (*model)->NewSequence(options);
    ASSERT_TRUE((*model)
                    ->Prefill(*prefilled, absl::MakeSpan(tokens).subspan(0, prefix), ignored.data())
                    .ok());
    auto clone = (*model)->CloneSequence(*dense, options);
    ASSERT_TRUE(clone.ok()) << clone.status();
    ASSERT_EQ((*clone)->num_tokens(), prefix);
    // Clustered at once, as at the end of the prefill (not left to the first decode step).
    EXPECT_EQ((*clone)->stats().tokens_reclustered, prefilled->stats().tokens_reclustered);
    if (c.mode == AttentionMode::kMultipole || c.mode == AttentionMode::kExactOnly) {
      EXPECT_GT((*clone)->stats().tokens_reclustered, 0);
    }
    std::vector<float> a(vocab), b(vocab);
    for (int i = prefix; i < static_cast<int>(tokens.size()); ++i) {
      SequenceState* sa[] = {prefilled.get()};
      SequenceState* sb[] = {clone->get()};
      ASSERT_TRUE((*model)->Decode(absl::MakeSpan(sa), {tokens[i]}, a.data()).ok());
      ASSERT_TRUE((*model)->Decode(absl::MakeSpan(sb), {tokens[i]}, b.data()).ok());
      ASSERT_EQ(a, b) << AttentionModeName(c.mode) << " levels " << c.levels << " step " << i;
    }
    // The sparse modes really attended sparsely.
    if (c.mode != AttentionMode::kDense) {
      EXPECT_LT((*clone)->stats().sparsity(), 0.6) << AttentionModeName(c.mode);
      EXPECT_EQ((*clone)->stats().tokens_attended_exact, prefilled->stats().tokens_attended_exact);
    }
  }
  // The source is untouched: it still decodes as before.
  EXPECT_EQ(dense->num_tokens(), prefix);
}

}  // namespace
}  // namespace mpa
