// The transformer on one NVIDIA GPU: BF16 weights on the device, projections and MLP through
// cuBLAS (BF16 in, FP32 accumulate), the residual stream in FP32, a paged BF16 KV cache, and the
// kernels of kernels/cuda for everything else. Same shape of interface as Model (model.h):
// Load / FromWeights / NewSequence / Prefill / Decode batched over sequences, plus seeded random
// weights generated on the device for benchmarks at real shapes (no checkpoint needed).
//
// Attention is dense (the multipole path is not on the GPU yet). Not thread-safe: one engine
// thread drives it, as with Model. A CudaModel must outlive its sequences.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "model/model_config.h"
#include "model/weights.h"

namespace mpa {

struct CudaModelOptions {
  int64_t max_kv_tokens = 1 << 16;  // KV capacity over all sequences, in tokens
  int page_size = 16;               // tokens per KV page, a power of two
  int max_batch = 64;               // sequences per Decode call
  int max_prefill_chunk = 4096;     // prompt tokens per forward pass (longer prompts are chunked)
  int device = 0;
};

class CudaModel;

// A sequence's pages of the device KV cache and its token ids.
class CudaSequence {
 public:
  ~CudaSequence();
  CudaSequence(const CudaSequence&) = delete;
  CudaSequence& operator=(const CudaSequence&) = delete;

  int num_tokens() const { return static_cast<int>(tokens_.size()); }
  const std::vector<int32_t>& tokens() const { return tokens_; }

 private:
  friend class CudaModel;
  explicit CudaSequence(CudaModel* model) : model_(model) {}
  CudaModel* model_;
  std::vector<int32_t> pages_;  // page ids in the model's KV pool, in token order
  std::vector<int32_t> tokens_;
};

class CudaModel {
 public:
  // Reads config.json and the safetensors weights of `dir` and converts them to BF16 on the device.
  static absl::StatusOr<std::unique_ptr<CudaModel>> Load(const std::string& dir,
                                                         const CudaModelOptions& options);
  static absl::StatusOr<std::unique_ptr<CudaModel>> FromWeights(const ModelConfig& config,
                                                                const Weights& weights,
                                                                const CudaModelOptions& options);
  // Seeded random weights drawn on the device (matrices N(0, 0.02^2), norm weights N(1, 0.02^2)).
  static absl::StatusOr<std::unique_ptr<CudaModel>> Random(const ModelConfig& config, uint64_t seed,
                                                           const CudaModelOptions& options);
  ~CudaModel();

  const ModelConfig& config() const { return config_; }
  int64_t free_kv_tokens() const {
    return static_cast<int64_t>(free_pages_.size()) * options_.page_size;
  }
  // Bytes of weights a decode step reads (every matrix once, one embedding row per token).
  int64_t weight_bytes_per_step() const { return weight_bytes_per_step_; }

  std::unique_ptr<CudaSequence> NewSequence();

  // Appends `tokens` (causal attention, chunked by max_prefill_chunk) and writes the logits of
  // the last new position to logits[vocab] (host; may be null: they stay on the device).
  // InvalidArgument for ids out of range or a context past max_position_embeddings;
  // ResourceExhausted if the KV pool is full; Internal for CUDA/cuBLAS failures.
  absl::Status Prefill(CudaSequence& seq, absl::Span<const int32_t> tokens, float* logits);

  // One token for each sequence; logits[batch, vocab] on the host (may be null).
  absl::Status Decode(absl::Span<CudaSequence* const> seqs, absl::Span<const int32_t> tokens,
                      float* logits);

  // Greedy ids (argmax, lowest id on ties) of the logits the last Prefill/Decode left on the
  // device: one per row (1 after Prefill, batch after Decode).
  absl::StatusOr<std::vector<int32_t>> GreedyIds();

  // Benchmarks only: appends `count` tokens (id 0) whose cached keys and values are whatever the
  // pool holds (random after FillKvCacheRandom), without running the model, so decode can be
  // timed at long contexts without a long prefill first.
  absl::Status AppendUncomputedContext(CudaSequence& seq, int count);
  // Fills the whole KV pool with seeded N(0, 1) values.
  absl::Status FillKvCacheRandom(uint64_t seed);

  // Waits for the device (benchmarks time whole steps).
  absl::Status Synchronize();

 private:
  friend class CudaSequence;
  struct Impl;
  CudaModel(const ModelConfig& config, const CudaModelOptions& options);
  absl::Status Init();
  absl::Status UploadWeights(const Weights& weights);
  absl::Status RandomizeWeights(uint64_t seed);
  absl::Status CheckTokens(const CudaSequence& seq, absl::Span<const int32_t> tokens) const;
  absl::Status Reserve(CudaSequence& seq, int count);
  void ReleasePages(std::vector<int32_t>& pages);
  // Runs every layer over `rows` new tokens whose ids, positions and cache slots are already on
  // the device; then the logits of `logit_rows` rows starting at `first_logit_row`.
  absl::Status Forward(int rows, bool prefill, int batch, int max_len, int max_new,
                       int first_logit_row, int logit_rows);

  ModelConfig config_;
  CudaModelOptions options_;
  std::vector<int32_t> free_pages_;
  int max_pages_per_seq_ = 0;
  int last_logit_rows_ = 0;
  int64_t weight_bytes_per_step_ = 0;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mpa
