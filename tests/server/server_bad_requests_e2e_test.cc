// End-to-end: request bodies that do not parse as their message, sent as raw bytes through
// grpc::GenericStub to the real mpa_server (stories260K): garbage, every truncation of a real
// request that protobuf refuses, invalid UTF-8 in each string field of each request type, and a
// call that sends no message. Each is INVALID_ARGUMENT naming the problem, is counted in
// mpa_request_errors_total, logs nothing, and leaves a stream running alongside untouched; with
// API keys, a call without a key is UNAUTHENTICATED whatever its body.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "multipole/v1/decode.grpc.pb.h"
#include "tests/server/exposition.h"
#include "tests/server/generate_stream.h"
#include "tests/server/server_process.h"

namespace mpa::server {
namespace {

namespace v1 = ::multipole::v1;
using testing::ChildProcess;
using ::testing::HasSubstr;
using testing::HttpGet;
using ::testing::Not;
using testing::PortOf;
using testing::Samples;
using testing::Value;

const char kModelDir[] = MPA_SOURCE_DIR "/../shared/models/stories260K";
// Greedy ids of stories260K from BOS (id 1), as its README records them.
const std::vector<int32_t> kReferenceIds = {
    403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338,
    401, 396, 267, 337, 410, 408, 419, 292, 411, 322, 265, 282, 295, 433, 426, 385,
    328, 432, 358, 394, 261, 370, 432, 352, 266, 268, 388, 426, 338, 391, 266, 267};
constexpr char kKey[] = "key-bad-requests-5f3a9c1e7b2d";

// The DecodeService's methods and their request messages.
const std::vector<std::pair<std::string, std::string>> kMethods = {
    {"CreateSession", "CreateSessionRequest"},
    {"Generate", "GenerateRequest"},
    {"CancelGeneration", "CancelGenerationRequest"},
    {"CloseSession", "CloseSessionRequest"},
    {"GetSession", "GetSessionRequest"},
    {"GetModelInfo", "GetModelInfoRequest"}};

// Bytes no message parses: a length running past the end, a tag without its value, a varint of
// eleven bytes, field number 0, wire type 7, an end-group tag with no group, a group never
// closed, and a run of 0xff.
const std::vector<std::string> kGarbage = {
    std::string("\x0a\x05"
                "ab",
                4),
    std::string("\x08", 1),
    std::string("\x08\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01", 12),
    std::string("\x00\x01", 2),
    std::string("\x0f\x01", 2),
    std::string("\x0c", 1),
    std::string("\x0b\x08\x01", 3),
    std::string(64, '\xff'),
};

std::string Method(const std::string& name) {
  return absl::StrCat("/multipole.v1.DecodeService/", name);
}

// A call with `bytes` as its request body (nullopt: no message at all, the client half-closes
// at once). Any method, Generate too: a refused stream ends with a status and no message.
grpc::Status CallRaw(grpc::GenericStub& stub, const std::string& method,
                     const std::optional<std::string>& bytes, const std::string& key = "") {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  if (!key.empty()) context.AddMetadata("authorization", absl::StrCat("Bearer ", key));
  grpc::CompletionQueue cq;
  grpc::Status status;
  void* tag;
  bool ok;
  if (bytes.has_value()) {
    grpc::Slice slice(*bytes);
    grpc::ByteBuffer request(&slice, 1);
    grpc::ByteBuffer response;
    auto call = stub.PrepareUnaryCall(&context, method, request, &cq);
    call->StartCall();
    call->Finish(&response, &status, reinterpret_cast<void*>(1));
    cq.Next(&tag, &ok);
  } else {
    auto call = stub.PrepareCall(&context, method, &cq);
    call->StartCall(reinterpret_cast<void*>(1));
    cq.Next(&tag, &ok);
    call->WritesDone(reinterpret_cast<void*>(2));
    cq.Next(&tag, &ok);
    grpc::ByteBuffer response;
    call->Read(&response, reinterpret_cast<void*>(3));
    cq.Next(&tag, &ok);
    call->Finish(&status, reinterpret_cast<void*>(4));
    cq.Next(&tag, &ok);
  }
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  return status;
}

// `message` serialized with `marker` (a string field's placeholder value) swapped for `bytes` of
// the same length: proto3 messages cannot hold invalid UTF-8 to serialize it themselves.
std::string WithBytes(const google::protobuf::Message& message, const std::string& marker,
                      const std::string& bytes) {
  std::string wire = message.SerializeAsString();
  EXPECT_EQ(marker.size(), bytes.size());
  const size_t at = wire.find(marker);
  EXPECT_NE(at, std::string::npos) << marker;
  if (at != std::string::npos) wire.replace(at, marker.size(), bytes);
  return wire;
}

class ServerBadRequestsE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(std::string(kModelDir) + "/config.json")) {
      GTEST_SKIP() << "stories260K not found at " << kModelDir;
    }
  }
  void TearDown() override {
    if (!keys_file_.empty()) std::remove(keys_file_.c_str());
  }
  void StartServer(bool with_keys) {
    std::vector<std::string> argv = {MPA_SERVER_BINARY, absl::StrCat("--model=", kModelDir),
                                     "--address=127.0.0.1:0", "--metrics_address=127.0.0.1:0"};
    if (with_keys) {
      keys_file_ = absl::StrCat(::testing::TempDir(), "/server_bad_requests_", getpid(), "_keys");
      std::ofstream(keys_file_) << "tester:" << kKey << "\n";
      argv.push_back(absl::StrCat("--api_keys_file=", keys_file_));
      key_ = kKey;
    }
    server_ = std::make_unique<ChildProcess>(argv);
    std::optional<std::string> address =
        server_->WaitForLine("mpa_server listening on ", absl::Seconds(30));
    ASSERT_TRUE(address.has_value()) << server_->StartFailure("mpa_server listening on ");
    std::optional<std::string> metrics =
        server_->WaitForLine("mpa_server metrics on ", absl::Seconds(5));
    ASSERT_TRUE(metrics.has_value()) << server_->StartFailure("mpa_server metrics on ");
    metrics_port_ = PortOf(*metrics);
    channel_ = grpc::CreateChannel(*address, grpc::InsecureChannelCredentials());
    generic_ = std::make_unique<grpc::GenericStub>(channel_);
    stub_ = v1::DecodeService::NewStub(channel_);
  }
  std::map<std::string, double> Scrape() {
    std::optional<std::string> body = HttpGet(metrics_port_, "/metrics");
    EXPECT_TRUE(body.has_value());
    return body.has_value() ? Samples(*body) : std::map<std::string, double>();
  }
  // Sends `bytes` to `method` and expects INVALID_ARGUMENT with exactly `message`.
  void ExpectRefused(const std::string& method, const std::optional<std::string>& bytes,
                     const std::string& message) {
    const grpc::Status status = CallRaw(*generic_, Method(method), bytes, key_);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << method << ": " << status.error_message();
    EXPECT_EQ(status.error_message(), message) << method;
    ++refused_;
    if (method == "Generate") ++refused_generate_;
  }

  std::string keys_file_;
  std::string key_;
  std::unique_ptr<ChildProcess> server_;
  int metrics_port_ = 0;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<grpc::GenericStub> generic_;
  std::unique_ptr<v1::DecodeService::Stub> stub_;
  int refused_ = 0;
  int refused_generate_ = 0;
};

TEST_F(ServerBadRequestsE2eTest, UnparsableRequestsAreInvalidArgumentCountedAndNotLogged) {
  ASSERT_NO_FATAL_FAILURE(StartServer(/*with_keys=*/false));
  const std::map<std::string, double> before = Scrape();

  // A long greedy stream runs through everything below and must come out as if alone.
  constexpr int kStreamTokens = 400;
  testing::StreamResult stream;
  std::thread streamer(
      [&] { stream = testing::Generate(*stub_, testing::IdsRequest({1}, kStreamTokens)); });

  // Garbage, to every method.
  for (const auto& [method, message] : kMethods) {
    for (const std::string& bytes : kGarbage) {
      SCOPED_TRACE(absl::StrCat("garbage of ", bytes.size(), " bytes"));
      ExpectRefused(method, bytes, absl::StrCat("request body is not a valid ", message));
    }
    // No message at all.
    ExpectRefused(method, std::nullopt,
                  absl::StrCat("request body is missing: no ", message, " was sent"));
  }

  // Every truncation of a real request that protobuf itself refuses.
  v1::GenerateRequest full;
  full.set_session_id("no-such-session");
  full.set_text("Once upon a time");
  full.mutable_sampling()->set_temperature(0.5f);
  full.mutable_sampling()->set_max_new_tokens(7);
  full.mutable_sampling()->add_stop("The end");
  full.mutable_attention()->set_token_budget(64);
  const std::string wire = full.SerializeAsString();
  int truncations = 0;
  for (size_t n = 1; n < wire.size(); ++n) {
    v1::GenerateRequest parsed;
    if (parsed.ParseFromString(wire.substr(0, n))) continue;
    SCOPED_TRACE(absl::StrCat("first ", n, " of ", wire.size(), " bytes"));
    ExpectRefused("Generate", wire.substr(0, n), "request body is not a valid GenerateRequest");
    ++truncations;
  }
  EXPECT_GE(truncations, 10);

  // Invalid UTF-8 in each string field: a stray continuation byte, an overlong '/', a
  // surrogate, a code point above U+10FFFF, a sequence cut short, and 0xff.
  const std::vector<std::string> bad_utf8 = {"ab\x80",
                                             "\xc0\xaf"
                                             "a",
                                             "\xed\xa0\x80",
                                             "\xf4\x90\x80\x80"
                                             "a",
                                             "a\xe2\x82",
                                             "\xff"
                                             "bc"};
  for (std::string bad : bad_utf8) {
    SCOPED_TRACE(absl::CEscape(bad));
    // Markers of the bad string's length, each unique in its message.
    auto marker = [&](char c) { return std::string(bad.size(), c); };
    v1::GenerateRequest generate;
    generate.set_session_id(marker('S'));
    generate.set_text(marker('T'));
    generate.mutable_sampling()->add_stop(marker('P'));
    generate.mutable_sampling()->add_stop("fine");
    generate.mutable_sampling()->add_stop(marker('Q'));
    ExpectRefused("Generate", WithBytes(generate, marker('S'), bad),
                  "request field 'session_id' is not valid UTF-8");
    ExpectRefused("Generate", WithBytes(generate, marker('T'), bad),
                  "request field 'text' is not valid UTF-8");
    ExpectRefused("Generate", WithBytes(generate, marker('P'), bad),
                  "request field 'sampling.stop[0]' is not valid UTF-8");
    ExpectRefused("Generate", WithBytes(generate, marker('Q'), bad),
                  "request field 'sampling.stop[2]' is not valid UTF-8");
    v1::CancelGenerationRequest cancel;
    cancel.set_session_id(marker('S'));
    ExpectRefused("CancelGeneration", WithBytes(cancel, marker('S'), bad),
                  "request field 'session_id' is not valid UTF-8");
    v1::CloseSessionRequest close;
    close.set_session_id(marker('S'));
    ExpectRefused("CloseSession", WithBytes(close, marker('S'), bad),
                  "request field 'session_id' is not valid UTF-8");
    v1::GetSessionRequest get;
    get.set_session_id(marker('S'));
    ExpectRefused("GetSession", WithBytes(get, marker('S'), bad),
                  "request field 'session_id' is not valid UTF-8");
  }

  // Well-formed UTF-8 of every length passes the check and meets the usual validation.
  {
    v1::GenerateRequest request;
    request.set_text("caf\xc3\xa9 \xe2\x9c\x93 \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf");
    request.mutable_sampling()->set_max_new_tokens(2);
    grpc::ClientContext context;
    auto reader = stub_->Generate(&context, request);
    v1::GenerateResponse response;
    while (reader->Read(&response)) {
    }
    EXPECT_TRUE(reader->Finish().ok());
    v1::GetSessionRequest get;
    get.set_session_id("\xc3\xa9t\xc3\xa9");
    const grpc::Status status =
        CallRaw(*generic_, Method("GetSession"), get.SerializeAsString(), key_);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND) << status.error_message();
  }

  streamer.join();
  EXPECT_TRUE(stream.status.ok()) << stream.status.error_message();
  ASSERT_EQ(stream.ids.size(), static_cast<size_t>(kStreamTokens));
  EXPECT_EQ(std::vector<int32_t>(stream.ids.begin(), stream.ids.begin() + kReferenceIds.size()),
            kReferenceIds);
  ASSERT_TRUE(stream.result.has_value());
  EXPECT_EQ(stream.result->finish_reason(), v1::FINISH_REASON_LENGTH);

  const std::map<std::string, double> after = Scrape();
  const std::string invalid = "mpa_request_errors_total{code=\"INVALID_ARGUMENT\"}";
  EXPECT_EQ(Value(after, invalid) - Value(before, invalid), refused_);
  const std::string errors = "mpa_requests_total{finish_reason=\"error\"}";
  EXPECT_EQ(Value(after, errors) - Value(before, errors), refused_generate_);
  const std::string not_found = "mpa_request_errors_total{code=\"NOT_FOUND\"}";
  EXPECT_EQ(Value(after, not_found) - Value(before, not_found), 1);

  // Nothing was logged for any of them: the server printed its start-up lines only.
  const std::string output = server_->output();
  EXPECT_THAT(output, Not(HasSubstr("libprotobuf")));
  EXPECT_THAT(output, Not(HasSubstr("UTF-8")));
  for (absl::string_view line : absl::StrSplit(output, '\n', absl::SkipEmpty())) {
    EXPECT_TRUE(absl::StartsWith(line, "mpa_server")) << line;
  }
}

TEST_F(ServerBadRequestsE2eTest, TheKeyIsCheckedBeforeTheBody) {
  ASSERT_NO_FATAL_FAILURE(StartServer(/*with_keys=*/true));
  v1::GetSessionRequest get;
  get.set_session_id("SS");
  const std::string bad_utf8 = WithBytes(get, "SS", "\xc0\xaf");
  for (const auto& [method, message] : kMethods) {
    for (const std::optional<std::string>& bytes :
         {std::optional<std::string>(kGarbage[0]), std::optional<std::string>(bad_utf8),
          std::optional<std::string>()}) {
      const grpc::Status status = CallRaw(*generic_, Method(method), bytes, /*key=*/"");
      EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED)
          << method << ": " << status.error_message();
      EXPECT_THAT(status.error_message(), Not(HasSubstr("request")));
      EXPECT_THAT(status.error_message(), Not(HasSubstr("UTF-8")));
    }
    // With the key, the body is looked at.
    ExpectRefused(method, kGarbage[0], absl::StrCat("request body is not a valid ", message));
  }
  const std::map<std::string, double> after = Scrape();
  EXPECT_EQ(Value(after, "mpa_request_errors_total{code=\"UNAUTHENTICATED\"}"),
            3.0 * kMethods.size());
  EXPECT_EQ(Value(after, "mpa_request_errors_total{code=\"INVALID_ARGUMENT\"}"), refused_);
}

}  // namespace
}  // namespace mpa::server
