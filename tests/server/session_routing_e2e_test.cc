// End-to-end: session ids a client chooses and the x-session-id routing metadata, against the real
// mpa_server (with API keys) on a free loopback port, as a careless or hostile client would send
// them: ids of the wrong length or characters, an id already open, metadata that disagrees with
// the request, twice, empty, or on a one-shot generation; ids per API key (the same id under two
// keys is two sessions, and nothing tells one key about the other's); the metadata as the
// proposer of a new session's id; mpa_client sending it.
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "multipole/v1/decode.grpc.pb.h"
#include "tests/server/server_process.h"

namespace mpa::server {
namespace {

namespace v1 = ::multipole::v1;
using testing::ChildProcess;
using ::testing::HasSubstr;
using ::testing::MatchesRegex;

const char kModelDir[] = MPA_SOURCE_DIR "/../shared/models/stories260K";
constexpr char kKeyA[] = "routing-key-a-5d1c9e7f3b";
constexpr char kKeyB[] = "routing-key-b-8a2e4c6f0d";

// The metadata of one call: an API key, and x-session-id values (each one is sent).
struct CallMetadata {
  std::string key = kKeyA;
  std::vector<std::string> routed;
};

class SessionRoutingE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(std::string(kModelDir) + "/config.json")) {
      GTEST_SKIP() << "stories260K not found at " << kModelDir;
    }
    keys_file_ = absl::StrCat(::testing::TempDir(), "/session_routing_keys_", getpid());
    std::ofstream(keys_file_) << "a:" << kKeyA << "\nb:" << kKeyB << "\n";
    server_ = std::make_unique<ChildProcess>(std::vector<std::string>{
        MPA_SERVER_BINARY, absl::StrCat("--model=", kModelDir), "--address=127.0.0.1:0",
        "--metrics_address=", absl::StrCat("--api_keys_file=", keys_file_)});
    std::optional<std::string> address = server_->WaitForLine("listening on ", absl::Seconds(30));
    ASSERT_TRUE(address.has_value()) << server_->StartFailure("listening on ");
    address_ = *address;
    stub_ = v1::DecodeService::NewStub(
        grpc::CreateChannel(address_, grpc::InsecureChannelCredentials()));
  }
  void TearDown() override { std::remove(keys_file_.c_str()); }

  static void Prepare(grpc::ClientContext& context, const CallMetadata& m) {
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    if (!m.key.empty()) context.AddMetadata("authorization", "Bearer " + m.key);
    for (const std::string& id : m.routed) context.AddMetadata("x-session-id", id);
  }
  grpc::Status Create(const std::string& id, const CallMetadata& m, std::string* got = nullptr) {
    grpc::ClientContext context;
    Prepare(context, m);
    v1::CreateSessionRequest request;
    request.set_session_id(id);
    v1::CreateSessionResponse response;
    grpc::Status s = stub_->CreateSession(&context, request, &response);
    if (got != nullptr) *got = response.session_id();
    return s;
  }
  // Creates `id` with the id in the metadata too, as a client behind a proxy does.
  grpc::Status Create(const std::string& id) { return Create(id, CallMetadata{kKeyA, {id}}); }
  // One turn of `ids` + 2 generated tokens on `session` (one-shot when empty); the result's
  // cached token count in *cached.
  grpc::Status Turn(const std::string& session, const CallMetadata& m, int64_t* cached = nullptr) {
    grpc::ClientContext context;
    Prepare(context, m);
    v1::GenerateRequest request;
    request.set_session_id(session);
    request.mutable_token_ids()->add_ids(1);
    request.mutable_token_ids()->add_ids(300);
    request.mutable_sampling()->set_max_new_tokens(2);
    auto reader = stub_->Generate(&context, request);
    v1::GenerateResponse message;
    while (reader->Read(&message)) {
      if (message.has_result() && cached != nullptr) {
        *cached = message.result().usage().cached_tokens();
      }
    }
    return reader->Finish();
  }
  grpc::Status Get(const std::string& session, const CallMetadata& m,
                   v1::GetSessionResponse* out = nullptr) {
    grpc::ClientContext context;
    Prepare(context, m);
    v1::GetSessionRequest request;
    request.set_session_id(session);
    v1::GetSessionResponse response;
    grpc::Status s = stub_->GetSession(&context, request, &response);
    if (out != nullptr) *out = response;
    return s;
  }
  grpc::Status Cancel(const std::string& session, const CallMetadata& m) {
    grpc::ClientContext context;
    Prepare(context, m);
    v1::CancelGenerationRequest request;
    request.set_session_id(session);
    v1::CancelGenerationResponse response;
    return stub_->CancelGeneration(&context, request, &response);
  }
  grpc::Status Close(const std::string& session, const CallMetadata& m) {
    grpc::ClientContext context;
    Prepare(context, m);
    v1::CloseSessionRequest request;
    request.set_session_id(session);
    v1::CloseSessionResponse response;
    return stub_->CloseSession(&context, request, &response);
  }

  std::string keys_file_;
  std::unique_ptr<ChildProcess> server_;
  std::string address_;
  std::unique_ptr<v1::DecodeService::Stub> stub_;
};

TEST_F(SessionRoutingE2eTest, AChosenIdNamesTheSessionOnEveryCall) {
  std::string got;
  const std::string id = "chat-2f9c.user_7~a";
  ASSERT_TRUE(Create(id, CallMetadata{kKeyA, {id}}, &got).ok());
  EXPECT_EQ(got, id);
  int64_t cached = -1;
  ASSERT_TRUE(Turn(id, CallMetadata{kKeyA, {id}}, &cached).ok());
  EXPECT_EQ(cached, 0);
  ASSERT_TRUE(Turn(id, CallMetadata{kKeyA, {id}}, &cached).ok());
  // The first turn's 2 input and 2 generated tokens, less the last one sampled, which is fed
  // with the second turn's input.
  EXPECT_EQ(cached, 3);
  v1::GetSessionResponse info;
  ASSERT_TRUE(Get(id, CallMetadata{kKeyA, {id}}, &info).ok());
  EXPECT_EQ(info.context_tokens(), 8);
  EXPECT_TRUE(Cancel(id, CallMetadata{kKeyA, {id}}).ok());
  ASSERT_TRUE(Close(id, CallMetadata{kKeyA, {id}}).ok());
  EXPECT_EQ(Get(id, CallMetadata{kKeyA, {id}}).error_code(), grpc::NOT_FOUND);
  // A direct client may leave the metadata out.
  ASSERT_TRUE(Create(id, CallMetadata{kKeyA, {}}).ok());
  EXPECT_TRUE(Turn(id, CallMetadata{kKeyA, {}}).ok());
}

TEST_F(SessionRoutingE2eTest, AnIdAlreadyOpenIsAlreadyExistsAndTheSessionIsUntouched) {
  const std::string id = "retried-create-0001";
  ASSERT_TRUE(Create(id).ok());
  ASSERT_TRUE(Turn(id, CallMetadata{kKeyA, {id}}).ok());
  grpc::Status again = Create(id);
  EXPECT_EQ(again.error_code(), grpc::ALREADY_EXISTS);
  EXPECT_THAT(again.error_message(), HasSubstr("\"retried-create-0001\""));
  v1::GetSessionResponse info;
  ASSERT_TRUE(Get(id, CallMetadata{kKeyA, {id}}, &info).ok());
  EXPECT_EQ(info.context_tokens(), 4);  // the first turn's context is still there
}

TEST_F(SessionRoutingE2eTest, MalformedIdsAreInvalidArgumentNamingTheRule) {
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"short", "is 5 bytes"},
      {std::string(129, 'a'), "is 129 bytes"},
      {std::string(1 << 16, 'b'), "(65536 bytes)"},
      {"has a space", "has \" \" at byte 3"},
      {"slash/in/the/id", "has \"/\" at byte 5"},
      {"new\nline-injected", "has \"\\n\" at byte 3"},
      {std::string("nul\0byte-inside", 15), "has \"\\x00\" at byte 3"},
      {"caf\xc3\xa9-au-lait", "has \"\\xc3\" at byte 3"},
      {"percent%20encoded", "has \"%\" at byte 7"},
  };
  for (const auto& [id, why] : bad) {
    grpc::Status s = Create(id, CallMetadata{kKeyA, {}});
    EXPECT_EQ(s.error_code(), grpc::INVALID_ARGUMENT) << id;
    EXPECT_THAT(s.error_message(), HasSubstr("session_id: ")) << id;
    EXPECT_THAT(s.error_message(), HasSubstr(why)) << id;
    EXPECT_LT(s.error_message().size(), 400u);
    for (char c : s.error_message()) EXPECT_TRUE(c >= 0x20 && c < 0x7f) << int(c);
  }
  // The bounds themselves are accepted.
  EXPECT_TRUE(Create("eight-ok", CallMetadata{kKeyA, {}}).ok());
  EXPECT_TRUE(Create(std::string(128, 'Z'), CallMetadata{kKeyA, {}}).ok());
}

TEST_F(SessionRoutingE2eTest, TheMetadataMayProposeTheIdAndIsCheckedLikeOne) {
  std::string got;
  ASSERT_TRUE(Create("", CallMetadata{kKeyA, {"proposed-by-proxy-1"}}, &got).ok());
  EXPECT_EQ(got, "proposed-by-proxy-1");
  EXPECT_TRUE(Turn(got, CallMetadata{kKeyA, {got}}).ok());
  // Neither: the server draws one.
  ASSERT_TRUE(Create("", CallMetadata{kKeyA, {}}, &got).ok());
  EXPECT_THAT(got, MatchesRegex("ses-[0-9a-f]{32}"));
  grpc::Status s = Create("", CallMetadata{kKeyA, {"a bad id"}});
  EXPECT_EQ(s.error_code(), grpc::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("x-session-id metadata: \"a bad id\" has \" \""));
}

TEST_F(SessionRoutingE2eTest, MetadataThatDisagreesWithTheRequestIsRefusedOnEveryMethod) {
  const std::string id = "routed-session-1";
  ASSERT_TRUE(Create(id).ok());
  const CallMetadata other{kKeyA, {"another-session"}};
  grpc::Status s = Create("routed-session-2", other);
  EXPECT_EQ(s.error_code(), grpc::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("x-session-id metadata \"another-session\" differs "
                                           "from session_id \"routed-session-2\""));
  EXPECT_EQ(Turn(id, other).error_code(), grpc::INVALID_ARGUMENT);
  EXPECT_EQ(Get(id, other).error_code(), grpc::INVALID_ARGUMENT);
  EXPECT_EQ(Cancel(id, other).error_code(), grpc::INVALID_ARGUMENT);
  EXPECT_EQ(Close(id, other).error_code(), grpc::INVALID_ARGUMENT);
  // The session was not touched by any of them.
  v1::GetSessionResponse info;
  ASSERT_TRUE(Get(id, CallMetadata{kKeyA, {id}}, &info).ok());
  EXPECT_EQ(info.context_tokens(), 0);
  // Twice (even the same value), empty, or on a one-shot generation.
  s = Turn(id, CallMetadata{kKeyA, {id, id}});
  EXPECT_EQ(s.error_code(), grpc::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("sent 2 times"));
  s = Get(id, CallMetadata{kKeyA, {""}});
  EXPECT_EQ(s.error_code(), grpc::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("x-session-id metadata: empty"));
  s = Turn("", CallMetadata{kKeyA, {id}});
  EXPECT_EQ(s.error_code(), grpc::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("session_id is empty (a one-shot generation)"));
  // Without a key the caller learns nothing about its metadata: the key is checked first.
  EXPECT_EQ(Get(id, CallMetadata{"", {"x", "y"}}).error_code(), grpc::UNAUTHENTICATED);
  // Unchanged after all of that.
  ASSERT_TRUE(Get(id, CallMetadata{kKeyA, {id}}, &info).ok());
  EXPECT_EQ(info.context_tokens(), 0);
}

TEST_F(SessionRoutingE2eTest, IdsArePerApiKey) {
  const std::string id = "shared-name-0001";
  ASSERT_TRUE(Create(id, CallMetadata{kKeyA, {id}}).ok());
  ASSERT_TRUE(Turn(id, CallMetadata{kKeyA, {id}}).ok());
  // Key B does not see A's session, and opening the same id is not refused: B cannot learn
  // which ids A holds, nor take one from A.
  EXPECT_EQ(Get(id, CallMetadata{kKeyB, {id}}).error_code(), grpc::NOT_FOUND);
  ASSERT_TRUE(Create(id, CallMetadata{kKeyB, {id}}).ok());
  v1::GetSessionResponse a, b;
  ASSERT_TRUE(Get(id, CallMetadata{kKeyA, {id}}, &a).ok());
  ASSERT_TRUE(Get(id, CallMetadata{kKeyB, {id}}, &b).ok());
  EXPECT_EQ(a.context_tokens(), 4);
  EXPECT_EQ(b.context_tokens(), 0);
  ASSERT_TRUE(Close(id, CallMetadata{kKeyB, {id}}).ok());
  ASSERT_TRUE(Get(id, CallMetadata{kKeyA, {id}}, &a).ok());
  EXPECT_EQ(a.context_tokens(), 4);
  EXPECT_EQ(Create(id, CallMetadata{kKeyA, {id}}).error_code(), grpc::ALREADY_EXISTS);
}

// That mpa_client sends the id as metadata shows behind the proxy (tests/deploy's router test:
// its turns land on the one replica of three that holds the session).
TEST_F(SessionRoutingE2eTest, MpaClientContinuesSessionsAndOpensThemUnderItsOwnIds) {
  const std::string id = "client-continued-1";
  ASSERT_TRUE(Create(id).ok());
  ASSERT_TRUE(Turn(id, CallMetadata{kKeyA, {id}}).ok());
  testing::ProcessResult r =
      testing::RunProcess({MPA_CLIENT_BINARY, "generate", absl::StrCat("--server=", address_),
                           absl::StrCat("--api_key=", kKeyA), absl::StrCat("--session=", id),
                           "--prompt_ids=5", "--max_new_tokens=2", "--output=ids"},
                          absl::Seconds(30));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.err, HasSubstr("prompt 1, cached 3, generated 2"));
  // chat opens a session under an id of its own choosing (cli- and 32 hex digits), and its
  // second turn reuses the first one's cache.
  auto [code, out] = testing::Shell(absl::StrCat("printf '5 6\\n7\\n' | MPA_API_KEY=", kKeyA, " ",
                                                 MPA_CLIENT_BINARY, " chat --server=", address_,
                                                 " --output=ids --max_new_tokens=2 2>&1"));
  ASSERT_EQ(code, 0) << out;
  EXPECT_THAT(out, MatchesRegex("(.|\n)*session cli-[0-9a-f]{32} (.|\n)*"));
  EXPECT_THAT(out, HasSubstr("prompt 2, cached 0, generated 2"));
  EXPECT_THAT(out, HasSubstr("prompt 1, cached 3, generated 2"));
}

}  // namespace
}  // namespace mpa::server
