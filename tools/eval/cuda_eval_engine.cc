#include "tools/eval/cuda_eval_engine.h"

#include <algorithm>

#include "model/cuda/cuda_model.h"
#include "model/runtime/status_macros.h"

namespace mpa::eval {
namespace {

class CudaEvalSequence : public EvalSequence {
 public:
  explicit CudaEvalSequence(std::unique_ptr<CudaSequence> seq) : seq_(std::move(seq)) {}
  const AttentionStats& stats() const override { return seq_->stats(); }
  CudaSequence& sequence() { return *seq_; }

 private:
  std::unique_ptr<CudaSequence> seq_;
};

class CudaEngine : public EvalEngine {
 public:
  explicit CudaEngine(std::unique_ptr<CudaModel> model) : model_(std::move(model)) {}
  const ModelConfig& config() const override { return model_->config(); }
  const char* name() const override { return "cuda"; }
  absl::Status Supports(const AttentionOptions& options) const override {
    return model_->SupportsAttention(options);
  }
  absl::StatusOr<std::unique_ptr<EvalSequence>> NewSequence(
      const AttentionOptions& options) override {
    auto seq = std::make_unique<CudaEvalSequence>(model_->NewSequence());
    MPA_RETURN_IF_ERROR(model_->SetAttention(seq->sequence(), options));
    return seq;
  }
  absl::Status Prefill(EvalSequence& seq, absl::Span<const int32_t> tokens,
                       float* logits) override {
    return model_->Prefill(static_cast<CudaEvalSequence&>(seq).sequence(), tokens, logits);
  }
  absl::Status Decode(EvalSequence& seq, int32_t token, float* logits) override {
    CudaSequence* batch[] = {&static_cast<CudaEvalSequence&>(seq).sequence()};
    const int32_t ids[] = {token};
    return model_->Decode(absl::MakeSpan(batch), ids, logits);
  }

 private:
  std::unique_ptr<CudaModel> model_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<EvalEngine>> MakeCudaEngine(const std::string& dir,
                                                           int max_context) {
  CudaModelOptions options;
  options.max_batch = 1;
  // One sequence at a time; cluster hierarchies draw on the same pool, so leave as much again.
  options.max_kv_tokens = std::max<int64_t>(2 * int64_t{max_context} + 8192, 1 << 16);
  MPA_ASSIGN_OR_RETURN(std::unique_ptr<CudaModel> model, CudaModel::Load(dir, options));
  return std::make_unique<CudaEngine>(std::move(model));
}

}  // namespace mpa::eval
