// End-to-end: mpa_server with --tls_cert/--tls_key (and --tls_client_ca) on a free loopback
// port, with certificates made at test time (test_certificates.h): plaintext clients and clients
// that do not trust the server's CA fail, a TLS client streams a generation, mutual TLS refuses
// clients without a certificate of the right CA, mpa_client's TLS flags, certificate reload,
// and the plaintext health-only listener (--health_address) beside a mutual-TLS port. API keys
// over mutual TLS are tested by server_auth_e2e_test (its tests run over both transports).
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
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
using testing::Issued;
using ::testing::Not;
using testing::PortOf;
using testing::Shell;
using testing::StreamResult;
using testing::TestCa;
using testing::TlsChannel;
using testing::TlsTestFiles;

const char kModelDir[] = MPA_SOURCE_DIR "/../shared/models/stories260K";

class ServerTlsE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(std::string(kModelDir) + "/config.json")) {
      GTEST_SKIP() << "stories260K not found at " << kModelDir;
    }
  }
  // Starts the server with TLS (mutual when asked) and `flags`.
  void StartServer(bool mutual, std::vector<std::string> flags = {}) {
    std::vector<std::string> argv = {MPA_SERVER_BINARY, absl::StrCat("--model=", kModelDir),
                                     "--address=127.0.0.1:0", "--metrics_address="};
    for (const std::string& flag : files_.ServerFlags(mutual)) argv.push_back(flag);
    argv.insert(argv.end(), flags.begin(), flags.end());
    server_ = std::make_unique<ChildProcess>(argv);
    std::optional<std::string> address = server_->WaitForLine("listening on ", absl::Seconds(30));
    ASSERT_TRUE(address.has_value()) << server_->StartFailure("listening on ");
    address_ = *address;
  }
  // A short generation over `channel`.
  static StreamResult GenerateOver(const std::shared_ptr<grpc::Channel>& channel) {
    auto stub = v1::DecodeService::NewStub(channel);
    return Generate(*stub, IdsRequest({1, 300, 301}, 4));
  }
  std::shared_ptr<grpc::Channel> Trusting(const std::string& roots,
                                          const Issued* identity = nullptr,
                                          const std::string& server_name = "") const {
    return TlsChannel(address_, roots, identity, server_name);
  }
  std::string LocalhostAddress() const { return absl::StrCat("localhost:", PortOf(address_)); }

  TlsTestFiles files_{"server_tls_e2e"};
  std::unique_ptr<ChildProcess> server_;
  std::string address_;
};

// grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo with one list_services request
// (field 7, empty), through the generic stub: a bidirectional stream used as one request and one
// response, which is all a unary call is on the wire.
grpc::Status ListServices(const std::shared_ptr<grpc::Channel>& channel) {
  grpc::GenericStub generic(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  grpc::CompletionQueue cq;
  grpc::Slice slice(std::string("\x3a\x00", 2));
  grpc::ByteBuffer request(&slice, 1);
  grpc::ByteBuffer response;
  grpc::Status status;
  auto call = generic.PrepareUnaryCall(
      &context, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", request, &cq);
  call->StartCall();
  call->Finish(&response, &status, reinterpret_cast<void*>(1));
  void* tag;
  bool ok;
  cq.Next(&tag, &ok);
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  return status;
}

// The status of a call that must fail at the connection: UNAVAILABLE, the code a client retries
// or reports as "cannot reach the server".
void ExpectRefused(const StreamResult& result, const char* what) {
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << what << ": " << result.status.error_message();
  EXPECT_TRUE(result.ids.empty()) << what;
}

TEST_F(ServerTlsE2eTest, TlsClientStreamsAndPlaintextOrUntrustingClientsFail) {
  ASSERT_NO_FATAL_FAILURE(StartServer(/*mutual=*/false));
  EXPECT_THAT(server_->output(), HasSubstr("mpa_server: TLS: certificate CN=mpa-server"));

  ExpectRefused(GenerateOver(grpc::CreateChannel(address_, grpc::InsecureChannelCredentials())),
                "plaintext client");
  ExpectRefused(GenerateOver(Trusting(files_.other_ca().cert_pem())), "client trusting another CA");
  // The certificate names localhost and 127.0.0.1, nothing else.
  ExpectRefused(GenerateOver(Trusting(files_.ca().cert_pem(), nullptr, "elsewhere.example")),
                "client expecting another name");

  StreamResult by_ip = GenerateOver(Trusting(files_.ca().cert_pem()));
  ASSERT_TRUE(by_ip.status.ok()) << by_ip.status.error_message();
  EXPECT_EQ(by_ip.ids.size(), 4u);
  ASSERT_TRUE(by_ip.result.has_value());
  EXPECT_EQ(by_ip.result->finish_reason(), v1::FINISH_REASON_LENGTH);
  StreamResult by_name =
      GenerateOver(TlsChannel(LocalhostAddress(), files_.ca().cert_pem(), nullptr));
  ASSERT_TRUE(by_name.status.ok()) << by_name.status.error_message();
  EXPECT_EQ(by_name.ids, by_ip.ids);  // greedy
  // A client certificate the server did not ask for changes nothing.
  EXPECT_TRUE(GenerateOver(Trusting(files_.ca().cert_pem(), &files_.stranger())).status.ok());
  // Health is served over TLS like everything else on the port.
  EXPECT_EQ(HealthStatus(Trusting(files_.ca().cert_pem())), 1);
  EXPECT_EQ(HealthStatus(grpc::CreateChannel(address_, grpc::InsecureChannelCredentials())), -1);
}

TEST_F(ServerTlsE2eTest, MutualTlsNeedsAClientCertificateOfTheClientCa) {
  ASSERT_NO_FATAL_FAILURE(StartServer(/*mutual=*/true));
  EXPECT_THAT(server_->output(), HasSubstr("client certificates required (1 CAs)"));
  const std::string roots = files_.ca().cert_pem();
  ExpectRefused(GenerateOver(grpc::CreateChannel(address_, grpc::InsecureChannelCredentials())),
                "plaintext client");
  ExpectRefused(GenerateOver(Trusting(roots)), "no client certificate");
  ExpectRefused(GenerateOver(Trusting(roots, &files_.stranger())), "another CA's certificate");
  // A server certificate of the right CA is not a client certificate (serverAuth only).
  ExpectRefused(GenerateOver(Trusting(roots, &files_.server())), "a serverAuth certificate");
  StreamResult ok = GenerateOver(Trusting(roots, &files_.client()));
  ASSERT_TRUE(ok.status.ok()) << ok.status.error_message();
  EXPECT_EQ(ok.ids.size(), 4u);
}

TEST_F(ServerTlsE2eTest, ClientBinaryTlsFlags) {
  ASSERT_NO_FATAL_FAILURE(StartServer(/*mutual=*/true));
  const std::string generate =
      absl::StrCat(MPA_CLIENT_BINARY, " generate --prompt_ids=1 --max_new_tokens=4 --output=ids",
                   " --stats=false --timeout=20");
  const std::string ca = " --tls_ca=" + files_.Path("ca.pem");
  const std::string identity = absl::StrCat(" --tls_cert=", files_.Path("client.pem"),
                                            " --tls_key=", files_.Path("client.key"));
  const std::string server = " --server=" + address_;

  auto [rc, out] = Shell(generate + server + ca + identity + " 2>&1");
  EXPECT_EQ(rc, 0) << out;
  const std::vector<std::string> ids = absl::StrSplit(out, ' ', absl::SkipWhitespace());
  EXPECT_EQ(ids.size(), 4u) << out;
  // By name, and by IP address expecting "localhost".
  auto [name_rc, name_out] =
      Shell(generate + " --server=" + LocalhostAddress() + ca + identity + " 2>&1");
  EXPECT_EQ(name_rc, 0) << name_out;
  EXPECT_EQ(name_out, out);
  auto [override_rc, override_out] =
      Shell(generate + server + ca + identity + " --tls_server_name=localhost 2>&1");
  EXPECT_EQ(override_rc, 0) << override_out;
  EXPECT_EQ(override_out, out);

  // Refused by the server: plaintext, or TLS without a client certificate.
  for (const std::string& flags : {server, server + ca}) {
    auto [refused_rc, refused_out] = Shell(generate + flags + " 2>&1");
    EXPECT_EQ(refused_rc, 1) << flags << ": " << refused_out;
    EXPECT_THAT(refused_out, HasSubstr("Generate failed: code 14")) << flags;  // UNAVAILABLE
  }
  // Refused by the client before it connects: one line, status 2.
  const std::string missing = files_.Path("missing.pem");
  const std::vector<std::pair<std::string, std::string>> usage_errors = {
      {server + " --tls_cert=" + files_.Path("client.pem") + ca, "--tls_cert: needs --tls_key"},
      {server + " --tls_key=" + files_.Path("client.key") + ca, "--tls_key: needs --tls_cert"},
      {server + identity, "--tls_cert: needs --tls_ca"},
      {server + " --tls_server_name=localhost", "--tls_server_name: needs --tls_ca"},
      {server + " --tls_ca=" + missing, "--tls_ca=" + missing + ": cannot read"},
      {server + " --tls_ca=" + files_.Write("text.pem", "not pem\n"), "not a PEM file"},
  };
  for (const auto& [flags, message] : usage_errors) {
    auto [usage_rc, usage_out] = Shell(generate + flags + " 2>&1");
    EXPECT_EQ(usage_rc, 2) << flags << ": " << usage_out;
    EXPECT_THAT(usage_out, HasSubstr(message)) << flags;
    EXPECT_EQ(std::vector<std::string>(absl::StrSplit(usage_out, '\n', absl::SkipEmpty())).size(),
              1u)
        << usage_out;
  }
}

// With --tls_reload_interval_s the server picks up replaced files; with 0 it keeps what it read.
TEST_F(ServerTlsE2eTest, CertificatesAreReloadedWithoutARestart) {
  ASSERT_NO_FATAL_FAILURE(StartServer(/*mutual=*/false, {"--tls_reload_interval_s=1"}));
  EXPECT_THAT(server_->output(), HasSubstr("files re-read every 1 s"));
  ASSERT_TRUE(GenerateOver(Trusting(files_.ca().cert_pem())).status.ok());
  const TestCa renewed_ca("renewed test CA");
  const Issued renewed = renewed_ca.Issue({.common_name = "mpa-server-renewed",
                                           .subject_alt_names = {"DNS:localhost", "IP:127.0.0.1"},
                                           .server = true});
  // The key first: gRPC re-reads both files; until the certificate is replaced too the pair
  // does not match and handshakes fail, which the polling below rides out.
  files_.Write("server.key", renewed.key_pem);
  files_.Write("server.pem", renewed.cert_pem);
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  grpc::Status status;
  do {
    absl::SleepFor(absl::Milliseconds(250));
    status = GenerateOver(Trusting(renewed_ca.cert_pem())).status;
  } while (!status.ok() && absl::Now() < deadline);
  EXPECT_TRUE(status.ok()) << "the renewed certificate was not served: " << status.error_message()
                           << "\n"
                           << server_->output();
  ExpectRefused(GenerateOver(Trusting(files_.ca().cert_pem())), "client trusting the old CA");
}

TEST_F(ServerTlsE2eTest, WithoutReloadTheFilesAreReadOnce) {
  ASSERT_NO_FATAL_FAILURE(StartServer(/*mutual=*/false, {"--tls_reload_interval_s=0"}));
  EXPECT_THAT(server_->output(), HasSubstr("files read once"));
  const TestCa renewed_ca("renewed test CA");
  const Issued renewed = renewed_ca.Issue(
      {.common_name = "mpa-server-renewed", .subject_alt_names = {"IP:127.0.0.1"}, .server = true});
  files_.Write("server.key", renewed.key_pem);
  files_.Write("server.pem", renewed.cert_pem);
  absl::SleepFor(absl::Seconds(2));
  EXPECT_TRUE(GenerateOver(Trusting(files_.ca().cert_pem())).status.ok());
  ExpectRefused(GenerateOver(Trusting(renewed_ca.cert_pem())), "client trusting the new CA");
}

// Kubernetes' gRPC probes speak plaintext only: --health_address serves health alone, in
// plaintext, and follows the drain like the TLS port.
TEST_F(ServerTlsE2eTest, PlaintextHealthListenerServesOnlyHealth) {
  ASSERT_NO_FATAL_FAILURE(StartServer(
      /*mutual=*/true, {"--health_address=127.0.0.1:0", "--threads=1", "--drain_timeout=60s"}));
  std::optional<std::string> health_address =
      server_->WaitForLine("mpa_server health on ", absl::Seconds(5));
  ASSERT_TRUE(health_address.has_value()) << server_->output();
  EXPECT_THAT(*health_address, HasSubstr("(plaintext)"));
  const std::string health_target =
      absl::StrCat("127.0.0.1:", PortOf(health_address->substr(0, health_address->find(' '))));
  auto health = grpc::CreateChannel(health_target, grpc::InsecureChannelCredentials());
  EXPECT_EQ(HealthStatus(health), 1);  // SERVING
  // The DecodeService is not there.
  {
    auto stub = v1::DecodeService::NewStub(health);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::GetModelInfoResponse info;
    EXPECT_EQ(stub->GetModelInfo(&context, v1::GetModelInfoRequest(), &info).error_code(),
              grpc::StatusCode::UNIMPLEMENTED);
  }
  EXPECT_EQ(GenerateOver(health).status.error_code(), grpc::StatusCode::UNIMPLEMENTED);
  // Nor is reflection (it is on the TLS port).
  EXPECT_EQ(ListServices(health).error_code(), grpc::StatusCode::UNIMPLEMENTED);
  const grpc::Status listed = ListServices(Trusting(files_.ca().cert_pem(), &files_.client()));
  EXPECT_TRUE(listed.ok()) << listed.error_message();

  // A running stream over mutual TLS; SIGTERM turns the plaintext health NOT_SERVING.
  auto tls = Trusting(files_.ca().cert_pem(), &files_.client());
  auto stub = v1::DecodeService::NewStub(tls);
  std::atomic<int> started{0};
  StreamResult running;
  std::thread stream([&] { running = Generate(*stub, IdsRequest({1, 300}, 440), &started); });
  while (started == 0 && server_->Running()) absl::SleepFor(absl::Milliseconds(1));
  server_->Signal(SIGTERM);
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  int status = 1;
  while (absl::Now() < deadline && (status = HealthStatus(health)) == 1) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  EXPECT_EQ(status, 2);  // NOT_SERVING
  stream.join();
  EXPECT_TRUE(running.status.ok()) << running.status.error_message();
  EXPECT_EQ(running.ids.size(), 440u);
  EXPECT_EQ(server_->Wait(absl::Seconds(30)), 0) << server_->output();
}

}  // namespace
}  // namespace mpa::server
