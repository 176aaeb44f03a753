// The server's native request and result types: the gRPC edge (decode_service.cc) converts
// protos to and from these, so the scheduler never sees protobuf.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "model/attention/attention_backend.h"
#include "model/runtime/sampler.h"

namespace mpa::server {

// Attention settings a request or session sets; unset fields keep the base value.
struct AttentionOverride {
  std::optional<AttentionMode> mode;
  std::optional<int> token_budget;
  std::optional<float> token_budget_fraction;

  AttentionOptions ApplyTo(AttentionOptions base) const {
    if (mode.has_value()) base.mode = *mode;
    if (token_budget.has_value()) {
      base.multipole.token_budget = *token_budget;
      base.multipole.token_budget_fraction = 0.0f;
    }
    if (token_budget_fraction.has_value()) {
      base.multipole.token_budget_fraction = *token_budget_fraction;
    }
    return base;
  }
};

struct GenerateParams {
  std::string session_id;  // empty: one-shot on a private context
  std::string owner;       // who asks (see DecodeScheduler::CreateSession)
  // The new input. Text input arrives tokenized once, without special tokens; on a context's
  // first input the scheduler puts first_prefix before it and first_suffix after it (what the
  // tokenizer adds to a conversation's first text, e.g. BOS). Token-id input leaves both empty.
  std::vector<int32_t> input;
  std::vector<int32_t> first_prefix;
  std::vector<int32_t> first_suffix;
  SamplingParams sampling;
  std::optional<int> max_new_tokens;  // unset: the server default, cut to the room left
  std::vector<std::string> stop;
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  bool return_logprobs = false;
  AttentionOverride attention;
  absl::Time arrival = absl::InfinitePast();
};

enum class FinishReason { kLength, kStop, kEos, kCancelled };

struct GeneratedToken {
  int32_t id = 0;
  std::string text;      // UTF-8-safe piece (may be empty)
  float logprob = 0.0f;  // meaningful only when requested
};

struct GenerationResult {
  FinishReason finish_reason = FinishReason::kLength;
  int64_t prompt_tokens = 0;
  int64_t cached_tokens = 0;
  int64_t generated_tokens = 0;
  double mean_sparsity = 1.0;
  double time_to_first_token_seconds = 0.0;
  double decode_seconds = 0.0;
  double queue_seconds = 0.0;
  std::string text_tail;
};

struct SessionInfo {
  std::string session_id;
  int64_t context_tokens = 0;
  bool generating = false;
  double idle_seconds = 0.0;
  double ttl_seconds = 0.0;
  AttentionOptions attention;
};

// Where a generation's output goes (the gRPC stream). The scheduler's thread calls Start,
// Tokens, then exactly one of Finish or Fail; none of them may block (the stream buffers).
// cancelled() may be read from any thread.
class GenerationSink {
 public:
  virtual ~GenerationSink() = default;
  virtual void Start(const std::string& session_id) = 0;
  virtual void Tokens(std::vector<GeneratedToken> tokens) = 0;
  virtual void Finish(const GenerationResult& result) = 0;
  virtual void Fail(const absl::Status& status) = 0;
  // True once the client cancelled the call or went away.
  virtual bool cancelled() const = 0;
  // Whether the sink tells the scheduler when its client has the whole stream
  // (DecodeScheduler::StreamClosed): until then the session does not age, so its time to live
  // counts from the end of the client's stream, not from the engine's finish (a slow reader
  // keeps its session). A sink that does not report it leaves the engine's finish as the mark.
  virtual bool reports_close() const { return false; }
};

}  // namespace mpa::server
