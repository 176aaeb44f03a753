#include "model/config/model_config.h"

#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "model/runtime/rope.h"

namespace mpa {
namespace {

constexpr char kClassicLlama3[] = R"({
  "architectures": ["LlamaForCausalLM"], "vocab_size": 128, "hidden_size": 64,
  "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
  "num_key_value_heads": 2, "max_position_embeddings": 1024, "rms_norm_eps": 1e-5,
  "rope_theta": 500000.0, "tie_word_embeddings": false, "bos_token_id": 1,
  "eos_token_id": [2, 3],
  "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                   "high_freq_factor": 4.0, "original_max_position_embeddings": 64}})";

constexpr char kNewFormQwen3[] = R"({
  "architectures": ["Qwen3ForCausalLM"], "vocab_size": 128, "hidden_size": 64,
  "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 8,
  "num_key_value_heads": 2, "head_dim": 24, "max_position_embeddings": 256,
  "rms_norm_eps": 1e-6, "tie_word_embeddings": true,
  "rope_parameters": {"rope_type": "yarn", "rope_theta": 1000000.0, "factor": 4.0,
                      "original_max_position_embeddings": 32}})";

TEST(ModelConfigTest, ParsesClassicForm) {
  auto c = ParseModelConfig(kClassicLlama3);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, Architecture::kLlama);
  EXPECT_EQ(c->head_dim, 16);  // hidden / heads when head_dim is absent
  EXPECT_EQ(c->num_kv_heads, 2);
  EXPECT_DOUBLE_EQ(c->rope_theta, 500000.0);
  EXPECT_EQ(c->rope_scaling.type, RopeScaling::Type::kLlama3);
  EXPECT_DOUBLE_EQ(c->rope_scaling.factor, 8.0);
  EXPECT_EQ(c->rope_scaling.original_max_position_embeddings, 64);
  EXPECT_EQ(c->eos_token_ids, (std::vector<int>{2, 3}));
  EXPECT_FALSE(c->qk_norm);
  EXPECT_FALSE(c->attention_bias);
}

TEST(ModelConfigTest, ParsesRopeParametersForm) {
  auto c = ParseModelConfig(kNewFormQwen3);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, Architecture::kQwen3);
  EXPECT_TRUE(c->qk_norm);
  EXPECT_EQ(c->head_dim, 24);
  EXPECT_DOUBLE_EQ(c->rope_theta, 1000000.0);
  EXPECT_EQ(c->rope_scaling.type, RopeScaling::Type::kYarn);
  EXPECT_TRUE(c->tie_word_embeddings);
}

TEST(ModelConfigTest, Qwen2HasBiases) {
  std::string text = kNewFormQwen3;
  text.replace(text.find("Qwen3"), 5, "Qwen2");
  auto c = ParseModelConfig(text);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->attention_bias);
  EXPECT_FALSE(c->qk_norm);
}

TEST(ModelConfigTest, Llama3ScalingKeepsHighFrequenciesAndDividesLowOnes) {
  auto c = ParseModelConfig(kClassicLlama3);
  ASSERT_TRUE(c.ok());
  Rope rope(*c);
  ModelConfig plain = *c;
  plain.rope_scaling = RopeScaling{};
  Rope unscaled(plain);
  const auto& f = rope.inv_freq();
  const auto& g = unscaled.inv_freq();
  EXPECT_FLOAT_EQ(f.front(), g.front());       // wavelength 2*pi < 64/4: untouched
  EXPECT_FLOAT_EQ(f.back(), g.back() / 8.0f);  // wavelength > 64: divided by factor
}

TEST(ModelConfigTest, YarnScalesCosAndSin) {
  auto c = ParseModelConfig(kNewFormQwen3);
  ASSERT_TRUE(c.ok());
  Rope rope(*c);
  EXPECT_NEAR(rope.attention_scaling(), 0.1 * std::log(4.0) + 1.0, 1e-6);
  std::vector<float> cos(12), sin(12);
  rope.CosSin(0, cos.data(), sin.data());
  EXPECT_NEAR(cos[0], rope.attention_scaling(), 1e-6);
}

struct BadConfig {
  std::string name;
  std::string json;
  absl::StatusCode code;
  std::string needle;  // must appear in the message
};

class BadConfigTest : public ::testing::TestWithParam<BadConfig> {};

TEST_P(BadConfigTest, NamesTheProblem) {
  auto c = ParseModelConfig(GetParam().json);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), GetParam().code) << c.status();
  EXPECT_NE(c.status().message().find(GetParam().needle), std::string::npos) << c.status();
}

std::string Without(const std::string& field) {
  std::string s = kClassicLlama3;
  const size_t at = s.find("\"" + field + "\"");
  const size_t end = s.find(',', at);
  s.erase(at, end - at + 1);
  return s;
}

std::string Replace(std::string s, const std::string& from, const std::string& to) {
  s.replace(s.find(from), from.size(), to);
  return s;
}

INSTANTIATE_TEST_SUITE_P(
    Cases, BadConfigTest,
    ::testing::Values(
        BadConfig{"not_json", "{\"architectures\": [", absl::StatusCode::kInvalidArgument,
                  "not valid JSON"},
        BadConfig{"not_object", "[1, 2]", absl::StatusCode::kInvalidArgument, "object"},
        BadConfig{"unsupported_arch",
                  Replace(kClassicLlama3, "LlamaForCausalLM", "MistralForCausalLM"),
                  absl::StatusCode::kUnimplemented, "MistralForCausalLM"},
        BadConfig{"missing_hidden", Without("hidden_size"), absl::StatusCode::kInvalidArgument,
                  "hidden_size"},
        BadConfig{
            "string_layers",
            Replace(kClassicLlama3, "\"num_hidden_layers\": 2", "\"num_hidden_layers\": \"2\""),
            absl::StatusCode::kInvalidArgument, "num_hidden_layers"},
        BadConfig{
            "kv_heads_not_divisor",
            Replace(kClassicLlama3, "\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3"),
            absl::StatusCode::kInvalidArgument, "num_key_value_heads"},
        BadConfig{"unknown_rope", Replace(kClassicLlama3, "\"llama3\"", "\"longrope\""),
                  absl::StatusCode::kUnimplemented, "longrope"},
        BadConfig{"zero_vocab", Replace(kClassicLlama3, "\"vocab_size\": 128", "\"vocab_size\": 0"),
                  absl::StatusCode::kInvalidArgument, "vocab_size"},
        // RoPE parameters that would give NaN or meaningless frequencies.
        BadConfig{"llama3_high_not_above_low",
                  Replace(kClassicLlama3, "\"high_freq_factor\": 4.0", "\"high_freq_factor\": 1.0"),
                  absl::StatusCode::kInvalidArgument, "rope_scaling.high_freq_factor"},
        BadConfig{"llama3_low_zero",
                  Replace(kClassicLlama3, "\"low_freq_factor\": 1.0", "\"low_freq_factor\": 0"),
                  absl::StatusCode::kInvalidArgument, "rope_scaling.low_freq_factor"},
        BadConfig{"llama3_original_context_zero",
                  Replace(kClassicLlama3, "\"original_max_position_embeddings\": 64",
                          "\"original_max_position_embeddings\": 0"),
                  absl::StatusCode::kInvalidArgument,
                  "rope_scaling.original_max_position_embeddings"},
        BadConfig{"yarn_beta_fast_negative",
                  Replace(kNewFormQwen3, "\"factor\": 4.0", "\"factor\": 4.0, \"beta_fast\": -1"),
                  absl::StatusCode::kInvalidArgument, "rope_parameters.beta_fast"},
        BadConfig{
            "yarn_attention_factor_zero",
            Replace(kNewFormQwen3, "\"factor\": 4.0", "\"factor\": 4.0, \"attention_factor\": 0"),
            absl::StatusCode::kInvalidArgument, "rope_parameters.attention_factor"},
        BadConfig{"text_config_not_object",
                  Replace(kClassicLlama3, "\"vocab_size\": 128", "\"text_config\": [1]"),
                  absl::StatusCode::kInvalidArgument, "text_config"}),
    [](const auto& info) { return info.param.name; });

// Values far outside any real model are refused by name before anything is sized by them.
TEST(ModelConfigTest, AbsurdValuesAreRefusedNamingTheField) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"\"vocab_size\": 128", "\"vocab_size\": 2147483647"},
      {"\"hidden_size\": 64", "\"hidden_size\": 1000000"},
      {"\"intermediate_size\": 96", "\"intermediate_size\": 100000000"},
      {"\"num_hidden_layers\": 2", "\"num_hidden_layers\": 100000"},
      {"\"max_position_embeddings\": 1024", "\"max_position_embeddings\": 2000000000"},
      {"\"bos_token_id\": 1", "\"bos_token_id\": 128"},
      {"\"eos_token_id\": [2, 3]", "\"eos_token_id\": [2, 999]"},
  };
  for (const auto& [from, to] : cases) {
    std::string text = kClassicLlama3;
    const size_t at = text.find(from);
    ASSERT_NE(at, std::string::npos) << from;
    text.replace(at, from.size(), to);
    const absl::StatusOr<ModelConfig> config = ParseModelConfig(text);
    ASSERT_FALSE(config.ok()) << to;
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument) << to;
    const std::string field = from.substr(1, from.find('"', 1) - 1);
    EXPECT_NE(config.status().message().find(field), std::string::npos) << config.status();
  }
}

}  // namespace
}  // namespace mpa
