// End-to-end on the GPU: the real mpa_server binary with --device=cuda (CudaModelEngine) on the
// real stories260K model, driven through the C++ gRPC stubs. Skips, with the server's own
// message, where the binary was built without CUDA or the machine has no CUDA device.
//
// The binary and the model default to the build's paths; MPA_SERVER_BINARY and MPA_STORIES260K
// in the environment override them (a build copied to a GPU machine runs from other paths).
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "multipole/v1/decode.grpc.pb.h"
#include "tests/server/generate_stream.h"
#include "tests/server/server_process.h"

namespace mpa::server {
namespace {

namespace v1 = ::multipole::v1;
using testing::Generate;
using ::testing::HasSubstr;
using testing::IdsRequest;
using testing::StreamResult;

// Greedy ids of stories260K from BOS (id 1), as its README records them (the same list as
// server_e2e_test.cc checks on the CPU).
const char kReferenceIds[] =
    "403 407 261 378 432 383 286 261 376 298 315 421 395 317 426 338 401 396 267 337 410 408 419 "
    "292 411 322 265 282 295 433 426 385 328 432 358 394 261 370 432 352 266 268 388 426 338 391 "
    "266 267 337 335 312 432 398 312 286 267 414 270 333 415 426 13 438 310";

std::string FromEnvOr(const char* name, const std::string& fallback) {
  const char* value = std::getenv(name);
  return value != nullptr && value[0] != '\0' ? std::string(value) : fallback;
}
std::string ServerBinary() { return FromEnvOr("MPA_SERVER_BINARY", MPA_SERVER_BINARY); }
std::string ModelDir() {
  return FromEnvOr("MPA_STORIES260K", MPA_SOURCE_DIR "/../shared/models/stories260K");
}

std::vector<int32_t> ParseIds(absl::string_view text) {
  std::vector<int32_t> ids;
  for (absl::string_view piece : absl::StrSplit(text, ' ', absl::SkipEmpty())) {
    int32_t id;
    if (absl::SimpleAtoi(piece, &id)) ids.push_back(id);
  }
  return ids;
}

// mpa_server --device=cuda as a child process on a free loopback port. Either it prints its
// address (address() is set), or it exits (exit_code() is set) — without a GPU it exits at
// once, before loading the model, so a skipping run costs milliseconds.
class GpuServer {
 public:
  explicit GpuServer(std::vector<std::string> flags) : process_(Argv(std::move(flags))) {
    const absl::Time deadline = absl::Now() + absl::Seconds(120);
    while (absl::Now() < deadline && process_.started()) {
      if (std::optional<std::string> address =
              process_.WaitForLine("listening on ", absl::Milliseconds(1))) {
        address_ = *address;
        return;
      }
      if (const int rc = process_.Wait(absl::Milliseconds(20)); rc != -1) {
        exit_code_ = rc;
        return;
      }
    }
  }
  const std::string& address() const { return address_; }
  std::optional<int> exit_code() const { return exit_code_; }
  std::string output() { return process_.output(); }
  // Why it is not listening (for an assertion's message).
  std::string StartFailure() { return process_.StartFailure("listening on "); }

 private:
  static std::vector<std::string> Argv(std::vector<std::string> flags) {
    std::vector<std::string> argv = {ServerBinary(), absl::StrCat("--model=", ModelDir()),
                                     "--device=cuda", "--address=127.0.0.1:0",
                                     "--metrics_address="};
    argv.insert(argv.end(), flags.begin(), flags.end());
    return argv;
  }

  testing::ChildProcess process_;
  std::string address_;
  std::optional<int> exit_code_;
};

// Why the server could not use a GPU here, or "" if it could.
std::string NoGpuReason(GpuServer& server) {
  if (!server.address().empty() || !server.exit_code().has_value()) return "";
  const std::string out = server.output();
  for (const char* why : {"no CUDA device", "built without CUDA"}) {
    if (out.find(why) != std::string::npos) return out;
  }
  return "";
}

class ServerGpuE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(ModelDir() + "/config.json")) {
      GTEST_SKIP() << "stories260K not found at " << ModelDir();
    }
    const unsigned seed = std::random_device{}();
    rng_.seed(seed);
    RecordProperty("seed", std::to_string(seed));
  }
  // Starts the server; sets *skip to the server's reason when there is no usable GPU.
  void StartServer(std::string* skip, std::vector<std::string> flags = {}) {
    server_ = std::make_unique<GpuServer>(std::move(flags));
    *skip = NoGpuReason(*server_);
    if (!skip->empty()) return;
    ASSERT_FALSE(server_->address().empty()) << server_->StartFailure();
    EXPECT_THAT(server_->output(), HasSubstr("device cuda:0"));
    channel_ = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
    stub_ = v1::DecodeService::NewStub(channel_);
  }

  // A natural 400-token context (the dense continuation of BOS), long enough for the default
  // knobs to cluster (sink 10, interval 128, min_clustered_tokens 256); empty on failure.
  std::vector<int32_t> LongPrompt() {
    StreamResult context = Generate(*stub_, IdsRequest({1}, 399));
    EXPECT_TRUE(context.status.ok()) << context.status.error_message();
    if (!context.status.ok()) return {};
    std::vector<int32_t> prompt = {1};
    prompt.insert(prompt.end(), context.ids.begin(), context.ids.end());
    return prompt;
  }

  std::mt19937 rng_;
  std::unique_ptr<GpuServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::DecodeService::Stub> stub_;
};

// Starts the server, or skips the test with the server's message when there is no usable GPU.
#define START_SERVER_OR_SKIP(...)                                                   \
  do {                                                                              \
    std::string skip;                                                               \
    ASSERT_NO_FATAL_FAILURE(StartServer(&skip __VA_OPT__(, ) __VA_ARGS__));         \
    if (!skip.empty()) GTEST_SKIP() << "no usable GPU; the server said:\n" << skip; \
  } while (0)

TEST_F(ServerGpuE2eTest, GreedyFromBosIsTheReadmeReference) {
  START_SERVER_OR_SKIP();
  StreamResult r = Generate(*stub_, IdsRequest({1}, 64));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.ids, ParseIds(kReferenceIds));
  ASSERT_TRUE(r.result.has_value());
  EXPECT_EQ(r.result->usage().generated_tokens(), 64);
  EXPECT_EQ(r.result->finish_reason(), v1::FINISH_REASON_LENGTH);
}

TEST_F(ServerGpuE2eTest, EightConcurrentStreamsEqualRunningAlone) {
  START_SERVER_OR_SKIP();
  constexpr int kStreams = 8;
  // Prompts: BOS and a random-length prefix of the reference story, then a random-length
  // continuation (natural text keeps greedy choices well separated, so BF16 rounding that
  // differs between batch shapes cannot flip them).
  std::vector<int32_t> story = {1};
  for (int32_t id : ParseIds(kReferenceIds)) story.push_back(id);
  std::uniform_int_distribution<int> len(1, 40), out(16, 48);
  std::vector<v1::GenerateRequest> requests;
  for (int i = 0; i < kStreams; ++i) {
    const int n = len(rng_);
    requests.push_back(
        IdsRequest(std::vector<int32_t>(story.begin(), story.begin() + n), out(rng_)));
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
    const int n = requests[i].sampling().max_new_tokens();
    EXPECT_EQ(alone[i].ids.size(), static_cast<size_t>(n)) << "stream " << i;
    EXPECT_EQ(together[i].ids, alone[i].ids) << "stream " << i;
  }
}

// Logprobs come from the device: asking for them changes no token (greedy or seeded), and each
// is a log-probability. Against the CPU's values: cuda_model_gpu_test.DeviceGreedyEqualsCpuSampler.
TEST_F(ServerGpuE2eTest, LogprobsChangeNoTokenAndAreLogProbabilities) {
  START_SERVER_OR_SKIP();
  for (float temperature : {0.0f, 0.9f}) {
    v1::GenerateRequest plain = IdsRequest({1}, 48);
    plain.mutable_sampling()->set_temperature(temperature);
    plain.mutable_sampling()->set_seed(12345);
    v1::GenerateRequest with = plain;
    with.set_return_logprobs(true);
    StreamResult a = Generate(*stub_, plain), b = Generate(*stub_, with);
    ASSERT_TRUE(a.status.ok()) << a.status.error_message();
    ASSERT_TRUE(b.status.ok()) << b.status.error_message();
    EXPECT_EQ(a.ids, b.ids) << "temperature " << temperature;
    ASSERT_EQ(b.logprobs.size(), 48u);
    for (float lp : b.logprobs) {
      EXPECT_LE(lp, 0.0f);
      EXPECT_GT(lp, -40.0f);
      // The argmax of a 512-id vocabulary has probability >= 1/512.
      if (temperature == 0.0f) EXPECT_GE(lp, -std::log(512.0f) - 1e-4f);
    }
    if (temperature == 0.0f) {
      const std::vector<int32_t> reference = ParseIds(kReferenceIds);
      ASSERT_GE(reference.size(), 48u);
      EXPECT_EQ(b.ids, std::vector<int32_t>(reference.begin(), reference.begin() + 48));
    }
  }
}

TEST_F(ServerGpuE2eTest, SparseModesRunOnTheGpu) {
  START_SERVER_OR_SKIP();
  // The long prompt, then 100 more tokens.
  const std::vector<int32_t> prompt = LongPrompt();
  ASSERT_FALSE(prompt.empty());
  StreamResult dense = Generate(*stub_, IdsRequest(prompt, 100));
  ASSERT_TRUE(dense.status.ok()) << dense.status.error_message();
  ASSERT_TRUE(dense.result.has_value());
  EXPECT_DOUBLE_EQ(dense.result->stats().mean_sparsity(), 1.0);

  // A budget covering the whole clustered region is exact attention: the dense ids.
  for (auto mode : {v1::ATTENTION_MODE_MULTIPOLE, v1::ATTENTION_MODE_QUEST}) {
    v1::GenerateRequest full = IdsRequest(prompt, 100);
    full.mutable_attention()->set_mode(mode);
    full.mutable_attention()->set_token_budget_fraction(1.0f);
    StreamResult all = Generate(*stub_, full);
    ASSERT_TRUE(all.status.ok()) << all.status.error_message();
    EXPECT_EQ(all.ids, dense.ids) << v1::AttentionMode_Name(mode);
    ASSERT_TRUE(all.result.has_value());
    EXPECT_DOUBLE_EQ(all.result->stats().mean_sparsity(), 1.0);
  }

  // The default budget (128 tokens of a ~256-token region) reads less than the whole cache, in
  // every sparse mode.
  for (auto mode :
       {v1::ATTENTION_MODE_MULTIPOLE, v1::ATTENTION_MODE_EXACT_ONLY, v1::ATTENTION_MODE_QUEST}) {
    v1::GenerateRequest sparse = IdsRequest(prompt, 100);
    sparse.mutable_attention()->set_mode(mode);
    StreamResult r = Generate(*stub_, sparse);
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_EQ(r.ids.size(), 100u);
    ASSERT_TRUE(r.result.has_value());
    EXPECT_LT(r.result->stats().mean_sparsity(), 0.9) << v1::AttentionMode_Name(mode);
    EXPECT_GT(r.result->stats().mean_sparsity(), 0.3) << v1::AttentionMode_Name(mode);
  }
}

// Two cluster levels (--levels 2): a budget covering the region streams the dense ids, the
// default budget reads part of the cache, in multipole and exact-only.
TEST_F(ServerGpuE2eTest, TwoLevelsRunOnTheGpu) {
  START_SERVER_OR_SKIP(std::vector<std::string>{"--levels=2"});
  const std::vector<int32_t> prompt = LongPrompt();
  ASSERT_FALSE(prompt.empty());
  StreamResult dense = Generate(*stub_, IdsRequest(prompt, 100));
  ASSERT_TRUE(dense.status.ok()) << dense.status.error_message();
  v1::GenerateRequest full = IdsRequest(prompt, 100);
  full.mutable_attention()->set_mode(v1::ATTENTION_MODE_MULTIPOLE);
  full.mutable_attention()->set_token_budget_fraction(1.0f);
  StreamResult all = Generate(*stub_, full);
  ASSERT_TRUE(all.status.ok()) << all.status.error_message();
  EXPECT_EQ(all.ids, dense.ids);
  for (auto mode : {v1::ATTENTION_MODE_MULTIPOLE, v1::ATTENTION_MODE_EXACT_ONLY}) {
    v1::GenerateRequest sparse = IdsRequest(prompt, 100);
    sparse.mutable_attention()->set_mode(mode);
    StreamResult r = Generate(*stub_, sparse);
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_EQ(r.ids.size(), 100u);
    ASSERT_TRUE(r.result.has_value());
    EXPECT_LT(r.result->stats().mean_sparsity(), 0.9) << v1::AttentionMode_Name(mode);
    EXPECT_GT(r.result->stats().mean_sparsity(), 0.3) << v1::AttentionMode_Name(mode);
  }
}

TEST_F(ServerGpuE2eTest, KnobsTheGpuDoesNotRunAreRefusedAtStartUp) {
  server_ = std::make_unique<GpuServer>(
      std::vector<std::string>{"--attention=multipole", "--centroid_keys=pre_rope"});
  if (std::string skip = NoGpuReason(*server_); !skip.empty()) {
    GTEST_SKIP() << "no usable GPU; the server said:\n" << skip;
  }
  ASSERT_TRUE(server_->exit_code().has_value()) << server_->output();
  EXPECT_EQ(*server_->exit_code(), 2);
  EXPECT_THAT(server_->output(),
              HasSubstr("multipole attention is not available on device cuda:0"));
  EXPECT_THAT(server_->output(), HasSubstr("centroid_keys pre_rope"));
}

}  // namespace
}  // namespace mpa::server
