// mpa_server refuses nonsense flag values and unusable TLS files at start: one line naming the
// flag, exit status 2 (the status of every usage error of the binary), before the model is
// loaded.
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server/server_process.h"
#include "tests/server/test_certificates.h"

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
      "--tls_reload_interval_s=-1",
      "--tls_reload_interval_s=100000",
  };
  for (const std::string& flag : flags) {
    ChildProcess server(
        {MPA_SERVER_BINARY, absl::StrCat("--model=", kModelDir), flag, "--metrics_address="});
    ASSERT_TRUE(server.started()) << server.StartFailure("mpa_server: ");
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

// The TLS flags: a missing half of the pair, a client CA without TLS, and files that cannot be
// read or are not what they should be are refused in one line naming the flag and the file,
// before the model loads.
TEST(ServerFlagsE2eTest, BadTlsFlagsAndFilesAreRefused) {
  if (!std::filesystem::exists(std::string(kModelDir) + "/config.json")) {
    GTEST_SKIP() << "stories260K not found at " << kModelDir;
  }
  testing::TlsTestFiles files("server_flags_e2e");
  const std::string cert = files.Path("server.pem");
  const std::string key = files.Path("server.key");
  const std::string ca = files.Path("ca.pem");
  const std::string missing = files.Path("missing.pem");
  const std::string garbage = files.Write("garbage.pem", "-----BEGIN CERTIFICATE-----\nxx\n");
  // (flags, what the line must say)
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--tls_cert=" + cert}, "--tls_cert: set without --tls_key"},
      {{"--tls_key=" + key}, "--tls_key: set without --tls_cert"},
      {{"--tls_client_ca=" + ca}, "--tls_client_ca: needs --tls_cert and --tls_key"},
      {{"--tls_cert=" + missing, "--tls_key=" + key}, "--tls_cert=" + missing + ": cannot read"},
      {{"--tls_cert=" + cert, "--tls_key=" + missing}, "--tls_key=" + missing + ": cannot read"},
      {{"--tls_cert=" + cert, "--tls_key=" + key, "--tls_client_ca=" + missing},
       "--tls_client_ca=" + missing + ": cannot read"},
      {{"--tls_cert=" + garbage, "--tls_key=" + key}, "--tls_cert=" + garbage + ": not a PEM"},
      {{"--tls_cert=" + cert, "--tls_key=" + garbage}, "--tls_key=" + garbage + ": not an"},
      {{"--tls_cert=" + cert, "--tls_key=" + key, "--tls_client_ca=" + garbage},
       "--tls_client_ca=" + garbage + ": not a PEM"},
      {{"--tls_cert=" + cert, "--tls_key=" + files.Path("client.key")},
       "is not the key of the certificate"},
  };
  for (const auto& [flags, message] : cases) {
    std::vector<std::string> argv = {MPA_SERVER_BINARY, absl::StrCat("--model=", kModelDir),
                                     "--address=127.0.0.1:0", "--metrics_address="};
    argv.insert(argv.end(), flags.begin(), flags.end());
    ChildProcess server(argv);
    ASSERT_TRUE(server.started()) << server.StartFailure("mpa_server: ");
    const std::string what = absl::StrJoin(flags, " ");
    EXPECT_EQ(server.Wait(absl::Seconds(30)), 2) << what << ":\n" << server.output();
    server.WaitForLine("mpa_server: ", absl::Seconds(5));
    const std::string output = server.output();
    const std::vector<std::string> lines = absl::StrSplit(output, '\n', absl::SkipEmpty());
    EXPECT_EQ(lines.size(), 1u) << what << ":\n" << output;
    EXPECT_THAT(output, ::testing::HasSubstr(message)) << what;
    EXPECT_EQ(output.find("listening"), std::string::npos) << what << ":\n" << output;
  }
}

}  // namespace
}  // namespace mpa::server
