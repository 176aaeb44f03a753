#include "server/tokenized_engine.h"

#include <filesystem>
#include <string_view>
#include <utility>

namespace mpa::server {
namespace {

class TokenizerTextStream : public TextStream {
 public:
  explicit TokenizerTextStream(const Tokenizer& tokenizer)
      : decoder_(tokenizer, /*skip_special_tokens=*/true) {}
  std::string Push(int32_t id) override { return decoder_.Push(id); }
  std::string Flush() override { return decoder_.Flush(); }

 private:
  IncrementalDecoder decoder_;
};

}  // namespace

absl::StatusOr<EngineText> LoadEngineText(const std::string& dir, const ModelConfig& config) {
  EngineText text;
  absl::StatusOr<std::unique_ptr<Tokenizer>> loaded =
      Tokenizer::LoadForModel(dir, config.vocab_size);
  if (!loaded.ok()) return loaded.status();
  text.tokenizer = std::move(loaded).value();
  EngineInfo& info = text.info;
  info.model_name = std::filesystem::path(dir).lexically_normal().filename().string();
  if (info.model_name.empty()) {
    info.model_name = std::filesystem::path(dir).lexically_normal().parent_path().filename();
  }
  info.architecture = config.architecture_name;
  info.vocab_size = config.vocab_size;
  info.max_context_tokens = config.max_position_embeddings;
  info.has_tokenizer = text.tokenizer != nullptr;
  if (text.tokenizer != nullptr) {
    info.bos_id = text.tokenizer->bos_id();
    info.eos_ids = text.tokenizer->eos_ids();
  }
  if (!info.bos_id.has_value() && config.bos_token_id.has_value()) {
    info.bos_id = *config.bos_token_id;
  }
  if (info.eos_ids.empty()) {
    for (int id : config.eos_token_ids) info.eos_ids.push_back(id);
  }
  return text;
}

absl::StatusOr<std::vector<int32_t>> TokenizedEngine::Encode(absl::string_view text,
                                                             bool add_special_tokens) const {
  if (tokenizer_ == nullptr) {
    return absl::FailedPreconditionError(
        "text: the served model has no tokenizer.json; send input as token_ids");
  }
  return tokenizer_->Encode(std::string_view(text.data(), text.size()), add_special_tokens);
}

Tokenizer::SpecialIds TokenizedEngine::special_ids() const {
  if (tokenizer_ == nullptr) return {};
  return tokenizer_->special_ids();
}

std::unique_ptr<TextStream> TokenizedEngine::NewTextStream() const {
  if (tokenizer_ == nullptr) return nullptr;
  return std::make_unique<TokenizerTextStream>(*tokenizer_);
}

}  // namespace mpa::server
