// The text side every real engine shares: the model folder's tokenizer (when it has one), the
// incremental detokenizer behind TextStream, and the EngineInfo fields that come from the
// checkpoint (name, architecture, vocabulary, context, BOS/EOS). Engines derive from it and add
// their sequences and KV facts.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/config/model_config.h"
#include "model/text/tokenizer.h"
#include "server/engine.h"

namespace mpa::server {

// What LoadEngineText reads from a model folder.
struct EngineText {
  std::unique_ptr<Tokenizer> tokenizer;  // null when the folder has no tokenizer.json
  EngineInfo info;                       // kv_* and device left for the engine to fill
};

// Loads dir's tokenizer.json if present (without one the engine works in token ids only) and
// fills the checkpoint's part of EngineInfo from `config`.
absl::StatusOr<EngineText> LoadEngineText(const std::string& dir, const ModelConfig& config);

class TokenizedEngine : public Engine {
 public:
  const EngineInfo& info() const override { return info_; }
  absl::StatusOr<std::vector<int32_t>> Encode(absl::string_view text,
                                              bool add_special_tokens) const override;
  Tokenizer::SpecialIds special_ids() const override;
  std::unique_ptr<TextStream> NewTextStream() const override;

 protected:
  explicit TokenizedEngine(EngineText text)
      : info_(std::move(text.info)), tokenizer_(std::move(text.tokenizer)) {}

  EngineInfo info_;

 private:
  std::unique_ptr<Tokenizer> tokenizer_;  // may be null
};

}  // namespace mpa::server
