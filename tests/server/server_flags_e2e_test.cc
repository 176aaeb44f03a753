// mpa_server refuses nonsense flag values at start: one line naming the flag, exit status 2
// (the status of every usage error of the binary), before the model is loaded.
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "tests/server/server_process.h"

namespace mpa::server {
namespace {

using testing::ChildProcess;

const char kModelDir[] = MPA_SOURCE_DIR "/../shared/models/stories260K";

TEST(ServerFlagsE2eTest, NonsenseValuesAreRefusedNamingTheFlag) {
  if (!std::filesystem::exists(std::string(kModelDir) + "/config.json")) {
    GTEST_SKIP() << "stories260K not found at " << kModelDir;
  }
  const std::vector<std::string> flags = {
      "--max_sessions=-1",
      "--max_sessions=0",
      "--default_max_new_tokens=-1",
      "--default_max_new_tokens=0",
      "--token_budget=0",
      "--token_budget=-5",
      "--max_kv_tokens=0",
      "--max_kv_tokens=-1",
      "--kv_block_tokens=0",
      "--max_prompt_tokens=-1",
      "--max_total_tokens=-2",
      "--cluster_ratio=0",
      "--cluster_ratio=-2",
      "--levels=3",
      "--cluster_interval=0",
      "--sink_tokens=-2",
      "--min_clustered_tokens=-3",
      "--block_tokens=0",
      "--lookup_position=-2",
      "--threads=-1",
      "--prefill_chunk_tokens=0",
      "--max_batch_size=0",
      "--token_budget_fraction=-0.5",
      "--token_budget_fraction=2",
      "--token_budget_fraction=nan",
      "--session_ttl=-1s",
      "--session_ttl=inf",
      "--drain_timeout=-5s",
      "--address=",
  };
  for (const std::string& flag : flags) {
    ChildProcess server(
        {MPA_SERVER_BINARY, absl::StrCat("--model=", kModelDir), flag, "--metrics_address="});
    ASSERT_TRUE(server.started());
    EXPECT_EQ(server.Wait(absl::Seconds(30)), 2) << flag << ":\n" << server.output();
    // The output is collected by a thread that may still be reading after the exit.
    server.WaitForLine("mpa_server: ", absl::Seconds(5));
    const std::string output = server.output();
    const std::vector<std::string> lines = absl::StrSplit(output, '\n', absl::SkipEmpty());
    EXPECT_EQ(lines.size(), 1u) << flag << ":\n" << output;
    const std::string name = flag.substr(0, flag.find('='));
    EXPECT_NE(output.find(name), std::string::npos) << flag << ":\n" << output;
    EXPECT_EQ(output.find("listening"), std::string::npos) << flag << ":\n" << output;
  }
}

}  // namespace
}  // namespace mpa::server
