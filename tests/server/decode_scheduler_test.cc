// The engine thread against a scripted engine (fake_engine.h): batching, sessions, limits,
// cancellation, TTL and drain. Numerics of the real model are tested in the end-to-end test.
#include "server/decode_scheduler.h"

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server/fake_engine.h"
#include "tests/server/recording_sink.h"

namespace mpa::server {
namespace {

using testing::FakeEngine;
using ::testing::HasSubstr;
using testing::RecordingSink;

std::vector<int32_t> RandomIds(std::mt19937& rng, int n) {
  std::uniform_int_distribution<int32_t> id(3, FakeEngine::kVocab - 1);
  std::vector<int32_t> ids(n);
  for (auto& t : ids) t = id(rng);
  return ids;
}

GenerateParams Params(std::vector<int32_t> ids, std::optional<int> max_new,
                      std::string session_id = "") {
  GenerateParams p;
  p.input = std::move(ids);
  p.max_new_tokens = max_new;
  p.session_id = std::move(session_id);
  p.arrival = absl::Now();
  return p;
}

class SchedulerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const unsigned seed = std::random_device{}();
    rng_.seed(seed);
    ::testing::Test::RecordProperty("seed", std::to_string(seed));
  }
  void Make(SchedulerOptions options = {}, int64_t kv_tokens = 1 << 16) {
    engine_ = std::make_unique<FakeEngine>(kv_tokens);
    scheduler_ = std::make_unique<DecodeScheduler>(engine_.get(), options);
    scheduler_->Start();
  }
  void TearDown() override {
    if (scheduler_) scheduler_->Stop();
  }
  std::shared_ptr<RecordingSink> Start(GenerateParams p) {
    auto sink = std::make_shared<RecordingSink>();
    scheduler_->Generate(std::move(p), sink);
    return sink;
  }
  std::shared_ptr<RecordingSink> Run(GenerateParams p) {
    auto sink = Start(std::move(p));
    EXPECT_TRUE(sink->Wait());
    return sink;
  }
  absl::StatusOr<SessionInfo> CreateSession() {
    std::promise<absl::StatusOr<SessionInfo>> done;
    scheduler_->CreateSession("", {}, "",
                              [&](absl::StatusOr<SessionInfo> r) { done.set_value(r); });
    return done.get_future().get();
  }
  absl::StatusOr<SessionInfo> GetSession(const std::string& id) {
    std::promise<absl::StatusOr<SessionInfo>> done;
    scheduler_->GetSession("", id, [&](absl::StatusOr<SessionInfo> r) { done.set_value(r); });
    return done.get_future().get();
  }
  absl::StatusOr<bool> Cancel(const std::string& id) {
    std::promise<absl::StatusOr<bool>> done;
    scheduler_->CancelGeneration("", id, [&](absl::StatusOr<bool> r) { done.set_value(r); });
    return done.get_future().get();
  }
  absl::Status Close(const std::string& id) {
    std::promise<absl::Status> done;
    scheduler_->CloseSession("", id, [&](absl::Status r) { done.set_value(r); });
    return done.get_future().get();
  }

  std::mt19937 rng_;
  std::unique_ptr<FakeEngine> engine_;
  std::unique_ptr<DecodeScheduler> scheduler_;
};

TEST_F(SchedulerTest, OneShotGreedyMatchesReference) {
  Make();
  const std::vector<int32_t> prompt = RandomIds(rng_, 37);
  auto sink = Run(Params(prompt, 20));
  ASSERT_TRUE(sink->status().ok()) << sink->status();
  EXPECT_EQ(sink->ids(), FakeEngine::Greedy(prompt, 20));
  ASSERT_TRUE(sink->result().has_value());
  EXPECT_EQ(sink->result()->finish_reason, FinishReason::kLength);
  EXPECT_EQ(sink->result()->prompt_tokens, 37);
  EXPECT_EQ(sink->result()->cached_tokens, 0);
  EXPECT_EQ(sink->result()->generated_tokens, 20);
  EXPECT_EQ(sink->text().size(), 20u);
  EXPECT_EQ(sink->starts(), 1);
  EXPECT_EQ(sink->ends(), 1);
  EXPECT_THAT(sink->session_id(), HasSubstr("gen-"));
}

// On an engine that samples on its device, every generation draws there, logprobs included: no
// step copies logits to the host, and each streamed logprob is log softmax of the logits the
// engine had at that step (greedy and seeded sampling, alone and batched together).
TEST_F(SchedulerTest, DeviceSamplingEngineStreamsLogprobsWithoutLogits) {
  engine_ = std::make_unique<FakeEngine>();
  engine_->set_samples_on_device(true);
  engine_->set_step_delay(std::chrono::milliseconds(2));  // so the two streams share steps
  scheduler_ = std::make_unique<DecodeScheduler>(engine_.get(), SchedulerOptions{});
  scheduler_->Start();
  const std::vector<int32_t> prompt_a = RandomIds(rng_, 23), prompt_b = RandomIds(rng_, 31);
  GenerateParams a = Params(prompt_a, 16), b = Params(prompt_b, 16);
  a.return_logprobs = true;
  b.return_logprobs = true;
  b.sampling.temperature = 1.5f;
  b.sampling.seed = 77;
  auto sink_a = Start(a);
  auto sink_b = Start(b);
  ASSERT_TRUE(sink_a->Wait());
  ASSERT_TRUE(sink_b->Wait());
  ASSERT_TRUE(sink_a->status().ok()) << sink_a->status();
  ASSERT_TRUE(sink_b->status().ok()) << sink_b->status();
  EXPECT_EQ(sink_a->ids(), FakeEngine::Greedy(prompt_a, 16));
  for (const auto& [prompt, sink] : {std::pair{prompt_a, sink_a}, std::pair{prompt_b, sink_b}}) {
    const std::vector<int32_t> ids = sink->ids();
    const std::vector<float> logprobs = sink->logprobs();
    ASSERT_EQ(ids.size(), 16u);
    ASSERT_EQ(logprobs.size(), 16u);
    std::vector<int32_t> context = prompt;
    for (size_t i = 0; i < ids.size(); ++i) {
      const std::vector<float> logits = FakeEngine::LogitsAfter(context);
      EXPECT_FLOAT_EQ(logprobs[i], LogProbOf(logits.data(), FakeEngine::kVocab, ids[i]))
          << "token " << i;
      EXPECT_LT(logprobs[i], 0.0f);
      context.push_back(ids[i]);
    }
  }
  // The seeded stream is not greedy (the draw follows the seed, not the argmax, somewhere).
  EXPECT_NE(sink_b->ids(), FakeEngine::Greedy(prompt_b, 16));
  bool batched = false;
  for (const std::string& entry : engine_->log()) {
    EXPECT_NE(entry, "decode+sample with logits");
    batched = batched || entry == "decode 2";
  }
  EXPECT_TRUE(batched) << "the two streams never shared a decode step";
}

// A device that fails for good (a GPU context lost to an illegal access): every running
// generation ends UNAVAILABLE naming the fault, the fault handler runs once, and new requests are
// refused without touching the engine.
TEST_F(SchedulerTest, DeviceFaultFailsEveryGenerationAndCallsTheHandlerOnce) {
  engine_ = std::make_unique<FakeEngine>();
  engine_->set_fault_after_steps(5);
  engine_->set_step_delay(std::chrono::milliseconds(1));
  scheduler_ = std::make_unique<DecodeScheduler>(engine_.get(), SchedulerOptions{});
  std::atomic<int> handled{0};
  std::string fault;
  scheduler_->set_fault_handler([&](const absl::Status& s) {
    fault = std::string(s.message());
    ++handled;
  });
  scheduler_->Start();
  absl::StatusOr<SessionInfo> session = CreateSession();
  ASSERT_TRUE(session.ok()) << session.status();
  auto a = Start(Params(RandomIds(rng_, 5), 100));
  auto b = Start(Params(RandomIds(rng_, 7), 100, session->session_id));
  ASSERT_TRUE(a->Wait());
  ASSERT_TRUE(b->Wait());
  for (auto* sink : {a.get(), b.get()}) {
    EXPECT_EQ(sink->status().code(), absl::StatusCode::kUnavailable) << sink->status();
    EXPECT_THAT(std::string(sink->status().message()), HasSubstr("cudaErrorIllegalAddress"));
    EXPECT_THAT(std::string(sink->status().message()), HasSubstr("restarting"));
  }
  EXPECT_EQ(handled.load(), 1);
  EXPECT_THAT(fault, HasSubstr("cudaErrorIllegalAddress"));
  EXPECT_TRUE(scheduler_->faulted());
  const size_t calls = engine_->log().size();
  auto late = Run(Params(RandomIds(rng_, 3), 4));
  EXPECT_EQ(late->status().code(), absl::StatusCode::kUnavailable) << late->status();
  EXPECT_EQ(engine_->log().size(), calls) << "a refused request reached the engine";
  EXPECT_EQ(handled.load(), 1);
}

TEST_F(SchedulerTest, SecondTurnEqualsOneShotOverTheConversation) {
  Make();
  absl::StatusOr<SessionInfo> s = CreateSession();
  ASSERT_TRUE(s.ok()) << s.status();
  const std::vector<int32_t> a = RandomIds(rng_, 21), b = RandomIds(rng_, 9);
  auto turn1 = Run(Params(a, 13, s->session_id));
  ASSERT_TRUE(turn1->status().ok()) << turn1->status();
  auto turn2 = Run(Params(b, 11, s->session_id));
  ASSERT_TRUE(turn2->status().ok()) << turn2->status();
  const std::vector<int32_t> generated1 = turn1->ids();
  std::vector<int32_t> conversation = a;
  conversation.insert(conversation.end(), generated1.begin(), generated1.end());
  conversation.insert(conversation.end(), b.begin(), b.end());
  EXPECT_EQ(turn2->ids(), FakeEngine::Greedy(conversation, 11));
  auto oneshot = Run(Params(conversation, 11));
  EXPECT_EQ(turn2->ids(), oneshot->ids());
  // Turn 2 recomputes only the new input (plus turn 1's last token, never fed to the cache).
  EXPECT_EQ(turn2->result()->cached_tokens, 21 + 13 - 1);
  EXPECT_EQ(turn2->result()->prompt_tokens, 9);
  absl::StatusOr<SessionInfo> info = GetSession(s->session_id);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->context_tokens, 21 + 13 + 9 + 11);
  EXPECT_FALSE(info->generating);
}

TEST_F(SchedulerTest, ConcurrentStreamsBatchAndEachEqualsRunningAlone) {
  Make();
  engine_->set_step_delay(std::chrono::microseconds(300));
  constexpr int kStreams = 24;
  std::vector<std::vector<int32_t>> prompts;
  std::vector<int> lengths;
  std::vector<std::shared_ptr<RecordingSink>> sinks;
  std::uniform_int_distribution<int> len(1, 40), out(1, 30);
  for (int i = 0; i < kStreams; ++i) {
    prompts.push_back(RandomIds(rng_, len(rng_)));
    lengths.push_back(out(rng_));
    sinks.push_back(Start(Params(prompts.back(), lengths.back())));
  }
  for (int i = 0; i < kStreams; ++i) {
    ASSERT_TRUE(sinks[i]->Wait());
    ASSERT_TRUE(sinks[i]->status().ok()) << sinks[i]->status();
    EXPECT_EQ(sinks[i]->ids(), FakeEngine::Greedy(prompts[i], lengths[i])) << "stream " << i;
    EXPECT_EQ(sinks[i]->ends(), 1);
  }
  EXPECT_GT(engine_->max_batch(), 4) << "streams were not batched";
}

TEST_F(SchedulerTest, LongPrefillIsChunkedAndInterleavedWithDecode) {
  SchedulerOptions options;
  options.prefill_chunk_tokens = 8;
  Make(options);
  engine_->set_step_delay(std::chrono::microseconds(300));
  auto running = Start(Params(RandomIds(rng_, 4), 200));
  ASSERT_TRUE(running->WaitTokens(2));
  const std::vector<int32_t> long_prompt = RandomIds(rng_, 100);
  auto late = Run(Params(long_prompt, 3));
  ASSERT_TRUE(running->Wait());
  EXPECT_EQ(late->ids(), FakeEngine::Greedy(long_prompt, 3));
  EXPECT_LE(engine_->max_prefill_tokens(), 8);
  // Between two prefill chunks of the long prompt, the running stream got a decode step.
  const std::vector<std::string> log = engine_->log();
  int chunks_followed_by_decode = 0;
  for (size_t i = 0; i + 1 < log.size(); ++i) {
    if (log[i] == "prefill 8" && log[i + 1].rfind("decode", 0) == 0) ++chunks_followed_by_decode;
  }
  EXPECT_GE(chunks_followed_by_decode, 10);
}

TEST_F(SchedulerTest, StopConditions) {
  Make();
  const std::vector<int32_t> prompt = RandomIds(rng_, 10);
  const std::vector<int32_t> greedy = FakeEngine::Greedy(prompt, 10);
  GenerateParams p = Params(prompt, 10);
  p.stop_token_ids = {greedy[4]};
  auto sink = Run(p);
  // Stops at the first occurrence of the id, which is streamed.
  const size_t first = std::find(greedy.begin(), greedy.end(), greedy[4]) - greedy.begin();
  EXPECT_EQ(sink->ids(), std::vector<int32_t>(greedy.begin(), greedy.begin() + first + 1));
  EXPECT_EQ(sink->result()->finish_reason, FinishReason::kStop);

  GenerateParams q = Params(prompt, 10);
  q.stop = {std::string(1, static_cast<char>('a' + greedy[2] % 26))};
  auto by_text = Run(q);
  EXPECT_EQ(by_text->result()->finish_reason, FinishReason::kStop);
  EXPECT_LE(by_text->ids().size(), 3u);

  // Zero new tokens: the input is appended and nothing is generated.
  auto none = Run(Params(prompt, 0));
  EXPECT_TRUE(none->ids().empty());
  EXPECT_EQ(none->result()->finish_reason, FinishReason::kLength);
}

TEST_F(SchedulerTest, LimitsReturnTheirCodes) {
  SchedulerOptions options;
  options.max_sessions = 2;
  options.max_total_tokens = 100;
  Make(options, /*kv_tokens=*/256);
  ASSERT_TRUE(CreateSession().ok());
  absl::StatusOr<SessionInfo> s = CreateSession();
  ASSERT_TRUE(s.ok());
  absl::StatusOr<SessionInfo> third = CreateSession();
  EXPECT_EQ(third.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(third.status().message(), HasSubstr("max_sessions"));

  auto too_long = Run(Params(RandomIds(rng_, 60), 50));
  EXPECT_EQ(too_long->status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(too_long->status().message(), HasSubstr("max_new_tokens"));
  EXPECT_THAT(too_long->status().message(), HasSubstr("100"));

  auto unknown = Run(Params(RandomIds(rng_, 3), 2, "ses-nope"));
  EXPECT_EQ(unknown->status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(unknown->status().message(), HasSubstr("session_id"));

  // KV admission: 256 tokens of cache; three 90-token generations do not fit at once.
  engine_->set_step_delay(std::chrono::milliseconds(2));
  auto a = Start(Params(RandomIds(rng_, 40), 50));
  auto b = Start(Params(RandomIds(rng_, 40), 50));
  auto c = Run(Params(RandomIds(rng_, 40), 50));
  EXPECT_EQ(c->status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(c->status().message(), HasSubstr("KV cache"));
  ASSERT_TRUE(a->Wait());
  ASSERT_TRUE(b->Wait());
  EXPECT_TRUE(a->status().ok());
  EXPECT_TRUE(b->status().ok());

  // A second Generate on a busy session.
  auto busy1 = Start(Params(RandomIds(rng_, 3), 40, s->session_id));
  ASSERT_TRUE(busy1->WaitTokens(1));
  auto busy2 = Run(Params(RandomIds(rng_, 3), 4, s->session_id));
  EXPECT_EQ(busy2->status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(busy2->status().message(), HasSubstr("session_id"));
  ASSERT_TRUE(busy1->Wait());
  EXPECT_TRUE(busy1->status().ok());
  EXPECT_EQ(busy1->ids().size(), 40u);
}

// A request larger than the whole KV cache can never be admitted, however long the client
// waits: it is refused as over a limit (INVALID_ARGUMENT naming max_new_tokens and
// --max_kv_tokens), not as "retry later"; one that fits exactly is admitted.
TEST_F(SchedulerTest, RequestLargerThanTheWholeKvCacheIsInvalidNotRetryable) {
  SchedulerOptions options;
  options.max_total_tokens = 400;
  Make(options, /*kv_tokens=*/128);  // 8 blocks of 16 tokens
  auto never = Run(Params(RandomIds(rng_, 40), 100));
  EXPECT_EQ(never->status().code(), absl::StatusCode::kInvalidArgument) << never->status();
  EXPECT_THAT(never->status().message(), HasSubstr("max_new_tokens"));
  EXPECT_THAT(never->status().message(), HasSubstr("max_kv_tokens"));
  EXPECT_THAT(never->status().message(), HasSubstr("128"));
  // 40 input + 89 fed tokens = 129 KV tokens: one more than the cache holds.
  auto one_over = Run(Params(RandomIds(rng_, 40), 90));
  EXPECT_EQ(one_over->status().code(), absl::StatusCode::kInvalidArgument) << one_over->status();
  // 40 input + 88 fed tokens = 128: the whole cache, admitted.
  auto fits = Run(Params(RandomIds(rng_, 40), 89));
  ASSERT_TRUE(fits->status().ok()) << fits->status();
  EXPECT_EQ(fits->ids().size(), 89u);
}

// An engine that keeps a second copy of the clustered region (the GPU engine) needs twice the
// blocks for a sparse turn: admission counts them, so a request that fits densely may not fit in
// multipole, and says how many tokens the mode needs.
TEST_F(SchedulerTest, SparseModesAreAdmittedForTheBlocksTheyTake) {
  SchedulerOptions options;
  options.max_total_tokens = 400;
  Make(options, /*kv_tokens=*/256);  // 16 blocks of 16 tokens
  engine_->set_sparse_block_factor(2);
  // 40 input + 89 fed = 129 tokens: 9 blocks dense, 18 in multipole.
  auto dense = Run(Params(RandomIds(rng_, 40), 90));
  ASSERT_TRUE(dense->status().ok()) << dense->status();
  GenerateParams sparse = Params(RandomIds(rng_, 40), 90);
  sparse.attention.mode = AttentionMode::kMultipole;
  auto refused = Run(sparse);
  EXPECT_EQ(refused->status().code(), absl::StatusCode::kInvalidArgument) << refused->status();
  EXPECT_THAT(refused->status().message(), HasSubstr("multipole attention"));
  EXPECT_THAT(refused->status().message(), HasSubstr("288 tokens"));  // 18 blocks
  // 40 + 39 = 79 tokens: 5 blocks, 10 in multipole: admitted.
  GenerateParams fits = Params(RandomIds(rng_, 40), 40);
  fits.attention.mode = AttentionMode::kMultipole;
  auto ok = Run(fits);
  ASSERT_TRUE(ok->status().ok()) << ok->status();
  EXPECT_EQ(ok->ids().size(), 40u);
}

// An engine that attends densely only (the GPU engine): every way of asking for another mode is
// refused at admission with InvalidArgument naming the mode and the device, before a sequence
// exists; dense requests on the same scheduler still run.
TEST_F(SchedulerTest, ModesTheEngineCannotRunAreRefusedNamingModeAndDevice) {
  engine_ = std::make_unique<FakeEngine>();
  engine_->set_dense_only(true);
  scheduler_ = std::make_unique<DecodeScheduler>(engine_.get(), SchedulerOptions());
  scheduler_->Start();
  const struct {
    AttentionMode mode;
    const char* name;
  } kRefused[] = {{AttentionMode::kMultipole, "multipole"},
                  {AttentionMode::kExactOnly, "exact-only"},
                  {AttentionMode::kQuest, "quest"}};
  absl::StatusOr<SessionInfo> dense_session = CreateSession();
  ASSERT_TRUE(dense_session.ok()) << dense_session.status();
  const int64_t sequences_before = engine_->sequences_created();
  for (const auto& refused : kRefused) {
    SCOPED_TRACE(refused.name);
    AttentionOverride override_mode;
    override_mode.mode = refused.mode;
    // CreateSession with the mode.
    std::promise<absl::StatusOr<SessionInfo>> done;
    scheduler_->CreateSession("", override_mode, "",
                              [&](absl::StatusOr<SessionInfo> r) { done.set_value(r); });
    absl::StatusOr<SessionInfo> created = done.get_future().get();
    EXPECT_EQ(created.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(created.status().message(), HasSubstr(absl::StrCat(refused.name, " attention")));
    EXPECT_THAT(created.status().message(), HasSubstr("cuda:0"));
    EXPECT_THAT(created.status().message(), HasSubstr("attention.mode"));
    // A one-shot Generate with the mode.
    GenerateParams oneshot = Params(RandomIds(rng_, 5), 4);
    oneshot.attention = override_mode;
    auto sink = Run(oneshot);
    EXPECT_EQ(sink->status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(sink->status().message(), HasSubstr(absl::StrCat(refused.name, " attention")));
    EXPECT_THAT(sink->status().message(), HasSubstr("cuda:0"));
    EXPECT_TRUE(sink->ids().empty());
    // A turn of a dense session that switches to the mode: refused, the session stays dense.
    GenerateParams turn = Params(RandomIds(rng_, 5), 4, dense_session->session_id);
    turn.attention = override_mode;
    auto turn_sink = Run(turn);
    EXPECT_EQ(turn_sink->status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(turn_sink->status().message(), HasSubstr("cuda:0"));
    absl::StatusOr<SessionInfo> info = GetSession(dense_session->session_id);
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->attention.mode, AttentionMode::kDense);
    EXPECT_EQ(info->context_tokens, 0);
  }
  EXPECT_EQ(engine_->sequences_created(), sequences_before);
  // Dense, asked for explicitly or by default, still runs.
  GenerateParams dense = Params(RandomIds(rng_, 6), 5);
  dense.attention.mode = AttentionMode::kDense;
  const std::vector<int32_t> prompt = dense.input;
  auto ok = Run(dense);
  ASSERT_TRUE(ok->status().ok()) << ok->status();
  EXPECT_EQ(ok->ids(), FakeEngine::Greedy(prompt, 5));
  auto turn = Run(Params(prompt, 5, dense_session->session_id));
  ASSERT_TRUE(turn->status().ok()) << turn->status();
  EXPECT_EQ(turn->ids(), FakeEngine::Greedy(prompt, 5));
}

// The CPU engine (the default) runs every mode: nothing is refused for its mode.
TEST_F(SchedulerTest, EveryModeIsAdmittedOnAnEngineThatSupportsIt) {
  Make();
  for (AttentionMode mode : {AttentionMode::kDense, AttentionMode::kMultipole,
                             AttentionMode::kExactOnly, AttentionMode::kQuest}) {
    GenerateParams p = Params(RandomIds(rng_, 5), 3);
    p.attention.mode = mode;
    auto sink = Run(p);
    EXPECT_TRUE(sink->status().ok()) << AttentionModeName(mode) << ": " << sink->status();
    EXPECT_EQ(sink->ids().size(), 3u);
  }
}

TEST_F(SchedulerTest, CancelStopsAtNextStepAndLeavesTheSessionConsistent) {
  Make();
  engine_->set_step_delay(std::chrono::milliseconds(2));
  absl::StatusOr<SessionInfo> s = CreateSession();
  ASSERT_TRUE(s.ok());
  const std::vector<int32_t> a = RandomIds(rng_, 5);
  auto turn1 = Start(Params(a, 400, s->session_id));
  ASSERT_TRUE(turn1->WaitTokens(3));
  absl::StatusOr<bool> cancelled = Cancel(s->session_id);
  ASSERT_TRUE(cancelled.ok());
  EXPECT_TRUE(*cancelled);
  ASSERT_TRUE(turn1->Wait());
  EXPECT_EQ(turn1->result()->finish_reason, FinishReason::kCancelled);
  const std::vector<int32_t> got = turn1->ids();
  EXPECT_LT(got.size(), 400u);
  EXPECT_EQ(got, FakeEngine::Greedy(a, static_cast<int>(got.size())));

  engine_->set_step_delay(std::chrono::microseconds(0));
  const std::vector<int32_t> b = RandomIds(rng_, 4);
  auto turn2 = Run(Params(b, 6, s->session_id));
  std::vector<int32_t> conversation = a;
  conversation.insert(conversation.end(), got.begin(), got.end());
  conversation.insert(conversation.end(), b.begin(), b.end());
  EXPECT_EQ(turn2->ids(), FakeEngine::Greedy(conversation, 6));

  // A client that goes away is noticed the same way.
  engine_->set_step_delay(std::chrono::milliseconds(2));
  auto gone = Start(Params(RandomIds(rng_, 3), 400, s->session_id));
  ASSERT_TRUE(gone->WaitTokens(2));
  gone->set_client_cancelled();
  ASSERT_TRUE(gone->Wait());
  EXPECT_EQ(gone->result()->finish_reason, FinishReason::kCancelled);
  EXPECT_EQ(*Cancel(s->session_id), false);

  EXPECT_TRUE(Close(s->session_id).ok());
  EXPECT_EQ(GetSession(s->session_id).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Close(s->session_id).code(), absl::StatusCode::kNotFound);
}

TEST_F(SchedulerTest, CloseDuringGenerationCancelsIt) {
  Make();
  engine_->set_step_delay(std::chrono::milliseconds(2));
  absl::StatusOr<SessionInfo> s = CreateSession();
  ASSERT_TRUE(s.ok());
  auto gen = Start(Params(RandomIds(rng_, 3), 400, s->session_id));
  ASSERT_TRUE(gen->WaitTokens(2));
  EXPECT_TRUE(Close(s->session_id).ok());
  ASSERT_TRUE(gen->Wait());
  EXPECT_EQ(gen->result()->finish_reason, FinishReason::kCancelled);
}

TEST_F(SchedulerTest, IdleSessionsExpire) {
  SchedulerOptions options;
  options.session_ttl = absl::Milliseconds(100);
  Make(options);
  absl::StatusOr<SessionInfo> s = CreateSession();
  ASSERT_TRUE(s.ok());
  EXPECT_DOUBLE_EQ(s->ttl_seconds, 0.1);
  ASSERT_TRUE(GetSession(s->session_id).ok());
  absl::SleepFor(absl::Milliseconds(400));
  EXPECT_EQ(GetSession(s->session_id).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(SchedulerTest, DrainRefusesNewWorkAndLetsRunningWorkFinish) {
  Make();
  engine_->set_step_delay(std::chrono::milliseconds(1));
  const std::vector<int32_t> prompt = RandomIds(rng_, 5);
  auto running = Start(Params(prompt, 80));
  ASSERT_TRUE(running->WaitTokens(1));
  scheduler_->BeginDrain();
  auto refused = Run(Params(RandomIds(rng_, 5), 5));
  EXPECT_EQ(refused->status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(CreateSession().status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(scheduler_->WaitForIdle(absl::Now() + absl::Seconds(20)));
  ASSERT_TRUE(running->Wait());
  EXPECT_EQ(running->ids(), FakeEngine::Greedy(prompt, 80));
}

TEST_F(SchedulerTest, CancelAllAndStopEndEveryStream) {
  Make();
  engine_->set_step_delay(std::chrono::milliseconds(2));
  auto a = Start(Params(RandomIds(rng_, 5), 400));
  auto b = Start(Params(RandomIds(rng_, 5), 400));
  ASSERT_TRUE(a->WaitTokens(1));
  ASSERT_TRUE(b->WaitTokens(1));
  scheduler_->CancelAll();
  ASSERT_TRUE(a->Wait());
  EXPECT_EQ(a->result()->finish_reason, FinishReason::kCancelled);
  auto c = Start(Params(RandomIds(rng_, 5), 400));
  ASSERT_TRUE(b->Wait());
  scheduler_->Stop();
  ASSERT_TRUE(c->Wait());
  EXPECT_EQ(c->ends(), 1);
  auto after = Run(Params(RandomIds(rng_, 5), 4));
  EXPECT_EQ(after->status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace mpa::server
