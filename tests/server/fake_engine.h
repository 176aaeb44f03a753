// A scripted engine for server tests: a deterministic "language model" whose greedy next token
// is a hash of the whole context, so any mix-up of sequences, lost or repeated tokens, or a
// context that differs from the conversation shows up as different tokens. Optional per-call
// delay makes streams slow enough to cancel or drain; every call is logged.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "model/runtime/sampler.h"
#include "server/engine.h"

namespace mpa::server::testing {

inline uint64_t FakeHashSeed() { return 1469598103934665603ull; }

class FakeSequence : public EngineSequence {
 public:
  explicit FakeSequence(std::atomic<int64_t>* used_blocks) : used_blocks_(used_blocks) {}
  ~FakeSequence() override {
    if (used_blocks_ != nullptr) *used_blocks_ -= held_blocks;
  }
  int num_tokens() const override { return static_cast<int>(tokens.size()); }
  AttentionStats stats() const override { return stats_; }
  void set_attention(const AttentionOptions& options) override { attention = options; }
  std::vector<int32_t> tokens;
  uint64_t hash = FakeHashSeed();
  AttentionOptions attention;
  AttentionStats stats_;
  int64_t held_blocks = 0;

 private:
  std::atomic<int64_t>* used_blocks_;
};

class FakeTextStream : public TextStream {
 public:
  std::string Push(int32_t id) override { return std::string(1, static_cast<char>('a' + id % 26)); }
  std::string Flush() override { return ""; }
};

class FakeEngine : public Engine {
 public:
  static constexpr int kVocab = 64;
  static constexpr int32_t kBos = 1;
  static constexpr int32_t kEos = 2;

  explicit FakeEngine(int64_t kv_tokens = 1 << 16, int max_context = 512) {
    info_.model_name = "fake";
    info_.architecture = "FakeForCausalLM";
    info_.vocab_size = kVocab;
    info_.max_context_tokens = max_context;
    info_.has_tokenizer = true;
    info_.bos_id = kBos;
    info_.eos_ids = {kEos};
    info_.kv_block_tokens = 16;
    info_.kv_capacity_tokens = kv_tokens;
  }

  // A running hash of a context (FNV-1a over the ids): the greedy next token depends on every
  // token and their order.
  static uint64_t Extend(uint64_t h, int32_t t) {
    return (h ^ static_cast<uint64_t>(t + 7)) * 1099511628211ull;
  }
  static constexpr uint64_t kEmptyHash = 1469598103934665603ull;
  static int32_t TokenOf(uint64_t h) { return static_cast<int32_t>(3 + (h >> 17) % (kVocab - 3)); }
  // The greedy next token after `context`: never BOS or EOS (tests add those on purpose).
  static int32_t NextToken(const std::vector<int32_t>& context) {
    uint64_t h = kEmptyHash;
    for (int32_t t : context) h = Extend(h, t);
    return TokenOf(h);
  }
  // Greedy continuation of `context` by n tokens, computed without the server.
  static std::vector<int32_t> Greedy(const std::vector<int32_t>& context, int n) {
    uint64_t h = kEmptyHash;
    for (int32_t t : context) h = Extend(h, t);
    std::vector<int32_t> out;
    for (int i = 0; i < n; ++i) {
      out.push_back(TokenOf(h));
      h = Extend(h, out.back());
    }
    return out;
  }

  const EngineInfo& info() const override { return info_; }
  absl::StatusOr<std::vector<int32_t>> Encode(absl::string_view text,
                                              bool add_special_tokens) const override {
    std::vector<int32_t> ids;
    if (add_special_tokens) ids.push_back(kBos);
    for (char c : text) ids.push_back(3 + static_cast<unsigned char>(c) % (kVocab - 3));
    return ids;
  }
  Tokenizer::SpecialIds special_ids() const override { return {{kBos}, {}}; }
  std::unique_ptr<TextStream> NewTextStream() const override {
    return std::make_unique<FakeTextStream>();
  }
  std::unique_ptr<EngineSequence> NewSequence(const AttentionOptions& options) override {
    ++sequences_created_;
    auto s = std::make_unique<FakeSequence>(&used_blocks_);
    s->attention = options;
    return s;
  }
  absl::Status Prefill(EngineSequence& seq, absl::Span<const int32_t> tokens,
                       float* logits) override {
    Delay();
    auto& s = static_cast<FakeSequence&>(seq);
    if (absl::Status st = Grow(s, static_cast<int64_t>(tokens.size())); !st.ok()) return st;
    s.tokens.insert(s.tokens.end(), tokens.begin(), tokens.end());
    for (int32_t t : tokens) s.hash = Extend(s.hash, t);
    Fill(s, logits);
    std::lock_guard<std::mutex> lock(mu_);
    log_.push_back(absl::StrCat("prefill ", tokens.size()));
    max_prefill_tokens_ = std::max<int64_t>(max_prefill_tokens_, tokens.size());
    return absl::OkStatus();
  }
  absl::Status Decode(absl::Span<EngineSequence* const> seqs, absl::Span<const int32_t> tokens,
                      float* logits) override {
    Delay();
    if (fault_after_steps_ >= 0 && decode_calls_++ >= fault_after_steps_) {
      faulted_ = true;
      return absl::InternalError("fake decode: an illegal memory access was encountered");
    }
    for (size_t i = 0; i < seqs.size(); ++i) {
      auto& s = static_cast<FakeSequence&>(*seqs[i]);
      if (absl::Status st = Grow(s, 1); !st.ok()) return st;
      s.tokens.push_back(tokens[i]);
      s.hash = Extend(s.hash, tokens[i]);
      s.stats_.tokens_total += s.num_tokens();
      s.stats_.tokens_attended_exact += s.num_tokens();
      Fill(s, logits + i * kVocab);
    }
    std::lock_guard<std::mutex> lock(mu_);
    log_.push_back(absl::StrCat("decode ", seqs.size()));
    max_batch_ = std::max<int64_t>(max_batch_, seqs.size());
    return absl::OkStatus();
  }
  // With set_samples_on_device(true) the engine plays the GPU engine's sampling: the scheduler
  // gets ids and logprobs from PrefillAndSample / DecodeAndSample (the host Sampler's rule over
  // the same fake logits, seeded by the params' seed and the sequence's length), never logits.
  bool SamplesOnDevice() const override { return samples_on_device_; }
  void set_samples_on_device(bool on) { samples_on_device_ = on; }
  absl::Status PrefillAndSample(EngineSequence& seq, absl::Span<const int32_t> tokens,
                                const SamplingParams& params, int32_t* id,
                                float* logprob) override {
    if (!samples_on_device_) return Engine::PrefillAndSample(seq, tokens, params, id, logprob);
    std::vector<float> logits(kVocab);
    if (absl::Status st = Prefill(seq, tokens, logits.data()); !st.ok()) return st;
    *id = DeviceDraw(static_cast<FakeSequence&>(seq), params, logits.data(), logprob);
    Note("prefill+sample");
    return absl::OkStatus();
  }
  absl::Status DecodeAndSample(absl::Span<EngineSequence* const> seqs,
                               absl::Span<const int32_t> tokens,
                               absl::Span<const SamplingParams> params, int32_t* ids, float* logits,
                               float* logprobs) override {
    if (!samples_on_device_) {
      return Engine::DecodeAndSample(seqs, tokens, params, ids, logits, logprobs);
    }
    std::vector<float> all(seqs.size() * kVocab);
    if (absl::Status st = Decode(seqs, tokens, all.data()); !st.ok()) return st;
    for (size_t i = 0; i < seqs.size(); ++i) {
      ids[i] = DeviceDraw(static_cast<FakeSequence&>(*seqs[i]), params[i], &all[i * kVocab],
                          logprobs != nullptr ? &logprobs[i] : nullptr);
    }
    if (logits != nullptr) std::copy(all.begin(), all.end(), logits);
    Note(logits != nullptr ? "decode+sample with logits" : "decode+sample");
    return absl::OkStatus();
  }
  // The fake logits the engine gives after `context` (what a logprob is taken over).
  static std::vector<float> LogitsAfter(const std::vector<int32_t>& context) {
    FakeSequence s(nullptr);
    for (int32_t t : context) {
      s.tokens.push_back(t);
      s.hash = Extend(s.hash, t);
    }
    std::vector<float> logits(kVocab);
    Fill(s, logits.data());
    return logits;
  }

  // set_fault_after_steps(n): decode calls after the first n fail, and DeviceStatus then reports
  // a lost device for good (as a GPU context after an illegal memory access). Set before Start.
  void set_fault_after_steps(int n) { fault_after_steps_ = n; }
  absl::Status DeviceStatus() override {
    return faulted_ ? absl::UnavailableError("fake GPU: cudaErrorIllegalAddress")
                    : absl::OkStatus();
  }

  int64_t free_kv_blocks() const override {
    return KvBlocksFor(info_.kv_capacity_tokens) - used_blocks_.load();
  }
  // With set_dense_only(true) the engine plays a GPU engine: dense attention alone, on "cuda:0".
  bool SupportsAttention(AttentionMode mode) const override {
    return !dense_only_ || mode == AttentionMode::kDense;
  }
  // With set_sparse_block_factor(2) sparse modes take twice the blocks of dense (as the GPU
  // engine's cluster-major copy of the clustered region does).
  int64_t KvBlocksForContext(int64_t tokens, AttentionMode mode) const override {
    return mode == AttentionMode::kDense ? KvBlocksFor(tokens)
                                         : sparse_block_factor_ * KvBlocksFor(tokens);
  }
  void set_sparse_block_factor(int factor) { sparse_block_factor_ = factor; }
  void set_dense_only(bool dense_only) {
    dense_only_ = dense_only;
    info_.device = dense_only ? "cuda:0" : "cpu";
  }
  // Sequences created so far (a refused request must not have made one).
  int64_t sequences_created() const { return sequences_created_.load(); }

  void set_step_delay(std::chrono::microseconds d) { delay_us_ = d.count(); }
  int64_t max_batch() {
    std::lock_guard<std::mutex> lock(mu_);
    return max_batch_;
  }
  int64_t max_prefill_tokens() {
    std::lock_guard<std::mutex> lock(mu_);
    return max_prefill_tokens_;
  }
  std::vector<std::string> log() {
    std::lock_guard<std::mutex> lock(mu_);
    return log_;
  }

 private:
  void Delay() {
    if (delay_us_ > 0) std::this_thread::sleep_for(std::chrono::microseconds(delay_us_.load()));
  }
  absl::Status Grow(FakeSequence& s, int64_t n) {
    const int64_t more = KvBlocksFor(s.num_tokens() + n) - KvBlocksFor(s.num_tokens());
    if (used_blocks_ + more > KvBlocksFor(info_.kv_capacity_tokens)) {
      return absl::ResourceExhaustedError("fake KV cache is full");
    }
    used_blocks_ += more;
    s.held_blocks += more;
    return absl::OkStatus();
  }
  void Note(std::string entry) {
    std::lock_guard<std::mutex> lock(mu_);
    log_.push_back(std::move(entry));
  }
  static int32_t DeviceDraw(const FakeSequence& s, const SamplingParams& params,
                            const float* logits, float* logprob) {
    SamplingParams p = params;
    p.seed ^= static_cast<uint64_t>(s.num_tokens()) * 0xd1b54a32d192ed03ull;
    return Sampler(p).Sample(logits, kVocab, logprob);
  }
  // Greedy picks NextToken(context); the rest get distinct smaller logits so sampling works.
  static void Fill(const FakeSequence& s, float* logits) {
    const int32_t next = TokenOf(s.hash);
    for (int j = 0; j < kVocab; ++j) {
      logits[j] = static_cast<float>((j * 7 + s.tokens.size()) % 13) / 13.0f;
    }
    logits[next] = 3.0f;
  }

  EngineInfo info_;
  std::atomic<int64_t> used_blocks_{0};
  std::atomic<int64_t> delay_us_{0};
  std::atomic<int64_t> sequences_created_{0};
  bool dense_only_ = false;
  bool samples_on_device_ = false;  // set before the scheduler starts
  int fault_after_steps_ = -1;      // set before the scheduler starts
  int decode_calls_ = 0;            // engine thread
  std::atomic<bool> faulted_{false};
  int sparse_block_factor_ = 1;  // set before the scheduler starts
  std::mutex mu_;
  std::vector<std::string> log_;
  int64_t max_batch_ = 0;
  int64_t max_prefill_tokens_ = 0;
};

}  // namespace mpa::server::testing
