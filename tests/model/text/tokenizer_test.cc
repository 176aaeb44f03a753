#include "model/text/tokenizer.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/text/tokenizer_internal.h"
#include "nlohmann/json.hpp"
#include "tests/time_scale.h"

namespace mpa {
namespace {

namespace ti = tokenizer_internal;
using json = nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

const std::string kStoriesDir = MPA_SOURCE_DIR "/../shared/models/stories260K";

// The greedy ids the model's README lists (64 tokens after BOS).
const std::vector<int32_t> kStoryIds = {
    403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338,
    401, 396, 267, 337, 410, 408, 419, 292, 411, 322, 265, 282, 295, 433, 426, 385,
    328, 432, 358, 394, 261, 370, 432, 352, 266, 268, 388, 426, 338, 391, 266, 267,
    337, 335, 312, 432, 398, 312, 286, 267, 414, 270, 333, 415, 426, 13,  438, 310};

// Random text from pieces that exercise spaces, punctuation, digits, and 2/3/4-byte UTF-8.
// U+2581 is left out (Llama-2-style tokenizers turn spaces into it, so it cannot round-trip),
// and no pieces can join into a special token such as "<s>".
std::string RandomText(std::mt19937& rng, int pieces) {
  static const std::vector<std::string> kPieces = {"a",
                                                   "b",
                                                   "z",
                                                   "Q",
                                                   " ",
                                                   "  ",
                                                   "\n",
                                                   "\t",
                                                   ",",
                                                   ".",
                                                   "!",
                                                   "'s",
                                                   "0",
                                                   "7",
                                                   "42",
                                                   "the",
                                                   " the",
                                                   "Lily",
                                                   "é",
                                                   "ñ",
                                                   "ß",
                                                   "中",
                                                   "文",
                                                   "日本",
                                                   "\xF0\x9F\x98\x80",
                                                   "\xF0\x9F\x8E\x89",
                                                   "€",
                                                   "—",
                                                   "\u00a0",
                                                   "()",
                                                   "{}",
                                                   "<",
                                                   ">",
                                                   "=>",
                                                   "/",
                                                   "\r\n",
                                                   "Ω",
                                                   "한",
                                                   "x"};
  std::uniform_int_distribution<size_t> pick(0, kPieces.size() - 1);
  std::string text;
  for (int k = 0; k < pieces; ++k) text += kPieces[pick(rng)];
  return text;
}

class StoriesTokenizerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(kStoriesDir + "/tokenizer.json")) {
      GTEST_SKIP() << "stories260K model folder not found at " << kStoriesDir;
    }
    auto loaded = Tokenizer::LoadFromDir(kStoriesDir);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    tokenizer_ = std::move(loaded).value();
  }
  std::unique_ptr<Tokenizer> tokenizer_;
};

TEST_F(StoriesTokenizerTest, ConfigValues) {
  EXPECT_EQ(tokenizer_->vocab_size(), 512);
  EXPECT_EQ(tokenizer_->bos_id(), 1);
  EXPECT_THAT(tokenizer_->eos_ids(), ElementsAre(2));
  EXPECT_TRUE(tokenizer_->IsSpecial(0));
  EXPECT_TRUE(tokenizer_->IsSpecial(1));
  EXPECT_TRUE(tokenizer_->IsSpecial(2));
  EXPECT_FALSE(tokenizer_->IsSpecial(3));
  EXPECT_FALSE(tokenizer_->IsSpecial(403));
  EXPECT_EQ(tokenizer_->TokenBytes(403), " Once");
  EXPECT_EQ(tokenizer_->TokenBytes(13), "\n");  // <0x0A>
  EXPECT_EQ(tokenizer_->TokenBytes(231), "\xE4");
}

TEST_F(StoriesTokenizerTest, ReadmeStoryDecodesAndReencodes) {
  const std::string text = tokenizer_->Decode(kStoryIds, /*skip_special_tokens=*/true);
  EXPECT_THAT(text, StartsWith("Once upon a time, there was a little girl named Lily."));
  EXPECT_THAT(text, HasSubstr("She loved to play outside in the park."));
  std::vector<int32_t> expected = {1};
  expected.insert(expected.end(), kStoryIds.begin(), kStoryIds.end());
  EXPECT_EQ(tokenizer_->Encode(text, /*add_special_tokens=*/true), expected);
  EXPECT_EQ(tokenizer_->Encode(text, /*add_special_tokens=*/false), kStoryIds);
}

TEST_F(StoriesTokenizerTest, KnownEncodings) {
  // "▁Once" "▁upon" "▁a" "▁time" are single tokens of this vocabulary.
  EXPECT_THAT(tokenizer_->Encode("Once upon a time", true), ElementsAre(1, 403, 407, 261, 378));
  EXPECT_THAT(tokenizer_->Encode("Once upon a time", false), ElementsAre(403, 407, 261, 378));
  EXPECT_TRUE(tokenizer_->Encode("", false).empty());
  EXPECT_THAT(tokenizer_->Encode("", true), ElementsAre(1));
  // Not in the vocabulary: "中" is E4 B8 AD, byte tokens 3 + byte.
  EXPECT_THAT(tokenizer_->Encode("中", false), ElementsAre(410, 3 + 0xE4, 3 + 0xB8, 3 + 0xAD));
  // Special tokens written in the text are recognised; each text piece gets its own "▁".
  EXPECT_THAT(tokenizer_->Encode("<s>Once", false), ElementsAre(1, 403));
  EXPECT_THAT(tokenizer_->Encode("Once</s>", false), ElementsAre(403, 2));
}

TEST_F(StoriesTokenizerTest, SpecialIdsAreWhatAddSpecialTokensAdds) {
  const Tokenizer::SpecialIds special = tokenizer_->special_ids();
  EXPECT_THAT(special.prefix, ElementsAre(1));
  EXPECT_TRUE(special.suffix.empty());
  for (const std::string text : {"", "Once upon a time", "<s>Once", "中 x</s>"}) {
    std::vector<int32_t> joined = special.prefix;
    const std::vector<int32_t> plain = tokenizer_->Encode(text, false);
    joined.insert(joined.end(), plain.begin(), plain.end());
    joined.insert(joined.end(), special.suffix.begin(), special.suffix.end());
    EXPECT_EQ(tokenizer_->Encode(text, true), joined) << text;
  }
}

TEST_F(StoriesTokenizerTest, DecodeMatchesHuggingFaceConventions) {
  // Leading "▁" of the first token is stripped, only at the very start.
  EXPECT_EQ(tokenizer_->Decode({403, 407}, true), "Once upon");
  EXPECT_EQ(tokenizer_->Decode({410, 410, 403}, true), "  Once");
  // Special tokens: kept as text, or skipped (and then the strip reaches the first real token).
  EXPECT_EQ(tokenizer_->Decode({1, 403, 407}, false), "<s> Once upon");
  EXPECT_EQ(tokenizer_->Decode({1, 403, 407}, true), "Once upon");
  // A byte group that is not valid UTF-8 becomes one U+FFFD per byte.
  EXPECT_EQ(tokenizer_->Decode({3 + 0xE4, 3 + 0xB8, 403}, true), "\uFFFD\uFFFD Once");
  EXPECT_EQ(tokenizer_->Decode({3 + 0xE4, 3 + 0xB8, 3 + 0xAD}, true), "中");
  // ... even when it starts with a complete character.
  EXPECT_EQ(tokenizer_->Decode({3 + 0xC3, 3 + 0xA9, 3 + 0xFF}, true), "\uFFFD\uFFFD\uFFFD");
  // Ids outside the vocabulary are skipped, as HF does.
  EXPECT_EQ(tokenizer_->Decode({403, 9999, -1, 407}, true), "Once upon");
}

TEST_F(StoriesTokenizerTest, RoundTripsRandomText) {
  std::mt19937 rng(::testing::UnitTest::GetInstance()->random_seed());
  for (int trial = 0; trial < 300; ++trial) {
    const std::string text = RandomText(rng, 1 + trial % 40);
    const std::vector<int32_t> ids = tokenizer_->Encode(text, true);
    ASSERT_FALSE(ids.empty());
    EXPECT_EQ(ids[0], 1);
    EXPECT_EQ(tokenizer_->Decode(ids, /*skip_special_tokens=*/true), text) << "trial " << trial;
  }
}

// Checks the IncrementalDecoder contract on one id stream: whole characters per piece, and the
// pieces concatenate to Decode.
void ExpectStreamMatchesDecode(const Tokenizer& tokenizer, const std::vector<int32_t>& ids,
                               bool skip_special) {
  IncrementalDecoder decoder(tokenizer, skip_special);
  std::string streamed;
  for (size_t k = 0; k < ids.size(); ++k) {
    const std::string piece = decoder.Push(ids[k]);
    ASSERT_TRUE(ti::IsValidUtf8(piece)) << "piece after id #" << k;
    streamed += piece;
  }
  const std::string tail = decoder.Flush();
  ASSERT_TRUE(ti::IsValidUtf8(tail));
  streamed += tail;
  EXPECT_EQ(streamed, tokenizer.Decode(ids, skip_special));
}

TEST_F(StoriesTokenizerTest, IncrementalDecoderMatchesDecodeOnRandomStreams) {
  std::mt19937 rng(::testing::UnitTest::GetInstance()->random_seed());
  std::uniform_int_distribution<int32_t> any_id(-2, tokenizer_->vocab_size() + 2);
  std::uniform_int_distribution<int32_t> byte_id(3 + 0x80, 3 + 0xFF);  // continuation/lead bytes
  for (int trial = 0; trial < 400; ++trial) {
    std::vector<int32_t> ids;
    const int length = 1 + trial % 50;
    for (int k = 0; k < length; ++k) ids.push_back(trial % 3 == 0 ? byte_id(rng) : any_id(rng));
    ExpectStreamMatchesDecode(*tokenizer_, ids, /*skip_special=*/trial % 2 == 0);
  }
  // Streams of real text whose characters are split over byte tokens.
  for (int trial = 0; trial < 100; ++trial) {
    const std::vector<int32_t> ids = tokenizer_->Encode(RandomText(rng, 30), true);
    ExpectStreamMatchesDecode(*tokenizer_, ids, true);
    ExpectStreamMatchesDecode(*tokenizer_, ids, false);
  }
}

TEST_F(StoriesTokenizerTest, IncrementalDecoderHoldsSplitCharactersAndStripsOnlyAtStart) {
  IncrementalDecoder decoder(*tokenizer_, true);
  EXPECT_EQ(decoder.Push(1), "");
  EXPECT_EQ(decoder.Push(403), "Once");  // the leading space of the first token goes
  EXPECT_EQ(decoder.Push(407), " upon");
  EXPECT_EQ(decoder.Push(410), " ");
  EXPECT_EQ(decoder.Push(3 + 0xE4), "");
  EXPECT_EQ(decoder.Push(3 + 0xB8), "");
  EXPECT_EQ(decoder.Push(3 + 0xAD), "");  // the group could still turn invalid
  EXPECT_EQ(decoder.Push(403), "中 Once");
  EXPECT_EQ(decoder.Push(3 + 0xE4), "");
  EXPECT_EQ(decoder.Flush(), "\uFFFD");
}

TEST_F(StoriesTokenizerTest, EncodesLargeTextQuickly) {
  std::mt19937 rng(7);
  std::string text;
  while (text.size() < 100 * 1024) {
    text += "Once upon a time, there was a little girl named Lily. She loved to play. ";
    text += RandomText(rng, 5);
  }
  const auto start = std::chrono::steady_clock::now();
  const std::vector<int32_t> ids = tokenizer_->Encode(text, true);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(seconds, 1.0 * MPA_TEST_TIME_SCALE) << "100 KB took " << seconds << " s";
  EXPECT_TRUE(tokenizer_->Decode(ids, true) == text);  // (no 100 KB diff on failure)
}

TEST_F(StoriesTokenizerTest, ConcurrentEncodesAgree) {
  // Encode is const and shares a word cache; threads must see the single-threaded answers.
  std::mt19937 rng(::testing::UnitTest::GetInstance()->random_seed());
  std::vector<std::string> texts;
  for (int k = 0; k < 64; ++k) texts.push_back(RandomText(rng, 20));
  std::vector<std::vector<int32_t>> expected;
  for (const std::string& text : texts) expected.push_back(tokenizer_->Encode(text, true));
  std::vector<std::thread> threads;
  std::atomic<int> mismatches{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 20; ++round) {
        for (size_t k = 0; k < texts.size(); ++k) {
          const size_t i = (k + t * 7) % texts.size();
          if (tokenizer_->Encode(texts[i], true) != expected[i]) ++mismatches;
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(mismatches.load(), 0);
}

// ---- Synthetic tokenizers (always available) ----

// A byte-level tokenizer: the 256 byte symbols plus merges for "he", "ll", "hell", "hello",
// "Ġw", "Ġwo"..., with Qwen's split pattern.
json ByteLevelTokenizerJson() {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[ti::ByteToUnicode(static_cast<uint8_t>(b))] = b;
  const std::vector<std::pair<std::string, std::string>> merges = {
      {"h", "e"}, {"l", "l"},   {"he", "ll"},  {"hell", "o"},  {"Ġ", "w"},
      {"o", "r"}, {"Ġw", "or"}, {"Ġwor", "l"}, {"Ġworl", "d"}, {"Ġ", "Ġ"}};
  json merge_list = json::array();
  int next = 256;
  for (const auto& [a, b] : merges) {
    vocab[a + b] = next++;
    merge_list.push_back(a + " " + b);
  }
  json root;
  root["version"] = "1.0";
  root["added_tokens"] = json::array(
      {{{"id", 300}, {"content", "<|end|>"}, {"special", true}, {"normalized", false}},
       {{"id", 301}, {"content", "<tool>"}, {"special", false}, {"normalized", false}}});
  root["normalizer"] = {{"type", "NFC"}};
  root["pre_tokenizer"] = {
      {"type", "Sequence"},
      {"pretokenizers",
       json::array({{{"type", "Split"},
                     {"pattern",
                      {{"Regex",
                        "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
                        "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}}},
                     {"behavior", "Isolated"},
                     {"invert", false}},
                    {{"type", "ByteLevel"},
                     {"add_prefix_space", false},
                     {"trim_offsets", false},
                     {"use_regex", false}}})}};
  root["post_processor"] = {{"type", "ByteLevel"}};
  root["decoder"] = {{"type", "ByteLevel"}};
  root["model"] = {{"type", "BPE"},        {"vocab", vocab},         {"merges", merge_list},
                   {"unk_token", nullptr}, {"byte_fallback", false}, {"ignore_merges", false}};
  return root;
}

std::unique_ptr<Tokenizer> MakeTokenizer(const json& root, const std::string& config = "",
                                         const std::string& generation = "") {
  auto made = Tokenizer::FromJson(root.dump(), config, generation);
  EXPECT_TRUE(made.ok()) << made.status();
  return made.ok() ? std::move(made).value() : nullptr;
}

TEST(ByteLevelTokenizerTest, MergesByRankAndSplitsWords) {
  auto tokenizer = MakeTokenizer(ByteLevelTokenizerJson());
  ASSERT_NE(tokenizer, nullptr);
  const int32_t hello = 259, world = 264;
  EXPECT_THAT(tokenizer->Encode("hello world", false), ElementsAre(hello, world));
  // Digits split one by one; 'h'=0x68.
  EXPECT_THAT(tokenizer->Encode("12", false), ElementsAre('1', '2'));
  // Two spaces before a word: the first stays alone, the second joins the word, so no "ĠĠ".
  EXPECT_THAT(tokenizer->Encode("hello  world", false), ElementsAre(hello, ' ', world));
  // At the end, the whole whitespace run is one piece and "ĠĠ" merges.
  EXPECT_THAT(tokenizer->Encode("hello  ", false), ElementsAre(hello, 265));
  EXPECT_EQ(tokenizer->Decode({hello, world}, false), "hello world");
}

TEST(ByteLevelTokenizerTest, AddedTokensAndSpecialSkipping) {
  auto tokenizer = MakeTokenizer(ByteLevelTokenizerJson());
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_THAT(tokenizer->Encode("hello<|end|><tool>", false), ElementsAre(259, 300, 301));
  EXPECT_TRUE(tokenizer->IsSpecial(300));
  EXPECT_FALSE(tokenizer->IsSpecial(301));
  EXPECT_EQ(tokenizer->Decode({259, 300, 301}, false), "hello<|end|><tool>");
  EXPECT_EQ(tokenizer->Decode({259, 300, 301}, true), "hello<tool>");  // only special skipped
  EXPECT_EQ(tokenizer->vocab_size(), 302);
  EXPECT_FALSE(tokenizer->bos_id().has_value());
  EXPECT_THAT(tokenizer->Encode("hello", true), ElementsAre(259));  // no template: nothing added
}

TEST(ByteLevelTokenizerTest, NormalizesToNfc) {
  auto tokenizer = MakeTokenizer(ByteLevelTokenizerJson());
  ASSERT_NE(tokenizer, nullptr);
  // "e" + U+0301 composes to "é" (C3 A9).
  EXPECT_EQ(tokenizer->Encode("e\xCC\x81", false), tokenizer->Encode("\xC3\xA9", false));
  EXPECT_EQ(tokenizer->Decode(tokenizer->Encode("e\xCC\x81", false), false), "\xC3\xA9");
}

TEST(ByteLevelTokenizerTest, RoundTripsAndStreams) {
  auto tokenizer = MakeTokenizer(ByteLevelTokenizerJson());
  ASSERT_NE(tokenizer, nullptr);
  std::mt19937 rng(::testing::UnitTest::GetInstance()->random_seed());
  for (int trial = 0; trial < 300; ++trial) {
    const std::string text = RandomText(rng, 1 + trial % 30);  // all pieces are NFC already
    const std::vector<int32_t> ids = tokenizer->Encode(text, false);
    EXPECT_EQ(tokenizer->Decode(ids, false), text);
    ExpectStreamMatchesDecode(*tokenizer, ids, false);
  }
  std::uniform_int_distribution<int32_t> any_id(0, 301);
  for (int trial = 0; trial < 300; ++trial) {
    std::vector<int32_t> ids(1 + trial % 40);
    for (int32_t& id : ids) id = any_id(rng);
    ExpectStreamMatchesDecode(*tokenizer, ids, trial % 2 == 0);
  }
  // Invalid bytes: one U+FFFD per maximal ill-formed subpart ("E4 B8" then "41").
  EXPECT_EQ(tokenizer->Decode({0xE4, 0xB8, 'A'}, false), "\uFFFDA");
  EXPECT_EQ(tokenizer->Decode({0xFF, 0xE4, 0xB8, 0xAD}, false), "\uFFFD中");
}

TEST(ByteLevelTokenizerTest, MergesAsPairsEqualMergesAsStrings) {
  json root = ByteLevelTokenizerJson();
  json pairs = json::array();
  for (const json& merge : root["model"]["merges"]) {
    const std::string line = merge.get<std::string>();
    pairs.push_back({line.substr(0, line.find(' ')), line.substr(line.find(' ') + 1)});
  }
  root["model"]["merges"] = pairs;
  auto tokenizer = MakeTokenizer(root);
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_THAT(tokenizer->Encode("hello world", false), ElementsAre(259, 264));
}

TEST(ByteLevelTokenizerTest, IgnoreMergesTakesWholeWordsFirst) {
  json root = ByteLevelTokenizerJson();
  // "Ġworld" is in the vocabulary, but with no merges the model alone could not reach it.
  root["model"]["merges"] = json::array();
  EXPECT_THAT(MakeTokenizer(root)->Encode(" world", false),
              ElementsAre(' ', 'w', 'o', 'r', 'l', 'd'));
  root["model"]["ignore_merges"] = true;
  EXPECT_THAT(MakeTokenizer(root)->Encode(" world", false), ElementsAre(264));
}

TEST(TokenizerConfigTest, BosAndEosFromConfigs) {
  json root = ByteLevelTokenizerJson();
  const std::string config =
      R"({"bos_token": {"content": "<tool>", "special": true}, "eos_token": "<|end|>",
          "add_bos_token": true})";
  const std::string generation = R"({"bos_token_id": 5, "eos_token_id": [7, 300]})";
  auto tokenizer = MakeTokenizer(root, config, generation);
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_EQ(tokenizer->bos_id(), 301);
  EXPECT_THAT(tokenizer->eos_ids(), ElementsAre(300, 7));
  EXPECT_THAT(tokenizer->Encode("hello", true), ElementsAre(301, 259));
  EXPECT_THAT(tokenizer->Encode("hello", false), ElementsAre(259));

  auto from_generation = MakeTokenizer(root, "", R"({"bos_token_id": 5, "eos_token_id": 9})");
  ASSERT_NE(from_generation, nullptr);
  EXPECT_EQ(from_generation->bos_id(), 5);
  EXPECT_THAT(from_generation->eos_ids(), ElementsAre(9));
  EXPECT_THAT(from_generation->Encode("hello", true), ElementsAre(259));  // no template
}

TEST(TokenizerConfigTest, TemplateProcessingAddsBos) {
  json root = ByteLevelTokenizerJson();
  root["post_processor"] = json::parse(R"({"type": "Sequence", "processors": [
      {"type": "ByteLevel"},
      {"type": "TemplateProcessing",
       "single": [{"SpecialToken": {"id": "<|end|>", "type_id": 0}},
                  {"Sequence": {"id": "A", "type_id": 0}}],
       "pair": [],
       "special_tokens": {"<|end|>": {"id": "<|end|>", "ids": [300], "tokens": ["<|end|>"]}}}]})");
  auto tokenizer = MakeTokenizer(root);
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_THAT(tokenizer->Encode("hello", true), ElementsAre(300, 259));
  // tokenizer_config's add_bos_token decides where present, as transformers does.
  auto overridden = MakeTokenizer(root, R"({"add_bos_token": false})");
  ASSERT_NE(overridden, nullptr);
  EXPECT_THAT(overridden->Encode("hello", true), ElementsAre(259));
}

TEST(TokenizerConfigTest, AddedTokenStripFlags) {
  json root = ByteLevelTokenizerJson();
  root["added_tokens"][0]["lstrip"] = true;
  root["added_tokens"][0]["rstrip"] = true;
  auto tokenizer = MakeTokenizer(root);
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_THAT(tokenizer->Encode("hello  <|end|>  hello", false), ElementsAre(259, 300, 259));
}

// ---- Split patterns (Oniguruma semantics on RE2) ----

std::vector<std::string> SplitWith(const std::string& pattern, const std::string& text) {
  auto split = ti::SplitPattern::FromRegex(pattern);
  EXPECT_TRUE(split.ok()) << split.status();
  std::vector<std::string> pieces;
  if (!split.ok()) return pieces;
  size_t last = 0;
  for (const auto& [begin, end] : (*split)->FindAll(text)) {
    if (begin > last) pieces.push_back("[gap]" + text.substr(last, begin - last));
    pieces.push_back(text.substr(begin, end - begin));
    last = end;
  }
  if (last < text.size()) pieces.push_back("[gap]" + text.substr(last));
  return pieces;
}

const char kQwenPattern[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const char kLlama3Pattern[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const char kGpt2Pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

TEST(SplitPatternTest, QwenPatternAsOnigurumaSplits) {
  EXPECT_THAT(SplitWith(kQwenPattern, "Hello world"), ElementsAre("Hello", " world"));
  EXPECT_THAT(SplitWith(kQwenPattern, "a  b"), ElementsAre("a", " ", " b"));
  EXPECT_THAT(SplitWith(kQwenPattern, "a   b"), ElementsAre("a", "  ", " b"));
  EXPECT_THAT(SplitWith(kQwenPattern, "x   \n\n  y"), ElementsAre("x", "   \n\n", " ", " y"));
  EXPECT_THAT(SplitWith(kQwenPattern, "123"), ElementsAre("1", "2", "3"));
  EXPECT_THAT(SplitWith(kQwenPattern, "a  1"), ElementsAre("a", " ", " ", "1"));
  EXPECT_THAT(SplitWith(kQwenPattern, "don't I'M"), ElementsAre("don", "'t", " I", "'M"));
  EXPECT_THAT(SplitWith(kQwenPattern, "  lead"), ElementsAre(" ", " lead"));
  EXPECT_THAT(SplitWith(kQwenPattern, "trail  "), ElementsAre("trail", "  "));
  EXPECT_THAT(SplitWith(kQwenPattern, "hi!!! ok"), ElementsAre("hi", "!!!", " ok"));
  EXPECT_THAT(SplitWith(kQwenPattern, "x\r\ny"), ElementsAre("x", "\r\n", "y"));
  EXPECT_THAT(SplitWith(kQwenPattern, "):\n\n"), ElementsAre("):\n\n"));
  // Unicode whitespace (U+3000, U+00A0, \v) is \s for Oniguruma, unlike RE2's ASCII \s.
  EXPECT_THAT(SplitWith(kQwenPattern, "a\u3000b"), ElementsAre("a", "\u3000b"));
  EXPECT_THAT(SplitWith(kQwenPattern, "a \u00a0b"), ElementsAre("a", " ", "\u00a0b"));
  EXPECT_THAT(SplitWith(kQwenPattern, "a\v\vb"), ElementsAre("a", "\v", "\vb"));
  // U+0085 (NEL) too (Oniguruma's doc/RE lists it; JavaScript's \s leaves it out).
  EXPECT_THAT(SplitWith(kQwenPattern, "a\u0085\u0085b"), ElementsAre("a", "\u0085", "\u0085b"));
  EXPECT_THAT(SplitWith(kQwenPattern, "中文 text"), ElementsAre("中文", " text"));
}

TEST(SplitPatternTest, Llama3AndGpt2Patterns) {
  EXPECT_THAT(SplitWith(kLlama3Pattern, "12345 x"), ElementsAre("123", "45", " x"));
  EXPECT_THAT(SplitWith(kGpt2Pattern, "12345 x"), ElementsAre("12345", " x"));
  EXPECT_THAT(SplitWith(kGpt2Pattern, "a  b"), ElementsAre("a", " ", " b"));
  EXPECT_THAT(SplitWith(kGpt2Pattern, "it's  "), ElementsAre("it", "'s", "  "));
}

TEST(SplitPatternTest, RefusesOtherLookarounds) {
  EXPECT_EQ(ti::SplitPattern::FromRegex("a(?=b)").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ti::SplitPattern::FromRegex("(?<!a)b").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ti::SplitPattern::FromRegex("x|\\s+(?!\\S)|y").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(Utf8Test, LossyAndIncompleteTails) {
  EXPECT_EQ(ti::Utf8Lossy("a\xE4\xB8"), "a\uFFFD");
  EXPECT_EQ(ti::Utf8Lossy("\xE4\xB8\xE4\xB8\xAD"), "\uFFFD中");
  EXPECT_EQ(ti::Utf8Lossy("\xF0\x9F\x98"), "\uFFFD");
  EXPECT_EQ(ti::Utf8Lossy("\xC0\xAF"), "\uFFFD\uFFFD");            // overlong: C0 is never a lead
  EXPECT_EQ(ti::Utf8Lossy("\xED\xA0\x80"), "\uFFFD\uFFFD\uFFFD");  // surrogate
  EXPECT_EQ(ti::IncompleteUtf8Tail("ab\xF0\x9F\x98"), 3u);
  EXPECT_EQ(ti::IncompleteUtf8Tail("ab\xE4"), 1u);
  EXPECT_EQ(ti::IncompleteUtf8Tail("ab\xE4\xB8\xAD"), 0u);
  EXPECT_EQ(ti::IncompleteUtf8Tail("ab\xFF"), 0u);
  EXPECT_EQ(ti::IncompleteUtf8Tail("\xE4\x41"), 0u);
}

// ---- Errors ----

absl::Status FromJsonStatus(const std::string& tokenizer_json) {
  return Tokenizer::FromJson(tokenizer_json, "", "").status();
}

TEST(TokenizerErrorTest, MalformedFilesAreInvalidArgument) {
  auto expect_invalid = [](const std::string& text, const std::string& fragment) {
    const absl::Status status = FromJsonStatus(text);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr("tokenizer.json"));
    EXPECT_THAT(std::string(status.message()), HasSubstr(fragment));
  };
  expect_invalid("{\"model\": ", "not valid JSON");
  expect_invalid("[1, 2]", "not a JSON object");
  expect_invalid("{\"version\": \"1.0\"}", "\"model\"");
  expect_invalid(R"({"model": {"type": "WordPiece", "vocab": {"a": 0}}})", "WordPiece");
  expect_invalid(R"({"model": {"type": "Unigram", "vocab": [["a", 0.0]]}})", "Unigram");
  expect_invalid(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2},
                  "merges": ["a c"]}})",
                 "not in the vocabulary");
  expect_invalid(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": [["a", "b"]]}})",
                 "\"ab\"");
  expect_invalid(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a"]}})", "merge #0");
  expect_invalid(R"({"model": {"type": "BPE", "vocab": {"a": -4}}})", "model.vocab");
  expect_invalid(R"({"model": {"type": "BPE", "vocab": {"a": 0}},
                  "pre_tokenizer": {"type": "BertPreTokenizer"}})",
                 "BertPreTokenizer");
  expect_invalid(R"j({"model": {"type": "BPE", "vocab": {"a": 0}},
                  "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "a(?=b)"},
                                    "behavior": "Isolated"}})j",
                 "lookaround");
  expect_invalid(R"({"model": {"type": "BPE", "vocab": {"a": 0}},
                  "normalizer": {"type": "Precompiled", "precompiled_charsmap": ""}})",
                 "Precompiled");
  const absl::Status config =
      Tokenizer::FromJson(R"({"model": {"type": "BPE", "vocab": {}}})", "{not json", "").status();
  EXPECT_EQ(config.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(config.message()), HasSubstr("tokenizer_config.json"));
}

// Copying or walking a JSON value recurses once per level of nesting: a crafted tokenizer.json of
// 2 MB nests a million deep, and any copy or unbounded recursion over it overflows the stack
// (a crash instead of one clear error). Every member the tokenizer reads is tried that deep.
TEST(TokenizerErrorTest, DeeplyNestedMembersAreRefusedWithoutExhaustingTheStack) {
  constexpr int kDepth = 1000000;
  const std::string deep = std::string(kDepth, '[') + std::string(kDepth, ']');
  const std::string model = R"("model": {"type": "BPE", "vocab": {"a": 0}})";
  auto expect_invalid = [&](const std::string& members, const std::string& fragment) {
    const absl::Status status = FromJsonStatus(absl::StrCat("{", model, ", ", members, "}"));
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument)
        << status.ToString().substr(0, 200);
    EXPECT_THAT(std::string(status.message()).substr(0, 300), HasSubstr(fragment));
  };
  for (const char* key :
       {"added_tokens", "normalizer", "pre_tokenizer", "decoder", "post_processor"}) {
    SCOPED_TRACE(key);
    expect_invalid(absl::StrCat("\"", key, "\": [", deep, "]"), "tokenizer.json");
  }
  expect_invalid(
      absl::StrCat(R"("normalizer": {"type": "Replace", "content": "", "pattern": )", deep, "}"),
      "tokenizer.json");
  expect_invalid(absl::StrCat(R"("pre_tokenizer": {"type": "Split", "behavior": "Isolated",)",
                              R"( "pattern": )", deep, "}"),
                 "tokenizer.json");
  expect_invalid(
      absl::StrCat(R"("decoder": {"type": "Replace", "content": "", "pattern": )", deep, "}"),
      "Replace decoder");
  // Sequences of Sequences: a few levels load, a hundred thousand are refused.
  auto nested = [](const std::string& member, const std::string& list, int levels) {
    std::string text;
    for (int i = 0; i < levels; ++i)
      absl::StrAppend(&text, R"({"type": "Sequence", ")", list, R"(": [)");
    for (int i = 0; i < levels; ++i) text += "]}";
    return absl::StrCat("\"", member, "\": ", text);
  };
  for (auto [member, list] : {std::pair{"normalizer", "normalizers"},
                              {"pre_tokenizer", "pretokenizers"},
                              {"decoder", "decoders"},
                              {"post_processor", "processors"}}) {
    SCOPED_TRACE(member);
    EXPECT_TRUE(FromJsonStatus(absl::StrCat("{", model, ", ", nested(member, list, 3), "}")).ok());
    expect_invalid(nested(member, list, 100000), "nested more than");
  }
  // A field of the wrong type is refused, not thrown on.
  expect_invalid(R"("decoder": {"type": "Strip", "content": " ", "start": "x", "stop": 0})",
                 "'start' must be a count");
}

TEST(TokenizerErrorTest, LoadFromDirNamesFiles) {
  std::string pattern = ::testing::TempDir() + "tokenizer_test_XXXXXX";
  ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
  const std::string dir = pattern;
  auto missing = Tokenizer::LoadFromDir(dir);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr(dir + "/tokenizer.json"));
  std::ofstream(dir + "/tokenizer.json") << R"({"model": {"type": "WordPiece"}})";
  auto bad = Tokenizer::LoadFromDir(dir);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr(dir + "/tokenizer.json"));
  std::ofstream(dir + "/tokenizer.json") << ByteLevelTokenizerJson().dump();
  std::ofstream(dir + "/generation_config.json") << R"({"eos_token_id": 300})";
  auto good = Tokenizer::LoadFromDir(dir);
  ASSERT_TRUE(good.ok()) << good.status();
  EXPECT_THAT((*good)->eos_ids(), ElementsAre(300));
  std::filesystem::remove_all(dir);
}

TEST(TokenizerErrorTest, LoadForModelRefusesIdsTheModelLacks) {
  std::string pattern = ::testing::TempDir() + "tokenizer_test_XXXXXX";
  ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
  const std::string dir = pattern;
  auto none = Tokenizer::LoadForModel(dir, 512);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_EQ(*none, nullptr);  // no tokenizer.json: a model driven by ids
  std::ofstream(dir + "/tokenizer.json") << ByteLevelTokenizerJson().dump();
  auto fits = Tokenizer::LoadForModel(dir, 302);  // largest id 301
  ASSERT_TRUE(fits.ok()) << fits.status();
  EXPECT_NE(*fits, nullptr);
  auto beyond = Tokenizer::LoadForModel(dir, 301);
  EXPECT_EQ(beyond.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(beyond.status().message()), HasSubstr("token id 301"));
  EXPECT_THAT(std::string(beyond.status().message()), HasSubstr(dir + "/tokenizer.json"));
  std::ofstream(dir + "/tokenizer.json") << "{";
  EXPECT_EQ(Tokenizer::LoadForModel(dir, 512).status().code(), absl::StatusCode::kInvalidArgument);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace mpa
