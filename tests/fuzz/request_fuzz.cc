// libFuzzer target: any bytes as the body of a DecodeService request (the first byte picks the
// method) go through what the server does with them before any work: ParseRequestBytes, then the
// request's own validation (ParseCreateSessionRequest, ParseGenerateRequest against a scripted
// engine, CheckSessionId). Never a crash; libprotobuf never logs; the parser accepts exactly
// what protobuf accepts and refuses with one of its two messages; a request that passes
// validation meets every limit it promises (sizes, ids in the vocabulary, sane sampling values).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/stubs/logging.h"
#include "multipole/v1/decode.pb.h"
#include "server/decode_service.h"
#include "server/request_parser.h"
#include "server/session_id.h"
#include "tests/server/fake_engine.h"

namespace {

namespace v1 = ::multipole::v1;
using mpa::server::testing::FakeEngine;

// Set while protobuf's own parser runs as the reference: it logs when it refuses a string field.
bool reference_parse = false;

void Check(bool condition, const char* what) {
  if (condition) return;
  std::fprintf(stderr, "request_fuzz: violated: %s\n", what);
  std::abort();
}

void OnProtobufLog(google::protobuf::LogLevel, const char* file, int line,
                   const std::string& message) {
  if (reference_parse) return;
  std::fprintf(stderr, "request_fuzz: libprotobuf logged (%s:%d): %s\n", file, line,
               message.c_str());
  std::abort();
}

// Parses `bytes` as `out` and checks the verdict against protobuf's own parser.
bool Parse(absl::string_view bytes, google::protobuf::Message* out) {
  const absl::Status status = mpa::server::ParseRequestBytes(bytes, out);
  std::unique_ptr<google::protobuf::Message> reference(out->New());
  reference_parse = true;
  const bool reference_ok = reference->ParseFromArray(bytes.data(), static_cast<int>(bytes.size()));
  reference_parse = false;
  Check(status.ok() == reference_ok, "parsed exactly when protobuf parses");
  if (!status.ok()) {
    Check(status.code() == absl::StatusCode::kInvalidArgument, "refusal is INVALID_ARGUMENT");
    const std::string not_valid =
        absl::StrCat("request body is not a valid ", out->GetDescriptor()->name());
    Check(
        status.message() == not_valid || (absl::StartsWith(status.message(), "request field '") &&
                                          absl::EndsWith(status.message(), "' is not valid UTF-8")),
        "refusal names the problem");
    return false;
  }
  Check(out->SerializeAsString() == reference->SerializeAsString(), "same message as protobuf");
  return true;
}

void CheckIds(const std::vector<int32_t>& ids, int vocab) {
  for (int32_t id : ids) Check(id >= 0 && id < vocab, "token id inside the vocabulary");
}

void Generate(absl::string_view bytes) {
  static FakeEngine* engine = new FakeEngine();
  static const mpa::server::RequestLimits limits = [] {
    mpa::server::RequestLimits l;
    l.max_prompt_tokens = 512;
    l.max_text_bytes = mpa::server::DefaultMaxTextBytes(l.max_prompt_tokens);
    return l;
  }();
  v1::GenerateRequest request;
  if (!Parse(bytes, &request)) return;
  absl::StatusOr<mpa::server::GenerateParams> p =
      mpa::server::ParseGenerateRequest(request, *engine, limits);
  if (!p.ok()) {
    Check(!p.status().message().empty(), "a refusal says why");
    return;
  }
  const int vocab = engine->info().vocab_size;
  Check(!p->input.empty(), "input is not empty");
  Check(static_cast<int64_t>(p->input.size() + p->first_prefix.size() + p->first_suffix.size()) <=
            limits.max_prompt_tokens,
        "input within --max_prompt_tokens");
  CheckIds(p->input, vocab);
  CheckIds(p->stop_token_ids, vocab);
  Check(p->stop.size() <= 16 && p->stop_token_ids.size() <= 64, "stop conditions bounded");
  for (const std::string& s : p->stop) Check(!s.empty() && s.size() <= 256, "stop string size");
  Check(std::isfinite(p->sampling.temperature) && p->sampling.temperature >= 0.0f,
        "temperature finite and >= 0");
  Check(p->sampling.top_p > 0.0f && p->sampling.top_p <= 1.0f, "top_p in (0, 1]");
  Check(p->sampling.top_k >= 0, "top_k >= 0");
  Check(p->sampling.Validate().ok(), "the sampler accepts the sampling values");
  Check(!p->max_new_tokens.has_value() || *p->max_new_tokens >= 0, "max_new_tokens >= 0");
  if (p->attention.token_budget.has_value()) Check(*p->attention.token_budget >= 1, "budget");
  if (p->attention.token_budget_fraction.has_value()) {
    const float f = *p->attention.token_budget_fraction;
    Check(f > 0.0f && f <= 1.0f, "budget fraction in (0, 1]");
  }
}

void CreateSession(absl::string_view bytes) {
  v1::CreateSessionRequest request;
  if (!Parse(bytes, &request)) return;
  absl::StatusOr<mpa::server::CreateSessionParams> p =
      mpa::server::ParseCreateSessionRequest(request);
  if (!p.ok()) return;
  const mpa::server::AttentionOverride& o = p->attention;
  if (o.token_budget.has_value()) Check(*o.token_budget >= 1, "budget >= 1");
  if (o.token_budget_fraction.has_value()) {
    Check(*o.token_budget_fraction > 0.0f && *o.token_budget_fraction <= 1.0f, "fraction");
  }
  // A chosen id is taken only if it is a valid one (and then as it is).
  Check(p->session_id == request.session_id(), "the id is the request's");
  Check(p->session_id.empty() ||
            mpa::server::ValidateClientSessionId(p->session_id, "session_id").ok(),
        "only a valid id is taken");
}

template <typename Request>
void SessionIdRequest(absl::string_view bytes) {
  Request request;
  if (!Parse(bytes, &request)) return;
  const absl::Status s = mpa::server::CheckSessionId(request.session_id());
  Check(s.ok() == !request.session_id().empty(), "only an empty session id is refused");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const bool installed = [] {
    google::protobuf::SetLogHandler(OnProtobufLog);
    return true;
  }();
  (void)installed;
  if (size == 0) return 0;
  const absl::string_view bytes(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 6) {
    case 0:
      CreateSession(bytes);
      break;
    case 1:
      Generate(bytes);
      break;
    case 2:
      SessionIdRequest<v1::CancelGenerationRequest>(bytes);
      break;
    case 3:
      SessionIdRequest<v1::CloseSessionRequest>(bytes);
      break;
    case 4:
      SessionIdRequest<v1::GetSessionRequest>(bytes);
      break;
    case 5: {
      v1::GetModelInfoRequest request;
      Parse(bytes, &request);
      break;
    }
  }
  return 0;
}
