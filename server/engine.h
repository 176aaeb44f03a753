// What the decode scheduler needs from an inference engine, as one small interface: the real
// ones are ModelEngine (model/ on the CPU + tokenizer) and CudaModelEngine (the GPU); tests drive
// the scheduler and the gRPC service with a scripted engine, so server behaviour (batching, limits,
// cancellation, drain) is tested apart from the numerics.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "model/attention/attention_backend.h"
#include "model/runtime/sampler.h"
#include "model/text/tokenizer.h"

namespace mpa::server {

// Fixed facts about the served model.
struct EngineInfo {
  std::string model_name;    // the model folder's name
  std::string architecture;  // e.g. "LlamaForCausalLM"
  int vocab_size = 0;
  int max_context_tokens = 0;  // max_position_embeddings
  bool has_tokenizer = false;
  std::optional<int32_t> bos_id;
  std::vector<int32_t> eos_ids;
  int64_t kv_capacity_tokens = 0;
  int kv_block_tokens = 16;
  std::string device = "cpu";  // where the model runs ("cpu", "cuda:0"): named in errors
};

// One context's KV cache inside the engine.
class EngineSequence {
 public:
  virtual ~EngineSequence() = default;
  virtual int num_tokens() const = 0;  // tokens in the KV cache
  virtual AttentionStats stats() const = 0;
  virtual void set_attention(const AttentionOptions& options) = 0;
};

// Turns generated ids into UTF-8-safe text pieces (see mpa::IncrementalDecoder).
class TextStream {
 public:
  virtual ~TextStream() = default;
  virtual std::string Push(int32_t id) = 0;
  virtual std::string Flush() = 0;
};

class Engine {
 public:
  virtual ~Engine() = default;
  virtual const EngineInfo& info() const = 0;

  // Tokenizer side: const and safe to call from any thread (the RPC threads tokenize).
  // FailedPrecondition when the model has no tokenizer.
  virtual absl::StatusOr<std::vector<int32_t>> Encode(absl::string_view text,
                                                      bool add_special_tokens) const = 0;
  // What add_special_tokens adds around a text's ids (BOS where the tokenizer asks): the edge
  // tokenizes a text once, without them, and the scheduler adds them on a context's first
  // input. Empty without a tokenizer.
  virtual Tokenizer::SpecialIds special_ids() const = 0;
  // nullptr when the model has no tokenizer.
  virtual std::unique_ptr<TextStream> NewTextStream() const = 0;

  // Engine side: only the scheduler's thread calls these.
  virtual std::unique_ptr<EngineSequence> NewSequence(const AttentionOptions& options) = 0;
  // Appends tokens to seq; logits[vocab] of the last new position.
  virtual absl::Status Prefill(EngineSequence& seq, absl::Span<const int32_t> tokens,
                               float* logits) = 0;
  // One token per sequence; logits[batch, vocab].
  virtual absl::Status Decode(absl::Span<EngineSequence* const> seqs,
                              absl::Span<const int32_t> tokens, float* logits) = 0;
  virtual int64_t free_kv_blocks() const = 0;
  // Device memory of the sparse modes' state beside the KV pool (cluster hierarchies, Quest page
  // bounds): in use and the limit. Engines that keep it in host memory with the cache: 0, 0.
  virtual std::pair<int64_t, int64_t> attention_state_bytes() const { return {0, 0}; }
  // OK while the engine's device can run. After a failed call the scheduler asks: a fault no
  // later call can recover from (a GPU context lost to an illegal memory access, say) is returned
  // from then on, and the server stops serving and exits so that its supervisor restarts it.
  virtual absl::Status DeviceStatus() { return absl::OkStatus(); }
  // Engines that draw the next ids where the logits are (the GPU): Prefill / Decode followed by
  // sampling with each row's params, returning ids (and, where `logprobs` is not null, each id's
  // log-probability under the raw logits, as Sampler reports it) instead of copying batch x vocab
  // logits to the host. The scheduler samples every generation there on such an engine.
  // DecodeAndSample copies the logits too where `logits` is not null.
  virtual bool SamplesOnDevice() const { return false; }
  virtual absl::Status PrefillAndSample(EngineSequence& seq, absl::Span<const int32_t> tokens,
                                        const SamplingParams& params, int32_t* id, float* logprob) {
    return absl::UnimplementedError("this engine samples on the host");
  }
  virtual absl::Status DecodeAndSample(absl::Span<EngineSequence* const> seqs,
                                       absl::Span<const int32_t> tokens,
                                       absl::Span<const SamplingParams> params, int32_t* ids,
                                       float* logits, float* logprobs) {
    return absl::UnimplementedError("this engine samples on the host");
  }
  // Whether sequences of this engine can attend in `mode` (CheckAttention's default). The
  // scheduler refuses other modes at admission, so NewSequence and set_attention only ever see
  // supported ones.
  virtual bool SupportsAttention(AttentionMode mode) const { return true; }
  // Whether sequences can attend with these options (mode and knobs): OK, or InvalidArgument
  // saying what this engine does not run.
  virtual absl::Status CheckAttention(const AttentionOptions& options) const {
    if (SupportsAttention(options.mode)) return absl::OkStatus();
    return absl::InvalidArgumentError("not available on this device");
  }
  // KV blocks a context of `tokens` tokens takes in `mode`: more than KvBlocksFor for an engine
  // that keeps pool pages beyond the positions' for some mode. Both engines keep none today (the
  // GPU reorders the clustered region in place; its centroids live outside the pool).
  virtual int64_t KvBlocksForContext(int64_t tokens, AttentionMode mode) const {
    return KvBlocksFor(tokens);
  }
  int64_t KvBlocksFor(int64_t tokens) const {
    const int b = info().kv_block_tokens;
    return (tokens + b - 1) / b;
  }
};

}  // namespace mpa::server
