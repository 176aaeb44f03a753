// The CPU engine: an mpa::Model and, where the model folder has one, its tokenizer.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "model/cpu/model.h"
#include "server/tokenized_engine.h"

namespace mpa::server {

class ModelEngine : public TokenizedEngine {
 public:
  // Loads dir (config.json, weights, tokenizer.json if present: without one the engine works in
  // token ids only).
  static absl::StatusOr<std::unique_ptr<ModelEngine>> Load(const std::string& dir,
                                                           const ModelOptions& options);

  std::unique_ptr<EngineSequence> NewSequence(const AttentionOptions& options) override;
  absl::Status Prefill(EngineSequence& seq, absl::Span<const int32_t> tokens,
                       float* logits) override;
  absl::Status Decode(absl::Span<EngineSequence* const> seqs, absl::Span<const int32_t> tokens,
                      float* logits) override;
  int64_t free_kv_blocks() const override { return model_->kv_pool().free_blocks(); }

 private:
  ModelEngine(std::unique_ptr<Model> model, EngineText text)
      : TokenizedEngine(std::move(text)), model_(std::move(model)) {}

  std::unique_ptr<Model> model_;
};

}  // namespace mpa::server
