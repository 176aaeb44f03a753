// The CPU forward pass against transformers on tiny random checkpoints of each architecture
// (tests/fixtures/*, made by tools/make_fixtures.py): prompt logits, greedy ids and the logits
// after generation must match transformers' fp32 results. The fixtures exercise llama3 RoPE
// scaling and the classic config form (llama3_tiny), q/k/v biases and tied embeddings
// (qwen2_tiny), q/k norms, head_dim 24, GQA group 4 and YaRN past the original context
// (qwen3_tiny), and BF16 weights (qwen3_tiny_bf16).
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "model/config/model_config.h"
#include "model/cpu/model.h"
#include "model/io/safetensors.h"
#include "nlohmann/json.hpp"

namespace mpa {
namespace {

const std::string kFixturesDir = MPA_SOURCE_DIR "/tests/fixtures/";

// Both fp32, with other summation orders than PyTorch's; the logits have a std of about 4, so
// 1e-4 relative is about 1e-3 absolute per logit at worst, and the fixtures' greedy steps have
// top-2 gaps of at least 5e-3 (min_top2_gap), so ids must match exactly.
constexpr double kLogitsRelL2 = 1e-4;

struct Golden {
  std::vector<int32_t> prompt_ids;
  std::vector<int32_t> greedy_ids;
  std::vector<float> last_logits;   // [vocab] after the prompt
  std::vector<float> logits_after;  // [vocab] after prompt + greedy_ids
  std::string weights_dtype;        // "F32" or "BF16"
};

Golden ReadGolden(const std::string& dir) {
  std::ifstream in(dir + "/golden.json");
  EXPECT_TRUE(in.good()) << "cannot open " << dir << "/golden.json";
  std::stringstream text;
  text << in.rdbuf();
  const nlohmann::json j = nlohmann::json::parse(text.str());
  Golden g;
  g.prompt_ids = j.at("prompt_ids").get<std::vector<int32_t>>();
  g.greedy_ids = j.at("greedy_ids").get<std::vector<int32_t>>();
  g.last_logits = j.at("last_logits").get<std::vector<float>>();
  g.logits_after = j.at("logits_after").get<std::vector<float>>();
  g.weights_dtype = j.at("weights_dtype").get<std::string>();
  return g;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// ||got - want|| / ||want||; NaN if anything is NaN, so a NaN never passes a <= bound.
double RelL2(const std::vector<float>& got, const std::vector<float>& want) {
  if (got.size() != want.size()) return NAN;
  double diff = 0, norm = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    diff += (double{got[i]} - want[i]) * (double{got[i]} - want[i]);
    norm += double{want[i]} * want[i];
  }
  return std::sqrt(diff / norm);
}

// Where the largest difference is, for failure messages.
std::string WorstLogit(const std::vector<float>& got, const std::vector<float>& want) {
  size_t worst = 0;
  for (size_t i = 1; i < want.size(); ++i) {
    if (!(std::fabs(got[i] - want[i]) <= std::fabs(got[worst] - want[worst]))) worst = i;
  }
  std::ostringstream s;
  s << "worst at id " << worst << ": got " << got[worst] << ", want " << want[worst];
  return s.str();
}

std::string Scientific(double x) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.3g", x);
  return text;
}

// Lowest id among the maxima, as torch.argmax.
int32_t Argmax(const std::vector<float>& logits) {
  int32_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i) {
    if (logits[i] > logits[best]) best = static_cast<int32_t>(i);
  }
  return best;
}

struct FixtureParam {
  std::string name;
  bool use_blas;
};

std::string ParamName(const ::testing::TestParamInfo<FixtureParam>& info) {
  return info.param.name + (info.param.use_blas ? "_blas" : "_reference");
}

class GoldenFixtureTest : public ::testing::TestWithParam<FixtureParam> {
 protected:
  void SetUp() override {
    dir_ = kFixturesDir + GetParam().name;
    golden_ = ReadGolden(dir_);
    ModelOptions options;
    options.use_blas = GetParam().use_blas;
    options.max_kv_tokens = 4096;
    auto model = Model::Load(dir_, options);
    ASSERT_TRUE(model.ok()) << dir_ << ": " << model.status();
    model_ = *std::move(model);
    vocab_ = model_->config().vocab_size;
    ASSERT_EQ(golden_.last_logits.size(), static_cast<size_t>(vocab_));
    ASSERT_EQ(golden_.logits_after.size(), static_cast<size_t>(vocab_));
  }

  std::string dir_;
  Golden golden_;
  std::unique_ptr<Model> model_;
  int vocab_ = 0;
};

// Prefill the prompt, then decode the golden ids one at a time (teacher-forced, so the logits
// after generation are compared even if an id differs); each step's argmax must be the golden id.
TEST_P(GoldenFixtureTest, PrefillAndGreedyDecodeMatchTransformers) {
  auto seq = model_->NewSequence({});
  std::vector<float> logits(vocab_);
  ASSERT_TRUE(model_->Prefill(*seq, golden_.prompt_ids, logits.data()).ok());
  const double prompt_err = RelL2(logits, golden_.last_logits);
  EXPECT_LE(prompt_err, kLogitsRelL2) << "last prompt position " << golden_.prompt_ids.size() - 1
                                      << ": " << WorstLogit(logits, golden_.last_logits);

  std::vector<int32_t> ours;
  for (size_t i = 0; i < golden_.greedy_ids.size(); ++i) {
    ours.push_back(Argmax(logits));
    EXPECT_EQ(ours.back(), golden_.greedy_ids[i])
        << "greedy step " << i << " (position " << golden_.prompt_ids.size() + i
        << "): logit of ours " << logits[ours.back()] << ", of golden "
        << logits[golden_.greedy_ids[i]];
    SequenceState* batch[] = {seq.get()};
    const int32_t next[] = {golden_.greedy_ids[i]};
    ASSERT_TRUE(model_->Decode(absl::MakeSpan(batch), next, logits.data()).ok());
  }
  EXPECT_EQ(ours, golden_.greedy_ids);
  const double after_err = RelL2(logits, golden_.logits_after);
  EXPECT_LE(after_err, kLogitsRelL2)
      << "after generation (position " << golden_.prompt_ids.size() + golden_.greedy_ids.size() - 1
      << "): " << WorstLogit(logits, golden_.logits_after);
  RecordProperty("prompt_rel_l2", Scientific(prompt_err));
  RecordProperty("after_rel_l2", Scientific(after_err));
}

// One prefill of prompt + greedy ids reaches the same logits as prefill + decode steps.
TEST_P(GoldenFixtureTest, OnePrefillOfWholeSequenceMatchesLogitsAfter) {
  std::vector<int32_t> all = golden_.prompt_ids;
  all.insert(all.end(), golden_.greedy_ids.begin(), golden_.greedy_ids.end());
  auto seq = model_->NewSequence({});
  std::vector<float> logits(vocab_);
  ASSERT_TRUE(model_->Prefill(*seq, all, logits.data()).ok());
  EXPECT_LE(RelL2(logits, golden_.logits_after), kLogitsRelL2)
      << WorstLogit(logits, golden_.logits_after);
}

INSTANTIATE_TEST_SUITE_P(
    Fixtures, GoldenFixtureTest,
    ::testing::Values(FixtureParam{"llama3_tiny", false}, FixtureParam{"llama3_tiny", true},
                      FixtureParam{"qwen2_tiny", false}, FixtureParam{"qwen2_tiny", true},
                      FixtureParam{"qwen3_tiny", false}, FixtureParam{"qwen3_tiny", true},
                      FixtureParam{"qwen3_tiny_bf16", false},
                      FixtureParam{"qwen3_tiny_bf16", true}),
    ParamName);

// The fixtures test what they claim to: guards against a regenerated fixture silently losing a
// feature (a config form, a RoPE variant, the BF16 storage).
TEST(GoldenFixtureShapeTest, FixturesCoverTheIntendedFeatures) {
  const std::string llama_text = ReadFile(kFixturesDir + "llama3_tiny/config.json");
  EXPECT_NE(llama_text.find("\"rope_scaling\""), std::string::npos);
  EXPECT_EQ(llama_text.find("\"rope_parameters\""), std::string::npos);
  auto llama = ParseModelConfig(llama_text);
  ASSERT_TRUE(llama.ok()) << llama.status();
  EXPECT_EQ(llama->rope_scaling.type, RopeScaling::Type::kLlama3);
  EXPECT_EQ(llama->group_size(), 2);

  const std::string qwen2_text = ReadFile(kFixturesDir + "qwen2_tiny/config.json");
  EXPECT_NE(qwen2_text.find("\"rope_parameters\""), std::string::npos);
  auto qwen2 = ParseModelConfig(qwen2_text);
  ASSERT_TRUE(qwen2.ok()) << qwen2.status();
  EXPECT_EQ(qwen2->architecture, Architecture::kQwen2);
  EXPECT_TRUE(qwen2->tie_word_embeddings);
  EXPECT_TRUE(qwen2->attention_bias);

  const std::string qwen3_text = ReadFile(kFixturesDir + "qwen3_tiny/config.json");
  EXPECT_NE(qwen3_text.find("\"rope_parameters\""), std::string::npos);
  auto qwen3 = ParseModelConfig(qwen3_text);
  ASSERT_TRUE(qwen3.ok()) << qwen3.status();
  EXPECT_EQ(qwen3->architecture, Architecture::kQwen3);
  EXPECT_TRUE(qwen3->qk_norm);
  EXPECT_EQ(qwen3->head_dim, 24);
  EXPECT_EQ(qwen3->group_size(), 4);
  EXPECT_EQ(qwen3->rope_scaling.type, RopeScaling::Type::kYarn);
  const Golden qwen3_golden = ReadGolden(kFixturesDir + "qwen3_tiny");
  EXPECT_GT(qwen3_golden.prompt_ids.size() + qwen3_golden.greedy_ids.size(),
            static_cast<size_t>(qwen3->rope_scaling.original_max_position_embeddings));

  auto bf16 = Checkpoint::Open(kFixturesDir + "qwen3_tiny_bf16");
  ASSERT_TRUE(bf16.ok()) << bf16.status();
  const TensorInfo* t = (*bf16)->Find("model.layers.0.self_attn.q_proj.weight");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->dtype, DType::kBF16);
  EXPECT_EQ(ReadGolden(kFixturesDir + "qwen3_tiny_bf16").weights_dtype, "BF16");
  auto f32 = Checkpoint::Open(kFixturesDir + "qwen3_tiny");
  ASSERT_TRUE(f32.ok()) << f32.status();
  EXPECT_TRUE((*f32)->Has("lm_head.weight"));  // untied: its own output matrix
  auto qwen2_ckpt = Checkpoint::Open(kFixturesDir + "qwen2_tiny");
  ASSERT_TRUE(qwen2_ckpt.ok()) << qwen2_ckpt.status();
  EXPECT_FALSE(qwen2_ckpt.value()->Has("lm_head.weight"));  // tied: only embed_tokens
}

}  // namespace
}  // namespace mpa
