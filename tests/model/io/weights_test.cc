// LoadWeights on broken copies of stories260K: a config that does not match the tensors is
// refused before anything is allocated from it, and NaN or Inf weights are refused by name.
#include "model/io/weights.h"

#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "model/config/model_config.h"

namespace mpa {
namespace {

namespace fs = std::filesystem;

const char kStories[] = MPA_SOURCE_DIR "/../shared/models/stories260K";

class WeightsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(std::string(kStories) + "/config.json")) {
      GTEST_SKIP() << "stories260K not found at " << kStories;
    }
    std::string pattern = ::testing::TempDir() + "weights_test_XXXXXX";
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    for (const char* name : {"config.json", "model.safetensors"}) {
      fs::copy_file(std::string(kStories) + "/" + name, dir_ + "/" + name);
      fs::permissions(dir_ + "/" + name, fs::perms::owner_read | fs::perms::owner_write);
    }
  }
  void TearDown() override {
    if (!dir_.empty()) fs::remove_all(dir_);
  }
  // Replaces `from` by `to` in the copy's config.json.
  void EditConfig(const std::string& from, const std::string& to) {
    std::ifstream in(dir_ + "/config.json");
    std::string text((std::istreambuf_iterator<char>(in)), {});
    const size_t at = text.find(from);
    ASSERT_NE(at, std::string::npos) << from;
    text.replace(at, from.size(), to);
    std::ofstream(dir_ + "/config.json", std::ios::trunc) << text;
  }
  // Overwrites the first 4 bytes of the tensor data (an F32 value of the first tensor).
  void PoisonFirstValue(uint32_t bits) {
    std::fstream f(dir_ + "/model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    uint64_t header = 0;
    f.read(reinterpret_cast<char*>(&header), sizeof(header));
    f.seekp(static_cast<std::streamoff>(8 + header));
    f.write(reinterpret_cast<const char*>(&bits), sizeof(bits));
  }
  absl::Status Load() {
    absl::StatusOr<ModelConfig> config = LoadModelConfig(dir_);
    if (!config.ok()) return config.status();
    return LoadWeights(dir_, *config).status();
  }

  std::string dir_;
};

TEST_F(WeightsTest, TheCopyLoads) { EXPECT_TRUE(Load().ok()); }

// Large but within the config bounds: the shapes the config implies would need gigabytes; the
// checkpoint's own shapes refuse them before any allocation.
TEST_F(WeightsTest, ConfigShapesBeyondTheTensorsAreRefusedBeforeAllocating) {
  for (const auto& [from, to] : std::vector<std::pair<std::string, std::string>>{
           {"\"vocab_size\": 512", "\"vocab_size\": 4000000"},
           {"\"intermediate_size\": 172", "\"intermediate_size\": 500000"},
           {"\"hidden_size\": 64", "\"hidden_size\": 65536"},
           {"\"num_hidden_layers\": 5", "\"num_hidden_layers\": 1000"},
       }) {
    SetUp();
    EditConfig(from, to);
    const absl::Status status = Load();
    // A shape that differs is InvalidArgument; a tensor the config calls for and the checkpoint
    // lacks (more layers) is NotFound.
    EXPECT_TRUE(status.code() == absl::StatusCode::kInvalidArgument ||
                status.code() == absl::StatusCode::kNotFound)
        << to << ": " << status;
    TearDown();
    dir_.clear();
  }
}

TEST_F(WeightsTest, NanAndInfWeightsAreRefusedNamingTheTensor) {
  PoisonFirstValue(0x7fc00000u);  // NaN
  absl::Status status = Load();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(status.message().find("NaN at element 0"), std::string::npos) << status;
  EXPECT_NE(status.message().find("tensor '"), std::string::npos) << status;
  PoisonFirstValue(0xff800000u);  // -Inf
  status = Load();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(status.message().find("Inf at element 0"), std::string::npos) << status;
}

// CheckWeights: what both transformers' FromWeights check before building anything.
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

TEST(CheckWeightsTest, RandomWeightsOfTheConfigPass) {
  const ModelConfig c = SmallConfig();
  EXPECT_TRUE(CheckWeights(c, RandomWeights(c, 1)).ok());
  ModelConfig plain = c;
  plain.qk_norm = false;
  plain.attention_bias = false;
  plain.tie_word_embeddings = false;
  EXPECT_TRUE(CheckWeights(plain, RandomWeights(plain, 1)).ok());
}

TEST(CheckWeightsTest, AnInvalidConfigIsRefused) {
  ModelConfig c = SmallConfig();
  const Weights w = RandomWeights(c, 1);
  c.num_heads = 5;  // not a multiple of num_kv_heads
  const absl::Status s = CheckWeights(c, w);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_EQ(s, c.Validate());
}

TEST(CheckWeightsTest, LayerCountAndShapesMustMatchTheConfig) {
  const ModelConfig c = SmallConfig();
  Weights w = RandomWeights(c, 1);
  w.layers.pop_back();
  absl::Status s = CheckWeights(c, w);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_EQ(std::string(s.message()), "weights have 1 layers, config says 2");

  w = RandomWeights(c, 1);
  w.layers[1].k_proj.pop_back();
  s = CheckWeights(c, w);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_EQ(std::string(s.message()),
            "tensor 'model.layers.1.self_attn.k_proj.weight' holds 1151 values; the config's "
            "shape [24, 48] needs 1152");

  w = RandomWeights(c, 1);
  w.final_norm.clear();
  EXPECT_NE(CheckWeights(c, w).message().find("'model.norm.weight' holds 0 values"),
            std::string::npos);
}

TEST(CheckWeightsTest, TensorsTheConfigDoesNotCallForAreRefused) {
  const ModelConfig c = SmallConfig();
  const Weights w = RandomWeights(c, 1);
  ModelConfig no_bias = c;
  no_bias.attention_bias = false;
  absl::Status s = CheckWeights(no_bias, w);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("layer 0 has a q_proj bias"), std::string::npos) << s;
  ModelConfig no_norm = c;
  no_norm.qk_norm = false;
  no_norm.architecture = Architecture::kQwen2;
  s = CheckWeights(no_norm, w);
  EXPECT_NE(s.message().find("layer 0 has a q_norm"), std::string::npos) << s;
  ModelConfig untied = c;
  untied.tie_word_embeddings = false;
  Weights with_head = RandomWeights(untied, 1);
  EXPECT_TRUE(CheckWeights(untied, with_head).ok());
  ModelConfig tied = untied;
  tied.tie_word_embeddings = true;
  s = CheckWeights(tied, with_head);
  EXPECT_NE(s.message().find("lm_head"), std::string::npos) << s;
}

}  // namespace
}  // namespace mpa
