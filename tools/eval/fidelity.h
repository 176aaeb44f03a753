// The fidelity harness behind mpa_eval: teacher-forced decode over documents, every attention
// mode fed the same tokens, each scored against dense attention on the same positions.
//
// For a document of L + 1 tokens and S scored steps, every mode prefills the first L - S tokens
// (dense, as the engine always prefills; clustering happens at its end; on the CPU the prefill is
// done once and copied, Model::CloneSequence), then decodes the
// document's own next S tokens one at a time. Step i feeds token L - S + i and predicts token
// L - S + i + 1 from a context of L - S + i + 1 tokens, so the last step sees L tokens. Each mode
// keeps its own KV cache and cluster hierarchy, as a serving session would.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "model/attention/attention_backend.h"
#include "model/cpu/model.h"

namespace mpa::eval {

// One sequence of an EvalEngine (a KV cache with its attention mode).
class EvalSequence {
 public:
  virtual ~EvalSequence() = default;
  virtual const AttentionStats& stats() const = 0;
};

// The engine mpa_eval drives: the CPU Model or the CUDA model, behind the same few calls.
class EvalEngine {
 public:
  virtual ~EvalEngine() = default;
  virtual const ModelConfig& config() const = 0;
  virtual const char* name() const = 0;  // "cpu" or "cuda"
  // OK, or why this engine cannot attend with `options` (e.g. quest on the GPU).
  virtual absl::Status Supports(const AttentionOptions& options) const = 0;
  virtual absl::StatusOr<std::unique_ptr<EvalSequence>> NewSequence(
      const AttentionOptions& options) = 0;
  // logits: [vocab] fp32 on the host, of the last position; the call returns once they are there.
  virtual absl::Status Prefill(EvalSequence& seq, absl::Span<const int32_t> tokens,
                               float* logits) = 0;
  virtual absl::Status Decode(EvalSequence& seq, int32_t token, float* logits) = 0;
  // Whether Clone works: then a document is prefilled once (dense, as every mode prefills) and
  // each mode starts from a copy; otherwise each mode prefills on its own.
  virtual bool can_clone() const { return false; }
  // A sequence attending with `options` in the state a prefill of `prefix`'s tokens would have
  // left it in.
  virtual absl::StatusOr<std::unique_ptr<EvalSequence>> Clone(const EvalSequence& prefix,
                                                              const AttentionOptions& options) {
    return absl::UnimplementedError("this engine cannot copy sequences");
  }
};

// The CPU engine over a loaded Model (the caller keeps the model alive).
std::unique_ptr<EvalEngine> MakeCpuEngine(Model* model);

// Marks, for each token index t of a document, whether token t completes an identifier last seen
// more than `distance` tokens earlier. token_bytes[t] is the text token t stands for. An
// identifier is a maximal run of ASCII letters, digits and '_' that does not start with a digit.
// Token t is marked when it holds the identifier's last byte, the identifier began in an
// earlier token (so the model has seen its start and must complete it), and the identifier's
// previous occurrence ended in a token more than `distance` tokens before the token where this
// occurrence begins.
std::vector<bool> LongRangeCompletions(const std::vector<std::string>& token_bytes, int distance);

// A mode to score: a display name, the budget's label and the engine options.
struct ModeSpec {
  std::string name;    // e.g. "multipole (1 level)"
  std::string budget;  // e.g. "128" or "5%"; "-" for dense
  AttentionOptions options;
};

// Sums over scored steps; Finish-style accessors divide.
struct ModeTally {
  int64_t steps = 0;
  double kl_sum = 0.0;  // KL(dense || mode), nats
  double kl_max = 0.0;
  int64_t top1 = 0;         // steps whose argmax equals dense's
  double nll_sum = 0.0;     // -log p(actual next token)
  int64_t recall_n = 0;     // steps at long-range completions
  int64_t recall_hits = 0;  // of those, argmax == actual next token
  double decode_seconds = 0.0;
  int64_t tokens_attended_exact = 0;  // from the engine's stats (decode only)
  int64_t tokens_total = 0;
  int documents = 0;
  std::string skipped;  // why the mode was not run (engine does not support it), else empty

  void Add(const ModeTally& other);
  double mean_kl() const { return steps ? kl_sum / steps : 0.0; }
  double top1_agreement() const { return steps ? double(top1) / steps : 0.0; }
  double perplexity() const;
  double recall() const { return recall_n ? double(recall_hits) / recall_n : 0.0; }
  double read_exactly() const {
    return tokens_total ? double(tokens_attended_exact) / tokens_total : 1.0;
  }
  double ms_per_token() const { return steps ? 1e3 * decode_seconds / steps : 0.0; }
};

// Scores `modes` on one document against dense attention. tokens: the document's first
// prefix + steps + 1 ids; long_range: LongRangeCompletions over (at least) those tokens. The
// returned tallies are dense's first, then one per mode, in order. A mode the engine does not
// support comes back with `skipped` set and no steps.
absl::StatusOr<std::vector<ModeTally>> ScoreDocument(EvalEngine& engine,
                                                     absl::Span<const int32_t> tokens, int prefix,
                                                     int steps, const std::vector<bool>& long_range,
                                                     const std::vector<ModeSpec>& modes);

// The table of one context length: dense's row, then one per mode.
struct ContextReport {
  int context = 0;  // L; 0 for whole documents of any length
  int scored_steps_per_document = 0;
  ModeTally dense;
  std::vector<ModeSpec> modes;
  std::vector<ModeTally> results;
};

// Markdown table of one report (no heading), and CSV rows (header written by CsvHeader).
std::string MarkdownTable(const ContextReport& report);
std::string CsvHeader();
std::string CsvRows(const ContextReport& report);

}  // namespace mpa::eval
