#include "server/cuda_model_engine.h"

#include <cuda_runtime_api.h>

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "model/config/model_config.h"
#include "model/runtime/status_macros.h"
#include "server/cuda_engine_module.h"

namespace mpa::server {
namespace {

class CudaEngineSequence : public EngineSequence {
 public:
  CudaEngineSequence(CudaModel* model, std::unique_ptr<CudaSequence> seq)
      : model_(model), seq_(std::move(seq)) {}
  int num_tokens() const override { return seq_->num_tokens(); }
  AttentionStats stats() const override { return seq_->stats(); }
  // The scheduler admits only options CheckAttention accepts; should one still be refused, the
  // sequence keeps attending exactly (dense) rather than fail mid-session.
  void set_attention(const AttentionOptions& options) override {
    if (!model_->SetAttention(*seq_, options).ok()) {
      (void)model_->SetAttention(*seq_, AttentionOptions{});
    }
  }
  CudaSequence& sequence() { return *seq_; }

 private:
  CudaModel* model_;
  std::unique_ptr<CudaSequence> seq_;
};

// FailedPrecondition unless CUDA device `device` exists: a clear start-up error on machines
// without a GPU (or a driver) instead of a failure deep inside the model's first allocation.
absl::Status CheckDevice(int device) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--device=cuda: no CUDA device found (cudaGetDeviceCount: ", cudaGetErrorString(err), ")"));
  }
  if (count == 0) return absl::FailedPreconditionError("--device=cuda: no CUDA device found");
  if (device < 0 || device >= count) {
    return absl::FailedPreconditionError(
        absl::StrCat("--device=cuda: device ", device, " does not exist (", count, " found)"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<CudaModelEngine>> CudaModelEngine::Load(
    const std::string& dir, const CudaModelOptions& options) {
  MPA_RETURN_IF_ERROR(CheckDevice(options.device));
  MPA_ASSIGN_OR_RETURN(std::unique_ptr<CudaModel> model, CudaModel::Load(dir, options));
  MPA_ASSIGN_OR_RETURN(EngineText text, LoadEngineText(dir, model->config()));
  text.info.device = absl::StrCat("cuda:", options.device);
  text.info.kv_block_tokens = options.page_size;
  // A fresh model's pool is all free.
  text.info.kv_capacity_tokens = model->free_kv_tokens();
  return std::unique_ptr<CudaModelEngine>(new CudaModelEngine(std::move(model), std::move(text)));
}

std::unique_ptr<EngineSequence> CudaModelEngine::NewSequence(const AttentionOptions& options) {
  auto seq = std::make_unique<CudaEngineSequence>(model_.get(), model_->NewSequence());
  seq->set_attention(options);
  return seq;
}

absl::Status CudaModelEngine::Prefill(EngineSequence& seq, absl::Span<const int32_t> tokens,
                                      float* logits) {
  return model_->Prefill(static_cast<CudaEngineSequence&>(seq).sequence(), tokens, logits);
}

absl::Status CudaModelEngine::Decode(absl::Span<EngineSequence* const> seqs,
                                     absl::Span<const int32_t> tokens, float* logits) {
  std::vector<CudaSequence*> sequences;
  sequences.reserve(seqs.size());
  for (EngineSequence* s : seqs) {
    sequences.push_back(&static_cast<CudaEngineSequence*>(s)->sequence());
  }
  return model_->Decode(sequences, tokens, logits);
}

absl::Status CudaModelEngine::PrefillAndSample(EngineSequence& seq,
                                               absl::Span<const int32_t> tokens,
                                               const SamplingParams& params, int32_t* id,
                                               float* logprob) {
  MPA_RETURN_IF_ERROR(
      model_->Prefill(static_cast<CudaEngineSequence&>(seq).sequence(), tokens, nullptr));
  std::vector<float> logprobs;
  MPA_ASSIGN_OR_RETURN(std::vector<int32_t> ids,
                       model_->Sample({params}, logprob != nullptr ? &logprobs : nullptr));
  *id = ids.at(0);
  if (logprob != nullptr) *logprob = logprobs.at(0);
  return absl::OkStatus();
}

absl::Status CudaModelEngine::DecodeAndSample(absl::Span<EngineSequence* const> seqs,
                                              absl::Span<const int32_t> tokens,
                                              absl::Span<const SamplingParams> params, int32_t* ids,
                                              float* logits, float* logprobs) {
  std::vector<CudaSequence*> sequences;
  sequences.reserve(seqs.size());
  for (EngineSequence* s : seqs) {
    sequences.push_back(&static_cast<CudaEngineSequence*>(s)->sequence());
  }
  std::vector<float> lp;
  MPA_ASSIGN_OR_RETURN(std::vector<int32_t> out,
                       model_->DecodeAndSample(sequences, tokens, params, logits,
                                               logprobs != nullptr ? &lp : nullptr));
  std::copy(out.begin(), out.end(), ids);
  if (logprobs != nullptr) std::copy(lp.begin(), lp.end(), logprobs);
  return absl::OkStatus();
}

}  // namespace mpa::server

// The module's entry point (cuda_engine_module.h).
extern "C" __attribute__((visibility("default"))) absl::Status MpaServerCreateCudaEngine(
    const std::string& dir, const mpa::CudaModelOptions& options,
    std::unique_ptr<mpa::server::Engine>* engine) {
  absl::StatusOr<std::unique_ptr<mpa::server::CudaModelEngine>> loaded =
      mpa::server::CudaModelEngine::Load(dir, options);
  if (!loaded.ok()) return loaded.status();
  *engine = std::move(loaded).value();
  return absl::OkStatus();
}
