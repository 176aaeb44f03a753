// End-to-end: the real mpa_server binary on a free loopback port with the real stories260K
// model, driven by mpa_client, by a Python grpcio client (a client nobody here wrote), and by
// C++ stubs for concurrency, bad inputs, limits and SIGTERM drain.
#include <fcntl.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "multipole/v1/decode.grpc.pb.h"
#include "tests/server/generate_stream.h"
#include "tests/server/health_check.h"
#include "tests/server/server_process.h"
#include "tests/time_scale.h"

namespace mpa::server {
namespace {

namespace v1 = ::multipole::v1;
using testing::Generate;
using ::testing::HasSubstr;
using testing::HealthStatus;
using testing::IdsRequest;
using testing::StreamResult;

const char kModelDir[] = MPA_SOURCE_DIR "/../shared/models/stories260K";
// Greedy ids of stories260K from BOS (id 1), as its README records them (checked against HF).
const char kReferenceIds[] =
    "403 407 261 378 432 383 286 261 376 298 315 421 395 317 426 338 401 396 267 337 410 408 419 "
    "292 411 322 265 282 295 433 426 385 328 432 358 394 261 370 432 352 266 268 388 426 338 391 "
    "266 267 337 335 312 432 398 312 286 267 414 270 333 415 426 13 438 310";

// mpa_server as a child process, started on a free port; waits until it is listening.
class ServerProcess {
 public:
  explicit ServerProcess(std::vector<std::string> flags) : process_(Argv(std::move(flags))) {
    if (auto address = process_.WaitForLine("listening on ", absl::Seconds(30))) {
      address_ = *address;
    }
  }
  const std::string& address() const { return address_; }
  void Signal(int sig) { process_.Signal(sig); }
  // The exit code, or -1 if it did not exit in time (or died of a signal).
  int Wait(absl::Duration timeout) { return process_.Wait(timeout); }
  std::string output() { return process_.output(); }
  // Why it is not listening (for an assertion's message).
  std::string StartFailure() { return process_.StartFailure("listening on "); }

 private:
  static std::vector<std::string> Argv(std::vector<std::string> flags) {
    // No metrics endpoint: the default port (9464) would collide between tests run in parallel.
    std::vector<std::string> argv = {MPA_SERVER_BINARY, absl::StrCat("--model=", kModelDir),
                                     "--address=127.0.0.1:0", "--metrics_address="};
    argv.insert(argv.end(), flags.begin(), flags.end());
    return argv;
  }

  testing::ChildProcess process_;
  std::string address_;
};

using testing::Shell;

std::vector<int32_t> ParseIds(absl::string_view text) {
  std::vector<int32_t> ids;
  for (absl::string_view piece : absl::StrSplit(text, absl::ByAnyChar(" \n"), absl::SkipEmpty())) {
    int32_t id;
    if (absl::SimpleAtoi(piece, &id)) ids.push_back(id);
  }
  return ids;
}

class ServerE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(std::string(kModelDir) + "/config.json")) {
      GTEST_SKIP() << "stories260K not found at " << kModelDir;
    }
    const unsigned seed = std::random_device{}();
    rng_.seed(seed);
    RecordProperty("seed", std::to_string(seed));
  }
  // Starts the server and the stubs; a fatal failure if it does not come up (call it in
  // ASSERT_NO_FATAL_FAILURE: the test must not go on without a stub).
  void StartServer(std::vector<std::string> flags = {}) {
    server_ = std::make_unique<ServerProcess>(std::move(flags));
    ASSERT_FALSE(server_->address().empty()) << server_->StartFailure();
    channel_ = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
    stub_ = v1::DecodeService::NewStub(channel_);
  }
  std::vector<int32_t> RandomPrompt(int n) {
    std::uniform_int_distribution<int32_t> id(3, 511);
    std::vector<int32_t> ids = {1};
    while (static_cast<int>(ids.size()) < n) ids.push_back(id(rng_));
    return ids;
  }
  std::string CreateSession() {
    grpc::ClientContext context;
    v1::CreateSessionResponse r;
    grpc::Status s = stub_->CreateSession(&context, v1::CreateSessionRequest(), &r);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return r.session_id();
  }

  std::mt19937 rng_;
  std::unique_ptr<ServerProcess> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::DecodeService::Stub> stub_;
};

TEST_F(ServerE2eTest, PythonGrpcioClient) {
  if (Shell("/usr/bin/python3 -c 'import grpc, google.protobuf' 2>/dev/null").first != 0) {
    GTEST_SKIP() << "python3-grpcio is not installed";
  }
  ASSERT_NO_FATAL_FAILURE(StartServer());
  auto [rc, out] = Shell(absl::StrCat("/usr/bin/python3 ", MPA_PYTHON_CLIENT,
                                      " --address=", server_->address(), " --repo=", MPA_SOURCE_DIR,
                                      " --reference_ids='", kReferenceIds, "' 2>&1"));
  EXPECT_EQ(rc, 0) << out;
  EXPECT_THAT(out, HasSubstr("all python client checks passed"));
  EXPECT_EQ(HealthStatus(channel_), 1);  // SERVING
}

TEST_F(ServerE2eTest, MpaClientGenerateAndChat) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  const std::string client = absl::StrCat(MPA_CLIENT_BINARY, " --server=", server_->address());
  auto [rc, out] =
      Shell(client + " generate --prompt_ids=1 --max_new_tokens=64 --output=ids --stats=false");
  ASSERT_EQ(rc, 0) << out;
  EXPECT_EQ(ParseIds(out), ParseIds(kReferenceIds));

  auto [rc_text, text] =
      Shell(client + " generate --prompt='Once upon a time' --max_new_tokens=30 2>&1");
  ASSERT_EQ(rc_text, 0) << text;
  EXPECT_THAT(text, HasSubstr("there was"));
  EXPECT_THAT(text, HasSubstr("[finish: length"));

  // Two chat turns on one session; turn 2 equals a one-shot run over the whole conversation.
  auto [rc_chat, chat] = Shell(absl::StrCat("printf '1 403 407\\n261 378\\n' | ", client,
                                            " chat --output=ids --max_new_tokens=8 --ignore_eos "
                                            "--stats=false 2>/dev/null"));
  ASSERT_EQ(rc_chat, 0) << chat;
  std::vector<std::string> lines = absl::StrSplit(chat, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 2u) << chat;
  std::vector<int32_t> conversation = {1, 403, 407};
  for (int32_t id : ParseIds(lines[0])) conversation.push_back(id);
  conversation.push_back(261);
  conversation.push_back(378);
  StreamResult oneshot = Generate(*stub_, IdsRequest(conversation, 8));
  ASSERT_TRUE(oneshot.status.ok()) << oneshot.status.error_message();
  EXPECT_EQ(ParseIds(lines[1]), oneshot.ids);

  auto [rc_bad, bad] = Shell(client + " generate --prompt_ids=1,99999 2>&1");
  EXPECT_EQ(rc_bad, 1);
  EXPECT_THAT(bad, HasSubstr("token_ids.ids[1]"));
}

TEST_F(ServerE2eTest, ThirtyTwoConcurrentStreamsEqualRunningAlone) {
  ASSERT_NO_FATAL_FAILURE(StartServer({"--threads=1"}));
  constexpr int kStreams = 32;
  std::vector<v1::GenerateRequest> requests;
  std::uniform_int_distribution<int> len(1, 60), out(20, 80);
  for (int i = 0; i < kStreams; ++i)
    requests.push_back(IdsRequest(RandomPrompt(len(rng_)), out(rng_)));
  std::vector<StreamResult> alone, together(kStreams);
  for (const auto& r : requests) alone.push_back(Generate(*stub_, r));
  std::vector<std::thread> threads;
  for (int i = 0; i < kStreams; ++i) {
    threads.emplace_back([&, i] { together[i] = Generate(*stub_, requests[i]); });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kStreams; ++i) {
    ASSERT_TRUE(alone[i].status.ok()) << alone[i].status.error_message();
    ASSERT_TRUE(together[i].status.ok()) << together[i].status.error_message();
    const int n = requests[i].sampling().max_new_tokens();
    EXPECT_EQ(alone[i].ids.size(), static_cast<size_t>(n));
    EXPECT_EQ(together[i].ids, alone[i].ids) << "stream " << i;
    ASSERT_TRUE(together[i].result.has_value());
    EXPECT_EQ(together[i].result->usage().generated_tokens(), n);
    EXPECT_EQ(together[i].result->finish_reason(), v1::FINISH_REASON_LENGTH);
  }
}

// With --reference (plain fp32 matrix products instead of OpenBLAS, whose rounding depends on
// the batch size) a request's tokens do not depend on what shares its decode steps, sampled ones
// included: what bench/server_soak.cc relies on when it demands identical tokens under load.
TEST_F(ServerE2eTest, ReferenceMathSampledStreamsEqualRunningAlone) {
  ASSERT_NO_FATAL_FAILURE(StartServer({"--threads=1", "--reference"}));
  constexpr int kStreams = 24;
  std::vector<v1::GenerateRequest> requests;
  std::uniform_int_distribution<int> len(1, 60), out(60, 160);
  for (int i = 0; i < kStreams; ++i) {
    requests.push_back(IdsRequest(RandomPrompt(len(rng_)), out(rng_)));
    requests.back().mutable_sampling()->set_temperature(1.0f);
    requests.back().mutable_sampling()->set_top_p(0.95f);
    requests.back().mutable_sampling()->set_seed(1000 + i);
  }
  std::vector<StreamResult> alone, together(kStreams);
  for (const auto& r : requests) alone.push_back(Generate(*stub_, r));
  std::vector<std::thread> threads;
  for (int i = 0; i < kStreams; ++i) {
    threads.emplace_back([&, i] { together[i] = Generate(*stub_, requests[i]); });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kStreams; ++i) {
    ASSERT_TRUE(alone[i].status.ok()) << alone[i].status.error_message();
    ASSERT_TRUE(together[i].status.ok()) << together[i].status.error_message();
    EXPECT_EQ(alone[i].ids.size(), static_cast<size_t>(requests[i].sampling().max_new_tokens()));
    EXPECT_EQ(together[i].ids, alone[i].ids) << "stream " << i;
  }
}

TEST_F(ServerE2eTest, BadInputsReturnTheirCodesWhileStreamsRun) {
  ASSERT_NO_FATAL_FAILURE(StartServer({"--threads=1", "--max_prompt_tokens=100"}));
  // Long streams that keep the engine busy while the bad requests arrive.
  constexpr int kRunning = 12;
  std::vector<v1::GenerateRequest> running;
  for (int i = 0; i < kRunning; ++i) running.push_back(IdsRequest(RandomPrompt(8), 440));
  std::vector<StreamResult> results(kRunning);
  // finished counts the streams whose result is in (results[i] is only read after the joins).
  std::atomic<int> started{0}, finished{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kRunning; ++i) {
    threads.emplace_back([&, i] {
      results[i] = Generate(*stub_, running[i], &started);
      ++finished;
    });
  }
  while (started < kRunning) absl::SleepFor(absl::Milliseconds(1));
  const std::string busy = CreateSession();
  std::atomic<int> busy_started{0};
  StreamResult busy_result;
  std::thread busy_thread([&] {
    busy_result = Generate(*stub_, IdsRequest(RandomPrompt(4), 400, busy), &busy_started);
  });
  while (busy_started == 0) absl::SleepFor(absl::Milliseconds(1));

  struct Case {
    std::string name;
    v1::GenerateRequest request;
    grpc::StatusCode code;
    std::string field;
  };
  std::vector<Case> cases;
  cases.push_back(
      {"id out of range", IdsRequest({1, 512}, 4), grpc::INVALID_ARGUMENT, "token_ids.ids[1]"});
  cases.push_back({"empty input", IdsRequest({}, 4), grpc::INVALID_ARGUMENT, "token_ids"});
  cases.push_back({"no input", v1::GenerateRequest(), grpc::INVALID_ARGUMENT, "input"});
  cases.push_back({"prompt too long", IdsRequest(RandomPrompt(101), 4), grpc::INVALID_ARGUMENT,
                   "max_prompt_tokens"});
  cases.push_back({"total too long", IdsRequest(RandomPrompt(50), 480), grpc::INVALID_ARGUMENT,
                   "sampling.max_new_tokens"});
  {
    v1::GenerateRequest r = IdsRequest({1}, 4);
    r.mutable_sampling()->set_temperature(-1);
    cases.push_back({"negative temperature", r, grpc::INVALID_ARGUMENT, "sampling.temperature"});
  }
  {
    v1::GenerateRequest r = IdsRequest({1}, 4);
    r.mutable_sampling()->set_top_p(1.5f);
    cases.push_back({"top_p above 1", r, grpc::INVALID_ARGUMENT, "sampling.top_p"});
  }
  {
    v1::GenerateRequest r = IdsRequest({1}, 4);
    r.mutable_sampling()->set_max_new_tokens(-3);
    cases.push_back(
        {"negative max_new_tokens", r, grpc::INVALID_ARGUMENT, "sampling.max_new_tokens"});
  }
  {
    v1::GenerateRequest r = IdsRequest({1}, 4);
    r.mutable_sampling()->add_stop_token_ids(-1);
    cases.push_back({"bad stop id", r, grpc::INVALID_ARGUMENT, "sampling.stop_token_ids"});
  }
  {
    v1::GenerateRequest r = IdsRequest({1}, 4);
    for (int i = 0; i < 17; ++i) r.mutable_sampling()->add_stop(absl::StrCat("stop", i));
    cases.push_back({"too many stop strings", r, grpc::INVALID_ARGUMENT, "at most 16"});
  }
  {
    v1::GenerateRequest r = IdsRequest({1}, 4);
    r.mutable_sampling()->add_stop(std::string(257, 'x'));
    cases.push_back({"stop string too long", r, grpc::INVALID_ARGUMENT, "sampling.stop[0]"});
  }
  {
    v1::GenerateRequest r = IdsRequest({1}, 4);
    for (int i = 0; i < 65; ++i) r.mutable_sampling()->add_stop_token_ids(3);
    cases.push_back({"too many stop ids", r, grpc::INVALID_ARGUMENT, "sampling.stop_token_ids"});
  }
  {
    v1::GenerateRequest r = IdsRequest({1}, 4);
    r.mutable_attention()->set_token_budget(0);
    cases.push_back({"zero token budget", r, grpc::INVALID_ARGUMENT, "attention.token_budget"});
  }
  cases.push_back(
      {"unknown session", IdsRequest({1}, 4, "ses-0123"), grpc::NOT_FOUND, "session_id"});
  cases.push_back(
      {"busy session", IdsRequest({5}, 4, busy), grpc::FAILED_PRECONDITION, "session_id"});
  for (const Case& c : cases) {
    StreamResult r = Generate(*stub_, c.request);
    EXPECT_EQ(r.status.error_code(), c.code) << c.name << ": " << r.status.error_message();
    EXPECT_THAT(r.status.error_message(), HasSubstr(c.field)) << c.name;
    EXPECT_TRUE(r.ids.empty()) << c.name;
  }
  {
    grpc::ClientContext context;
    v1::GetSessionRequest request;
    request.set_session_id("nope");
    v1::GetSessionResponse response;
    grpc::Status s = stub_->GetSession(&context, request, &response);
    EXPECT_EQ(s.error_code(), grpc::NOT_FOUND);
    EXPECT_THAT(s.error_message(), HasSubstr("session_id"));
  }
  const int still_running = kRunning - finished.load();
  for (auto& t : threads) t.join();
  busy_thread.join();
  EXPECT_GT(still_running, 0) << "the streams ended before the bad inputs were tested";
  ASSERT_TRUE(busy_result.status.ok()) << busy_result.status.error_message();
  EXPECT_EQ(busy_result.ids.size(), 400u);
  // The running streams were not disturbed: each equals the same prompt run alone.
  for (int i = 0; i < kRunning; ++i) {
    ASSERT_TRUE(results[i].status.ok()) << results[i].status.error_message();
    StreamResult alone = Generate(*stub_, running[i]);
    EXPECT_EQ(results[i].ids, alone.ids) << "stream " << i;
  }
}

// A request's text is held to --max_request_text_bytes before it is tokenized, and gRPC's
// receive limit follows from the request limits: a 3.9 MB text is refused by gRPC itself in
// milliseconds, and four of them at once leave a running stream's time alone.
TEST_F(ServerE2eTest, OversizedTextIsRefusedFastWithoutDelayingOtherStreams) {
  constexpr int kTextLimit = 1500;
  ASSERT_NO_FATAL_FAILURE(
      StartServer({"--threads=1", absl::StrCat("--max_request_text_bytes=", kTextLimit)}));
  // stories260K: 512 prompt tokens, so gRPC's limit is max(1500, 6 * 512) + 64 KiB.
  const std::string receive_limit = absl::StrCat(6 * 512 + (64 << 10));
  {
    grpc::ClientContext context;
    v1::GetModelInfoResponse info;
    ASSERT_TRUE(stub_->GetModelInfo(&context, v1::GetModelInfoRequest(), &info).ok());
    EXPECT_EQ(info.max_request_text_bytes(), kTextLimit);
  }
  auto text_request = [](std::string text, int max_new) {
    v1::GenerateRequest r;
    r.set_text(std::move(text));
    r.mutable_sampling()->set_max_new_tokens(max_new);
    return r;
  };
  const v1::GenerateRequest small = IdsRequest(RandomPrompt(8), 400);
  absl::Time start = absl::Now();
  StreamResult alone = Generate(*stub_, small);
  const absl::Duration alone_time = absl::Now() - start;
  ASSERT_TRUE(alone.status.ok()) << alone.status.error_message();

  const v1::GenerateRequest huge = text_request(std::string(3'900'000, 'a'), 4);
  std::atomic<int> small_started{0};
  StreamResult together;
  absl::Duration together_time;
  std::thread small_thread([&] {
    const absl::Time t0 = absl::Now();
    together = Generate(*stub_, small, &small_started);
    together_time = absl::Now() - t0;
  });
  while (small_started == 0) absl::SleepFor(absl::Milliseconds(1));
  constexpr int kHuge = 4;
  std::vector<StreamResult> refused(kHuge);
  std::vector<absl::Duration> refuse_times(kHuge);
  std::vector<std::thread> huge_threads;
  for (int i = 0; i < kHuge; ++i) {
    huge_threads.emplace_back([&, i] {
      const absl::Time t0 = absl::Now();
      refused[i] = Generate(*stub_, huge);
      refuse_times[i] = absl::Now() - t0;
    });
  }
  for (auto& t : huge_threads) t.join();
  small_thread.join();
  for (int i = 0; i < kHuge; ++i) {
    EXPECT_EQ(refused[i].status.error_code(), grpc::RESOURCE_EXHAUSTED)
        << refused[i].status.error_message();
    EXPECT_THAT(refused[i].status.error_message(), HasSubstr(receive_limit));
    EXPECT_LT(refuse_times[i], absl::Milliseconds(100) * MPA_TEST_TIME_SCALE) << "huge text " << i;
    RecordProperty(absl::StrCat("refuse_us_", i), absl::ToInt64Microseconds(refuse_times[i]));
  }
  ASSERT_TRUE(together.status.ok()) << together.status.error_message();
  EXPECT_EQ(together.ids, alone.ids);
  EXPECT_LT(together_time, 2 * alone_time + absl::Milliseconds(200))
      << "alone " << alone_time << ", beside the huge texts " << together_time;
  RecordProperty("small_alone_ms", absl::ToInt64Milliseconds(alone_time));
  RecordProperty("small_together_ms", absl::ToInt64Milliseconds(together_time));

  // Over the text limit but under gRPC's: refused by the service, before tokenization.
  start = absl::Now();
  StreamResult over = Generate(*stub_, text_request(std::string(kTextLimit + 1, 'a'), 4));
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(100));
  EXPECT_EQ(over.status.error_code(), grpc::INVALID_ARGUMENT);
  EXPECT_THAT(over.status.error_message(), HasSubstr("max_request_text_bytes"));
  EXPECT_THAT(over.status.error_message(), HasSubstr(absl::StrCat(kTextLimit + 1, " bytes")));

  // Exactly at the limit (about 350 tokens of stories260K's vocabulary): generates.
  std::string at_limit;
  while (at_limit.size() < kTextLimit) at_limit += "Once upon a time there was a girl. ";
  at_limit.resize(kTextLimit);
  StreamResult ok = Generate(*stub_, text_request(at_limit, 8));
  ASSERT_TRUE(ok.status.ok()) << ok.status.error_message();
  EXPECT_EQ(ok.ids.size(), 8u);
  ASSERT_TRUE(ok.result.has_value());
  EXPECT_GT(ok.result->usage().prompt_tokens(), 100);
  EXPECT_LE(ok.result->usage().prompt_tokens(), 512 - 8);
}

TEST_F(ServerE2eTest, SessionLimitAndKvAdmission) {
  ASSERT_NO_FATAL_FAILURE(StartServer({"--max_sessions=2", "--max_kv_tokens=512"}));
  const std::string a = CreateSession();
  const std::string b = CreateSession();
  {
    grpc::ClientContext context;
    v1::CreateSessionResponse r;
    grpc::Status s = stub_->CreateSession(&context, v1::CreateSessionRequest(), &r);
    EXPECT_EQ(s.error_code(), grpc::RESOURCE_EXHAUSTED);
    EXPECT_THAT(s.error_message(), HasSubstr("max_sessions"));
  }
  // Session a keeps 489 tokens of KV resident after its turn; 512 tokens of cache remain 16.
  StreamResult turn = Generate(*stub_, IdsRequest(RandomPrompt(10), 480, a));
  ASSERT_TRUE(turn.status.ok()) << turn.status.error_message();
  StreamResult refused = Generate(*stub_, IdsRequest(RandomPrompt(10), 40));
  EXPECT_EQ(refused.status.error_code(), grpc::RESOURCE_EXHAUSTED);
  EXPECT_THAT(refused.status.error_message(), HasSubstr("max_kv_tokens"));
  // Closing the session frees its cache.
  {
    grpc::ClientContext context;
    v1::CloseSessionRequest request;
    request.set_session_id(a);
    v1::CloseSessionResponse response;
    ASSERT_TRUE(stub_->CloseSession(&context, request, &response).ok());
  }
  StreamResult admitted = Generate(*stub_, IdsRequest(RandomPrompt(10), 40));
  EXPECT_TRUE(admitted.status.ok()) << admitted.status.error_message();
  EXPECT_EQ(admitted.ids.size(), 40u);
}

TEST_F(ServerE2eTest, SigtermDrainsRunningStreamsRefusesNewWorkAndExitsZero) {
  ASSERT_NO_FATAL_FAILURE(StartServer({"--threads=1", "--drain_timeout=60s"}));
  EXPECT_EQ(HealthStatus(channel_), 1);
  constexpr int kRunning = 16;
  std::vector<v1::GenerateRequest> running;
  for (int i = 0; i < kRunning; ++i) running.push_back(IdsRequest(RandomPrompt(8), 440));
  std::vector<StreamResult> results(kRunning);
  // finished counts the streams whose result is in (results[i] is only read after the joins).
  std::atomic<int> started{0}, finished{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kRunning; ++i) {
    threads.emplace_back([&, i] {
      results[i] = Generate(*stub_, running[i], &started);
      ++finished;
    });
  }
  while (started < kRunning) absl::SleepFor(absl::Milliseconds(1));
  server_->Signal(SIGTERM);
  // Wait until the server has begun draining (health flips), then new work is refused.
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  int health = 1;
  while (absl::Now() < deadline && (health = HealthStatus(channel_)) == 1) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  EXPECT_EQ(health, 2);  // NOT_SERVING
  StreamResult refused = Generate(*stub_, IdsRequest({1}, 4));
  EXPECT_EQ(refused.status.error_code(), grpc::UNAVAILABLE) << refused.status.error_message();
  {
    grpc::ClientContext context;
    v1::CreateSessionResponse r;
    EXPECT_EQ(stub_->CreateSession(&context, v1::CreateSessionRequest(), &r).error_code(),
              grpc::UNAVAILABLE);
  }
  const int unfinished_at_refusal = kRunning - finished.load();
  for (auto& t : threads) t.join();
  EXPECT_GT(unfinished_at_refusal, 0) << "streams ended before the refusal was tested";
  for (int i = 0; i < kRunning; ++i) {
    ASSERT_TRUE(results[i].status.ok()) << results[i].status.error_message();
    EXPECT_EQ(results[i].ids.size(), 440u);
    ASSERT_TRUE(results[i].result.has_value());
    EXPECT_EQ(results[i].result->finish_reason(), v1::FINISH_REASON_LENGTH);
  }
  EXPECT_EQ(server_->Wait(absl::Seconds(30)), 0) << server_->output();
  std::printf("%s", server_->output().c_str());
}

// A client that made a call and then sits idle does not read its socket until its channel's
// backup poller runs (every 5 s by default), so it acknowledges the server's GOAWAY late: the
// server must not wait for that acknowledgement once its streams have ended.
TEST_F(ServerE2eTest, SigtermExitsPromptlyWithAnIdleClientConnected) {
  ASSERT_NO_FATAL_FAILURE(StartServer({"--threads=1"}));
  StreamResult turn = Generate(*stub_, IdsRequest(RandomPrompt(8), 16));
  ASSERT_TRUE(turn.status.ok()) << turn.status.error_message();
  // Both this test's channel and a second one are idle from here on.
  auto idle_channel = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
  EXPECT_EQ(HealthStatus(idle_channel), 1);
  const absl::Time signalled = absl::Now();
  server_->Signal(SIGTERM);
  ASSERT_EQ(server_->Wait(absl::Seconds(30)), 0) << server_->output();
  EXPECT_LT(absl::Now() - signalled, absl::Seconds(2)) << server_->output();
}

}  // namespace
}  // namespace mpa::server
