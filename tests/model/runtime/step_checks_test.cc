#include "model/runtime/step_checks.h"

#include <cstdint>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/config/model_config.h"

namespace mpa {
namespace {

using ::testing::HasSubstr;

ModelConfig SmallConfig() {
  ModelConfig c;
  c.vocab_size = 100;
  c.max_position_embeddings = 64;
  return c;
}

// Stands in for SequenceState / CudaSequence: CheckDecodeBatch needs only num_tokens().
struct FakeSequence {
  int cached = 0;
  int num_tokens() const { return cached; }
};

TEST(CheckNewTokensTest, AcceptsIdsInsideTheVocabularyUpToTheContextWindow) {
  const ModelConfig c = SmallConfig();
  EXPECT_TRUE(CheckNewTokens(c, 0, {0, 1, 99}).ok());
  EXPECT_TRUE(CheckNewTokens(c, 63, {5}).ok());  // exactly the window
  EXPECT_TRUE(CheckNewTokens(c, 64, {}).ok());
}

TEST(CheckNewTokensTest, NamesTheFirstIdOutsideTheVocabularyAndItsIndex) {
  const ModelConfig c = SmallConfig();
  for (int32_t bad : {-1, 100}) {
    const absl::Status s = CheckNewTokens(c, 0, {3, bad, -7});
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_THAT(s.message(), HasSubstr("token id " + std::to_string(bad) + " at index 1"));
    EXPECT_THAT(s.message(), HasSubstr("outside the vocabulary [0, 100)"));
  }
}

TEST(CheckNewTokensTest, ContextPastTheWindowSaysCachedAndNew) {
  const ModelConfig c = SmallConfig();
  const absl::Status s = CheckNewTokens(c, 60, {1, 2, 3, 4, 5});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_EQ(s.message(),
            "context of 65 tokens (60 cached + 5 new) exceeds the model's context window of 64 "
            "tokens");
}

TEST(CheckNewTokensTest, VocabularyIsCheckedBeforeTheWindow) {
  const ModelConfig c = SmallConfig();
  const absl::Status s = CheckNewTokens(c, 64, {100});
  EXPECT_THAT(s.message(), HasSubstr("token id 100"));
}

TEST(CheckDecodeBatchTest, AcceptsAWellFormedBatchAndAnEmptyOne) {
  const ModelConfig c = SmallConfig();
  FakeSequence a{10}, b{63};
  std::vector<FakeSequence*> seqs = {&a, &b};
  EXPECT_TRUE(CheckDecodeBatch<FakeSequence>(c, seqs, {1, 2}).ok());
  EXPECT_TRUE(CheckDecodeBatch<FakeSequence>(c, seqs, {1, 2}, /*max_batch=*/2).ok());
  EXPECT_TRUE(CheckDecodeBatch<FakeSequence>(c, {}, {}).ok());
}

TEST(CheckDecodeBatchTest, OneTokenPerSequence) {
  const ModelConfig c = SmallConfig();
  FakeSequence a, b;
  std::vector<FakeSequence*> seqs = {&a, &b};
  const absl::Status s = CheckDecodeBatch<FakeSequence>(c, seqs, {1, 2, 3});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_EQ(s.message(), "decode got 2 sequences but 3 tokens");
}

TEST(CheckDecodeBatchTest, MaxBatchWhenGivenAndNoLimitOtherwise) {
  const ModelConfig c = SmallConfig();
  FakeSequence a, b, d;
  std::vector<FakeSequence*> seqs = {&a, &b, &d};
  const absl::Status s = CheckDecodeBatch<FakeSequence>(c, seqs, {1, 2, 3}, /*max_batch=*/2);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_EQ(s.message(), "decode batch of 3 exceeds max_batch 2");
  EXPECT_TRUE(CheckDecodeBatch<FakeSequence>(c, seqs, {1, 2, 3}, /*max_batch=*/0).ok());
  // The count mismatch is reported first.
  EXPECT_THAT(CheckDecodeBatch<FakeSequence>(c, seqs, {1, 2}, 2).message(),
              HasSubstr("decode got 3 sequences but 2 tokens"));
}

TEST(CheckDecodeBatchTest, ASequenceTwiceIsRefused) {
  const ModelConfig c = SmallConfig();
  FakeSequence a, b;
  std::vector<FakeSequence*> seqs = {&a, &b, &a};
  const absl::Status s = CheckDecodeBatch<FakeSequence>(c, seqs, {1, 2, 3});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_EQ(s.message(), "a sequence appears twice in a batch");
}

TEST(CheckDecodeBatchTest, EachTokenIsCheckedAgainstItsOwnSequence) {
  const ModelConfig c = SmallConfig();
  FakeSequence short_one{5}, full{64};
  std::vector<FakeSequence*> seqs = {&short_one, &full};
  const absl::Status window = CheckDecodeBatch<FakeSequence>(c, seqs, {1, 2});
  EXPECT_EQ(window.code(), absl::StatusCode::kInvalidArgument) << window;
  EXPECT_THAT(window.message(), HasSubstr("(64 cached + 1 new)"));
  std::vector<FakeSequence*> fine = {&short_one};
  const absl::Status vocab = CheckDecodeBatch<FakeSequence>(c, fine, {100});
  EXPECT_THAT(vocab.message(), HasSubstr("token id 100 at index 0"));
}

}  // namespace
}  // namespace mpa
