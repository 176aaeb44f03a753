// End-to-end metrics: the real mpa_server with stories260K, its metrics endpoint on a free
// loopback port (--metrics_address=127.0.0.1:0), generations through mpa_client and gRPC stubs,
// then /metrics fetched over HTTP and checked against what the clients received. The second
// test has a real Prometheus server scrape mpa_server and answers a query through its HTTP API
// (skipped when the prometheus binary is not installed).
#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
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
#include "tests/server/exposition.h"
#include "tests/server/generate_stream.h"
#include "tests/server/server_process.h"

namespace mpa::server {
namespace {

namespace v1 = ::multipole::v1;
using testing::ChildProcess;
using testing::Generate;
using ::testing::HasSubstr;
using testing::HttpGet;
using testing::IdsRequest;
using testing::PortOf;
using testing::Samples;
using testing::Shell;
using testing::StreamResult;
using testing::Value;

const char kModelDir[] = MPA_SOURCE_DIR "/../shared/models/stories260K";
constexpr int kKvTokens = 2048;

// Multipole knobs scaled to stories260K's 512-token context (the defaults need thousands of
// tokens before anything is clustered), as tests/tools/mpa_generate_test.cc uses them.
const std::vector<std::string> kServerFlags = {
    "--threads=1",       "--max_kv_tokens=2048",     "--token_budget=8", "--cluster_interval=8",
    "--block_tokens=32", "--min_clustered_tokens=8", "--sink_tokens=2",  "--cluster_ratio=4",
};

class MetricsE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(std::string(kModelDir) + "/config.json")) {
      GTEST_SKIP() << "stories260K not found at " << kModelDir;
    }
    const unsigned seed = std::random_device{}();
    rng_.seed(seed);
    RecordProperty("seed", std::to_string(seed));
  }
  void StartServer() {
    std::vector<std::string> argv = {MPA_SERVER_BINARY, absl::StrCat("--model=", kModelDir),
                                     "--address=127.0.0.1:0", "--metrics_address=127.0.0.1:0"};
    argv.insert(argv.end(), kServerFlags.begin(), kServerFlags.end());
    server_ = std::make_unique<ChildProcess>(argv);
    std::optional<std::string> grpc_address =
        server_->WaitForLine("mpa_server listening on ", absl::Seconds(30));
    ASSERT_TRUE(grpc_address.has_value()) << server_->StartFailure("mpa_server listening on ");
    std::optional<std::string> metrics_address =
        server_->WaitForLine("mpa_server metrics on ", absl::Seconds(5));
    ASSERT_TRUE(metrics_address.has_value()) << server_->StartFailure("mpa_server metrics on ");
    address_ = *grpc_address;
    metrics_port_ = PortOf(*metrics_address);
    ASSERT_GT(metrics_port_, 0) << *metrics_address;
    stub_ = v1::DecodeService::NewStub(
        grpc::CreateChannel(address_, grpc::InsecureChannelCredentials()));
  }
  std::map<std::string, double> Scrape() {
    std::optional<std::string> body = HttpGet(metrics_port_, "/metrics");
    EXPECT_TRUE(body.has_value()) << "GET /metrics failed";
    return body.has_value() ? Samples(*body) : std::map<std::string, double>();
  }
  // Scrapes until `ready` holds (levels are published after the engine step that finished the
  // work) or 10 s pass; returns the last scrape.
  std::map<std::string, double> ScrapeWhen(
      const std::function<bool(const std::map<std::string, double>&)>& ready) {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    std::map<std::string, double> s = Scrape();
    while (!ready(s) && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(20));
      s = Scrape();
    }
    return s;
  }
  std::vector<int32_t> RandomPrompt(int n) {
    std::uniform_int_distribution<int32_t> id(3, 511);
    std::vector<int32_t> ids = {1};
    while (static_cast<int>(ids.size()) < n) ids.push_back(id(rng_));
    return ids;
  }

  std::mt19937 rng_;
  std::unique_ptr<ChildProcess> server_;
  std::string address_;
  int metrics_port_ = 0;
  std::unique_ptr<v1::DecodeService::Stub> stub_;
};

TEST_F(MetricsE2eTest, MetricsMatchWhatClientsReceived) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  {
    // The engine thread publishes its levels as it starts.
    const auto s = ScrapeWhen(
        [](const auto& s) { return Value(s, "mpa_kv_cache_tokens{state=\"free\"}") > 0.0; });
    EXPECT_EQ(Value(s,
                    "mpa_build_info{architecture=\"LlamaForCausalLM\",attention=\"dense\","
                    "model=\"stories260K\"}"),
              1.0);
    EXPECT_EQ(Value(s, "mpa_kv_cache_tokens{state=\"free\"}"), kKvTokens);
    EXPECT_EQ(Value(s, "mpa_kv_cache_tokens{state=\"used\"}"), 0.0);
    EXPECT_EQ(Value(s, "mpa_generated_tokens_total"), 0.0);
  }
  int64_t prompt_tokens = 0, generated = 0;
  int length_requests = 0;
  int decoded_requests = 0;  // requests with more than one token (a decode step after prefill)

  // Multipole through mpa_client's --attention flag: a prompt long enough to be clustered at
  // its end, then online cluster updates every 8 generated tokens.
  const std::vector<int32_t> long_prompt = RandomPrompt(100);
  auto [rc, out] = Shell(absl::StrCat(
      MPA_CLIENT_BINARY, " --server=", address_, " generate --attention=multipole --ignore_eos",
      " --max_new_tokens=200 --output=ids --stats=false --prompt_ids=",
      absl::StrJoin(long_prompt, ",")));
  ASSERT_EQ(rc, 0) << out;
  const std::vector<std::string> multipole_ids = absl::StrSplit(out, ' ', absl::SkipWhitespace());
  EXPECT_EQ(multipole_ids.size(), 200u) << out;
  prompt_tokens += static_cast<int64_t>(long_prompt.size());
  generated += static_cast<int64_t>(multipole_ids.size());
  ++length_requests;
  ++decoded_requests;

  // Dense one-shots of random lengths.
  std::uniform_int_distribution<int> prompt_len(1, 60), new_tokens(2, 60);
  for (int i = 0; i < 3; ++i) {
    const std::vector<int32_t> prompt = RandomPrompt(prompt_len(rng_));
    StreamResult r = Generate(*stub_, IdsRequest(prompt, new_tokens(rng_)));
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    prompt_tokens += static_cast<int64_t>(prompt.size());
    generated += static_cast<int64_t>(r.ids.size());
    ++length_requests;
    ++decoded_requests;
  }
  // A stop id: the stream ends with finish reason stop.
  {
    const std::vector<int32_t> prompt = RandomPrompt(prompt_len(rng_));
    StreamResult free_run = Generate(*stub_, IdsRequest(prompt, 20));
    ASSERT_TRUE(free_run.status.ok()) << free_run.status.error_message();
    prompt_tokens += static_cast<int64_t>(prompt.size());
    generated += static_cast<int64_t>(free_run.ids.size());
    ++length_requests;
    ++decoded_requests;
    v1::GenerateRequest stop = IdsRequest(prompt, 20);
    stop.mutable_sampling()->add_stop_token_ids(free_run.ids[5]);
    StreamResult stopped = Generate(*stub_, stop);
    ASSERT_TRUE(stopped.status.ok()) << stopped.status.error_message();
    ASSERT_TRUE(stopped.result.has_value());
    EXPECT_EQ(stopped.result->finish_reason(), v1::FINISH_REASON_STOP);
    EXPECT_LE(stopped.ids.size(), 6u);
    prompt_tokens += static_cast<int64_t>(prompt.size());
    generated += static_cast<int64_t>(stopped.ids.size());
    decoded_requests += stopped.ids.size() > 1 ? 1 : 0;
  }
  // A session that keeps its context resident: 10 input tokens + 20 generated, of which the
  // last is not yet fed: 29 tokens, two blocks of 16.
  std::string session;
  {
    grpc::ClientContext context;
    v1::CreateSessionResponse response;
    ASSERT_TRUE(stub_->CreateSession(&context, v1::CreateSessionRequest(), &response).ok());
    session = response.session_id();
    StreamResult turn = Generate(*stub_, IdsRequest(RandomPrompt(10), 20, session));
    ASSERT_TRUE(turn.status.ok()) << turn.status.error_message();
    prompt_tokens += 10;
    generated += static_cast<int64_t>(turn.ids.size());
    ++length_requests;
    ++decoded_requests;
  }
  const int finished = length_requests + 1;  // + the stop request
  // A bad request and a bad lookup.
  StreamResult bad = Generate(*stub_, IdsRequest({1, 99999}, 4));
  EXPECT_EQ(bad.status.error_code(), grpc::INVALID_ARGUMENT);
  {
    grpc::ClientContext context;
    v1::GetSessionRequest request;
    request.set_session_id("ses-none");
    v1::GetSessionResponse response;
    EXPECT_EQ(stub_->GetSession(&context, request, &response).error_code(), grpc::NOT_FOUND);
  }

  const auto s = ScrapeWhen([](const auto& s) {
    return Value(s, "mpa_active_generations") == 0.0 &&
           Value(s, "mpa_kv_cache_tokens{state=\"used\"}") == 32.0;
  });
  EXPECT_EQ(Value(s, "mpa_requests_total{finish_reason=\"length\"}"), length_requests);
  EXPECT_EQ(Value(s, "mpa_requests_total{finish_reason=\"stop\"}"), 1.0);
  EXPECT_EQ(Value(s, "mpa_requests_total{finish_reason=\"eos\"}"), 0.0);
  EXPECT_EQ(Value(s, "mpa_requests_total{finish_reason=\"cancelled\"}"), 0.0);
  EXPECT_EQ(Value(s, "mpa_requests_total{finish_reason=\"error\"}"), 1.0);
  EXPECT_EQ(Value(s, "mpa_request_errors_total{code=\"INVALID_ARGUMENT\"}"), 1.0);
  EXPECT_EQ(Value(s, "mpa_request_errors_total{code=\"NOT_FOUND\"}"), 1.0);
  EXPECT_EQ(Value(s, "mpa_generated_tokens_total"), generated);
  EXPECT_EQ(Value(s, "mpa_prompt_tokens_total"), prompt_tokens);
  EXPECT_EQ(Value(s, "mpa_cached_tokens_total"), 0.0);
  EXPECT_EQ(Value(s, "mpa_time_to_first_token_seconds_count"), finished);
  EXPECT_EQ(Value(s, "mpa_time_per_output_token_seconds_count"), decoded_requests);
  EXPECT_EQ(Value(s, "mpa_request_duration_seconds_count"), finished);
  EXPECT_GT(Value(s, "mpa_time_to_first_token_seconds_sum"), 0.0);
  // Every token after a request's first comes out of one batched decode step.
  EXPECT_EQ(Value(s, "mpa_decode_batch_size_sum"), generated - finished);
  EXPECT_GT(Value(s, "mpa_prefill_chunk_seconds_count"), 0.0);

  // The multipole request read a fraction of its cache; the dense ones all of it.
  EXPECT_EQ(Value(s, "mpa_attention_exact_fraction_count{mode=\"multipole\"}"), 1.0);
  const double fraction = Value(s, "mpa_attention_exact_fraction_sum{mode=\"multipole\"}");
  EXPECT_GT(fraction, 0.0);
  EXPECT_LT(fraction, 0.9);
  EXPECT_EQ(Value(s, "mpa_attention_exact_fraction_count{mode=\"dense\"}"), decoded_requests - 1);
  EXPECT_EQ(Value(s, "mpa_attention_exact_fraction_sum{mode=\"dense\"}"), decoded_requests - 1);
  EXPECT_LT(Value(s, "mpa_attention_tokens_total{kind=\"exact\"}"),
            Value(s, "mpa_attention_tokens_total{kind=\"total\"}"));
  EXPECT_GT(Value(s, "mpa_cluster_updates_total"), 0.0);
  EXPECT_GT(Value(s, "mpa_cluster_update_seconds_total"), 0.0);
  EXPECT_GT(Value(s, "mpa_tokens_reclustered_total"), 0.0);
  EXPECT_GT(Value(s, "mpa_centroids_scored_total"), 0.0);
  EXPECT_GT(Value(s, "mpa_prefill_cluster_seconds_total"), 0.0);

  // Levels: the session's two blocks are held; everything else is free.
  EXPECT_EQ(Value(s, "mpa_sessions"), 1.0);
  EXPECT_EQ(Value(s, "mpa_active_generations"), 0.0);
  EXPECT_EQ(Value(s, "mpa_kv_cache_tokens{state=\"used\"}"), 32.0);
  EXPECT_EQ(Value(s, "mpa_kv_cache_tokens{state=\"free\"}"), kKvTokens - 32);
  EXPECT_DOUBLE_EQ(Value(s, "mpa_kv_cache_usage_ratio"), 32.0 / kKvTokens);

  // A client that cancels its stream: counted as cancelled, its cache released.
  {
    grpc::ClientContext context;
    auto reader = stub_->Generate(&context, IdsRequest(RandomPrompt(8), 440));
    v1::GenerateResponse message;
    while (reader->Read(&message) && message.tokens_size() == 0) {
    }
    context.TryCancel();
    while (reader->Read(&message)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::CANCELLED);
  }
  const auto after = ScrapeWhen([](const auto& s) {
    return Value(s, "mpa_requests_total{finish_reason=\"cancelled\"}") == 1.0 &&
           Value(s, "mpa_active_generations") == 0.0;
  });
  EXPECT_EQ(Value(after, "mpa_requests_total{finish_reason=\"cancelled\"}"), 1.0);
  EXPECT_EQ(Value(after, "mpa_active_generations"), 0.0);
  EXPECT_EQ(Value(after, "mpa_kv_cache_tokens{state=\"used\"}"), 32.0);
  // A client's cancel is not a server error.
  EXPECT_EQ(Value(after, "mpa_request_errors_total{code=\"CANCELLED\"}"), 0.0);
  EXPECT_EQ(Value(after, "mpa_requests_total{finish_reason=\"error\"}"), 1.0);
}

TEST_F(MetricsE2eTest, PrometheusScrapesTheServer) {
  if (Shell("command -v prometheus >/dev/null 2>&1").first != 0) {
    GTEST_SKIP() << "the prometheus binary is not installed (Debian package prometheus)";
  }
  ASSERT_NO_FATAL_FAILURE(StartServer());
  std::uniform_int_distribution<int> new_tokens(5, 60);
  const int n = new_tokens(rng_);
  StreamResult r = Generate(*stub_, IdsRequest(RandomPrompt(5), n));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  ASSERT_EQ(r.ids.size(), static_cast<size_t>(n));

  const std::string dir =
      absl::StrCat(::testing::TempDir(), "/mpa_prometheus_", getpid(), "_", std::random_device{}());
  std::filesystem::create_directories(dir);
  {
    std::ofstream config(dir + "/prometheus.yml");
    config << "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
           << "scrape_configs:\n  - job_name: mpa\n    static_configs:\n"
           << "      - targets: ['127.0.0.1:" << metrics_port_ << "']\n";
  }
  const int port = testing::FreeLoopbackPort();
  ASSERT_GT(port, 0);
  std::string answer;
  {
    ChildProcess prometheus(
        {"/bin/sh", "-c",
         absl::StrCat("exec prometheus --config.file=", dir, "/prometheus.yml",
                      " --storage.tsdb.path=", dir, "/data",
                      " --web.listen-address=127.0.0.1:", port, " --log.level=warn")});
    ASSERT_TRUE(prometheus.started()) << prometheus.StartFailure("");
    // Prometheus starts, scrapes within its first interval, and the sample becomes queryable.
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    const std::string value = absl::StrCat("\"", n, "\"]");
    while (absl::Now() < deadline) {
      std::optional<std::string> body =
          HttpGet(port, "/api/v1/query?query=mpa_generated_tokens_total");
      if (body.has_value() && body->find(value) != std::string::npos) {
        answer = *body;
        break;
      }
      absl::SleepFor(absl::Milliseconds(100));
    }
    if (answer.empty()) ADD_FAILURE() << "prometheus output:\n" << prometheus.output();
    prometheus.Signal(SIGTERM);
    EXPECT_EQ(prometheus.Wait(absl::Seconds(10)), 0) << prometheus.output();
  }
  std::filesystem::remove_all(dir);
  EXPECT_THAT(answer, HasSubstr("\"status\":\"success\""));
  EXPECT_THAT(answer, HasSubstr("\"__name__\":\"mpa_generated_tokens_total\""));
  EXPECT_THAT(answer, HasSubstr(absl::StrCat("\"instance\":\"127.0.0.1:", metrics_port_, "\"")));
}

}  // namespace
}  // namespace mpa::server
