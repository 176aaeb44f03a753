#include "model/runtime/step_checks.h"

#include "absl/strings/str_cat.h"

namespace mpa {

absl::Status CheckNewTokens(const ModelConfig& config, int64_t cached_tokens,
                            absl::Span<const int32_t> tokens) {
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= config.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", tokens[i], " at index ", i,
                                                     " is outside the vocabulary [0, ",
                                                     config.vocab_size, ")"));
    }
  }
  const int64_t total = cached_tokens + static_cast<int64_t>(tokens.size());
  if (total > config.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat(
        "context of ", total, " tokens (", cached_tokens, " cached + ", tokens.size(),
        " new) exceeds the model's context window of ", config.max_position_embeddings, " tokens"));
  }
  return absl::OkStatus();
}

absl::Status CheckDecodeBatchSize(size_t num_sequences, size_t num_tokens, int max_batch) {
  if (num_sequences != num_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("decode got ", num_sequences, " sequences but ", num_tokens, " tokens"));
  }
  if (max_batch > 0 && num_sequences > static_cast<size_t>(max_batch)) {
    return absl::InvalidArgumentError(
        absl::StrCat("decode batch of ", num_sequences, " exceeds max_batch ", max_batch));
  }
  return absl::OkStatus();
}

absl::Status RepeatedSequenceError() {
  return absl::InvalidArgumentError("a sequence appears twice in a batch");
}

}  // namespace mpa
