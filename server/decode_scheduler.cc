#include "server/decode_scheduler.h"

#include <algorithm>
#include <tuple>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "model/runtime/sampler.h"

namespace mpa::server {

// One Generate call, from admission to its final message. Engine thread only.
struct Generation {
  Generation(const GenerateParams& p, std::shared_ptr<GenerationSink> s)
      : params(p), sink(std::move(s)), sampler(p.sampling) {}

  GenerateParams params;
  std::shared_ptr<GenerationSink> sink;
  Session* session = nullptr;
  // The tokens to prefill: the session's pending tokens, then the new input.
  std::vector<int32_t> input;
  size_t old_pending = 0;  // how many leading tokens of `input` were the session's pending ones
  size_t prefilled = 0;
  int max_new_tokens = 0;
  int64_t final_kv_tokens = 0;  // the KV length when it ends at the latest (admission)
  int64_t prompt_tokens = 0;
  int64_t cached_tokens = 0;
  Sampler sampler;
  std::unique_ptr<TextStream> text;
  std::string recent_text;  // the generated text's tail, searched for stop strings
  size_t max_stop_bytes = 0;
  absl::flat_hash_set<int32_t> stop_ids;
  absl::flat_hash_set<int32_t> eos_ids;
  bool decoding = false;    // input prefilled; next_token is to be fed
  int32_t next_token = -1;  // the last sampled token (not yet in the KV cache)
  int64_t generated = 0;
  bool cancel_requested = false;
  bool done = false;
  AttentionStats stats_at_start;
  absl::Time started = absl::InfinitePast();  // prefill began
  absl::Time first_token = absl::InfinitePast();
  absl::Time last_token = absl::InfinitePast();
};

namespace {

// What clients hear once the engine's device has failed for good.
absl::Status FaultError(const absl::Status& device) {
  return absl::UnavailableError(
      absl::StrCat("the model's device failed (", device.message(), "); the server is restarting"));
}

double Seconds(absl::Duration d) { return absl::ToDoubleSeconds(d); }

// The counters accumulated between two readings of one sequence's stats.
AttentionStats StatsSince(const AttentionStats& now, const AttentionStats& then) {
  AttentionStats d;
  d.decode_steps = now.decode_steps - then.decode_steps;
  d.tokens_attended_exact = now.tokens_attended_exact - then.tokens_attended_exact;
  d.tokens_total = now.tokens_total - then.tokens_total;
  d.centroids_scored = now.centroids_scored - then.centroids_scored;
  d.cluster_updates = now.cluster_updates - then.cluster_updates;
  d.tokens_reclustered = now.tokens_reclustered - then.tokens_reclustered;
  d.cluster_update_seconds = now.cluster_update_seconds - then.cluster_update_seconds;
  d.prefill_cluster_seconds = now.prefill_cluster_seconds - then.prefill_cluster_seconds;
  return d;
}

}  // namespace

DecodeScheduler::DecodeScheduler(Engine* engine, SchedulerOptions options, ServerObserver* observer)
    : engine_(engine),
      options_(std::move(options)),
      observer_(observer),
      sessions_(options_.max_sessions, options_.session_ttl, options_.max_sessions_per_owner) {
  options_.max_batch_size = std::max(1, options_.max_batch_size);
  options_.prefill_chunk_tokens = std::max(1, options_.prefill_chunk_tokens);
  logits_.resize(static_cast<size_t>(options_.max_batch_size) * engine_->info().vocab_size);
  snap_kv_free_tokens_ = engine_->free_kv_blocks() * engine_->info().kv_block_tokens;
}

DecodeScheduler::~DecodeScheduler() { Stop(); }

int64_t DecodeScheduler::max_prompt_tokens() const {
  const int64_t context = engine_->info().max_context_tokens;
  return options_.max_prompt_tokens > 0 ? std::min(options_.max_prompt_tokens, context) : context;
}

int64_t DecodeScheduler::max_total_tokens() const {
  const int64_t context = engine_->info().max_context_tokens;
  return options_.max_total_tokens > 0 ? std::min(options_.max_total_tokens, context) : context;
}

void DecodeScheduler::Start() {
  std::lock_guard<std::mutex> lock(mu_);
  if (thread_.joinable() || stopped_) return;
  thread_ = std::thread([this] { Run(); });
}

void DecodeScheduler::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_) return;
    stop_ = true;
    stopped_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
  std::deque<std::function<void()>> left;
  {
    std::lock_guard<std::mutex> lock(mu_);
    left.swap(commands_);  // only if the thread never started
  }
  RunCommands(left);
  for (auto& gen : generations_) {
    if (!gen->done) FailGeneration(*gen, absl::UnavailableError("the server is shutting down"));
  }
  generations_.clear();
}

void DecodeScheduler::Post(std::function<void()> command, std::function<void()> refuse) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stopped_) {
      commands_.push_back(std::move(command));
      wake_.notify_all();
      return;
    }
  }
  refuse();
}

void DecodeScheduler::RunCommands(std::deque<std::function<void()>>& commands) {
  for (auto& command : commands) command();
  commands.clear();
}

void DecodeScheduler::Run() {
  PublishSnapshot();  // the levels before any work (an idle server reports its free KV)
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    if (commands_.empty() && !stop_ && !cancel_all_ && generations_.empty()) {
      const absl::Time next = sessions_.NextExpiry();
      if (next == absl::InfiniteFuture()) {
        wake_.wait(lock);
      } else {
        wake_.wait_until(lock, absl::ToChronoTime(next + absl::Milliseconds(1)));
      }
    }
    std::deque<std::function<void()>> commands;
    commands.swap(commands_);
    const bool stopping = stop_;
    const bool cancel_all = cancel_all_;
    cancel_all_ = false;
    processing_ = true;  // WaitForIdle must not see the taken commands as done yet
    lock.unlock();

    RunCommands(commands);
    if (cancel_all) {
      for (auto& gen : generations_) gen->cancel_requested = true;
    }
    if (stopping) {
      for (auto& gen : generations_) {
        if (!gen->done) FailGeneration(*gen, absl::UnavailableError("the server is shutting down"));
      }
      generations_.clear();
      PublishSnapshot();
      return;
    }
    EvictExpired();
    Step();
    PublishSnapshot();
    lock.lock();
  }
}

void DecodeScheduler::PublishSnapshot() {
  int64_t active = 0;
  for (const auto& gen : generations_) active += gen->done ? 0 : 1;
  snap_active_ = active;
  snap_sessions_ = sessions_.explicit_sessions();
  snap_kv_free_tokens_ = engine_->free_kv_blocks() * engine_->info().kv_block_tokens;
  if (observer_ != nullptr) {
    ServerState state;
    state.sessions = snap_sessions_;
    state.active_generations = active;
    state.kv_free_tokens = snap_kv_free_tokens_;
    state.kv_used_tokens = engine_->info().kv_capacity_tokens - state.kv_free_tokens;
    std::tie(state.attention_state_bytes, state.attention_state_limit_bytes) =
        engine_->attention_state_bytes();
    observer_->SetState(state);
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    processing_ = false;
  }
  idle_cv_.notify_all();
}

SchedulerSnapshot DecodeScheduler::snapshot() const {
  SchedulerSnapshot s;
  s.sessions = snap_sessions_;
  s.active_generations = snap_active_;
  s.kv_free_tokens = snap_kv_free_tokens_;
  s.steps = snap_steps_;
  s.tokens_generated = snap_tokens_;
  s.prefill_tokens = snap_prefill_;
  s.last_batch_size = snap_batch_;
  return s;
}

// ---- Commands ------------------------------------------------------------------------------

void DecodeScheduler::CreateSession(std::string owner, AttentionOverride attention,
                                    std::string requested_id,
                                    std::function<void(absl::StatusOr<SessionInfo>)> done) {
  auto refuse = [done] { done(absl::UnavailableError("the server is shutting down")); };
  if (draining()) return refuse();
  Post(
      [this, owner = std::move(owner), attention, requested_id = std::move(requested_id), done] {
        if (draining()) return done(absl::UnavailableError("the server is shutting down"));
        const AttentionOptions options = attention.ApplyTo(options_.default_attention);
        if (absl::Status st = CheckAttentionSupported(options.mode); !st.ok()) return done(st);
        absl::StatusOr<Session*> s =
            sessions_.Create(engine_->NewSequence(options), options, /*ephemeral=*/false,
                             absl::Now(), owner, requested_id);
        if (!s.ok()) return done(s.status());
        done(Describe(**s));
      },
      refuse);
}

void DecodeScheduler::Generate(GenerateParams params, std::shared_ptr<GenerationSink> sink) {
  if (draining()) {
    sink->Fail(absl::UnavailableError("the server is shutting down: not accepting new requests"));
    return;
  }
  auto shared = std::make_shared<GenerateParams>(std::move(params));
  Post([this, shared, sink] { StartGeneration(std::move(*shared), sink); },
       [sink] { sink->Fail(absl::UnavailableError("the server is shutting down")); });
}

void DecodeScheduler::CancelGeneration(std::string owner, std::string session_id,
                                       std::function<void(absl::StatusOr<bool>)> done) {
  Post(
      [this, owner = std::move(owner), session_id, done] {
        absl::StatusOr<Session*> s = sessions_.FindOwned(session_id, owner);
        if (!s.ok()) return done(s.status());
        if ((*s)->active == nullptr) return done(false);
        (*s)->active->cancel_requested = true;
        done(true);
      },
      [done] { done(absl::UnavailableError("the server is shutting down")); });
}

void DecodeScheduler::CloseSession(std::string owner, std::string session_id,
                                   std::function<void(absl::Status)> done) {
  Post(
      [this, owner = std::move(owner), session_id, done] {
        absl::StatusOr<Session*> s = sessions_.FindOwned(session_id, owner);
        if (!s.ok()) return done(s.status());
        if ((*s)->active != nullptr) FinishGeneration(*(*s)->active, FinishReason::kCancelled);
        sessions_.Remove(*s);
        done(absl::OkStatus());
      },
      [done] { done(absl::UnavailableError("the server is shutting down")); });
}

void DecodeScheduler::GetSession(std::string owner, std::string session_id,
                                 std::function<void(absl::StatusOr<SessionInfo>)> done) {
  Post(
      [this, owner = std::move(owner), session_id, done] {
        absl::StatusOr<Session*> s = sessions_.FindOwned(session_id, owner);
        if (!s.ok()) return done(s.status());
        done(Describe(**s));
      },
      [done] { done(absl::UnavailableError("the server is shutting down")); });
}

void DecodeScheduler::StreamClosed(std::string owner, std::string session_id) {
  Post(
      [this, owner = std::move(owner), session_id = std::move(session_id)] {
        absl::StatusOr<Session*> s = sessions_.FindOwned(session_id, owner);
        if (!s.ok()) return;  // closed, evicted or ephemeral: nothing ages
        (*s)->open_streams = std::max(0, (*s)->open_streams - 1);
        (*s)->last_used = absl::Now();
      },
      [] {});
}

void DecodeScheduler::BeginDrain() { draining_ = true; }

bool DecodeScheduler::WaitForIdle(absl::Time deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    // Commands still queued may hold Generates admitted before the drain began.
    const bool idle = snap_active_ == 0 && commands_.empty() && !processing_;
    if (idle || stopped_ || absl::Now() >= deadline) return idle;
    idle_cv_.wait_until(
        lock, absl::ToChronoTime(std::min(deadline, absl::Now() + absl::Milliseconds(50))));
  }
}

void DecodeScheduler::CancelAll() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    cancel_all_ = true;
  }
  wake_.notify_all();
}

SessionInfo DecodeScheduler::Describe(const Session& s) const {
  SessionInfo info;
  info.session_id = s.id;
  info.context_tokens = s.context_tokens();
  info.generating = s.active != nullptr;
  info.idle_seconds =
      s.active != nullptr || s.open_streams > 0 ? 0.0 : Seconds(absl::Now() - s.last_used);
  info.ttl_seconds = sessions_.has_ttl() ? Seconds(sessions_.ttl()) : 0.0;
  info.attention = s.attention;
  return info;
}

// ---- Engine thread ---------------------------------------------------------------------------

absl::Status DecodeScheduler::CheckAttentionSupported(AttentionMode mode) const {
  AttentionOptions options = options_.default_attention;
  options.mode = mode;
  const absl::Status supported = engine_->CheckAttention(options);
  if (supported.ok()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrFormat(
      "attention.mode: %s attention is not available on this server's device (%s): %s; ask for "
      "dense, or use a server started with --device=cpu",
      AttentionModeName(mode), engine_->info().device, supported.message()));
}

int64_t DecodeScheduler::ReservedGrowthBlocks() const {
  int64_t blocks = 0;
  for (const auto& gen : generations_) {
    if (gen->done) continue;
    const AttentionMode mode = gen->session->attention.mode;
    blocks += std::max<int64_t>(
        0, engine_->KvBlocksForContext(gen->final_kv_tokens, mode) -
               engine_->KvBlocksForContext(gen->session->sequence->num_tokens(), mode));
  }
  return blocks;
}

void DecodeScheduler::StartGeneration(GenerateParams params, std::shared_ptr<GenerationSink> sink) {
  if (faulted()) {
    sink->Fail(FaultError(fault_));
    return;
  }
  if (draining()) {
    sink->Fail(absl::UnavailableError("the server is shutting down: not accepting new requests"));
    return;
  }
  const absl::Time now = absl::Now();
  Session* session = nullptr;
  if (params.session_id.empty()) {
    const AttentionOptions options = params.attention.ApplyTo(options_.default_attention);
    if (absl::Status st = CheckAttentionSupported(options.mode); !st.ok()) return sink->Fail(st);
    absl::StatusOr<Session*> s = sessions_.Create(engine_->NewSequence(options), options,
                                                  /*ephemeral=*/true, now, params.owner);
    if (!s.ok()) return sink->Fail(s.status());
    session = *s;
  } else {
    absl::StatusOr<Session*> s = sessions_.FindOwned(params.session_id, params.owner);
    if (!s.ok()) return sink->Fail(s.status());
    session = *s;
    if (session->active != nullptr) {
      return sink->Fail(absl::FailedPreconditionError(
          absl::StrCat("session_id: session \"", session->id,
                       "\" already has a Generate in progress; wait for it to end or call "
                       "CancelGeneration")));
    }
  }
  auto refuse = [&](absl::Status status) {
    if (session->ephemeral) sessions_.Remove(session);
    sink->Fail(status);
  };
  if (params.attention.mode.has_value()) {
    if (absl::Status st = CheckAttentionSupported(*params.attention.mode); !st.ok()) {
      return refuse(st);
    }
  }

  const bool first = session->context_tokens() == 0;
  std::vector<int32_t> first_input;  // a first text input with its special ids
  if (first && (!params.first_prefix.empty() || !params.first_suffix.empty())) {
    first_input = params.first_prefix;
    first_input.insert(first_input.end(), params.input.begin(), params.input.end());
    first_input.insert(first_input.end(), params.first_suffix.begin(), params.first_suffix.end());
  }
  const std::vector<int32_t>& new_input = first_input.empty() ? params.input : first_input;
  const int64_t limit = max_total_tokens();
  const int64_t context = session->context_tokens();
  const int64_t input_tokens = static_cast<int64_t>(new_input.size());
  const int64_t room = limit - context - input_tokens;
  if (room < 0 || (room == 0 && !params.max_new_tokens.has_value())) {
    return refuse(absl::InvalidArgumentError(absl::StrFormat(
        "input: the context's %d tokens + %d input tokens leave no room to generate under the "
        "limit of %d tokens per context (--max_total_tokens / the model's context length)",
        context, input_tokens, limit)));
  }
  const int64_t max_new = params.max_new_tokens.has_value()
                              ? *params.max_new_tokens
                              : std::min<int64_t>(options_.default_max_new_tokens, room);
  if (max_new > room) {
    return refuse(absl::InvalidArgumentError(absl::StrFormat(
        "sampling.max_new_tokens: %d is more than the %d tokens left: context %d + input %d + "
        "max_new_tokens must be at most %d (--max_total_tokens / the model's context length)",
        max_new, room, context, input_tokens, limit)));
  }
  // The last sampled token is never fed, so the KV cache ends at most max_new - 1 past the input.
  const int64_t final_kv = context + input_tokens + std::max<int64_t>(0, max_new - 1);
  // More than the whole cache can never be admitted: waiting would not help, so the request is
  // over a limit rather than "retry later".
  // This turn's mode: the request's, else the session's.
  const AttentionMode mode = params.attention.mode.value_or(session->attention.mode);
  const int64_t capacity_blocks = engine_->KvBlocksFor(engine_->info().kv_capacity_tokens);
  if (engine_->KvBlocksForContext(final_kv, mode) > capacity_blocks) {
    return refuse(absl::InvalidArgumentError(absl::StrFormat(
        "sampling.max_new_tokens: the context's %d tokens + %d input tokens + max_new_tokens %d "
        "need %d tokens of KV cache in %s attention, more than the whole cache holds (%d tokens, "
        "--max_kv_tokens); lower max_new_tokens or start a new session",
        context, input_tokens, max_new,
        engine_->KvBlocksForContext(final_kv, mode) * engine_->info().kv_block_tokens,
        AttentionModeName(mode), capacity_blocks * engine_->info().kv_block_tokens)));
  }
  const int64_t need = engine_->KvBlocksForContext(final_kv, mode) -
                       engine_->KvBlocksForContext(session->sequence->num_tokens(), mode);
  const int64_t available = engine_->free_kv_blocks() - ReservedGrowthBlocks();
  if (need > available) {
    return refuse(absl::ResourceExhaustedError(absl::StrFormat(
        "KV cache: the request needs %d more blocks of %d tokens but %d are free after the "
        "reservations of running generations (--max_kv_tokens); close idle sessions or retry "
        "later",
        need, engine_->info().kv_block_tokens, std::max<int64_t>(0, available))));
  }

  if (!session->ephemeral && (params.attention.mode || params.attention.token_budget ||
                              params.attention.token_budget_fraction)) {
    session->attention = params.attention.ApplyTo(session->attention);
    session->sequence->set_attention(session->attention);
  }

  auto gen = std::make_unique<Generation>(params, sink);
  gen->session = session;
  gen->input = session->pending;
  gen->old_pending = session->pending.size();
  gen->input.insert(gen->input.end(), new_input.begin(), new_input.end());
  session->pending.clear();
  gen->max_new_tokens = static_cast<int>(max_new);
  gen->final_kv_tokens = final_kv;
  gen->prompt_tokens = input_tokens;
  gen->cached_tokens = session->sequence->num_tokens();
  gen->text = engine_->NewTextStream();
  for (const std::string& s : params.stop)
    gen->max_stop_bytes = std::max(gen->max_stop_bytes, s.size());
  gen->stop_ids.insert(params.stop_token_ids.begin(), params.stop_token_ids.end());
  if (!params.ignore_eos) {
    gen->eos_ids.insert(engine_->info().eos_ids.begin(), engine_->info().eos_ids.end());
  }
  gen->stats_at_start = session->sequence->stats();
  session->active = gen.get();
  session->last_used = now;
  if (sink->reports_close() && !session->ephemeral) ++session->open_streams;
  sink->Start(session->id);
  generations_.push_back(std::move(gen));
}

void DecodeScheduler::Step() {
  for (auto& gen : generations_) {
    if (!gen->done && (gen->cancel_requested || gen->sink->cancelled())) {
      FinishGeneration(*gen, FinishReason::kCancelled);
    }
  }
  // One prefill chunk of the oldest generation still reading its input.
  for (auto& gen : generations_) {
    if (!gen->done && !gen->decoding) {
      PrefillChunk(*gen);
      break;
    }
  }
  std::vector<Generation*> batch;
  for (auto& gen : generations_) {
    if (gen->done || !gen->decoding) continue;
    batch.push_back(gen.get());
    if (static_cast<int>(batch.size()) == options_.max_batch_size) {
      DecodeBatch(batch);
      batch.clear();
    }
  }
  if (!batch.empty()) DecodeBatch(batch);
  generations_.remove_if([](const std::unique_ptr<Generation>& g) { return g->done; });
  ++snap_steps_;
}

void DecodeScheduler::PrefillChunk(Generation& gen) {
  if (gen.prefilled == 0) gen.started = absl::Now();
  const size_t n =
      std::min<size_t>(options_.prefill_chunk_tokens, gen.input.size() - gen.prefilled);
  const absl::Time start = absl::Now();
  const bool last = gen.prefilled + n == gen.input.size() && gen.max_new_tokens > 0;
  // The last chunk samples on the device where the engine can (with the logprob, if asked).
  const bool on_device = last && engine_->SamplesOnDevice();
  int32_t device_token = 0;
  float device_logprob = 0.0f;
  const auto chunk = absl::MakeConstSpan(gen.input).subspan(gen.prefilled, n);
  absl::Status status =
      on_device ? engine_->PrefillAndSample(*gen.session->sequence, chunk, gen.params.sampling,
                                            &device_token,
                                            gen.params.return_logprobs ? &device_logprob : nullptr)
                : engine_->Prefill(*gen.session->sequence, chunk, logits_.data());
  if (!status.ok()) {
    if (CheckDeviceFault()) return;
    return FailGeneration(gen, status);
  }
  if (observer_ != nullptr) {
    observer_->OnPrefillChunk(static_cast<int64_t>(n), Seconds(absl::Now() - start));
  }
  gen.prefilled += n;
  snap_prefill_ += static_cast<int64_t>(n);
  if (gen.prefilled < gen.input.size()) return;
  if (gen.max_new_tokens == 0) return FinishGeneration(gen, FinishReason::kLength);
  float logprob = device_logprob;
  const int32_t token = on_device
                            ? device_token
                            : gen.sampler.Sample(logits_.data(), engine_->info().vocab_size,
                                                 gen.params.return_logprobs ? &logprob : nullptr);
  gen.decoding = true;
  Emit(gen, token, logprob);
}

void DecodeScheduler::DecodeBatch(const std::vector<Generation*>& batch) {
  if (faulted()) return;  // every generation has failed (and ephemeral sessions are gone)
  std::vector<EngineSequence*> seqs;
  std::vector<int32_t> tokens;
  for (Generation* gen : batch) {
    seqs.push_back(gen->session->sequence.get());
    tokens.push_back(gen->next_token);
  }
  snap_batch_ = static_cast<int64_t>(batch.size());
  // Every generation samples where the engine does: on its device (logprobs computed there too),
  // or on the host from the step's logits.
  const bool on_device = engine_->SamplesOnDevice();
  bool any_logprobs = false;
  std::vector<SamplingParams> params;
  for (const Generation* gen : batch) {
    any_logprobs = any_logprobs || gen->params.return_logprobs;
    params.push_back(gen->params.sampling);
  }
  std::vector<int32_t> device_ids(batch.size());
  std::vector<float> device_logprobs(batch.size());
  const absl::Time start = absl::Now();
  absl::Status status =
      on_device ? engine_->DecodeAndSample(seqs, tokens, params, device_ids.data(), nullptr,
                                           any_logprobs ? device_logprobs.data() : nullptr)
                : engine_->Decode(seqs, tokens, logits_.data());
  if (!status.ok()) {
    if (CheckDeviceFault()) return;
    // The sequences' caches may be half-written: their sessions cannot continue.
    for (Generation* gen : batch) {
      Session* session = gen->session;
      const bool ephemeral = session->ephemeral;  // then FailGeneration frees it
      FailGeneration(*gen, absl::InternalError(absl::StrCat(
                               "decode step failed (the session was closed): ", status.message())));
      if (!ephemeral) sessions_.Remove(session);
    }
    return;
  }
  if (observer_ != nullptr) {
    observer_->OnDecodeStep(static_cast<int>(batch.size()), Seconds(absl::Now() - start));
  }
  const int vocab = engine_->info().vocab_size;
  for (size_t i = 0; i < batch.size(); ++i) {
    Generation& gen = *batch[i];
    float logprob = on_device ? device_logprobs[i] : 0.0f;
    const int32_t token = on_device
                              ? device_ids[i]
                              : gen.sampler.Sample(logits_.data() + i * vocab, vocab,
                                                   gen.params.return_logprobs ? &logprob : nullptr);
    Emit(gen, token, logprob);
  }
}

void DecodeScheduler::Emit(Generation& gen, int32_t token, float logprob) {
  const absl::Time now = absl::Now();
  ++gen.generated;
  ++snap_tokens_;
  gen.next_token = token;
  if (gen.generated == 1) gen.first_token = now;
  gen.last_token = now;
  GeneratedToken out;
  out.id = token;
  out.logprob = logprob;
  if (gen.text != nullptr) out.text = gen.text->Push(token);
  std::optional<FinishReason> reason;
  if (gen.eos_ids.contains(token)) {
    reason = FinishReason::kEos;
  } else if (gen.stop_ids.contains(token)) {
    reason = FinishReason::kStop;
  } else if (gen.max_stop_bytes > 0) {
    gen.recent_text += out.text;
    for (const std::string& s : gen.params.stop) {
      if (!s.empty() && gen.recent_text.find(s) != std::string::npos) reason = FinishReason::kStop;
    }
    if (gen.recent_text.size() > 2 * gen.max_stop_bytes) {
      gen.recent_text.erase(0, gen.recent_text.size() - gen.max_stop_bytes);
    }
  }
  if (!reason.has_value() && gen.generated >= gen.max_new_tokens) reason = FinishReason::kLength;
  std::vector<GeneratedToken> tokens;
  tokens.push_back(std::move(out));
  gen.sink->Tokens(std::move(tokens));
  if (reason.has_value()) FinishGeneration(gen, *reason);
}

void DecodeScheduler::FinishGeneration(Generation& gen, FinishReason reason) {
  if (gen.done) return;
  Session& s = *gen.session;
  if (gen.decoding) {
    s.pending = {gen.next_token};
  } else {
    // Stopped while reading its input: what was prefilled stays in the context, the rest of the
    // new input is dropped, and the previous turn's unfed token is kept.
    const size_t from = std::min(gen.prefilled, gen.old_pending);
    s.pending.assign(gen.input.begin() + from, gen.input.begin() + gen.old_pending);
  }
  GenerationResult r;
  r.finish_reason = reason;
  r.prompt_tokens = gen.prompt_tokens;
  r.cached_tokens = gen.cached_tokens;
  r.generated_tokens = gen.generated;
  const AttentionStats stats = s.sequence->stats();
  const int64_t total = stats.tokens_total - gen.stats_at_start.tokens_total;
  const int64_t exact = stats.tokens_attended_exact - gen.stats_at_start.tokens_attended_exact;
  r.mean_sparsity = total > 0 ? static_cast<double>(exact) / total : 1.0;
  const absl::Time arrival =
      gen.params.arrival == absl::InfinitePast() ? gen.started : gen.params.arrival;
  if (gen.started != absl::InfinitePast()) r.queue_seconds = Seconds(gen.started - arrival);
  if (gen.generated > 0) {
    r.time_to_first_token_seconds = Seconds(gen.first_token - arrival);
    r.decode_seconds = Seconds(gen.last_token - gen.first_token);
  }
  if (gen.text != nullptr) r.text_tail = gen.text->Flush();
  // Reported before the final message, so a client that has it can already see it counted.
  if (observer_ != nullptr) {
    FinishedGeneration finished;
    finished.result = r;
    finished.attention = StatsSince(stats, gen.stats_at_start);
    finished.mode = s.attention.mode;
    finished.duration_seconds =
        arrival == absl::InfinitePast() ? 0.0 : Seconds(absl::Now() - arrival);
    observer_->OnGenerationFinished(finished);
  }
  gen.sink->Finish(r);
  EndGeneration(gen);
}

bool DecodeScheduler::CheckDeviceFault() {
  if (faulted()) return true;
  absl::Status device = engine_->DeviceStatus();
  if (device.ok()) return false;
  fault_ = device;
  faulted_ = true;
  // The handler first: by the time a client hears of the failure, the exit is under way.
  if (fault_handler_) fault_handler_(device);
  const absl::Status failed = FaultError(device);
  for (auto& gen : generations_) FailGeneration(*gen, failed);
  return true;
}

void DecodeScheduler::FailGeneration(Generation& gen, const absl::Status& status) {
  if (gen.done) return;
  Session& s = *gen.session;
  if (gen.decoding) {
    s.pending = {gen.next_token};
  } else {
    const size_t from = std::min(gen.prefilled, gen.old_pending);
    s.pending.assign(gen.input.begin() + from, gen.input.begin() + gen.old_pending);
  }
  gen.sink->Fail(status);
  EndGeneration(gen);
}

void DecodeScheduler::EndGeneration(Generation& gen) {
  gen.done = true;
  Session& s = *gen.session;
  s.active = nullptr;
  s.last_used = absl::Now();
  if (s.ephemeral) sessions_.Remove(&s);
}

void DecodeScheduler::EvictExpired() {
  for (Session* s : sessions_.Expired(absl::Now())) sessions_.Remove(s);
}

}  // namespace mpa::server
