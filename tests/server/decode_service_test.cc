// The gRPC edge in process, over a real loopback port, with the scripted engine: a slow reader
// does not hold up the engine (tokens merge into fewer messages, none lost), a client that
// cancels frees its session, and model info reports the limits.
#include "server/decode_service.h"

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <memory>
#include <random>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server/fake_engine.h"

namespace mpa::server {
namespace {

namespace v1 = ::multipole::v1;
using testing::FakeEngine;

class DecodeServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SchedulerOptions options;
    options.max_prompt_tokens = 1000;
    StartService(options);
  }
  void StartService(const SchedulerOptions& options) {
    engine_ = std::make_unique<FakeEngine>(/*kv_tokens=*/1 << 16, /*max_context=*/40000);
    scheduler_ = std::make_unique<DecodeScheduler>(engine_.get(), options);
    scheduler_->Start();
    service_ = std::make_unique<DecodeService>(scheduler_.get());
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(port, 0);
    port_ = port;
    stub_ = v1::DecodeService::NewStub(grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                                           grpc::InsecureChannelCredentials()));
    rng_.seed(std::random_device{}());
  }
  void TearDown() override {
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
    if (scheduler_) scheduler_->Stop();
  }
  std::vector<int32_t> RandomIds(int n) {
    std::uniform_int_distribution<int32_t> id(3, FakeEngine::kVocab - 1);
    std::vector<int32_t> ids(n);
    for (auto& t : ids) t = id(rng_);
    return ids;
  }
  static v1::GenerateRequest Request(const std::vector<int32_t>& ids, int max_new,
                                     const std::string& session = "") {
    v1::GenerateRequest r;
    r.set_session_id(session);
    for (int32_t id : ids) r.mutable_token_ids()->add_ids(id);
    r.mutable_sampling()->set_max_new_tokens(max_new);
    return r;
  }

  std::mt19937 rng_;
  int port_ = 0;
  std::unique_ptr<FakeEngine> engine_;
  std::unique_ptr<DecodeScheduler> scheduler_;
  std::unique_ptr<DecodeService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::DecodeService::Stub> stub_;
};

TEST_F(DecodeServiceTest, SlowReaderNeitherBlocksTheEngineNorLosesTokens) {
  // Enough tokens that the unread stream fills gRPC's flow-control window.
  constexpr int kTokens = 30000;
  const std::vector<int32_t> prompt = RandomIds(7);
  grpc::ClientContext slow_context;
  auto slow = stub_->Generate(&slow_context, Request(prompt, kTokens));
  v1::GenerateResponse message;
  ASSERT_TRUE(slow->Read(&message));
  std::vector<int32_t> ids;
  for (const auto& t : message.tokens()) ids.push_back(t.id());

  // While the slow stream is not read, another stream runs to the end.
  const std::vector<int32_t> other_prompt = RandomIds(5);
  grpc::ClientContext other_context;
  auto other = stub_->Generate(&other_context, Request(other_prompt, 50));
  std::vector<int32_t> other_ids;
  while (other->Read(&message)) {
    for (const auto& t : message.tokens()) other_ids.push_back(t.id());
  }
  ASSERT_TRUE(other->Finish().ok());
  EXPECT_EQ(other_ids, FakeEngine::Greedy(other_prompt, 50));

  // The engine finished the slow generation without waiting for the reader.
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (scheduler_->snapshot().active_generations > 0 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_EQ(scheduler_->snapshot().active_generations, 0);

  int messages = 1;
  std::optional<v1::GenerateResult> result;
  while (slow->Read(&message)) {
    ++messages;
    for (const auto& t : message.tokens()) ids.push_back(t.id());
    if (message.has_result()) result = message.result();
  }
  ASSERT_TRUE(slow->Finish().ok());
  EXPECT_EQ(ids, FakeEngine::Greedy(prompt, kTokens));
  ASSERT_TRUE(result.has_value());
  EXPECT_EQ(result->usage().generated_tokens(), kTokens);
  EXPECT_LT(messages, kTokens) << "tokens were not merged while the reader was slow";
}

TEST_F(DecodeServiceTest, SessionTtlCountsFromTheEndOfTheClientsStream) {
  TearDown();  // the fixture's service, restarted with a short TTL
  server_.reset();
  service_.reset();
  scheduler_.reset();
  SchedulerOptions options;
  options.max_prompt_tokens = 1000;
  const absl::Duration ttl = absl::Milliseconds(300);
  options.session_ttl = ttl;
  StartService(options);
  auto get_session = [&](const std::string& id) {
    grpc::ClientContext context;
    v1::GetSessionRequest request;
    request.set_session_id(id);
    v1::GetSessionResponse response;
    return stub_->GetSession(&context, request, &response);
  };
  std::string session;
  {
    grpc::ClientContext context;
    v1::CreateSessionResponse created;
    ASSERT_TRUE(stub_->CreateSession(&context, v1::CreateSessionRequest(), &created).ok());
    session = created.session_id();
  }
  // A reader with a small flow-control window (no BDP probing to grow it) and more tokens than
  // it holds: the server cannot finish the stream until the client reads.
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 16 << 10);
  auto slow_stub = v1::DecodeService::NewStub(grpc::CreateCustomChannel(
      "127.0.0.1:" + std::to_string(port_), grpc::InsecureChannelCredentials(), args));
  constexpr int kTokens = 30000;
  const std::vector<int32_t> prompt = RandomIds(7);
  grpc::ClientContext context;
  auto reader = slow_stub->Generate(&context, Request(prompt, kTokens, session));
  v1::GenerateResponse message;
  ASSERT_TRUE(reader->Read(&message));
  std::vector<int32_t> ids;
  for (const auto& t : message.tokens()) ids.push_back(t.id());
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (scheduler_->snapshot().active_generations > 0 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  ASSERT_EQ(scheduler_->snapshot().active_generations, 0);
  // The engine is done; the reader is slow: three TTLs pass before it reads on.
  absl::SleepFor(3 * ttl);
  grpc::Status kept = get_session(session);
  EXPECT_TRUE(kept.ok()) << "evicted while its stream was being read: " << kept.error_message();
  while (reader->Read(&message)) {
    for (const auto& t : message.tokens()) ids.push_back(t.id());
  }
  ASSERT_TRUE(reader->Finish().ok());
  const absl::Time stream_end = absl::Now();
  EXPECT_EQ(ids, FakeEngine::Greedy(prompt, kTokens));
  // Now idle: it expires one TTL after the stream's end (the eviction runs on the engine
  // thread's next wake-up, so give it a little more).
  EXPECT_TRUE(get_session(session).ok());
  while (get_session(session).ok() && absl::Now() < stream_end + 10 * ttl) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  const absl::Duration lived = absl::Now() - stream_end;
  EXPECT_EQ(get_session(session).error_code(), grpc::NOT_FOUND);
  EXPECT_GE(lived, ttl - absl::Milliseconds(50));
  EXPECT_LT(lived, 5 * ttl);
}

TEST_F(DecodeServiceTest, ClientCancelFreesTheSession) {
  engine_->set_step_delay(std::chrono::milliseconds(1));
  grpc::ClientContext create_context;
  v1::CreateSessionResponse session;
  ASSERT_TRUE(stub_->CreateSession(&create_context, v1::CreateSessionRequest(), &session).ok());
  EXPECT_EQ(session.session_id().rfind("ses-", 0), 0u);

  grpc::ClientContext context;
  auto stream = stub_->Generate(&context, Request(RandomIds(3), 5000, session.session_id()));
  v1::GenerateResponse message;
  ASSERT_TRUE(stream->Read(&message));
  EXPECT_EQ(message.session_id(), session.session_id());
  context.TryCancel();
  while (stream->Read(&message)) {
  }
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);

  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  v1::GetSessionResponse info;
  do {
    grpc::ClientContext c;
    v1::GetSessionRequest r;
    r.set_session_id(session.session_id());
    ASSERT_TRUE(stub_->GetSession(&c, r, &info).ok());
    if (!info.generating()) break;
    absl::SleepFor(absl::Milliseconds(2));
  } while (absl::Now() < deadline);
  EXPECT_FALSE(info.generating());
  EXPECT_LT(info.context_tokens(), 3 + 5000);
}

TEST_F(DecodeServiceTest, ModelInfoAndTextInput) {
  grpc::ClientContext context;
  v1::GetModelInfoResponse info;
  ASSERT_TRUE(stub_->GetModelInfo(&context, v1::GetModelInfoRequest(), &info).ok());
  EXPECT_EQ(info.vocab_size(), FakeEngine::kVocab);
  EXPECT_EQ(info.max_prompt_tokens(), 1000);
  EXPECT_EQ(info.max_total_tokens(), 40000);
  EXPECT_EQ(info.bos_token_id(), FakeEngine::kBos);
  EXPECT_EQ(info.default_attention().mode(), v1::ATTENTION_MODE_DENSE);

  // Text is tokenized at the edge, with BOS because it opens the context.
  v1::GenerateRequest r;
  r.set_text("hello");
  r.mutable_sampling()->set_max_new_tokens(5);
  r.set_return_logprobs(true);
  grpc::ClientContext gen_context;
  auto stream = stub_->Generate(&gen_context, r);
  v1::GenerateResponse message;
  std::vector<int32_t> ids;
  std::string text;
  std::optional<v1::GenerateResult> result;
  bool logprobs_ok = true;
  while (stream->Read(&message)) {
    for (const auto& t : message.tokens()) {
      ids.push_back(t.id());
      text += t.text();
      logprobs_ok = logprobs_ok && t.logprob() < 0.0f && t.logprob() > -10.0f;
    }
    if (message.has_result()) result = message.result();
  }
  ASSERT_TRUE(stream->Finish().ok());
  absl::StatusOr<std::vector<int32_t>> prompt = engine_->Encode("hello", true);
  ASSERT_TRUE(prompt.ok());
  EXPECT_EQ(ids, FakeEngine::Greedy(*prompt, 5));
  EXPECT_EQ(text.size(), 5u);
  EXPECT_TRUE(logprobs_ok);
  ASSERT_TRUE(result.has_value());
  EXPECT_EQ(result->usage().prompt_tokens(), 6);  // BOS + 5 characters
}

// An unknown session id is echoed in the NOT_FOUND message; a very long one must not make the
// status too large for the client's metadata limit (8 KiB by default), which would turn the
// answer into a different error. Ids with odd characters are reported the same way.
TEST_F(DecodeServiceTest, LongOrOddUnknownSessionIdsAreNotFound) {
  const std::vector<std::string> ids = {std::string(100000, 'x'), "ses-\n\t\"%\x01",
                                        "\xc3\xa9t\xc3\xa9 \xe2\x9c\x93"};
  for (const std::string& id : ids) {
    {
      grpc::ClientContext context;
      v1::GetSessionRequest request;
      request.set_session_id(id);
      v1::GetSessionResponse response;
      const grpc::Status status = stub_->GetSession(&context, request, &response);
      EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND) << status.error_message();
      EXPECT_LT(status.error_message().size(), 1000u);
      EXPECT_THAT(status.error_message(), ::testing::HasSubstr("session_id"));
    }
    {
      grpc::ClientContext context;
      v1::CloseSessionRequest request;
      request.set_session_id(id);
      v1::CloseSessionResponse response;
      EXPECT_EQ(stub_->CloseSession(&context, request, &response).error_code(),
                grpc::StatusCode::NOT_FOUND);
    }
    {
      grpc::ClientContext context;
      v1::CancelGenerationRequest request;
      request.set_session_id(id);
      v1::CancelGenerationResponse response;
      EXPECT_EQ(stub_->CancelGeneration(&context, request, &response).error_code(),
                grpc::StatusCode::NOT_FOUND);
    }
    grpc::ClientContext context;
    auto stream = stub_->Generate(&context, Request(RandomIds(3), 4, id));
    v1::GenerateResponse message;
    while (stream->Read(&message)) {
    }
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::NOT_FOUND);
  }
}

}  // namespace
}  // namespace mpa::server
