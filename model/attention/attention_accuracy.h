// How far a sparse attention mode moves the model's next-token distribution from dense
// attention, measured along the dense greedy trajectory: every mode is fed the tokens dense
// attention chose (teacher forcing), so each step compares the same context.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "model/attention/attention_backend.h"
#include "model/cpu/model.h"

namespace mpa {

struct AccuracyResult {
  AttentionOptions options;
  int steps_compared = 0;       // steps in which the mode attended sparsely
  double top1_agreement = 0.0;  // fraction of compared steps with the dense argmax
  double mean_kl = 0.0;         // mean KL(dense || mode) of the next-token distribution, nats
  double max_kl = 0.0;
  double sparsity = 0.0;  // fraction of (layer, KV head, token) reads done exactly
};

// Prefills `prompt` and generates `steps` tokens greedily with dense attention; each of `modes`
// follows the same tokens. Steps are compared from the first one in which the clustered region
// reaches min_clustered_tokens (before it every mode is dense by design).
absl::StatusOr<std::vector<AccuracyResult>> MeasureAgainstDense(
    Model& model, const std::vector<int32_t>& prompt, int steps,
    const std::vector<AttentionOptions>& modes, std::vector<int32_t>* dense_tokens = nullptr);

}  // namespace mpa
