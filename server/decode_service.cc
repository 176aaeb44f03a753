#include "server/decode_service.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <iterator>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "google/protobuf/descriptor.h"
#include "server/request_parser.h"
#include "server/session_id.h"
#include "server/status_translation.h"

namespace mpa::server {
namespace v1 = ::multipole::v1;

namespace {

// Request limits on stop conditions (see the sampling.stop comment in decode.proto).
constexpr int kMaxStopStrings = 16;
constexpr size_t kMaxStopStringBytes = 256;
constexpr int kMaxStopTokenIds = 64;

v1::AttentionMode ToProtoMode(AttentionMode mode) {
  switch (mode) {
    case AttentionMode::kDense:
      return v1::ATTENTION_MODE_DENSE;
    case AttentionMode::kMultipole:
      return v1::ATTENTION_MODE_MULTIPOLE;
    case AttentionMode::kExactOnly:
      return v1::ATTENTION_MODE_EXACT_ONLY;
    case AttentionMode::kQuest:
      return v1::ATTENTION_MODE_QUEST;
  }
  return v1::ATTENTION_MODE_UNSPECIFIED;
}

v1::FinishReason FinishReasonToProto(FinishReason reason) {
  switch (reason) {
    case FinishReason::kLength:
      return v1::FINISH_REASON_LENGTH;
    case FinishReason::kStop:
      return v1::FINISH_REASON_STOP;
    case FinishReason::kEos:
      return v1::FINISH_REASON_EOS;
    case FinishReason::kCancelled:
      return v1::FINISH_REASON_CANCELLED;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

void SessionInfoToProto(const SessionInfo& info, v1::GetSessionResponse* out) {
  out->set_session_id(info.session_id);
  out->set_context_tokens(info.context_tokens);
  out->set_generating(info.generating);
  out->set_idle_seconds(info.idle_seconds);
  out->set_ttl_seconds(info.ttl_seconds);
  AttentionToProto(info.attention, out->mutable_attention());
}

absl::Status CheckIds(absl::Span<const int32_t> ids, int vocab, absl::string_view field) {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s[%d]: token id %d is outside the vocabulary [0, %d)", field, i, ids[i], vocab));
    }
  }
  return absl::OkStatus();
}

// ToGrpcStatus, reporting errors to the observer (may be null): every status an RPC of the
// service ends with passes here. generate: the RPC is a Generate call.
grpc::Status Translate(const absl::Status& status, ServerObserver* observer,
                       bool generate = false) {
  if (observer != nullptr && !status.ok()) observer->OnRequestError(status.code(), generate);
  return ToGrpcStatus(status);
}

// The Generate stream. The scheduler (engine thread) pushes into it without blocking: new
// tokens merge into one pending message while a write is in flight, so memory per stream stays
// bounded by the generation itself and a slow reader never holds up the engine. The reactor
// calls back (OnWriteDone/OnCancel/OnDone) on gRPC's threads; all state is under mu_.
class GenerateStream : public GenerationSink, public std::enable_shared_from_this<GenerateStream> {
 public:
  class Reactor : public grpc::ServerWriteReactor<v1::GenerateResponse> {
   public:
    Reactor(std::shared_ptr<GenerateStream> stream, OpenStreams* open)
        : stream_(std::move(stream)), open_(open) {
      open_->Add();
    }
    void OnWriteDone(bool ok) override { stream_->OnWriteDone(ok); }
    void OnCancel() override { stream_->OnCancel(); }
    void OnDone() override {
      stream_->Detach();
      stream_->ReportClosed();
      OpenStreams* open = open_;
      delete this;
      open->Remove();
    }

   private:
    std::shared_ptr<GenerateStream> stream_;
    OpenStreams* open_;
  };

  // closed: called once, on a gRPC thread, with the session id when a stream the scheduler
  // admitted (Start) is done: its final status sent, or its client gone.
  GenerateStream(ServerObserver* observer, std::function<void(std::string)> closed)
      : observer_(observer), closed_(std::move(closed)) {}

  void Attach(Reactor* reactor) {
    std::lock_guard<std::mutex> lock(mu_);
    reactor_ = reactor;
  }

  void Start(const std::string& session_id) override {
    bool closed_already;
    {
      std::lock_guard<std::mutex> lock(mu_);
      started_session_ = session_id;
      closed_already = closed_reported_;
      pending_.set_session_id(session_id);
      has_pending_ = true;
      MaybeWriteLocked();
    }
    if (closed_already) closed_(session_id);
  }
  void Tokens(std::vector<GeneratedToken> tokens) override {
    std::lock_guard<std::mutex> lock(mu_);
    for (GeneratedToken& t : tokens) {
      v1::GeneratedToken* out = pending_.add_tokens();
      out->set_id(t.id);
      out->set_text(std::move(t.text));
      if (return_logprobs_) out->set_logprob(t.logprob);
    }
    has_pending_ = true;
    MaybeWriteLocked();
  }
  void Finish(const GenerationResult& r) override {
    std::lock_guard<std::mutex> lock(mu_);
    v1::GenerateResult* out = pending_.mutable_result();
    out->set_finish_reason(FinishReasonToProto(r.finish_reason));
    out->mutable_usage()->set_prompt_tokens(r.prompt_tokens);
    out->mutable_usage()->set_cached_tokens(r.cached_tokens);
    out->mutable_usage()->set_generated_tokens(r.generated_tokens);
    out->mutable_stats()->set_mean_sparsity(r.mean_sparsity);
    out->mutable_stats()->set_time_to_first_token_seconds(r.time_to_first_token_seconds);
    out->mutable_stats()->set_decode_seconds(r.decode_seconds);
    out->mutable_stats()->set_queue_seconds(r.queue_seconds);
    out->set_text_tail(r.text_tail);
    has_pending_ = true;
    finish_status_ = grpc::Status::OK;
    MaybeWriteLocked();
  }
  void Fail(const absl::Status& status) override {
    const grpc::Status translated = Translate(status, observer_, /*generate=*/true);
    std::lock_guard<std::mutex> lock(mu_);
    finish_status_ = translated;
    MaybeWriteLocked();
  }
  bool cancelled() const override { return cancelled_.load(); }
  bool reports_close() const override { return true; }

  void set_return_logprobs(bool v) { return_logprobs_ = v; }

 private:
  void OnWriteDone(bool ok) {
    std::lock_guard<std::mutex> lock(mu_);
    write_in_flight_ = false;
    if (!ok) {
      // The client is gone (or cancelled): nothing more can be delivered.
      cancelled_ = true;
      FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "the stream was cancelled"));
      return;
    }
    MaybeWriteLocked();
  }
  void OnCancel() {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_ = true;
    // With a write in flight, OnWriteDone(false) follows and finishes the call.
    if (!write_in_flight_) {
      FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "the stream was cancelled"));
    }
  }
  void Detach() {
    std::lock_guard<std::mutex> lock(mu_);
    reactor_ = nullptr;
  }
  // After Detach (gRPC is done with the call). If gRPC ends the call (a client gone) before the
  // scheduler admits the generation, Start reports the close instead.
  void ReportClosed() {
    std::string session;
    {
      std::lock_guard<std::mutex> lock(mu_);
      closed_reported_ = true;
      session = started_session_;
    }
    if (!session.empty()) closed_(session);
  }
  void FinishLocked(const grpc::Status& status) {
    if (finish_called_ || reactor_ == nullptr) return;
    finish_called_ = true;
    reactor_->Finish(status);
  }
  // At most one write in flight; the pending message is written when the previous one is done,
  // and the call finishes once nothing is pending.
  void MaybeWriteLocked() {
    if (reactor_ == nullptr || finish_called_ || write_in_flight_) return;
    if (has_pending_ &&
        (!finish_status_.has_value() || finish_status_->ok() || pending_.tokens_size() > 0)) {
      in_flight_ = std::move(pending_);
      pending_.Clear();
      has_pending_ = false;
      write_in_flight_ = true;
      reactor_->StartWrite(&in_flight_);
      return;
    }
    if (finish_status_.has_value()) FinishLocked(*finish_status_);
  }

  std::mutex mu_;
  Reactor* reactor_ = nullptr;
  v1::GenerateResponse in_flight_;  // owned here until OnWriteDone
  v1::GenerateResponse pending_;
  bool has_pending_ = false;
  bool write_in_flight_ = false;
  bool finish_called_ = false;
  std::optional<grpc::Status> finish_status_;
  std::atomic<bool> cancelled_{false};
  bool return_logprobs_ = false;
  std::string started_session_;  // set by Start: the scheduler admitted the generation
  bool closed_reported_ = false;
  ServerObserver* const observer_;  // may be null
  const std::function<void(std::string)> closed_;
};

// The index of the DecodeService's method `name` among the generated Service's methods, which
// are registered in their order in decode.proto.
int MethodIndex(absl::string_view name) {
  const google::protobuf::ServiceDescriptor* service =
      v1::GenerateRequest::descriptor()->file()->FindServiceByName("DecodeService");
  const google::protobuf::MethodDescriptor* method =
      service == nullptr ? nullptr : service->FindMethodByName(std::string(name));
  if (method == nullptr) {
    std::fprintf(stderr, "decode_service: decode.proto has no method DecodeService.%.*s\n",
                 static_cast<int>(name.size()), name.data());
    std::abort();
  }
  return method->index();
}

// A write reactor that only finishes with an error (requests refused before admission).
class RefusedStream : public grpc::ServerWriteReactor<v1::GenerateResponse> {
 public:
  RefusedStream(const grpc::Status& status, OpenStreams* open) : open_(open) {
    open_->Add();
    Finish(status);
  }
  void OnDone() override {
    OpenStreams* open = open_;
    delete this;
    open->Remove();
  }

 private:
  OpenStreams* open_;
};

}  // namespace

DecodeService::DecodeService(DecodeScheduler* scheduler, ServerObserver* observer,
                             int64_t max_text_bytes, const ApiKeys* api_keys)
    : scheduler_(scheduler), observer_(observer), api_keys_(api_keys) {
  limits_.max_prompt_tokens = scheduler_->max_prompt_tokens();
  limits_.max_text_bytes =
      max_text_bytes > 0 ? max_text_bytes : DefaultMaxTextBytes(limits_.max_prompt_tokens);
  // The handlers are the callback API's own (the generated WithRawCallbackMethod_* classes use
  // them too), with the request as raw bytes and the response typed: only the request's parsing
  // moves here, responses are still serialized by gRPC.
  RegisterUnary("CreateSession", &DecodeService::HandleCreateSession);
  MarkMethodRawCallback(
      MethodIndex("Generate"),
      new grpc::internal::CallbackServerStreamingHandler<grpc::ByteBuffer, v1::GenerateResponse>(
          [this](grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) {
            return HandleGenerate(context, *request);
          }));
  RegisterUnary("CancelGeneration", &DecodeService::HandleCancelGeneration);
  RegisterUnary("CloseSession", &DecodeService::HandleCloseSession);
  RegisterUnary("GetSession", &DecodeService::HandleGetSession);
  RegisterUnary("GetModelInfo", &DecodeService::HandleGetModelInfo);
}

template <typename Request, typename Response>
void DecodeService::RegisterUnary(absl::string_view name, UnaryMethod<Request, Response> method) {
  auto handler = [this, method](grpc::CallbackServerContext* context, const grpc::ByteBuffer* bytes,
                                Response* response) {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    absl::StatusOr<Caller> caller = Identify(*context);
    if (!caller.ok()) {
      reactor->Finish(Translate(caller.status(), observer_));
      return reactor;
    }
    Request request;
    if (absl::Status s = ParseRequest(*bytes, &request); !s.ok()) {
      reactor->Finish(Translate(s, observer_));
      return reactor;
    }
    (this->*method)(reactor, *std::move(caller), request, response);
    return reactor;
  };
  MarkMethodRawCallback(
      MethodIndex(name),
      new grpc::internal::CallbackUnaryHandler<grpc::ByteBuffer, Response>(std::move(handler)));
}

absl::StatusOr<DecodeService::Caller> DecodeService::Identify(
    const grpc::CallbackServerContext& context) const {
  Caller caller;
  const auto& metadata = context.client_metadata();
  if (api_keys_ != nullptr) {
    std::optional<absl::string_view> authorization;
    if (auto it = metadata.find("authorization"); it != metadata.end()) {
      authorization = absl::string_view(it->second.data(), it->second.size());
    }
    absl::StatusOr<const ApiKey*> key = api_keys_->Authenticate(authorization);
    if (!key.ok()) return key.status();
    caller.owner = (*key)->owner;
  }
  // Only after the key check: a caller without a key learns nothing about its metadata.
  auto [first, last] = metadata.equal_range(kSessionIdMetadata);
  if (first != last) {
    if (std::next(first) != last) {
      return absl::InvalidArgumentError(absl::StrCat(kSessionIdMetadata, " metadata: sent ",
                                                     std::distance(first, last),
                                                     " times; a call belongs to one session"));
    }
    if (first->second.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          kSessionIdMetadata, " metadata: empty; send the session's id, or no metadata"));
    }
    caller.routed_session_id.emplace(first->second.data(), first->second.size());
  }
  return caller;
}

void OpenStreams::Add() {
  std::lock_guard<std::mutex> lock(mu_);
  ++count_;
}

void OpenStreams::Remove() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    --count_;
    if (count_ > 0) return;
  }
  none_cv_.notify_all();
}

int OpenStreams::count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return count_;
}

bool OpenStreams::WaitForNone(absl::Time deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  return none_cv_.wait_until(lock, absl::ToChronoTime(deadline), [this] { return count_ == 0; });
}

void AttentionToProto(const AttentionOptions& options, v1::AttentionConfig* out) {
  out->set_mode(ToProtoMode(options.mode));
  out->set_token_budget(options.multipole.token_budget);
  if (options.multipole.token_budget_fraction > 0.0f) {
    out->set_token_budget_fraction(options.multipole.token_budget_fraction);
  }
}

absl::StatusOr<AttentionOverride> ParseAttentionConfig(const v1::AttentionConfig& config,
                                                       absl::string_view field) {
  AttentionOverride o;
  switch (config.mode()) {
    case v1::ATTENTION_MODE_UNSPECIFIED:
      break;
    case v1::ATTENTION_MODE_DENSE:
      o.mode = AttentionMode::kDense;
      break;
    case v1::ATTENTION_MODE_MULTIPOLE:
      o.mode = AttentionMode::kMultipole;
      break;
    case v1::ATTENTION_MODE_EXACT_ONLY:
      o.mode = AttentionMode::kExactOnly;
      break;
    case v1::ATTENTION_MODE_QUEST:
      o.mode = AttentionMode::kQuest;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".mode: unknown attention mode ", static_cast<int>(config.mode())));
  }
  if (config.has_token_budget()) {
    if (config.token_budget() < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".token_budget: ", config.token_budget(), " must be at least 1"));
    }
    o.token_budget = config.token_budget();
  }
  if (config.has_token_budget_fraction()) {
    const float f = config.token_budget_fraction();
    if (!(f > 0.0f && f <= 1.0f)) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".token_budget_fraction: ", f, " must be in (0, 1]"));
    }
    o.token_budget_fraction = f;
  }
  return o;
}

int64_t DefaultMaxTextBytes(int64_t max_prompt_tokens) {
  constexpr int64_t kBytesPerToken = 16;
  constexpr int64_t kMaxDefault = int64_t{1} << 20;
  return std::clamp<int64_t>(kBytesPerToken * max_prompt_tokens, 1, kMaxDefault);
}

int64_t MaxRequestBytes(const RequestLimits& limits) {
  // A packed id takes at most 5 bytes (ids are below 2^31); unpacked, one more for its tag.
  constexpr int64_t kBytesPerId = 6;
  // session_id, 16 stop strings of 256 bytes, 64 stop ids and the scalars need under 8 KiB.
  constexpr int64_t kOtherFields = 64 << 10;
  return std::max(limits.max_text_bytes, kBytesPerId * limits.max_prompt_tokens) + kOtherFields;
}

absl::StatusOr<GenerateParams> ParseGenerateRequest(const v1::GenerateRequest& request,
                                                    const Engine& engine,
                                                    const RequestLimits& limits) {
  GenerateParams p;
  p.arrival = absl::Now();
  p.session_id = request.session_id();
  const EngineInfo& info = engine.info();
  // Sizes first: the text is tokenized only once every cheap check has passed.
  switch (request.input_case()) {
    case v1::GenerateRequest::kText:
      if (request.text().empty()) {
        return absl::InvalidArgumentError("text: empty input; send some text or token_ids");
      }
      if (static_cast<int64_t>(request.text().size()) > limits.max_text_bytes) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "text: %d bytes exceed the limit of %d bytes (--max_request_text_bytes)",
            request.text().size(), limits.max_text_bytes));
      }
      break;
    case v1::GenerateRequest::kTokenIds: {
      if (request.token_ids().ids().empty()) {
        return absl::InvalidArgumentError("token_ids.ids: empty input; send at least one token");
      }
      if (request.token_ids().ids_size() > limits.max_prompt_tokens) {
        return absl::InvalidArgumentError(
            absl::StrFormat("token_ids.ids: %d input tokens exceed the limit of %d "
                            "(--max_prompt_tokens)",
                            request.token_ids().ids_size(), limits.max_prompt_tokens));
      }
      p.input.assign(request.token_ids().ids().begin(), request.token_ids().ids().end());
      if (absl::Status s = CheckIds(p.input, info.vocab_size, "token_ids.ids"); !s.ok()) return s;
      break;
    }
    default:
      return absl::InvalidArgumentError("input: neither text nor token_ids is set");
  }

  const v1::SamplingParams& s = request.sampling();
  if (!(s.temperature() >= 0.0f) || !std::isfinite(s.temperature())) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling.temperature: ", s.temperature(), " must be finite and >= 0"));
  }
  p.sampling.temperature = s.temperature();
  if (s.has_top_p()) {
    if (!(s.top_p() > 0.0f && s.top_p() <= 1.0f)) {
      return absl::InvalidArgumentError(
          absl::StrCat("sampling.top_p: ", s.top_p(), " must be in (0, 1]"));
    }
    p.sampling.top_p = s.top_p();
  }
  if (s.top_k() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling.top_k: ", s.top_k(), " must be >= 0 (0: off)"));
  }
  p.sampling.top_k = s.top_k();
  p.sampling.seed = s.seed();
  if (s.has_max_new_tokens()) {
    if (s.max_new_tokens() < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("sampling.max_new_tokens: ", s.max_new_tokens(), " must be >= 0"));
    }
    p.max_new_tokens = s.max_new_tokens();
  }
  // Every generated token is checked against every stop string on the engine thread, so their
  // number and length are bounded to keep one request from slowing every stream in the batch.
  if (s.stop_size() > kMaxStopStrings) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling.stop: ", s.stop_size(), " stop strings; at most ", kMaxStopStrings));
  }
  if (s.stop_token_ids_size() > kMaxStopTokenIds) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sampling.stop_token_ids: ", s.stop_token_ids_size(), " ids; at most ", kMaxStopTokenIds));
  }
  for (int i = 0; i < s.stop_size(); ++i) {
    if (s.stop(i).size() > kMaxStopStringBytes) {
      return absl::InvalidArgumentError(absl::StrCat("sampling.stop[", i, "]: ", s.stop(i).size(),
                                                     " bytes; at most ", kMaxStopStringBytes));
    }
    if (s.stop(i).empty()) {
      return absl::InvalidArgumentError(absl::StrCat("sampling.stop[", i, "]: empty stop string"));
    }
    if (!info.has_tokenizer) {
      return absl::FailedPreconditionError(
          "sampling.stop: stop strings need a tokenizer and the served model has none; use "
          "stop_token_ids");
    }
    p.stop.push_back(s.stop(i));
  }
  p.stop_token_ids.assign(s.stop_token_ids().begin(), s.stop_token_ids().end());
  if (absl::Status st = CheckIds(p.stop_token_ids, info.vocab_size, "sampling.stop_token_ids");
      !st.ok()) {
    return st;
  }
  p.ignore_eos = s.ignore_eos();
  p.return_logprobs = request.return_logprobs();
  absl::StatusOr<AttentionOverride> attention =
      ParseAttentionConfig(request.attention(), "attention");
  if (!attention.ok()) return attention.status();
  p.attention = *attention;

  if (request.input_case() == v1::GenerateRequest::kText) {
    absl::StatusOr<std::vector<int32_t>> ids = engine.Encode(request.text(), false);
    if (!ids.ok()) return ids.status();
    p.input = std::move(*ids);
    Tokenizer::SpecialIds special = engine.special_ids();
    p.first_prefix = std::move(special.prefix);
    p.first_suffix = std::move(special.suffix);
    // Counted as on a context's first input, the longer form.
    const int64_t input_tokens =
        static_cast<int64_t>(p.input.size() + p.first_prefix.size() + p.first_suffix.size());
    if (input_tokens > limits.max_prompt_tokens) {
      return absl::InvalidArgumentError(
          absl::StrFormat("text: %d input tokens exceed the limit of %d (--max_prompt_tokens)",
                          input_tokens, limits.max_prompt_tokens));
    }
  }
  return p;
}

namespace {

absl::Status RoutingMismatch(absl::string_view session_id, absl::string_view routed) {
  return absl::InvalidArgumentError(absl::StrCat(
      kSessionIdMetadata, " metadata ", QuoteSessionId(routed), " differs from session_id ",
      QuoteSessionId(session_id),
      ": a proxy routes the call by the metadata, so both must name the same session"));
}

}  // namespace

absl::StatusOr<CreateSessionParams> ParseCreateSessionRequest(
    const v1::CreateSessionRequest& request, const std::optional<std::string>& routed) {
  absl::StatusOr<AttentionOverride> attention =
      ParseAttentionConfig(request.attention(), "attention");
  if (!attention.ok()) return attention.status();
  CreateSessionParams p;
  p.attention = *attention;
  if (!request.session_id().empty()) {
    if (absl::Status s = ValidateClientSessionId(request.session_id(), "session_id"); !s.ok()) {
      return s;
    }
    if (routed.has_value() && *routed != request.session_id()) {
      return RoutingMismatch(request.session_id(), *routed);
    }
    p.session_id = request.session_id();
  } else if (routed.has_value()) {
    const std::string field = absl::StrCat(kSessionIdMetadata, " metadata");
    if (absl::Status s = ValidateClientSessionId(*routed, field); !s.ok()) return s;
    p.session_id = *routed;
  }
  return p;
}

absl::Status CheckSessionId(absl::string_view session_id,
                            const std::optional<std::string>& routed) {
  if (session_id.empty()) return absl::InvalidArgumentError("session_id: empty");
  if (routed.has_value() && *routed != session_id) return RoutingMismatch(session_id, *routed);
  return absl::OkStatus();
}

absl::Status CheckGenerateRouting(absl::string_view session_id,
                                  const std::optional<std::string>& routed) {
  if (!routed.has_value()) return absl::OkStatus();
  if (session_id.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(kSessionIdMetadata, " metadata names session ", QuoteSessionId(*routed),
                     " but session_id is empty (a one-shot generation): set session_id to "
                     "continue that session, or send no ",
                     kSessionIdMetadata));
  }
  if (*routed != session_id) return RoutingMismatch(session_id, *routed);
  return absl::OkStatus();
}

void DecodeService::HandleCreateSession(grpc::ServerUnaryReactor* reactor, Caller caller,
                                        const v1::CreateSessionRequest& request,
                                        v1::CreateSessionResponse* response) {
  absl::StatusOr<CreateSessionParams> params =
      ParseCreateSessionRequest(request, caller.routed_session_id);
  if (!params.ok()) {
    reactor->Finish(Translate(params.status(), observer_));
    return;
  }
  scheduler_->CreateSession(
      std::move(caller.owner), params->attention, std::move(params->session_id),
      [reactor, response, observer = observer_](absl::StatusOr<SessionInfo> info) {
        if (info.ok()) {
          response->set_session_id(info->session_id);
          response->set_ttl_seconds(info->ttl_seconds);
        }
        reactor->Finish(Translate(info.status(), observer));
      });
}

grpc::ServerWriteReactor<v1::GenerateResponse>* DecodeService::HandleGenerate(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer& request_bytes) {
  auto refuse = [this](const absl::Status& status) {
    return new RefusedStream(Translate(status, observer_, /*generate=*/true), &open_streams_);
  };
  if (scheduler_->draining()) {
    return refuse(
        absl::UnavailableError("the server is shutting down: not accepting new requests"));
  }
  absl::StatusOr<Caller> caller = Identify(*context);
  if (!caller.ok()) return refuse(caller.status());
  v1::GenerateRequest request;
  if (absl::Status s = ParseRequest(request_bytes, &request); !s.ok()) return refuse(s);
  if (absl::Status s = CheckGenerateRouting(request.session_id(), caller->routed_session_id);
      !s.ok()) {
    return refuse(s);
  }
  absl::StatusOr<GenerateParams> params =
      ParseGenerateRequest(request, scheduler_->engine(), limits_);
  if (!params.ok()) return refuse(params.status());
  params->owner = caller->owner;
  auto stream = std::make_shared<GenerateStream>(
      observer_, [scheduler = scheduler_, owner = caller->owner](std::string session_id) {
        scheduler->StreamClosed(owner, std::move(session_id));
      });
  stream->set_return_logprobs(params->return_logprobs);
  auto* reactor = new GenerateStream::Reactor(stream, &open_streams_);
  stream->Attach(reactor);
  scheduler_->Generate(std::move(*params), stream);
  return reactor;
}

void DecodeService::HandleCancelGeneration(grpc::ServerUnaryReactor* reactor, Caller caller,
                                           const v1::CancelGenerationRequest& request,
                                           v1::CancelGenerationResponse* response) {
  if (absl::Status s = CheckSessionId(request.session_id(), caller.routed_session_id); !s.ok()) {
    reactor->Finish(Translate(s, observer_));
    return;
  }
  scheduler_->CancelGeneration(
      std::move(caller.owner), request.session_id(),
      [reactor, response, observer = observer_](absl::StatusOr<bool> cancelled) {
        if (cancelled.ok()) response->set_cancelled(*cancelled);
        reactor->Finish(Translate(cancelled.status(), observer));
      });
}

void DecodeService::HandleCloseSession(grpc::ServerUnaryReactor* reactor, Caller caller,
                                       const v1::CloseSessionRequest& request,
                                       v1::CloseSessionResponse* response) {
  if (absl::Status s = CheckSessionId(request.session_id(), caller.routed_session_id); !s.ok()) {
    reactor->Finish(Translate(s, observer_));
    return;
  }
  scheduler_->CloseSession(std::move(caller.owner), request.session_id(),
                           [reactor, observer = observer_](absl::Status status) {
                             reactor->Finish(Translate(status, observer));
                           });
}

void DecodeService::HandleGetSession(grpc::ServerUnaryReactor* reactor, Caller caller,
                                     const v1::GetSessionRequest& request,
                                     v1::GetSessionResponse* response) {
  if (absl::Status s = CheckSessionId(request.session_id(), caller.routed_session_id); !s.ok()) {
    reactor->Finish(Translate(s, observer_));
    return;
  }
  scheduler_->GetSession(
      std::move(caller.owner), request.session_id(),
      [reactor, response, observer = observer_](absl::StatusOr<SessionInfo> info) {
        if (info.ok()) SessionInfoToProto(*info, response);
        reactor->Finish(Translate(info.status(), observer));
      });
}

void DecodeService::HandleGetModelInfo(grpc::ServerUnaryReactor* reactor, Caller caller,
                                       const v1::GetModelInfoRequest& request,
                                       v1::GetModelInfoResponse* response) {
  const EngineInfo& info = scheduler_->engine().info();
  response->set_model_name(info.model_name);
  response->set_architecture(info.architecture);
  response->set_vocab_size(info.vocab_size);
  response->set_max_context_tokens(info.max_context_tokens);
  response->set_has_tokenizer(info.has_tokenizer);
  if (info.bos_id.has_value()) response->set_bos_token_id(*info.bos_id);
  for (int32_t id : info.eos_ids) response->add_eos_token_ids(id);
  response->set_max_sessions(scheduler_->options().max_sessions);
  response->set_max_prompt_tokens(scheduler_->max_prompt_tokens());
  response->set_max_total_tokens(scheduler_->max_total_tokens());
  response->set_max_request_text_bytes(limits_.max_text_bytes);
  response->set_kv_capacity_tokens(info.kv_capacity_tokens);
  response->set_kv_free_tokens(scheduler_->snapshot().kv_free_tokens);
  AttentionToProto(scheduler_->options().default_attention, response->mutable_default_attention());
  reactor->Finish(grpc::Status::OK);
}

}  // namespace mpa::server
