#include "model/runtime/sampler.h"

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace mpa {
namespace {

// A temperature so small that 1/temperature overflows fp32 must still act as (nearly) greedy:
// the draw may only land on the top logit, never on a NaN-weighted candidate.
TEST(SamplerTest, DenormalTemperaturePicksTheTopLogit) {
  std::mt19937 rng(std::random_device{}());
  std::normal_distribution<float> normal;
  const int vocab = 97;
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<float> logits(vocab);
    for (float& x : logits) x = normal(rng);
    const int top = static_cast<int>(rng() % vocab);
    logits[top] = 10.0f;
    SamplingParams params;
    params.temperature = 1e-39f;  // finite, > 0, passes Validate; 1/t is inf in fp32
    params.seed = rng();
    ASSERT_TRUE(params.Validate().ok());
    Sampler sampler(params);
    float logprob = 0.0f;
    EXPECT_EQ(sampler.Sample(logits.data(), vocab, &logprob), top) << "trial " << trial;
    EXPECT_TRUE(std::isfinite(logprob));
  }
}

// Two tied top logits at a tiny temperature: both keep equal weight, so over many draws both
// appear and nothing else does.
TEST(SamplerTest, DenormalTemperatureKeepsTiesEqual) {
  const int vocab = 16;
  std::vector<float> logits(vocab, -1.0f);
  logits[3] = 2.0f;
  logits[11] = 2.0f;
  SamplingParams params;
  params.temperature = 1e-40f;
  params.seed = std::random_device{}();
  Sampler sampler(params);
  int seen3 = 0, seen11 = 0;
  for (int i = 0; i < 400; ++i) {
    const int id = sampler.Sample(logits.data(), vocab);
    ASSERT_TRUE(id == 3 || id == 11) << id;
    (id == 3 ? seen3 : seen11)++;
  }
  EXPECT_GT(seen3, 100);
  EXPECT_GT(seen11, 100);
}

// NaN logits (a broken row) rank below every number, in greedy and in sampling, as the device
// sampler ranks them; they are never chosen while a finite logit exists.
TEST(SamplerTest, NaNLogitsAreNeverChosen) {
  std::mt19937 rng(std::random_device{}());
  std::normal_distribution<float> normal;
  const int vocab = 64;
  for (int trial = 0; trial < 50; ++trial) {
    std::vector<float> logits(vocab);
    for (float& x : logits) x = normal(rng);
    for (int i = 0; i < vocab; ++i) {
      if (rng() % 3 == 0) logits[i] = std::numeric_limits<float>::quiet_NaN();
    }
    logits[0] = std::numeric_limits<float>::quiet_NaN();  // greedy must not stop at the front
    const int finite = static_cast<int>(1 + rng() % (vocab - 1));
    logits[finite] = normal(rng);
    for (const SamplingParams& params :
         {SamplingParams{0.0f, 0, 1.0f, rng()}, SamplingParams{1.0f, 0, 1.0f, rng()},
          SamplingParams{0.7f, 5, 0.9f, rng()}, SamplingParams{1.0f, 1000, 0.01f, rng()}}) {
      Sampler sampler(params);
      const int id = sampler.Sample(logits.data(), vocab);
      ASSERT_GE(id, 0);
      ASSERT_LT(id, vocab);
      EXPECT_FALSE(std::isnan(logits[id]))
          << "trial " << trial << " temperature " << params.temperature << " chose " << id;
    }
  }
}

TEST(SamplerTest, TopKAboveVocabAndTinyTopPStayInRange) {
  std::mt19937 rng(std::random_device{}());
  std::normal_distribution<float> normal;
  const int vocab = 10;
  std::vector<float> logits(vocab);
  for (float& x : logits) x = normal(rng);
  const int top = static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  SamplingParams params{1.0f, 1 << 20, 1e-7f, rng()};
  ASSERT_TRUE(params.Validate().ok());
  Sampler sampler(params);
  for (int i = 0; i < 50; ++i) EXPECT_EQ(sampler.Sample(logits.data(), vocab), top);
}

}  // namespace
}  // namespace mpa
