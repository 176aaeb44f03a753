// The real engine: an mpa::Model and, where the model folder has one, its tokenizer.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "model/model.h"
#include "model/tokenizer.h"
#include "server/engine.h"

namespace mpa::server {

class ModelEngine : public Engine {
 public:
  // Loads dir (config.json, weights, tokenizer.json if present: without one the engine works in
  // token ids only).
  static absl::StatusOr<std::unique_ptr<ModelEngine>> Load(const std::string& dir,
                                                           const ModelOptions& options);

  const EngineInfo& info() const override { return info_; }
  absl::StatusOr<std::vector<int32_t>> Encode(absl::string_view text,
                                              bool add_special_tokens) const override;
  std::unique_ptr<TextStream> NewTextStream() const override;
  std::unique_ptr<EngineSequence> NewSequence(const AttentionOptions& options) override;
  absl::Status Prefill(EngineSequence& seq, absl::Span<const int32_t> tokens,
                       float* logits) override;
  absl::Status Decode(absl::Span<EngineSequence* const> seqs, absl::Span<const int32_t> tokens,
                      float* logits) override;
  int64_t free_kv_blocks() const override { return model_->kv_pool().free_blocks(); }

 private:
  ModelEngine(std::unique_ptr<Model> model, std::unique_ptr<Tokenizer> tokenizer, EngineInfo info)
      : model_(std::move(model)), tokenizer_(std::move(tokenizer)), info_(std::move(info)) {}

  std::unique_ptr<Model> model_;
  std::unique_ptr<Tokenizer> tokenizer_;  // may be null
  EngineInfo info_;
};

}  // namespace mpa::server
