// The GPU engine: an mpa::CudaModel (BF16 weights, paged BF16 KV cache on one NVIDIA GPU) with
// the model folder's tokenizer. Every generation draws its tokens on the device (seeded by the
// session's seed and its length, not the host sampler's stream), with its logprobs computed there
// when asked: no step copies batch x vocab logits to the host. Attention: dense, multipole,
// exact-only and quest (CheckAttention names what the GPU does not run: two levels, pre-RoPE
// centroids), refused at admission and, for the server's default, at start-up.
// Built only with MPA_WITH_CUDA.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "model/cuda/cuda_model.h"
#include "server/tokenized_engine.h"

namespace mpa::server {

class CudaModelEngine : public TokenizedEngine {
 public:
  // Loads dir (config.json, weights, tokenizer.json if present) onto GPU options.device.
  // FailedPrecondition when the machine has no CUDA device (or not that one).
  static absl::StatusOr<std::unique_ptr<CudaModelEngine>> Load(const std::string& dir,
                                                               const CudaModelOptions& options);

  std::unique_ptr<EngineSequence> NewSequence(const AttentionOptions& options) override;
  absl::Status Prefill(EngineSequence& seq, absl::Span<const int32_t> tokens,
                       float* logits) override;
  absl::Status Decode(absl::Span<EngineSequence* const> seqs, absl::Span<const int32_t> tokens,
                      float* logits) override;
  // The KV pool's free pages (a block is a page: info().kv_block_tokens is the page size).
  int64_t free_kv_blocks() const override {
    return model_->free_kv_tokens() / info_.kv_block_tokens;
  }
  std::pair<int64_t, int64_t> attention_state_bytes() const override {
    return {model_->attention_state_budget().used(), model_->attention_state_budget().limit()};
  }
  absl::Status CheckAttention(const AttentionOptions& options) const override {
    return model_->SupportsAttention(options);
  }
  bool SamplesOnDevice() const override { return true; }
  absl::Status DeviceStatus() override { return model_->DeviceStatus(); }
  absl::Status PrefillAndSample(EngineSequence& seq, absl::Span<const int32_t> tokens,
                                const SamplingParams& params, int32_t* id, float* logprob) override;
  absl::Status DecodeAndSample(absl::Span<EngineSequence* const> seqs,
                               absl::Span<const int32_t> tokens,
                               absl::Span<const SamplingParams> params, int32_t* ids, float* logits,
                               float* logprobs) override;

 private:
  CudaModelEngine(std::unique_ptr<CudaModel> model, EngineText text)
      : TokenizedEngine(std::move(text)), model_(std::move(model)) {}

  std::unique_ptr<CudaModel> model_;
};

}  // namespace mpa::server
