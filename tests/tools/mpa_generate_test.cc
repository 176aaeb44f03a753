// Runs the real mpa_generate binary: its output on stories260K and its errors.
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "gtest/gtest.h"

namespace {

const std::string kStories = MPA_SOURCE_DIR "/../shared/models/stories260K";
const std::string kBinary = MPA_BINARY_DIR "/mpa_generate";

struct Result {
  int exit_code;
  std::string out;  // stdout
  std::string err;  // stderr
};

Result RunGenerate(const std::string& args) {
  // One file per call: ctest runs this binary's tests as parallel processes.
  static int calls = 0;
  const std::string err_file = testing::TempDir() + "/mpa_generate_stderr." +
                               std::to_string(getpid()) + "." + std::to_string(calls++) + ".txt";
  const std::string cmd = kBinary + " " + args + " 2>" + err_file;
  Result r;
  FILE* pipe = popen(cmd.c_str(), "r");
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) r.out.append(buf.data(), n);
  const int status = pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream in(err_file);
  r.err.assign(std::istreambuf_iterator<char>(in), {});
  std::remove(err_file.c_str());
  return r;
}

class MpaGenerateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(kStories + "/model.safetensors")) {
      GTEST_SKIP() << "stories260K not found at " << kStories;
    }
  }
};

TEST_F(MpaGenerateTest, GreedyIdsEqualTheReference) {
  Result r = RunGenerate("--model " + kStories +
                         " --prompt_ids 1 --max_new_tokens 64 --temperature 0 --output ids");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out,
            "403 407 261 378 432 383 286 261 376 298 315 421 395 317 426 338 401 396 267 337 410 "
            "408 419 292 411 322 265 282 295 433 426 385 328 432 358 394 261 370 432 352 266 268 "
            "388 426 338 391 266 267 337 335 312 432 398 312 286 267 414 270 333 415 426 13 438 "
            "310\n");
}

TEST_F(MpaGenerateTest, TextOutputIsTheStory) {
  Result r = RunGenerate("--model " + kStories +
                         " --prompt_ids 1 --max_new_tokens 64 --temperature 0 --output text");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("Once upon a time, there was a little girl named Lily. She loved to play "
                        "outside in the park.",
                        0),
            0u)
      << r.out;
}

TEST_F(MpaGenerateTest, SeededSamplingIsReproducible) {
  const std::string args = "--model " + kStories +
                           " --prompt_ids 1 --max_new_tokens 40 --temperature 0.9 --top_p 0.95 "
                           "--top_k 50 --seed 17 --output ids";
  Result a = RunGenerate(args), b = RunGenerate(args);
  ASSERT_EQ(a.exit_code, 0) << a.err;
  EXPECT_EQ(a.out, b.out);
  Result c =
      RunGenerate("--model " + kStories +
                  " --prompt_ids 1 --max_new_tokens 40 --temperature 0.9 --top_p 0.95 --top_k 50 "
                  "--seed 18 --output ids");
  EXPECT_NE(a.out, c.out);
}

struct BadRun {
  std::string args;
  std::string needle;
};

TEST_F(MpaGenerateTest, BadInputsFailWithOneLineReason) {
  const std::string m = "--model " + kStories;
  const std::vector<BadRun> cases = {
      {"--model /nonexistent/model", "config.json"},
      {m + " --prompt_ids 1,x", "--prompt_ids"},
      {m + " --prompt_ids 1 --output json", "--output"},
      {m + " --prompt_ids 9999", "token id 9999"},
      {m + " --prompt_ids 1 --temperature -1", "temperature"},
      {m + " --prompt_ids 1 --max_new_tokens 600", "context window"},
      {m + " --prompt_ids 1 --attention sparse", "attention mode"},
      {m + " --prompt_ids 1 --attention multipole --cluster_interval 0", "cluster_interval"},
      {m + " --prompt_ids 1 --attention multipole --levels 3", "levels"},
      {m + " --prompt_ids 1 --attention multipole --token_budget -5", "token_budget"},
      {m + " --prompt_ids 1 --attention multipole --cluster_ratio 0", "tokens_per_centroid"},
  };
  for (const BadRun& c : cases) {
    Result r = RunGenerate(c.args);
    EXPECT_EQ(r.exit_code, 1) << c.args;
    EXPECT_NE(r.err.find(c.needle), std::string::npos) << c.args << " -> " << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << c.args << " -> " << r.err;
  }
}

}  // namespace

namespace {

// Every attention mode runs end to end on every golden fixture (folders without a tokenizer:
// ids in, ids out), with knobs scaled down so clustering and online updates happen.
TEST(MpaGenerateFixtures, EveryModeRunsOnEveryFixture) {
  const std::string fixtures = MPA_SOURCE_DIR "/tests/fixtures";
  for (const char* name : {"llama3_tiny", "qwen2_tiny", "qwen3_tiny", "qwen3_tiny_bf16"}) {
    for (const char* mode : {"dense", "multipole", "exact-only", "quest"}) {
      Result r = RunGenerate("--model " + fixtures + "/" + name +
                             " --prompt_ids 5,6,7,8,9,10,11,12 --max_new_tokens 60 --ignore_eos "
                             "--output ids --attention " +
                             mode +
                             " --token_budget 8 --cluster_interval 8 --block_tokens 32 "
                             "--min_clustered_tokens 8 --sink_tokens 2 --cluster_ratio 4");
      ASSERT_EQ(r.exit_code, 0) << name << " " << mode << ": " << r.err;
      EXPECT_EQ(std::count(r.out.begin(), r.out.end(), ' '), 59) << name << " " << mode;
    }
  }
}

}  // namespace
