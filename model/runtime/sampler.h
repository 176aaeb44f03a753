// Next-token choice from logits: greedy, or seeded temperature / top-k / top-p sampling.
#pragma once

#include <cstdint>
#include <random>

#include "absl/status/status.h"

namespace mpa {

struct SamplingParams {
  float temperature = 0.0f;  // 0: greedy (argmax, lowest id on ties)
  int top_k = 0;             // 0: off
  float top_p = 1.0f;        // 1: off
  uint64_t seed = 0;
  absl::Status Validate() const;
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  // logits[vocab]; returns the chosen id. If logprob is given, the chosen id's log-probability
  // under the unmodified distribution (softmax of the raw logits).
  int32_t Sample(const float* logits, int vocab, float* logprob = nullptr);

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
};

// log softmax(logits)[id].
float LogProbOf(const float* logits, int vocab, int32_t id);

}  // namespace mpa
