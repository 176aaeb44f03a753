// MetricsRegistry: every family of the agreed list is exposed with its help and type, each
// ServerObserver event moves exactly the series it should (read back from the text exposition
// a scrape returns), and the scheduler reports what it does when given the registry as its
// observer (against the scripted engine).
#include "server/metrics.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/decode_scheduler.h"
#include "tests/server/exposition.h"
#include "tests/server/fake_engine.h"
#include "tests/server/recording_sink.h"

namespace mpa::server {
namespace {

using testing::FakeEngine;
using ::testing::HasSubstr;
using testing::RecordingSink;
using testing::Samples;
using testing::Value;

// Every family of the agreed list (name, type): dashboards and alerts are built on these names.
const std::vector<std::pair<std::string, std::string>> kFamilies = {
    {"mpa_build_info", "gauge"},
    {"mpa_requests_total", "counter"},
    {"mpa_request_errors_total", "counter"},
    {"mpa_prompt_tokens_total", "counter"},
    {"mpa_cached_tokens_total", "counter"},
    {"mpa_generated_tokens_total", "counter"},
    {"mpa_time_to_first_token_seconds", "histogram"},
    {"mpa_time_per_output_token_seconds", "histogram"},
    {"mpa_request_duration_seconds", "histogram"},
    {"mpa_decode_step_seconds", "histogram"},
    {"mpa_decode_batch_size", "histogram"},
    {"mpa_prefill_chunk_seconds", "histogram"},
    {"mpa_sessions", "gauge"},
    {"mpa_active_generations", "gauge"},
    {"mpa_kv_cache_tokens", "gauge"},
    {"mpa_kv_cache_usage_ratio", "gauge"},
    {"mpa_attention_state_bytes", "gauge"},
    {"mpa_attention_state_limit_bytes", "gauge"},
    {"mpa_attention_exact_fraction", "histogram"},
    {"mpa_attention_tokens_total", "counter"},
    {"mpa_centroids_scored_total", "counter"},
    {"mpa_cluster_updates_total", "counter"},
    {"mpa_cluster_update_seconds_total", "counter"},
    {"mpa_tokens_reclustered_total", "counter"},
    {"mpa_prefill_cluster_seconds_total", "counter"},
};

BuildInfo TestInfo() { return {"tiny-model", "LlamaForCausalLM", "multipole"}; }

class MetricsRegistryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const unsigned seed = std::random_device{}();
    rng_.seed(seed);
    RecordProperty("seed", std::to_string(seed));
  }
  std::map<std::string, double> Scrape() { return Samples(metrics_.Serialize()); }
  int64_t RandomCount(int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng_);
  }
  double RandomSeconds(double lo, double hi) {
    return std::uniform_real_distribution<double>(lo, hi)(rng_);
  }

  std::mt19937 rng_;
  MetricsRegistry metrics_{TestInfo()};
};

TEST_F(MetricsRegistryTest, EveryFamilyIsExposedWithHelpAndType) {
  const std::string text = metrics_.Serialize();
  for (const auto& [name, type] : kFamilies) {
    EXPECT_THAT(text, HasSubstr(absl::StrCat("# TYPE ", name, " ", type, "\n"))) << name;
    // A help line with some words after the name.
    const size_t help = text.find(absl::StrCat("# HELP ", name, " "));
    ASSERT_NE(help, std::string::npos) << name;
    EXPECT_GT(text.find('\n', help) - help, absl::StrCat("# HELP ", name, " ").size() + 10) << name;
  }
  // And no family outside the list (a renamed family would break dashboards silently).
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    if (!absl::StartsWith(line, "# TYPE ")) continue;
    const std::vector<std::string> words = absl::StrSplit(line, ' ');
    ASSERT_EQ(words.size(), 4u) << line;
    const bool known = std::any_of(kFamilies.begin(), kFamilies.end(),
                                   [&](const auto& f) { return f.first == words[2]; });
    EXPECT_TRUE(known) << "family not in the agreed list: " << words[2];
  }
  const auto samples = Scrape();
  EXPECT_EQ(Value(samples,
                  "mpa_build_info{architecture=\"LlamaForCausalLM\",attention="
                  "\"multipole\",model=\"tiny-model\"}"),
            1.0);
  // Labelled series exist (at 0) before their first event.
  for (const char* reason : {"length", "stop", "eos", "cancelled", "error"}) {
    EXPECT_EQ(Value(samples, absl::StrCat("mpa_requests_total{finish_reason=\"", reason, "\"}")),
              0.0)
        << reason;
  }
  for (const char* code : {"INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED",
                           "FAILED_PRECONDITION", "UNAVAILABLE", "INTERNAL"}) {
    EXPECT_EQ(Value(samples, absl::StrCat("mpa_request_errors_total{code=\"", code, "\"}")), 0.0)
        << code;
  }
  for (const char* mode : {"dense", "multipole", "exact-only", "quest"}) {
    EXPECT_EQ(
        Value(samples, absl::StrCat("mpa_attention_exact_fraction_count{mode=\"", mode, "\"}")),
        0.0)
        << mode;
  }
  EXPECT_EQ(Value(samples, "mpa_kv_cache_tokens{state=\"used\"}"), 0.0);
  EXPECT_EQ(Value(samples, "mpa_kv_cache_tokens{state=\"free\"}"), 0.0);
  EXPECT_EQ(Value(samples, "mpa_attention_tokens_total{kind=\"exact\"}"), 0.0);
  EXPECT_EQ(Value(samples, "mpa_attention_tokens_total{kind=\"total\"}"), 0.0);
}

TEST_F(MetricsRegistryTest, BucketsCoverTheirUnits) {
  for (const auto& buckets :
       {MetricsRegistry::SecondsBuckets(), MetricsRegistry::BatchSizeBuckets(),
        MetricsRegistry::FractionBuckets()}) {
    ASSERT_GE(buckets.size(), 10u);
    for (size_t i = 1; i < buckets.size(); ++i) EXPECT_LT(buckets[i - 1], buckets[i]);
  }
  const auto seconds = MetricsRegistry::SecondsBuckets();
  EXPECT_DOUBLE_EQ(seconds.front(), 1e-4);
  EXPECT_DOUBLE_EQ(seconds.back(), 100.0);
  const auto batch = MetricsRegistry::BatchSizeBuckets();
  for (double b : batch) EXPECT_EQ(std::exp2(std::round(std::log2(b))), b) << b;
  EXPECT_EQ(batch.front(), 1.0);
  const auto fraction = MetricsRegistry::FractionBuckets();
  EXPECT_DOUBLE_EQ(fraction.front(), 0.05);
  EXPECT_EQ(fraction.back(), 1.0);  // a dense request (exactly 1) lands in the last bucket
  EXPECT_EQ(fraction.size(), 20u);
}

TEST_F(MetricsRegistryTest, FinishedGenerationsMoveTheirSeries) {
  FinishedGeneration g;
  g.result.finish_reason = FinishReason::kEos;
  g.result.prompt_tokens = RandomCount(1, 500);
  g.result.cached_tokens = RandomCount(0, 500);
  g.result.generated_tokens = RandomCount(2, 500);
  g.result.time_to_first_token_seconds = RandomSeconds(0.011, 0.024);  // bucket (0.01, 0.025]
  g.result.decode_seconds = RandomSeconds(0.5, 2.0);
  g.duration_seconds = RandomSeconds(2.6, 4.9);  // bucket (2.5, 5]
  g.mode = AttentionMode::kMultipole;
  g.attention.tokens_total = RandomCount(1000, 100000);
  g.attention.tokens_attended_exact = g.attention.tokens_total / 4 + RandomCount(0, 10);
  g.attention.centroids_scored = RandomCount(1, 10000);
  g.attention.cluster_updates = RandomCount(1, 100);
  g.attention.tokens_reclustered = RandomCount(1, 10000);
  g.attention.cluster_update_seconds = RandomSeconds(0.001, 1.0);
  g.attention.prefill_cluster_seconds = RandomSeconds(0.001, 1.0);
  metrics_.OnGenerationFinished(g);

  FinishedGeneration second = g;
  second.result.finish_reason = FinishReason::kCancelled;
  second.result.generated_tokens = 0;   // cancelled before its first token: no TTFT, no TPOT
  second.attention = AttentionStats();  // and no decode: no exact fraction
  metrics_.OnGenerationFinished(second);

  const auto s = Scrape();
  EXPECT_EQ(Value(s, "mpa_requests_total{finish_reason=\"eos\"}"), 1.0);
  EXPECT_EQ(Value(s, "mpa_requests_total{finish_reason=\"cancelled\"}"), 1.0);
  EXPECT_EQ(Value(s, "mpa_requests_total{finish_reason=\"length\"}"), 0.0);
  EXPECT_EQ(Value(s, "mpa_requests_total{finish_reason=\"error\"}"), 0.0);
  EXPECT_EQ(Value(s, "mpa_generated_tokens_total"), g.result.generated_tokens);
  EXPECT_EQ(Value(s, "mpa_cached_tokens_total"), 2.0 * g.result.cached_tokens);
  // Prompt tokens are counted as chunks are prefilled, not at the end.
  EXPECT_EQ(Value(s, "mpa_prompt_tokens_total"), 0.0);

  EXPECT_EQ(Value(s, "mpa_time_to_first_token_seconds_count"), 1.0);
  EXPECT_DOUBLE_EQ(Value(s, "mpa_time_to_first_token_seconds_sum"),
                   g.result.time_to_first_token_seconds);
  EXPECT_EQ(Value(s, "mpa_time_to_first_token_seconds_bucket{le=\"0.01\"}"), 0.0);
  EXPECT_EQ(Value(s, "mpa_time_to_first_token_seconds_bucket{le=\"0.025\"}"), 1.0);
  EXPECT_EQ(Value(s, "mpa_time_per_output_token_seconds_count"), 1.0);
  EXPECT_NEAR(Value(s, "mpa_time_per_output_token_seconds_sum"),
              g.result.decode_seconds / (g.result.generated_tokens - 1), 1e-12);
  EXPECT_EQ(Value(s, "mpa_request_duration_seconds_count"), 2.0);
  EXPECT_EQ(Value(s, "mpa_request_duration_seconds_bucket{le=\"2.5\"}"), 0.0);
  EXPECT_EQ(Value(s, "mpa_request_duration_seconds_bucket{le=\"5\"}"), 2.0);
  EXPECT_EQ(Value(s, "mpa_request_duration_seconds_bucket{le=\"+Inf\"}"), 2.0);

  const double fraction = static_cast<double>(g.attention.tokens_attended_exact) /
                          static_cast<double>(g.attention.tokens_total);
  EXPECT_EQ(Value(s, "mpa_attention_exact_fraction_count{mode=\"multipole\"}"), 1.0);
  EXPECT_NEAR(Value(s, "mpa_attention_exact_fraction_sum{mode=\"multipole\"}"), fraction, 1e-12);
  EXPECT_EQ(Value(s, "mpa_attention_exact_fraction_bucket{mode=\"multipole\",le=\"0.25\"}"),
            fraction <= 0.25 ? 1.0 : 0.0);
  EXPECT_EQ(Value(s, "mpa_attention_exact_fraction_bucket{mode=\"multipole\",le=\"0.3\"}"), 1.0);
  EXPECT_EQ(Value(s, "mpa_attention_exact_fraction_count{mode=\"dense\"}"), 0.0);
  EXPECT_EQ(Value(s, "mpa_attention_tokens_total{kind=\"exact\"}"),
            g.attention.tokens_attended_exact);
  EXPECT_EQ(Value(s, "mpa_attention_tokens_total{kind=\"total\"}"), g.attention.tokens_total);
  EXPECT_EQ(Value(s, "mpa_centroids_scored_total"), g.attention.centroids_scored);
  EXPECT_EQ(Value(s, "mpa_cluster_updates_total"), g.attention.cluster_updates);
  EXPECT_EQ(Value(s, "mpa_tokens_reclustered_total"), g.attention.tokens_reclustered);
  EXPECT_NEAR(Value(s, "mpa_cluster_update_seconds_total"), g.attention.cluster_update_seconds,
              1e-9);
  EXPECT_NEAR(Value(s, "mpa_prefill_cluster_seconds_total"), g.attention.prefill_cluster_seconds,
              1e-9);
}

TEST_F(MetricsRegistryTest, StepsChunksStateAndErrors) {
  const int steps = static_cast<int>(RandomCount(3, 20));
  double step_seconds = 0.0;
  for (int i = 0; i < steps; ++i) {
    const double t = RandomSeconds(0.0011, 0.0024);  // bucket (0.001, 0.0025]
    step_seconds += t;
    metrics_.OnDecodeStep(i % 2 == 0 ? 3 : 64, t);
  }
  const int64_t chunk = RandomCount(1, 64);
  metrics_.OnPrefillChunk(chunk, 0.2);
  metrics_.OnPrefillChunk(7, 0.3);

  ServerState state;
  state.sessions = RandomCount(0, 64);
  state.active_generations = RandomCount(0, 64);
  state.kv_used_tokens = 16 * RandomCount(0, 100);
  state.attention_state_limit_bytes = RandomCount(1, 1 << 30);
  state.attention_state_bytes = RandomCount(0, state.attention_state_limit_bytes);
  state.kv_free_tokens = 16 * RandomCount(1, 100);
  metrics_.SetState(state);

  metrics_.OnRequestError(absl::StatusCode::kInvalidArgument, /*generate=*/true);
  metrics_.OnRequestError(absl::StatusCode::kInvalidArgument, /*generate=*/true);
  metrics_.OnRequestError(absl::StatusCode::kNotFound, /*generate=*/false);
  // A code outside the canonical range is counted, as UNKNOWN.
  metrics_.OnRequestError(static_cast<absl::StatusCode>(99), /*generate=*/false);

  const auto s = Scrape();
  EXPECT_EQ(Value(s, "mpa_decode_step_seconds_count"), steps);
  EXPECT_NEAR(Value(s, "mpa_decode_step_seconds_sum"), step_seconds, 1e-12);
  EXPECT_EQ(Value(s, "mpa_decode_step_seconds_bucket{le=\"0.001\"}"), 0.0);
  EXPECT_EQ(Value(s, "mpa_decode_step_seconds_bucket{le=\"0.0025\"}"), steps);
  EXPECT_EQ(Value(s, "mpa_decode_batch_size_count"), steps);
  EXPECT_EQ(Value(s, "mpa_decode_batch_size_bucket{le=\"2\"}"), 0.0);
  EXPECT_EQ(Value(s, "mpa_decode_batch_size_bucket{le=\"4\"}"), (steps + 1) / 2);
  EXPECT_EQ(Value(s, "mpa_decode_batch_size_bucket{le=\"64\"}"), steps);
  EXPECT_EQ(Value(s, "mpa_prefill_chunk_seconds_count"), 2.0);
  EXPECT_NEAR(Value(s, "mpa_prefill_chunk_seconds_sum"), 0.5, 1e-12);
  EXPECT_EQ(Value(s, "mpa_prompt_tokens_total"), chunk + 7);

  EXPECT_EQ(Value(s, "mpa_sessions"), state.sessions);
  EXPECT_EQ(Value(s, "mpa_active_generations"), state.active_generations);
  EXPECT_EQ(Value(s, "mpa_kv_cache_tokens{state=\"used\"}"), state.kv_used_tokens);
  EXPECT_EQ(Value(s, "mpa_attention_state_bytes"), state.attention_state_bytes);
  EXPECT_EQ(Value(s, "mpa_attention_state_limit_bytes"), state.attention_state_limit_bytes);
  EXPECT_EQ(Value(s, "mpa_kv_cache_tokens{state=\"free\"}"), state.kv_free_tokens);
  EXPECT_NEAR(
      Value(s, "mpa_kv_cache_usage_ratio"),
      static_cast<double>(state.kv_used_tokens) / (state.kv_used_tokens + state.kv_free_tokens),
      1e-12);

  EXPECT_EQ(Value(s, "mpa_request_errors_total{code=\"INVALID_ARGUMENT\"}"), 2.0);
  EXPECT_EQ(Value(s, "mpa_request_errors_total{code=\"NOT_FOUND\"}"), 1.0);
  EXPECT_EQ(Value(s, "mpa_request_errors_total{code=\"UNKNOWN\"}"), 1.0);
  EXPECT_EQ(Value(s, "mpa_requests_total{finish_reason=\"error\"}"), 2.0);
}

// The scheduler as the registry's source: what it reports matches what the sinks received.
TEST_F(MetricsRegistryTest, SchedulerReportsWhatItDoes) {
  constexpr int64_t kKvTokens = 4096;
  FakeEngine engine(kKvTokens);
  SchedulerOptions options;
  options.prefill_chunk_tokens = 16;
  DecodeScheduler scheduler(&engine, options, &metrics_);
  scheduler.Start();

  constexpr int kStreams = 6;
  std::vector<std::shared_ptr<RecordingSink>> sinks;
  int64_t prompt_tokens = 0, attention_total = 0, expected_chunks = 0, decoding_streams = 0;
  for (int i = 0; i < kStreams; ++i) {
    const int64_t prompt = RandomCount(1, 40);
    const int64_t max_new = RandomCount(1, 30);
    GenerateParams p;
    for (int64_t j = 0; j < prompt; ++j) p.input.push_back(static_cast<int32_t>(3 + j % 60));
    p.max_new_tokens = static_cast<int>(max_new);
    p.ignore_eos = true;  // every stream runs to its length
    p.arrival = absl::Now();
    prompt_tokens += prompt;
    expected_chunks += (prompt + 15) / 16;
    // The fake engine counts every cached token as read exactly in each decode call after the
    // prefill's token: contexts of prompt+1 .. prompt+max_new-1 tokens.
    const int64_t calls = max_new - 1;
    decoding_streams += calls > 0 ? 1 : 0;
    attention_total += calls * prompt + calls * (calls + 1) / 2;
    auto sink = std::make_shared<RecordingSink>();
    scheduler.Generate(std::move(p), sink);
    sinks.push_back(sink);
  }
  int64_t generated = 0;
  for (auto& sink : sinks) {
    ASSERT_TRUE(sink->Wait());
    ASSERT_TRUE(sink->result().has_value()) << sink->status();
    generated += static_cast<int64_t>(sink->ids().size());
  }
  // A refused request is the service's to count (RPC errors), not the scheduler's.
  auto refused = std::make_shared<RecordingSink>();
  GenerateParams unknown;
  unknown.input = {5};
  unknown.session_id = "ses-none";
  scheduler.Generate(std::move(unknown), refused);
  ASSERT_TRUE(refused->Wait());
  EXPECT_EQ(refused->status().code(), absl::StatusCode::kNotFound);
  // Levels are published after the engine step that finished the last stream.
  ASSERT_TRUE(scheduler.WaitForIdle(absl::Now() + absl::Seconds(10)));
  scheduler.Stop();

  const auto s = Scrape();
  EXPECT_EQ(Value(s, "mpa_requests_total{finish_reason=\"length\"}"), kStreams);
  EXPECT_EQ(Value(s, "mpa_requests_total{finish_reason=\"error\"}"), 0.0);
  EXPECT_EQ(Value(s, "mpa_generated_tokens_total"), generated);
  EXPECT_EQ(Value(s, "mpa_prompt_tokens_total"), prompt_tokens);
  EXPECT_EQ(Value(s, "mpa_prefill_chunk_seconds_count"), expected_chunks);
  EXPECT_EQ(Value(s, "mpa_cached_tokens_total"), 0.0);
  // Every token after a stream's first comes from one batched decode step.
  EXPECT_EQ(Value(s, "mpa_decode_batch_size_sum"), generated - kStreams);
  EXPECT_EQ(Value(s, "mpa_decode_step_seconds_count"), Value(s, "mpa_decode_batch_size_count"));
  EXPECT_EQ(Value(s, "mpa_time_to_first_token_seconds_count"), kStreams);
  EXPECT_EQ(Value(s, "mpa_request_duration_seconds_count"), kStreams);
  EXPECT_EQ(Value(s, "mpa_attention_tokens_total{kind=\"total\"}"), attention_total);
  EXPECT_EQ(Value(s, "mpa_attention_tokens_total{kind=\"exact\"}"), attention_total);
  // Dense streams that decoded at least once read the whole cache (fraction 1 each).
  EXPECT_EQ(Value(s, "mpa_attention_exact_fraction_count{mode=\"dense\"}"), decoding_streams);
  EXPECT_EQ(Value(s, "mpa_attention_exact_fraction_sum{mode=\"dense\"}"), decoding_streams);
  EXPECT_EQ(Value(s, "mpa_active_generations"), 0.0);
  EXPECT_EQ(Value(s, "mpa_sessions"), 0.0);
  EXPECT_EQ(Value(s, "mpa_kv_cache_tokens{state=\"used\"}"), 0.0);
  EXPECT_EQ(Value(s, "mpa_kv_cache_tokens{state=\"free\"}"), kKvTokens);
  EXPECT_EQ(Value(s, "mpa_kv_cache_usage_ratio"), 0.0);
}

}  // namespace
}  // namespace mpa::server
