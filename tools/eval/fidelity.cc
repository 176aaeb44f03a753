#include "tools/eval/fidelity.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <string_view>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "model/runtime/status_macros.h"

namespace mpa::eval {
namespace {

class CpuSequence : public EvalSequence {
 public:
  explicit CpuSequence(std::unique_ptr<SequenceState> seq) : seq_(std::move(seq)) {}
  const AttentionStats& stats() const override { return seq_->stats(); }
  SequenceState& state() { return *seq_; }
  const SequenceState& state() const { return *seq_; }

 private:
  std::unique_ptr<SequenceState> seq_;
};

class CpuEngine : public EvalEngine {
 public:
  explicit CpuEngine(Model* model) : model_(model) {}
  const ModelConfig& config() const override { return model_->config(); }
  const char* name() const override { return "cpu"; }
  absl::Status Supports(const AttentionOptions& options) const override {
    return options.multipole.Validate();
  }
  absl::StatusOr<std::unique_ptr<EvalSequence>> NewSequence(
      const AttentionOptions& options) override {
    return std::make_unique<CpuSequence>(model_->NewSequence(options));
  }
  absl::Status Prefill(EvalSequence& seq, absl::Span<const int32_t> tokens,
                       float* logits) override {
    return model_->Prefill(static_cast<CpuSequence&>(seq).state(), tokens, logits);
  }
  absl::Status Decode(EvalSequence& seq, int32_t token, float* logits) override {
    SequenceState* batch[] = {&static_cast<CpuSequence&>(seq).state()};
    const int32_t ids[] = {token};
    return model_->Decode(absl::MakeSpan(batch), ids, logits);
  }
  bool can_clone() const override { return true; }
  absl::StatusOr<std::unique_ptr<EvalSequence>> Clone(const EvalSequence& prefix,
                                                      const AttentionOptions& options) override {
    MPA_ASSIGN_OR_RETURN(
        std::unique_ptr<SequenceState> seq,
        model_->CloneSequence(static_cast<const CpuSequence&>(prefix).state(), options));
    return std::make_unique<CpuSequence>(std::move(seq));
  }

 private:
  Model* model_;
};

bool IsIdentifierByte(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

// log-softmax of logits[n], in double.
void LogSoftmax(const float* logits, int n, std::vector<double>* out) {
  const double m = *std::max_element(logits, logits + n);
  double z = 0.0;
  for (int i = 0; i < n; ++i) z += std::exp(double{logits[i]} - m);
  const double log_z = m + std::log(z);
  out->resize(n);
  for (int i = 0; i < n; ++i) (*out)[i] = double{logits[i]} - log_z;
}

int Argmax(const float* logits, int n) {
  return static_cast<int>(std::max_element(logits, logits + n) - logits);
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

}  // namespace

std::unique_ptr<EvalEngine> MakeCpuEngine(Model* model) {
  return std::make_unique<CpuEngine>(model);
}

std::vector<bool> LongRangeCompletions(const std::vector<std::string>& token_bytes, int distance) {
  std::string text;
  std::vector<int> token_of_byte;
  for (size_t t = 0; t < token_bytes.size(); ++t) {
    text += token_bytes[t];
    token_of_byte.resize(text.size(), static_cast<int>(t));
  }
  std::vector<bool> marked(token_bytes.size(), false);
  absl::flat_hash_map<std::string_view, int> last_token;  // identifier -> token of its end
  size_t i = 0;
  while (i < text.size()) {
    if (!IsIdentifierByte(static_cast<unsigned char>(text[i]))) {
      ++i;
      continue;
    }
    size_t end = i;
    while (end < text.size() && IsIdentifierByte(static_cast<unsigned char>(text[end]))) ++end;
    if (!(text[i] >= '0' && text[i] <= '9')) {
      const std::string_view identifier(text.data() + i, end - i);
      const int first = token_of_byte[i];
      const int last = token_of_byte[end - 1];
      auto it = last_token.find(identifier);
      if (it != last_token.end() && last > first && first - it->second > distance) {
        marked[last] = true;
      }
      last_token[identifier] = last;
    }
    i = end;
  }
  return marked;
}

void ModeTally::Add(const ModeTally& o) {
  steps += o.steps;
  kl_sum += o.kl_sum;
  kl_max = std::max(kl_max, o.kl_max);
  top1 += o.top1;
  nll_sum += o.nll_sum;
  recall_n += o.recall_n;
  recall_hits += o.recall_hits;
  decode_seconds += o.decode_seconds;
  tokens_attended_exact += o.tokens_attended_exact;
  tokens_total += o.tokens_total;
  documents += o.documents;
  if (skipped.empty()) skipped = o.skipped;
}

double ModeTally::perplexity() const { return steps ? std::exp(nll_sum / steps) : 0.0; }

absl::StatusOr<std::vector<ModeTally>> ScoreDocument(EvalEngine& engine,
                                                     absl::Span<const int32_t> tokens, int prefix,
                                                     int steps, const std::vector<bool>& long_range,
                                                     const std::vector<ModeSpec>& modes) {
  if (prefix < 1 || steps < 1 || static_cast<size_t>(prefix + steps + 1) > tokens.size() ||
      long_range.size() < static_cast<size_t>(prefix + steps + 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("a document of ", tokens.size(), " tokens cannot be scored with a prefix of ",
                     prefix, " tokens and ", steps, " steps (needs prefix + steps + 1)"));
  }
  const int vocab = engine.config().vocab_size;
  std::vector<float> logits(vocab);
  // Dense first: its log-probabilities at every step are the reference for every mode.
  // Kept in double, as computed, so that a mode with dense's logits has a KL of exactly 0.
  std::vector<double> dense_log_p(static_cast<size_t>(steps) * vocab);
  std::vector<int> dense_argmax(steps);
  std::vector<ModeTally> out(modes.size() + 1);
  std::vector<double> log_q;
  std::unique_ptr<EvalSequence> prefilled;  // dense, the prefix's tokens, never decoded
  if (engine.can_clone()) {
    MPA_ASSIGN_OR_RETURN(prefilled, engine.NewSequence(AttentionOptions{}));
    MPA_RETURN_IF_ERROR(engine.Prefill(*prefilled, tokens.subspan(0, prefix), logits.data()));
  }
  for (size_t m = 0; m <= modes.size(); ++m) {
    ModeTally& tally = out[m];
    const AttentionOptions options = m == 0 ? AttentionOptions{} : modes[m - 1].options;
    if (absl::Status s = engine.Supports(options); !s.ok()) {
      tally.skipped = std::string(s.message());
      continue;
    }
    std::unique_ptr<EvalSequence> seq;
    if (prefilled) {
      MPA_ASSIGN_OR_RETURN(seq, engine.Clone(*prefilled, options));
    } else {
      MPA_ASSIGN_OR_RETURN(seq, engine.NewSequence(options));
      MPA_RETURN_IF_ERROR(engine.Prefill(*seq, tokens.subspan(0, prefix), logits.data()));
    }
    const AttentionStats before = seq->stats();
    tally.documents = 1;
    for (int i = 0; i < steps; ++i) {
      const auto start = std::chrono::steady_clock::now();
      MPA_RETURN_IF_ERROR(engine.Decode(*seq, tokens[prefix + i], logits.data()));
      tally.decode_seconds += Seconds(start);
      const int target = tokens[prefix + i + 1];
      const int argmax = Argmax(logits.data(), vocab);
      LogSoftmax(logits.data(), vocab, &log_q);
      double* reference = &dense_log_p[static_cast<size_t>(i) * vocab];
      if (m == 0) {
        std::copy(log_q.begin(), log_q.end(), reference);
        dense_argmax[i] = argmax;
      } else {
        double kl = 0.0;
        for (int v = 0; v < vocab; ++v) {
          const double lp = reference[v];
          kl += std::exp(lp) * (lp - log_q[v]);
        }
        tally.kl_sum += kl;
        tally.kl_max = std::max(tally.kl_max, kl);
      }
      tally.steps += 1;
      tally.top1 += argmax == dense_argmax[i] ? 1 : 0;
      tally.nll_sum -= log_q[target];
      if (long_range[prefix + i + 1]) {
        tally.recall_n += 1;
        tally.recall_hits += argmax == target ? 1 : 0;
      }
    }
    tally.tokens_attended_exact = seq->stats().tokens_attended_exact - before.tokens_attended_exact;
    tally.tokens_total = seq->stats().tokens_total - before.tokens_total;
  }
  return out;
}

namespace {

std::string RecallCell(const ModeTally& t) {
  if (t.recall_n == 0) return "- (0)";
  return absl::StrFormat("%.3f (%d)", t.recall(), t.recall_n);
}

}  // namespace

std::string MarkdownTable(const ContextReport& r) {
  std::string s =
      "| mode | budget | docs | scored | mean KL | max KL | top-1 agreement | perplexity | "
      "ppl ratio | long-range recall (n) | recall vs dense (points) | read exactly | "
      "ms / token |\n"
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
  const ModeTally& d = r.dense;
  s += absl::StrFormat(
      "| dense | - | %d | %d | 0 | 0 | 1.000 | %.4f | 1.0000 | %s | 0.0 | %.3f | "
      "%.2f |\n",
      d.documents, d.steps, d.perplexity(), RecallCell(d), d.read_exactly(), d.ms_per_token());
  for (size_t m = 0; m < r.modes.size(); ++m) {
    const ModeTally& t = r.results[m];
    if (!t.skipped.empty() && t.steps == 0) {
      s += absl::StrFormat("| %s | %s | - | - | not run: %s | | | | | | | | |\n", r.modes[m].name,
                           r.modes[m].budget, t.skipped);
      continue;
    }
    const double ratio = d.perplexity() > 0 ? t.perplexity() / d.perplexity() : 0.0;
    const double recall_delta = d.recall_n ? 100.0 * (t.recall() - d.recall()) : 0.0;
    s += absl::StrFormat(
        "| %s | %s | %d | %d | %.5f | %.4f | %.3f | %.4f | %.4f | %s | %+.1f | "
        "%.3f | %.2f |\n",
        r.modes[m].name, r.modes[m].budget, t.documents, t.steps, t.mean_kl(), t.kl_max,
        t.top1_agreement(), t.perplexity(), ratio, RecallCell(t), recall_delta, t.read_exactly(),
        t.ms_per_token());
  }
  return s;
}

std::string CsvHeader() {
  return "context,mode,budget,documents,steps,mean_kl,max_kl,top1_agreement,perplexity,"
         "perplexity_ratio,recall_n,recall,recall_minus_dense,read_exactly,ms_per_token,"
         "not_run\n";
}

std::string CsvRows(const ContextReport& r) {
  std::string s;
  const ModeTally& d = r.dense;
  auto row = [&](const std::string& mode, const std::string& budget, const ModeTally& t) {
    const double ratio = d.perplexity() > 0 ? t.perplexity() / d.perplexity() : 0.0;
    std::string reason = t.steps == 0 ? t.skipped : "";
    std::replace(reason.begin(), reason.end(), ',', ';');
    std::replace(reason.begin(), reason.end(), '"', '\'');
    s += absl::StrFormat(
        "%d,\"%s\",%s,%d,%d,%.6g,%.6g,%.6g,%.6g,%.6g,%d,%.6g,%.6g,%.6g,%.6g,\"%s\"\n", r.context,
        mode, budget, t.documents, t.steps, t.mean_kl(), t.kl_max, t.top1_agreement(),
        t.perplexity(), ratio, t.recall_n, t.recall(), t.recall() - d.recall(), t.read_exactly(),
        t.ms_per_token(), reason);
  };
  row("dense", "-", d);
  for (size_t m = 0; m < r.modes.size(); ++m) row(r.modes[m].name, r.modes[m].budget, r.results[m]);
  return s;
}

}  // namespace mpa::eval
