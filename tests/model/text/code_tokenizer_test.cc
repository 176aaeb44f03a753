// The byte-level BPE of our C-source model (tools/code_lm/bpe.py trains it on the train split of
// the Linux sources): our C++ tokenizer loads its tokenizer.json, gives exactly the ids that
// bpe.py's encoder gave for a held-out document (tests/fixtures/code_lm/heldout_sample.c, from a
// directory never trained on), and decodes them back to the same bytes.
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "model/text/tokenizer.h"

namespace mpa {
namespace {

const std::string kDir = MPA_SOURCE_DIR "/tests/fixtures/code_lm";

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// uint16 little-endian ids.
std::vector<int32_t> ReadIds(const std::string& path) {
  const std::string bytes = ReadBytes(path);
  std::vector<int32_t> ids;
  for (size_t i = 0; i + 1 < bytes.size(); i += 2) {
    ids.push_back(static_cast<unsigned char>(bytes[i]) |
                  (static_cast<unsigned char>(bytes[i + 1]) << 8));
  }
  return ids;
}

class CodeTokenizerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto loaded = Tokenizer::LoadFromDir(kDir);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    tokenizer_ = std::move(loaded).value();
  }
  std::unique_ptr<Tokenizer> tokenizer_;
};

TEST_F(CodeTokenizerTest, VocabularyAndSpecialToken) {
  EXPECT_EQ(tokenizer_->vocab_size(), 8192);
  EXPECT_TRUE(tokenizer_->IsSpecial(0));
  EXPECT_FALSE(tokenizer_->IsSpecial(1));
  EXPECT_EQ(tokenizer_->Encode("<|endoftext|>", false), std::vector<int32_t>{0});
  EXPECT_FALSE(tokenizer_->bos_id().has_value());
  // Ids 1..256 are the bytes 0..255.
  EXPECT_EQ(tokenizer_->TokenBytes(1 + 'A'), "A");
  EXPECT_EQ(tokenizer_->TokenBytes(1 + 0xff), std::string(1, '\xff'));
}

TEST_F(CodeTokenizerTest, HeldOutSampleGivesTheTrainingScriptsIds) {
  const std::string text = ReadBytes(kDir + "/heldout_sample.c");
  const std::vector<int32_t> want = ReadIds(kDir + "/heldout_sample.ids");
  ASSERT_GT(text.size(), 30000u);
  ASSERT_GT(want.size(), 10000u);
  const std::vector<int32_t> got = tokenizer_->Encode(text, /*add_special_tokens=*/false);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    ASSERT_EQ(got[i], want[i]) << "first difference at token " << i << " ("
                               << tokenizer_->TokenBytes(want[i]) << " expected, got "
                               << tokenizer_->TokenBytes(got[i]) << ")";
  }
}

TEST_F(CodeTokenizerTest, HeldOutSampleRoundTripsByteForByte) {
  const std::string text = ReadBytes(kDir + "/heldout_sample.c");
  ASSERT_NE(text.find("S\xC3\xB6ren"), std::string::npos);  // a non-ASCII character is in it
  const std::vector<int32_t> ids = tokenizer_->Encode(text, false);
  EXPECT_EQ(tokenizer_->Decode(ids, false), text);
  // The streaming decoder too, and TokenBytes concatenated.
  IncrementalDecoder stream(*tokenizer_, false);
  std::string streamed, concatenated;
  for (int32_t id : ids) {
    streamed += stream.Push(id);
    concatenated += tokenizer_->TokenBytes(id);
  }
  streamed += stream.Flush();
  EXPECT_EQ(streamed, text);
  EXPECT_EQ(concatenated, text);
  // C is compressed: fewer than one token per 2.5 bytes.
  EXPECT_LT(ids.size() * 5, text.size() * 2);
}

TEST_F(CodeTokenizerTest, AwkwardTextsRoundTrip) {
  const std::vector<std::string> texts = {
      "",
      "\n",
      "\t\t\tx = y;\r\n\r\n",
      "static int  foo_bar2(void)\n{\n\treturn 0x1f;\t/* done */\n}\n",
      "a\xC2\xA0"
      "b\xE2\x80\x83"
      "c",                                           // no-break space, em space
      "\xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\x98\x80!",  // CJK and an emoji
      "    \n   ",
      "<|endoftext|>int x;<|endoftext|>",
  };
  for (const std::string& text : texts) {
    EXPECT_EQ(tokenizer_->Decode(tokenizer_->Encode(text, false), false), text) << "text: " << text;
  }
}

}  // namespace
}  // namespace mpa
