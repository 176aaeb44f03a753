// The checks a step of either transformer (Model on the CPU, CudaModel on the GPU) makes before it
// touches any state: token ids inside the vocabulary, the context inside the model's window, and
// a decode batch that is well formed. One set of rules and messages for both engines.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "model/config/model_config.h"

namespace mpa {

// `tokens` appended to a sequence that holds `cached_tokens`: InvalidArgument naming the first id
// outside [0, vocab_size) and its index, or a context (cached + new) past
// max_position_embeddings.
absl::Status CheckNewTokens(const ModelConfig& config, int64_t cached_tokens,
                            absl::Span<const int32_t> tokens);

// The shape of a decode batch: InvalidArgument unless there is one token per sequence and, with
// max_batch > 0, at most max_batch sequences.
absl::Status CheckDecodeBatchSize(size_t num_sequences, size_t num_tokens, int max_batch = 0);

// InvalidArgument: the same sequence twice in one decode batch.
absl::Status RepeatedSequenceError();

// A decode batch: one token for each sequence (any type with num_tokens()), at most max_batch
// sequences (max_batch > 0), no sequence twice, every token valid for its sequence
// (CheckNewTokens). An empty batch passes.
template <typename Sequence>
absl::Status CheckDecodeBatch(const ModelConfig& config, absl::Span<Sequence* const> seqs,
                              absl::Span<const int32_t> tokens, int max_batch = 0) {
  if (absl::Status s = CheckDecodeBatchSize(seqs.size(), tokens.size(), max_batch); !s.ok()) {
    return s;
  }
  for (size_t i = 0; i < seqs.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      if (seqs[i] == seqs[j]) return RepeatedSequenceError();
    }
    if (absl::Status s = CheckNewTokens(config, seqs[i]->num_tokens(), tokens.subspan(i, 1));
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

}  // namespace mpa
