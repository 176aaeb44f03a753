// End-to-end: mpa_server with --api_keys_file (a keys file written by the test) on a free
// loopback port: calls without a known key are UNAUTHENTICATED, a session belongs to the key
// that created it (another key finds no such session), the per-key session limit, health left
// open, mpa_client's --api_key and MPA_API_KEY, and keys files refused at start-up. Every
// server test runs twice: in plaintext, and over mutual TLS (keys and certificates together).
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "multipole/v1/decode.grpc.pb.h"
#include "tests/server/generate_stream.h"
#include "tests/server/health_check.h"
#include "tests/server/server_process.h"
#include "tests/server/test_certificates.h"

namespace mpa::server {
namespace {

namespace v1 = ::multipole::v1;
using testing::ChildProcess;
using testing::Generate;
using ::testing::HasSubstr;
using testing::HealthStatus;
using testing::IdsRequest;
using ::testing::Not;
using testing::Shell;

const char kModelDir[] = MPA_SOURCE_DIR "/../shared/models/stories260K";
constexpr char kKeyA[] = "key-a-7c1f0e9b2d4a6c8e";
constexpr char kKeyB[] = "key-b-3e5a7c9b1d2f4a6c";
constexpr char kWrongKey[] = "key-x-0000111122223333";

// Writes `text` to a fresh file under the test's temporary folder; returns its path.
std::string WriteFile(const std::string& name, const std::string& text) {
  const std::string path =
      absl::StrCat(::testing::TempDir(), "/server_auth_e2e_", getpid(), "_", name);
  std::ofstream(path) << text;
  return path;
}

// The parameter: whether the server runs with mutual TLS.
class ServerAuthE2eTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(std::string(kModelDir) + "/config.json")) {
      GTEST_SKIP() << "stories260K not found at " << kModelDir;
    }
  }
  void TearDown() override {
    for (const std::string& path : files_) std::remove(path.c_str());
  }
  // Starts the server with keys A ("alice") and B (unnamed) and `flags`.
  void StartServer(std::vector<std::string> flags = {}) {
    keys_file_ =
        WriteFile("keys", absl::StrCat("# test keys\n\nalice:", kKeyA, "\n  ", kKeyB, "  \n"));
    files_.push_back(keys_file_);
    std::vector<std::string> argv = {
        MPA_SERVER_BINARY, absl::StrCat("--model=", kModelDir), "--address=127.0.0.1:0",
        "--metrics_address=", absl::StrCat("--api_keys_file=", keys_file_)};
    if (GetParam()) {
      for (const std::string& flag : tls_files_.ServerFlags(/*mutual=*/true)) argv.push_back(flag);
    }
    argv.insert(argv.end(), flags.begin(), flags.end());
    server_ = std::make_unique<ChildProcess>(argv);
    std::optional<std::string> address = server_->WaitForLine("listening on ", absl::Seconds(30));
    ASSERT_TRUE(address.has_value()) << server_->StartFailure("listening on ");
    address_ = *address;
    channel_ = GetParam()
                   ? testing::TlsChannel(address_, tls_files_.ca().cert_pem(), &tls_files_.client())
                   : grpc::CreateChannel(address_, grpc::InsecureChannelCredentials());
    stub_ = v1::DecodeService::NewStub(channel_);
  }
  // mpa_client's flags for the server's transport.
  std::string ClientTlsFlags() const {
    if (!GetParam()) return "";
    return absl::StrCat(" --tls_ca=", tls_files_.Path("ca.pem"),
                        " --tls_cert=", tls_files_.Path("client.pem"),
                        " --tls_key=", tls_files_.Path("client.key"));
  }
  // A context sending `key` as a Bearer token (none when empty).
  static void Prepare(grpc::ClientContext& context, const std::string& key) {
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    if (!key.empty()) context.AddMetadata("authorization", "Bearer " + key);
  }
  grpc::Status CreateSession(const std::string& key, std::string* id = nullptr) {
    grpc::ClientContext context;
    Prepare(context, key);
    v1::CreateSessionResponse r;
    grpc::Status s = stub_->CreateSession(&context, v1::CreateSessionRequest(), &r);
    if (id != nullptr) *id = r.session_id();
    return s;
  }
  grpc::Status GetSession(const std::string& key, const std::string& id) {
    grpc::ClientContext context;
    Prepare(context, key);
    v1::GetSessionRequest request;
    request.set_session_id(id);
    v1::GetSessionResponse r;
    return stub_->GetSession(&context, request, &r);
  }
  grpc::Status Cancel(const std::string& key, const std::string& id) {
    grpc::ClientContext context;
    Prepare(context, key);
    v1::CancelGenerationRequest request;
    request.set_session_id(id);
    v1::CancelGenerationResponse r;
    return stub_->CancelGeneration(&context, request, &r);
  }
  grpc::Status Close(const std::string& key, const std::string& id) {
    grpc::ClientContext context;
    Prepare(context, key);
    v1::CloseSessionRequest request;
    request.set_session_id(id);
    v1::CloseSessionResponse r;
    return stub_->CloseSession(&context, request, &r);
  }
  grpc::Status ModelInfo(const std::string& key) {
    grpc::ClientContext context;
    Prepare(context, key);
    v1::GetModelInfoResponse r;
    return stub_->GetModelInfo(&context, v1::GetModelInfoRequest(), &r);
  }
  grpc::Status GenerateOn(const std::string& key, const std::string& id) {
    return Generate(*stub_, IdsRequest({1, 300, 301}, 3, id), nullptr, key).status;
  }

  std::vector<std::string> files_;
  testing::TlsTestFiles tls_files_{"server_auth_e2e"};
  std::string keys_file_;
  std::unique_ptr<ChildProcess> server_;
  std::string address_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::DecodeService::Stub> stub_;
};

TEST_P(ServerAuthE2eTest, EveryRpcNeedsAKnownKey) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  std::string session;
  ASSERT_TRUE(CreateSession(kKeyA, &session).ok());
  for (const std::string& key : {std::string(), std::string(kWrongKey)}) {
    SCOPED_TRACE(key.empty() ? "no key" : "wrong key");
    const std::vector<std::pair<std::string, grpc::Status>> calls = {
        {"CreateSession", CreateSession(key)},
        {"Generate", GenerateOn(key, "")},
        {"Generate on a session", GenerateOn(key, session)},
        {"CancelGeneration", Cancel(key, session)},
        {"CloseSession", Close(key, session)},
        {"GetSession", GetSession(key, session)},
        {"GetModelInfo", ModelInfo(key)},
    };
    for (const auto& [name, status] : calls) {
      EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED)
          << name << ": " << status.error_message();
      EXPECT_THAT(status.error_message(), HasSubstr("authorization: Bearer")) << name;
      EXPECT_THAT(status.error_message(), Not(HasSubstr(kWrongKey))) << name;
    }
  }
  // Not a Bearer token.
  grpc::ClientContext context;
  context.AddMetadata("authorization", absl::StrCat("Basic ", kKeyA));
  v1::GetModelInfoResponse info;
  grpc::Status basic = stub_->GetModelInfo(&context, v1::GetModelInfoRequest(), &info);
  EXPECT_EQ(basic.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(basic.error_message(), Not(HasSubstr(kKeyA)));
  // Both keys work, and the refused calls left A's session alone.
  EXPECT_TRUE(ModelInfo(kKeyA).ok());
  EXPECT_TRUE(ModelInfo(kKeyB).ok());
  EXPECT_TRUE(GetSession(kKeyA, session).ok());
  EXPECT_TRUE(GenerateOn(kKeyA, "").ok());
  EXPECT_THAT(server_->output(), HasSubstr("API keys required (2: alice, key4)"));
  EXPECT_THAT(server_->output(), Not(HasSubstr(kKeyA)));
}

TEST_P(ServerAuthE2eTest, HealthNeedsNoKey) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  EXPECT_EQ(HealthStatus(channel_), 1);  // SERVING
}

TEST_P(ServerAuthE2eTest, AnotherKeysSessionIsNotFoundLikeAnUnknownOne) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  std::string session;
  ASSERT_TRUE(CreateSession(kKeyA, &session).ok());
  ASSERT_TRUE(GenerateOn(kKeyA, session).ok());
  // An id of the same shape that was never created.
  std::string unknown = session;
  unknown.back() = unknown.back() == '0' ? '1' : '0';
  using Call = std::function<grpc::Status(const std::string& key, const std::string& id)>;
  const std::vector<std::pair<std::string, Call>> calls = {
      {"GetSession", [this](const auto& key, const auto& id) { return GetSession(key, id); }},
      {"Generate", [this](const auto& key, const auto& id) { return GenerateOn(key, id); }},
      {"CancelGeneration", [this](const auto& key, const auto& id) { return Cancel(key, id); }},
      {"CloseSession", [this](const auto& key, const auto& id) { return Close(key, id); }}};
  for (const auto& [name, call] : calls) {
    const grpc::Status theirs = call(kKeyB, session);
    const grpc::Status missing = call(kKeyB, unknown);
    EXPECT_EQ(theirs.error_code(), grpc::StatusCode::NOT_FOUND)
        << name << ": " << theirs.error_message();
    EXPECT_EQ(missing.error_code(), grpc::StatusCode::NOT_FOUND) << name;
    // The same message, but for the id the client sent.
    EXPECT_EQ(absl::StrReplaceAll(theirs.error_message(), {{session, unknown}}),
              missing.error_message())
        << name;
  }
  // A's session is untouched: B's Close did not close it, A can still use it.
  EXPECT_TRUE(GetSession(kKeyA, session).ok());
  EXPECT_TRUE(GenerateOn(kKeyA, session).ok());
  EXPECT_TRUE(Close(kKeyA, session).ok());
  EXPECT_EQ(GetSession(kKeyA, session).error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_P(ServerAuthE2eTest, SessionsPerKeyAreLimited) {
  // --max_sessions=5: by default a key may hold 2 (5 / 4, rounded up).
  ASSERT_NO_FATAL_FAILURE(StartServer({"--max_sessions=5"}));
  std::string first;
  ASSERT_TRUE(CreateSession(kKeyA, &first).ok());
  ASSERT_TRUE(CreateSession(kKeyA).ok());
  const grpc::Status third = CreateSession(kKeyA);
  EXPECT_EQ(third.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(third.error_message(), HasSubstr("--max_sessions_per_key is 2"));
  // One-shot generations need no session of their own.
  EXPECT_TRUE(GenerateOn(kKeyA, "").ok());
  // Key B is not held back by A's sessions.
  EXPECT_TRUE(CreateSession(kKeyB).ok());
  ASSERT_TRUE(Close(kKeyA, first).ok());
  EXPECT_TRUE(CreateSession(kKeyA).ok());
}

TEST_P(ServerAuthE2eTest, ExplicitSessionsPerKeyFlag) {
  ASSERT_NO_FATAL_FAILURE(StartServer({"--max_sessions=8", "--max_sessions_per_key=1"}));
  ASSERT_TRUE(CreateSession(kKeyB).ok());
  const grpc::Status second = CreateSession(kKeyB);
  EXPECT_EQ(second.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(second.error_message(), HasSubstr("--max_sessions_per_key is 1"));
}

TEST_P(ServerAuthE2eTest, ClientSendsItsKey) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  const std::string generate = absl::StrCat(
      MPA_CLIENT_BINARY, " generate --server=", address_,
      " --prompt_ids=1 --max_new_tokens=4 --output=ids --stats=false", ClientTlsFlags());
  auto [no_key_rc, no_key_out] = Shell(absl::StrCat("env -u MPA_API_KEY ", generate, " 2>&1"));
  EXPECT_NE(no_key_rc, 0) << no_key_out;
  EXPECT_THAT(no_key_out, HasSubstr("authorization"));
  auto [flag_rc, flag_out] = Shell(absl::StrCat(generate, " --api_key=", kKeyA, " 2>&1"));
  EXPECT_EQ(flag_rc, 0) << flag_out;
  auto [env_rc, env_out] = Shell(absl::StrCat("MPA_API_KEY=", kKeyB, " ", generate, " 2>&1"));
  EXPECT_EQ(env_rc, 0) << env_out;
  EXPECT_EQ(env_out, flag_out);  // greedy: the same ids
}

INSTANTIATE_TEST_SUITE_P(Transports, ServerAuthE2eTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "MutualTls" : "Plaintext";
                         });

TEST(ServerAuthFlagsE2eTest, BadKeysFilesAreRefusedAtStartUp) {
  if (!std::filesystem::exists(std::string(kModelDir) + "/config.json")) {
    GTEST_SKIP() << "stories260K not found at " << kModelDir;
  }
  const std::string empty = WriteFile("empty", "# no keys here\n\n");
  const std::string short_key = WriteFile("short", "bob:tiny-secret\n");
  const std::string missing = WriteFile("missing", "");
  std::remove(missing.c_str());
  for (const std::string& path : {empty, short_key, missing}) {
    ChildProcess server({MPA_SERVER_BINARY, absl::StrCat("--model=", kModelDir),
                         "--address=127.0.0.1:0",
                         "--metrics_address=", absl::StrCat("--api_keys_file=", path)});
    ASSERT_TRUE(server.started()) << server.StartFailure("mpa_server: ");
    EXPECT_EQ(server.Wait(absl::Seconds(30)), 2) << path << ":\n" << server.output();
    server.WaitForLine("mpa_server: ", absl::Seconds(5));
    const std::string output = server.output();
    const std::vector<std::string> lines = absl::StrSplit(output, '\n', absl::SkipEmpty());
    EXPECT_EQ(lines.size(), 1u) << output;
    EXPECT_THAT(output, HasSubstr("--api_keys_file"));
    EXPECT_THAT(output, HasSubstr(path));
    EXPECT_THAT(output, Not(HasSubstr("tiny-secret")));
    EXPECT_THAT(output, Not(HasSubstr("listening")));
  }
  std::remove(empty.c_str());
  std::remove(short_key.c_str());
}

}  // namespace
}  // namespace mpa::server
