// The gRPC edge: DecodeService on the callback API. Requests are parsed (request_parser.h),
// validated and converted to native structs here (the only code that sees both protobuf and the
// scheduler), results are converted back, and every error passes through ToGrpcStatus.
#pragma once

#include <grpcpp/grpcpp.h>

#include <condition_variable>
#include <mutex>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "multipole/v1/decode.grpc.pb.h"
#include "server/api_keys.h"
#include "server/decode_scheduler.h"
#include "server/server_observer.h"
#include "server/types.h"

namespace mpa::server {

// Generate calls whose reactor gRPC has not yet released (OnDone): a stream counts from its
// start until its final status has been sent. Thread-safe.
class OpenStreams {
 public:
  void Add();
  void Remove();
  int count() const;
  // Blocks until no stream is open or the deadline passes; true if none is open.
  bool WaitForNone(absl::Time deadline);

 private:
  mutable std::mutex mu_;
  std::condition_variable none_cv_;
  int count_ = 0;
};

// Limits a request meets before any work is done for it.
struct RequestLimits {
  int64_t max_prompt_tokens = 0;  // input tokens of one request
  int64_t max_text_bytes = 0;     // bytes of GenerateRequest.text
};

// --max_request_text_bytes when the flag is 0: 16 bytes per prompt token (natural text of any
// language and tokenizer stays well under it, so the token limit is what a client meets), at
// most 1 MiB: texts are tokenized on gRPC's threads, and this bounds the time one takes there
// (about a quarter of a second per MiB on one core).
int64_t DefaultMaxTextBytes(int64_t max_prompt_tokens);

// The largest request message the limits allow: the larger input form (text bytes, or token
// ids at up to 6 bytes each) plus room for every other field (at most 16 stop strings of 256
// bytes, 64 stop ids, a session id and scalars). The server sets gRPC's receive limit to it,
// so gRPC refuses anything larger with RESOURCE_EXHAUSTED before it is parsed.
int64_t MaxRequestBytes(const RequestLimits& limits);

// Validates a GenerateRequest against the model and limits and converts it, tokenizing text
// once, last, after every cheap check. InvalidArgument naming the field and the limit;
// FailedPrecondition for text without a tokenizer.
absl::StatusOr<GenerateParams> ParseGenerateRequest(const multipole::v1::GenerateRequest& request,
                                                    const Engine& engine,
                                                    const RequestLimits& limits);
absl::StatusOr<AttentionOverride> ParseAttentionConfig(const multipole::v1::AttentionConfig& config,
                                                       absl::string_view field);
void AttentionToProto(const AttentionOptions& options, multipole::v1::AttentionConfig* out);

// A CreateSession request, checked.
struct CreateSessionParams {
  AttentionOverride attention;
  // The id the client chose (or the routing metadata proposed); empty: the server draws one.
  std::string session_id;
};

// CreateSessionRequest's checks: its attention settings and the new session's id, which is the
// request's session_id, else `routed` (the x-session-id metadata, see session_id.h; nullopt when
// the call has none), else none. Either one must pass ValidateClientSessionId, and when both are
// there they must be equal. InvalidArgument naming the field otherwise.
absl::StatusOr<CreateSessionParams> ParseCreateSessionRequest(
    const multipole::v1::CreateSessionRequest& request,
    const std::optional<std::string>& routed = std::nullopt);
// The session id of CancelGeneration, CloseSession and GetSession: InvalidArgument when empty
// (an unknown id is the scheduler's NOT_FOUND), or when the x-session-id metadata (`routed`)
// names another session.
absl::Status CheckSessionId(absl::string_view session_id,
                            const std::optional<std::string>& routed = std::nullopt);
// A Generate's session id against its x-session-id metadata: InvalidArgument when the metadata
// names another session, or a session for a one-shot generation (empty session_id).
absl::Status CheckGenerateRouting(absl::string_view session_id,
                                  const std::optional<std::string>& routed);

// The DecodeService on gRPC's callback API. Each method is registered with a handler that
// receives the request's bytes (gRPC's own deserializer would turn a request that does not parse
// into UNIMPLEMENTED with an empty message, see request_parser.h): the caller is authenticated
// first, then the bytes are parsed, and only a parsed request reaches the Handle* method; either
// failure ends the call with its status, counted by the observer like every other error.
// (HandleGenerate, the one streaming method, takes the bytes and does the same itself, after its
// drain check.)
class DecodeService final : public multipole::v1::DecodeService::Service {
 public:
  // observer (may be null; outlives the service) hears of every refused or failed RPC.
  // max_text_bytes: GenerateRequest.text's limit (0: DefaultMaxTextBytes). api_keys (may be
  // null: every call is let in, as the same anonymous owner; outlives the service): every RPC
  // must carry "authorization: Bearer <key>" with one of them, else UNAUTHENTICATED, and a
  // session belongs to the key that created it.
  explicit DecodeService(DecodeScheduler* scheduler, ServerObserver* observer = nullptr,
                         int64_t max_text_bytes = 0, const ApiKeys* api_keys = nullptr);

  const RequestLimits& limits() const { return limits_; }

  // Generate streams still open. On drain, once the scheduler is idle, wait for these to end
  // before shutting the gRPC server down: then every stream has sent its last message and
  // status, and the shutdown needs no grace period (see server_main.cc).
  OpenStreams& open_streams() { return open_streams_; }

 private:
  // Who calls, and the session the call is routed by.
  struct Caller {
    std::string owner;  // the API key's owner string ("" without keys)
    // The x-session-id metadata (session_id.h); nullopt when the call has none.
    std::optional<std::string> routed_session_id;
  };

  // A unary method, called with its caller and parsed request; it finishes `reactor`. The
  // request lives only for the call (what outlives it is copied).
  template <typename Request, typename Response>
  using UnaryMethod = void (DecodeService::*)(grpc::ServerUnaryReactor* reactor, Caller caller,
                                              const Request& request, Response* response);
  // Registers `method` as the DecodeService's method `name` behind the bytes handler.
  template <typename Request, typename Response>
  void RegisterUnary(absl::string_view name, UnaryMethod<Request, Response> method);

  void HandleCreateSession(grpc::ServerUnaryReactor* reactor, Caller caller,
                           const multipole::v1::CreateSessionRequest& request,
                           multipole::v1::CreateSessionResponse* response);
  grpc::ServerWriteReactor<multipole::v1::GenerateResponse>* HandleGenerate(
      grpc::CallbackServerContext* context, const grpc::ByteBuffer& request_bytes);
  void HandleCancelGeneration(grpc::ServerUnaryReactor* reactor, Caller caller,
                              const multipole::v1::CancelGenerationRequest& request,
                              multipole::v1::CancelGenerationResponse* response);
  void HandleCloseSession(grpc::ServerUnaryReactor* reactor, Caller caller,
                          const multipole::v1::CloseSessionRequest& request,
                          multipole::v1::CloseSessionResponse* response);
  void HandleGetSession(grpc::ServerUnaryReactor* reactor, Caller caller,
                        const multipole::v1::GetSessionRequest& request,
                        multipole::v1::GetSessionResponse* response);
  void HandleGetModelInfo(grpc::ServerUnaryReactor* reactor, Caller caller,
                          const multipole::v1::GetModelInfoRequest& request,
                          multipole::v1::GetModelInfoResponse* response);

  // The caller: Unauthenticated when keys are required and the call carries none that matches;
  // then InvalidArgument when the call has more than one x-session-id or an empty one.
  absl::StatusOr<Caller> Identify(const grpc::CallbackServerContext& context) const;

  DecodeScheduler* scheduler_;
  ServerObserver* observer_;
  const ApiKeys* api_keys_;  // may be null
  RequestLimits limits_;
  OpenStreams open_streams_;
};

}  // namespace mpa::server
