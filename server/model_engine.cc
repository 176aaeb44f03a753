#include "server/model_engine.h"

#include <filesystem>
#include <string_view>
#include <utility>

#include "absl/strings/str_cat.h"
#include "model/status_macros.h"

namespace mpa::server {
namespace {

class ModelSequence : public EngineSequence {
 public:
  explicit ModelSequence(std::unique_ptr<SequenceState> state) : state_(std::move(state)) {}
  int num_tokens() const override { return state_->num_tokens(); }
  AttentionStats stats() const override { return state_->stats(); }
  void set_attention(const AttentionOptions& options) override { state_->set_attention(options); }
  SequenceState& state() { return *state_; }

 private:
  std::unique_ptr<SequenceState> state_;
};

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

absl::StatusOr<std::unique_ptr<ModelEngine>> ModelEngine::Load(const std::string& dir,
                                                               const ModelOptions& options) {
  MPA_ASSIGN_OR_RETURN(std::unique_ptr<Model> model, Model::Load(dir, options));
  std::unique_ptr<Tokenizer> tokenizer;
  absl::StatusOr<std::unique_ptr<Tokenizer>> loaded = Tokenizer::LoadFromDir(dir);
  if (loaded.ok()) {
    tokenizer = std::move(loaded).value();
  } else if (!absl::IsNotFound(loaded.status())) {
    return loaded.status();
  }
  const ModelConfig& config = model->config();
  EngineInfo info;
  info.model_name = std::filesystem::path(dir).lexically_normal().filename().string();
  if (info.model_name.empty()) {
    info.model_name = std::filesystem::path(dir).lexically_normal().parent_path().filename();
  }
  info.architecture = config.architecture_name;
  info.vocab_size = config.vocab_size;
  info.max_context_tokens = config.max_position_embeddings;
  info.has_tokenizer = tokenizer != nullptr;
  if (tokenizer != nullptr) {
    info.bos_id = tokenizer->bos_id();
    info.eos_ids = tokenizer->eos_ids();
  }
  if (!info.bos_id.has_value() && config.bos_token_id.has_value()) {
    info.bos_id = *config.bos_token_id;
  }
  if (info.eos_ids.empty()) {
    for (int id : config.eos_token_ids) info.eos_ids.push_back(id);
  }
  info.kv_block_tokens = model->kv_pool().block_tokens();
  info.kv_capacity_tokens = model->kv_pool().num_blocks() * model->kv_pool().block_tokens();
  return std::unique_ptr<ModelEngine>(
      new ModelEngine(std::move(model), std::move(tokenizer), std::move(info)));
}

absl::StatusOr<std::vector<int32_t>> ModelEngine::Encode(absl::string_view text,
                                                         bool add_special_tokens) const {
  if (tokenizer_ == nullptr) {
    return absl::FailedPreconditionError(
        "text: the served model has no tokenizer.json; send input as token_ids");
  }
  return tokenizer_->Encode(std::string_view(text.data(), text.size()), add_special_tokens);
}

std::unique_ptr<TextStream> ModelEngine::NewTextStream() const {
  if (tokenizer_ == nullptr) return nullptr;
  return std::make_unique<TokenizerTextStream>(*tokenizer_);
}

std::unique_ptr<EngineSequence> ModelEngine::NewSequence(const AttentionOptions& options) {
  return std::make_unique<ModelSequence>(model_->NewSequence(options));
}

absl::Status ModelEngine::Prefill(EngineSequence& seq, absl::Span<const int32_t> tokens,
                                  float* logits) {
  return model_->Prefill(static_cast<ModelSequence&>(seq).state(), tokens, logits);
}

absl::Status ModelEngine::Decode(absl::Span<EngineSequence* const> seqs,
                                 absl::Span<const int32_t> tokens, float* logits) {
  std::vector<SequenceState*> states;
  states.reserve(seqs.size());
  for (EngineSequence* s : seqs) states.push_back(&static_cast<ModelSequence*>(s)->state());
  return model_->Decode(states, tokens, logits);
}

}  // namespace mpa::server
