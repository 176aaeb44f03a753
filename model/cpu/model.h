// The transformer (Llama / Qwen2 / Qwen3) on the CPU: prefill of any number of tokens, and a
// batched decode step over many sequences. Attention goes through an AttentionBackend.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "model/attention/attention_backend.h"
#include "model/config/model_config.h"
#include "model/io/weights.h"
#include "model/runtime/kv_cache.h"
#include "model/runtime/rope.h"

namespace mpa {

struct ModelOptions {
  int64_t max_kv_tokens = 1 << 20;  // KV capacity over all sequences, in tokens
  int kv_block_tokens = 16;
  bool use_blas = true;  // false: the plain reference matrix products
  int threads = 0;       // BLAS threads (0: BLAS default)
};

class Model {
 public:
  static absl::StatusOr<std::unique_ptr<Model>> Load(const std::string& dir,
                                                     const ModelOptions& options);
  static absl::StatusOr<std::unique_ptr<Model>> FromWeights(const ModelConfig& config,
                                                            Weights weights,
                                                            const ModelOptions& options);
  ~Model();

  const ModelConfig& config() const { return config_; }
  const Rope& rope() const { return rope_; }
  KvBlockPool& kv_pool() { return *pool_; }

  std::unique_ptr<SequenceState> NewSequence(const AttentionOptions& options);

  // Appends `tokens` to the sequence (dense causal attention), writing the logits of the last
  // new position to logits[vocab]. InvalidArgument if an id is out of range or the context would
  // pass max_position_embeddings; ResourceExhausted if the KV pool is full.
  absl::Status Prefill(SequenceState& seq, absl::Span<const int32_t> tokens, float* logits);

  // A new sequence holding `source`'s tokens and KV cache, attending with `options`, in the state
  // a prefill of those tokens would have left it (clusters or Quest pages built as at the end of
  // a prefill; the KV rows are source's as they are). Prefill is dense in every mode, so one
  // prefill can serve several modes (mpa_eval). ResourceExhausted if the KV pool is full.
  absl::StatusOr<std::unique_ptr<SequenceState>> CloneSequence(const SequenceState& source,
                                                               const AttentionOptions& options);

  // One token for each sequence; logits[batch, vocab]. Attention per sequence follows its
  // AttentionOptions.
  absl::Status Decode(absl::Span<SequenceState* const> seqs, absl::Span<const int32_t> tokens,
                      float* logits);

 private:
  Model(const ModelConfig& config, Weights weights, const ModelOptions& options);
  void Linear(const float* x, const std::vector<float>& w, const std::vector<float>& bias,
              int64_t rows, int64_t in, int64_t out, float* y) const;
  // Runs all layers over `rows` new tokens; x [rows, hidden] in, final hidden states out.
  void ForwardRows(absl::Span<SequenceState* const> seqs, const int* rows_per_seq, float* x,
                   int64_t rows, bool prefill);
  void Logits(const float* x, int64_t rows, float* logits) const;

  ModelConfig config_;
  Weights weights_;
  ModelOptions options_;
  Rope rope_;
  std::unique_ptr<KvBlockPool> pool_;
  std::unique_ptr<AttentionBackend> backend_;
};

}  // namespace mpa
