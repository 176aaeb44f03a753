// The CPU forward pass on the real stories260K checkpoint and on random weights.
#include "model/cpu/model.h"

#include <cmath>
#include <filesystem>
#include <random>

#include "gtest/gtest.h"
#include "model/runtime/sampler.h"

namespace mpa {
namespace {

const std::string kStoriesDir = MPA_SOURCE_DIR "/../shared/models/stories260K";

// Greedy continuation of BOS, from the checkpoint's README (llama2.c's reference output).
const std::vector<int32_t> kStoriesGreedy = {
    403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338,
    401, 396, 267, 337, 410, 408, 419, 292, 411, 322, 265, 282, 295, 433, 426, 385,
    328, 432, 358, 394, 261, 370, 432, 352, 266, 268, 388, 426, 338, 391, 266, 267,
    337, 335, 312, 432, 398, 312, 286, 267, 414, 270, 333, 415, 426, 13,  438, 310};

std::vector<int32_t> Greedy(Model& model, std::vector<int32_t> prompt, int n) {
  auto seq = model.NewSequence({});
  std::vector<float> logits(model.config().vocab_size);
  EXPECT_TRUE(model.Prefill(*seq, prompt, logits.data()).ok());
  std::vector<int32_t> out;
  Sampler greedy({});
  for (int i = 0; i < n; ++i) {
    const int32_t id = greedy.Sample(logits.data(), model.config().vocab_size);
    out.push_back(id);
    SequenceState* batch[] = {seq.get()};
    EXPECT_TRUE(model.Decode(absl::MakeSpan(batch), {id}, logits.data()).ok());
  }
  return out;
}

class StoriesTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(kStoriesDir + "/model.safetensors")) {
      GTEST_SKIP() << "stories260K not found at " << kStoriesDir;
    }
  }
};

TEST_P(StoriesTest, GreedyMatchesReferenceOutput) {
  ModelOptions options;
  options.use_blas = GetParam();
  auto model = Model::Load(kStoriesDir, options);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(Greedy(**model, {1}, 64), kStoriesGreedy);
}

INSTANTIATE_TEST_SUITE_P(BlasAndReference, StoriesTest, ::testing::Bool());

ModelConfig SmallConfig() {
  ModelConfig c;
  c.architecture = Architecture::kQwen3;
  c.qk_norm = true;
  c.attention_bias = true;
  c.vocab_size = 97;
  c.hidden_size = 48;
  c.intermediate_size = 80;
  c.num_layers = 2;
  c.num_heads = 6;
  c.num_kv_heads = 2;
  c.head_dim = 12;
  c.max_position_embeddings = 64;
  c.rms_norm_eps = 1e-6f;
  return c;
}

std::unique_ptr<Model> SmallModel(int64_t max_kv_tokens = 1 << 16) {
  ModelConfig c = SmallConfig();
  Weights w = RandomWeights(c, 7);
  // Larger weights than the default 0.02 so logits are far from uniform.
  for (auto* m : {&w.embed_tokens})
    for (float& x : *m) x *= 50.0f;
  ModelOptions options;
  options.max_kv_tokens = max_kv_tokens;
  auto model = Model::FromWeights(c, std::move(w), options);
  EXPECT_TRUE(model.ok()) << model.status();
  return std::move(model).value();
}

float RelativeL2(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - b[i]) * double(a[i] - b[i]);
    den += double(b[i]) * b[i];
  }
  return static_cast<float>(std::sqrt(num / den));
}

TEST(ModelTest, ChunkedPrefillAndDecodeAgreeWithOnePrefill) {
  auto model = SmallModel();
  std::mt19937 rng(3);
  std::vector<int32_t> prompt(23);
  for (int32_t& t : prompt) t = rng() % 97;
  const int vocab = model->config().vocab_size;

  std::vector<float> whole(vocab), chunked(vocab), stepped(vocab);
  auto a = model->NewSequence({});
  ASSERT_TRUE(model->Prefill(*a, prompt, whole.data()).ok());

  auto b = model->NewSequence({});
  ASSERT_TRUE(model->Prefill(*b, absl::MakeSpan(prompt).subspan(0, 9), chunked.data()).ok());
  ASSERT_TRUE(model->Prefill(*b, absl::MakeSpan(prompt).subspan(9), chunked.data()).ok());

  auto c = model->NewSequence({});
  ASSERT_TRUE(model->Prefill(*c, absl::MakeSpan(prompt).subspan(0, 1), stepped.data()).ok());
  for (size_t i = 1; i < prompt.size(); ++i) {
    SequenceState* batch[] = {c.get()};
    ASSERT_TRUE(model->Decode(absl::MakeSpan(batch), {prompt[i]}, stepped.data()).ok());
  }
  EXPECT_LT(RelativeL2(chunked, whole), 1e-5f);
  EXPECT_LT(RelativeL2(stepped, whole), 1e-5f);
  for (float x : whole) ASSERT_TRUE(std::isfinite(x));
}

TEST(ModelTest, BatchedDecodeEqualsEachSequenceAlone) {
  auto model = SmallModel();
  const int vocab = model->config().vocab_size;
  std::mt19937 rng(5);
  const int kBatch = 5;
  std::vector<std::unique_ptr<SequenceState>> batched, alone;
  std::vector<std::vector<int32_t>> prompts(kBatch);
  std::vector<float> logits(vocab);
  for (int s = 0; s < kBatch; ++s) {
    prompts[s].resize(3 + 4 * s);  // mixed lengths
    for (int32_t& t : prompts[s]) t = rng() % vocab;
    batched.push_back(model->NewSequence({}));
    alone.push_back(model->NewSequence({}));
    ASSERT_TRUE(model->Prefill(*batched[s], prompts[s], logits.data()).ok());
    ASSERT_TRUE(model->Prefill(*alone[s], prompts[s], logits.data()).ok());
  }
  for (int step = 0; step < 4; ++step) {
    std::vector<int32_t> next(kBatch);
    std::vector<SequenceState*> ptrs;
    for (int s = 0; s < kBatch; ++s) {
      next[s] = rng() % vocab;
      ptrs.push_back(batched[s].get());
    }
    std::vector<float> batch_logits(kBatch * vocab);
    ASSERT_TRUE(model->Decode(ptrs, next, batch_logits.data()).ok());
    for (int s = 0; s < kBatch; ++s) {
      std::vector<float> one(vocab);
      SequenceState* single[] = {alone[s].get()};
      ASSERT_TRUE(model->Decode(absl::MakeSpan(single), {next[s]}, one.data()).ok());
      std::vector<float> row(batch_logits.begin() + s * vocab,
                             batch_logits.begin() + (s + 1) * vocab);
      EXPECT_LT(RelativeL2(row, one), 1e-5f) << "sequence " << s << " step " << step;
    }
  }
}

TEST(ModelTest, RejectsPromptLongerThanContextWindow) {
  auto model = SmallModel();
  std::vector<int32_t> prompt(65, 3);
  std::vector<float> logits(model->config().vocab_size);
  auto seq = model->NewSequence({});
  absl::Status s = model->Prefill(*seq, prompt, logits.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("context window of 64"), std::string::npos) << s;
  EXPECT_EQ(seq->num_tokens(), 0);
}

TEST(ModelTest, RejectsTokenOutsideVocabulary) {
  auto model = SmallModel();
  std::vector<float> logits(model->config().vocab_size);
  auto seq = model->NewSequence({});
  absl::Status s = model->Prefill(*seq, {1, 97}, logits.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("token id 97"), std::string::npos) << s;
}

TEST(ModelTest, FullKvPoolIsResourceExhaustedAndReleasedOnDestruction) {
  auto model = SmallModel(/*max_kv_tokens=*/32);  // 2 blocks of 16
  std::vector<float> logits(model->config().vocab_size);
  auto a = model->NewSequence({});
  ASSERT_TRUE(model->Prefill(*a, std::vector<int32_t>(20, 1), logits.data()).ok());
  auto b = model->NewSequence({});
  absl::Status s = model->Prefill(*b, std::vector<int32_t>(20, 1), logits.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_EQ(b->num_tokens(), 0);
  a.reset();
  EXPECT_EQ(model->kv_pool().free_blocks(), 2);
  EXPECT_TRUE(model->Prefill(*b, std::vector<int32_t>(20, 1), logits.data()).ok());
}

}  // namespace
}  // namespace mpa
