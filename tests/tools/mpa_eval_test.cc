// Runs the real mpa_eval binary on stories260K and a short story (tests/fixtures/eval/story.txt):
// a second dense run has a KL of exactly 0 against the first, a tiny budget a clearly nonzero
// one, and the CSV and markdown reports carry every mode and budget asked for.
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "gtest/gtest.h"

namespace {

const std::string kStories = MPA_SOURCE_DIR "/../shared/models/stories260K";
const std::string kStory = MPA_SOURCE_DIR "/tests/fixtures/eval/story.txt";
const std::string kBinary = MPA_BINARY_DIR "/mpa_eval";
// The knobs of bench/multipole_accuracy_bench.cc, scaled to the model's 512-token context.
const std::string kScaledKnobs =
    " --sink_tokens 4 --cluster_interval 16 --block_tokens 128 --min_clustered_tokens 32"
    " --cluster_ratio 4";

struct Result {
  int exit_code;
  std::string out;
  std::string err;
};

Result RunEval(const std::string& args) {
  static int calls = 0;
  const std::string err_file = testing::TempDir() + "/mpa_eval_stderr." + std::to_string(getpid()) +
                               "." + std::to_string(calls++) + ".txt";
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

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// CSV rows as column -> value maps (the writer quotes only the mode and reason columns, which
// hold no commas).
std::vector<std::map<std::string, std::string>> ParseCsv(const std::string& text) {
  std::vector<std::string> lines = absl::StrSplit(text, '\n', absl::SkipEmpty());
  std::vector<std::map<std::string, std::string>> rows;
  if (lines.empty()) return rows;
  std::vector<std::string> header = absl::StrSplit(lines[0], ',');
  for (size_t i = 1; i < lines.size(); ++i) {
    std::vector<std::string> cells = absl::StrSplit(lines[i], ',');
    std::map<std::string, std::string> row;
    for (size_t c = 0; c < header.size() && c < cells.size(); ++c) {
      std::string v = cells[c];
      if (v.size() >= 2 && v.front() == '"' && v.back() == '"') v = v.substr(1, v.size() - 2);
      row[header[c]] = v;
    }
    rows.push_back(row);
  }
  return rows;
}

class MpaEvalTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(kStories + "/model.safetensors")) {
      GTEST_SKIP() << "stories260K not found at " << kStories;
    }
  }
};

TEST_F(MpaEvalTest, DenseAgainstDenseIsZeroAndATinyBudgetIsNot) {
  const std::string csv = testing::TempDir() + "/mpa_eval_" + std::to_string(getpid()) + ".csv";
  const std::string md = testing::TempDir() + "/mpa_eval_" + std::to_string(getpid()) + ".md";
  Result r = RunEval("--model " + kStories + " --docs " + kStory +
                     " --contexts 0 --score_tokens 128 --modes dense,multipole,exact-only,quest"
                     " --budgets 8,10% --recall_distance 32 --out_csv " +
                     csv + " --out_md " + md + kScaledKnobs);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto rows = ParseCsv(ReadFile(csv));
  // dense, its second run, then 3 modes x 2 budgets.
  ASSERT_EQ(rows.size(), 8u) << ReadFile(csv);
  EXPECT_EQ(rows[0].at("mode"), "dense");
  EXPECT_EQ(rows[0].at("steps"), "128");
  EXPECT_EQ(rows[1].at("mode"), "dense (second run)");
  EXPECT_EQ(rows[1].at("mean_kl"), "0");
  EXPECT_EQ(rows[1].at("max_kl"), "0");
  EXPECT_EQ(rows[1].at("top1_agreement"), "1");
  EXPECT_EQ(rows[1].at("perplexity_ratio"), "1");
  // The story repeats names far enough apart for recall to be measured at distance 32.
  EXPECT_GT(std::stoi(rows[0].at("recall_n")), 0);
  std::map<std::string, int> seen;
  for (size_t i = 2; i < rows.size(); ++i) {
    const auto& row = rows[i];
    seen[row.at("mode")] += 1;
    EXPECT_EQ(row.at("steps"), "128") << row.at("mode") << " " << row.at("budget");
    EXPECT_LT(std::stod(row.at("read_exactly")), 0.5) << row.at("mode") << " " << row.at("budget");
    if (row.at("budget") == "8") {
      // 8 tokens of a clustered region of about 350: far from dense.
      EXPECT_GT(std::stod(row.at("mean_kl")), 1e-3) << row.at("mode");
      EXPECT_LT(std::stod(row.at("top1_agreement")), 1.0) << row.at("mode");
    }
  }
  EXPECT_EQ(seen["multipole (1 level)"], 2);
  EXPECT_EQ(seen["exact-only"], 2);
  EXPECT_EQ(seen["quest"], 2);
  const std::string markdown = ReadFile(md);
  EXPECT_NE(markdown.find("| dense (second run) | - | 1 | 128 | 0.00000 |"), std::string::npos)
      << markdown;
  EXPECT_EQ(markdown, r.out);
  std::remove(csv.c_str());
  std::remove(md.c_str());
}

TEST_F(MpaEvalTest, ContextsLongerThanTheWindowAreReportedNotRun) {
  Result r = RunEval("--model " + kStories + " --docs " + kStory +
                     " --contexts 1024 --modes multipole --budgets 64" + kScaledKnobs);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("Past the model's context window (512)"), std::string::npos) << r.out;
}

TEST_F(MpaEvalTest, BadFlagsAreOneLineErrors) {
  for (const std::string& args :
       {std::string("--model " + kStories + " --docs " + kStory + " --modes sparse"),
        std::string("--model " + kStories + " --docs " + kStory + " --budgets 0"),
        std::string("--model " + kStories + " --docs " + kStory + " --budgets 150%"),
        std::string("--model " + kStories),
        std::string("--model " + kStories + " --docs " + kStory + " --engine tpu")}) {
    Result r = RunEval(args);
    EXPECT_EQ(r.exit_code, 1) << args;
    EXPECT_EQ(r.out, "") << args;
    EXPECT_EQ(r.err.rfind("mpa_eval: ", 0), 0u) << args << ": " << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
}

}  // namespace
