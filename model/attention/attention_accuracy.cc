#include "model/attention/attention_accuracy.h"

#include <algorithm>
#include <cmath>

#include "model/attention/multipole_attention.h"
#include "model/runtime/status_macros.h"

namespace mpa {

namespace {

// log-softmax of logits[n] in double.
std::vector<double> LogSoftmax(const float* logits, int n) {
  const double m = *std::max_element(logits, logits + n);
  double z = 0.0;
  for (int i = 0; i < n; ++i) z += std::exp(double(logits[i]) - m);
  const double log_z = m + std::log(z);
  std::vector<double> out(n);
  for (int i = 0; i < n; ++i) out[i] = double(logits[i]) - log_z;
  return out;
}

}  // namespace

absl::StatusOr<std::vector<AccuracyResult>> MeasureAgainstDense(
    Model& model, const std::vector<int32_t>& prompt, int steps,
    const std::vector<AttentionOptions>& modes, std::vector<int32_t>* dense_tokens) {
  for (const AttentionOptions& o : modes) MPA_RETURN_IF_ERROR(o.multipole.Validate());
  const int vocab = model.config().vocab_size;
  const int n = static_cast<int>(modes.size()) + 1;  // sequence 0 is dense
  std::vector<std::unique_ptr<SequenceState>> seqs;
  seqs.push_back(model.NewSequence(AttentionOptions{}));
  for (const AttentionOptions& o : modes) seqs.push_back(model.NewSequence(o));
  std::vector<SequenceState*> batch;
  for (auto& s : seqs) batch.push_back(s.get());

  std::vector<float> logits(static_cast<size_t>(n) * vocab);
  for (int s = 0; s < n; ++s) {
    MPA_RETURN_IF_ERROR(model.Prefill(*seqs[s], prompt, &logits[size_t(s) * vocab]));
  }
  std::vector<AccuracyResult> results(modes.size());
  for (size_t m = 0; m < modes.size(); ++m) results[m].options = modes[m];
  for (int step = 0; step < steps; ++step) {
    const float* dense = logits.data();
    const int32_t next = static_cast<int32_t>(std::max_element(dense, dense + vocab) - dense);
    const std::vector<double> log_p = LogSoftmax(dense, vocab);
    for (size_t m = 0; m < modes.size(); ++m) {
      // The logits in hand predict position num_tokens(); compare once the clustered region
      // was long enough for the mode to have attended sparsely in producing them.
      const MultipoleConfig& c = modes[m].multipole;
      const CachePartition part = PartitionCache(seqs[m + 1]->num_tokens(), c);
      if (step == 0 || part.clustered_tokens() < c.min_clustered_tokens) continue;
      const float* mode = &logits[(m + 1) * vocab];
      const std::vector<double> log_q = LogSoftmax(mode, vocab);
      double kl = 0.0;
      for (int i = 0; i < vocab; ++i) kl += std::exp(log_p[i]) * (log_p[i] - log_q[i]);
      AccuracyResult& r = results[m];
      r.steps_compared += 1;
      r.top1_agreement += (std::max_element(mode, mode + vocab) - mode) == next ? 1.0 : 0.0;
      r.mean_kl += kl;
      r.max_kl = std::max(r.max_kl, kl);
    }
    if (dense_tokens != nullptr) dense_tokens->push_back(next);
    std::vector<int32_t> tokens(n, next);
    MPA_RETURN_IF_ERROR(model.Decode(batch, tokens, logits.data()));
  }
  for (size_t m = 0; m < modes.size(); ++m) {
    AccuracyResult& r = results[m];
    if (r.steps_compared > 0) {
      r.top1_agreement /= r.steps_compared;
      r.mean_kl /= r.steps_compared;
    }
    r.sparsity = seqs[m + 1]->stats().sparsity();
  }
  return results;
}

}  // namespace mpa
