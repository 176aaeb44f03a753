// Test helper: one Generate call through the C++ stubs, read to the end.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "multipole/v1/decode.grpc.pb.h"

namespace mpa::server::testing {

struct StreamResult {
  std::vector<int32_t> ids;                               // every streamed token id, in order
  std::vector<float> logprobs;                            // and its logprob (0 unless asked)
  std::optional<::multipole::v1::GenerateResult> result;  // the final message's result
  grpc::Status status;
  int messages = 0;  // stream messages received (a message may carry several tokens)
};

// A request for max_new tokens after `ids` (EOS ignored), on `session` or one-shot.
inline ::multipole::v1::GenerateRequest IdsRequest(const std::vector<int32_t>& ids, int max_new,
                                                   const std::string& session = "") {
  ::multipole::v1::GenerateRequest r;
  r.set_session_id(session);
  for (int32_t id : ids) r.mutable_token_ids()->add_ids(id);
  r.mutable_sampling()->set_max_new_tokens(max_new);
  r.mutable_sampling()->set_ignore_eos(true);
  return r;
}

// Streams one generation to the end (60 s deadline). If first_token is given, it is incremented
// when the first token arrives. A non-empty api_key is sent as "authorization: Bearer <key>".
inline StreamResult Generate(::multipole::v1::DecodeService::Stub& stub,
                             const ::multipole::v1::GenerateRequest& request,
                             std::atomic<int>* first_token = nullptr,
                             const std::string& api_key = "") {
  StreamResult out;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  if (!api_key.empty()) context.AddMetadata("authorization", "Bearer " + api_key);
  auto reader = stub.Generate(&context, request);
  ::multipole::v1::GenerateResponse message;
  while (reader->Read(&message)) {
    ++out.messages;
    const bool first = out.ids.empty() && message.tokens_size() > 0;
    for (const auto& t : message.tokens()) {
      out.ids.push_back(t.id());
      out.logprobs.push_back(t.logprob());
    }
    if (first_token != nullptr && first) ++*first_token;
    if (message.has_result()) out.result = message.result();
  }
  out.status = reader->Finish();
  return out;
}

}  // namespace mpa::server::testing
