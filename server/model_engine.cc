#include "server/model_engine.h"

#include <utility>

#include "model/runtime/status_macros.h"

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

}  // namespace

absl::StatusOr<std::unique_ptr<ModelEngine>> ModelEngine::Load(const std::string& dir,
                                                               const ModelOptions& options) {
  MPA_ASSIGN_OR_RETURN(std::unique_ptr<Model> model, Model::Load(dir, options));
  MPA_ASSIGN_OR_RETURN(EngineText text, LoadEngineText(dir, model->config()));
  text.info.device = "cpu";
  text.info.kv_block_tokens = model->kv_pool().block_tokens();
  text.info.kv_capacity_tokens = model->kv_pool().num_blocks() * model->kv_pool().block_tokens();
  return std::unique_ptr<ModelEngine>(new ModelEngine(std::move(model), std::move(text)));
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
