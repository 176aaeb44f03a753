// End-to-end: mpa_server replicas behind HAProxy, configured by the very file the Helm chart
// ships (deploy/helm/multipole/files/haproxy.cfg, with the replicas' `server` lines appended), all
// on loopback ports with the real stories260K model.
//
//  * Sessions land where they live: 120 sessions (110 with ids of the client's, 10 with ids the
//    router proposes) x 3 turns through the router; each session is held by exactly one replica
//    (asked directly), every turn's cached_tokens shows its context was reused, no NOT_FOUND.
//  * A replica killed (SIGKILL): only its sessions fail, with UNAVAILABLE (while the router
//    still tries it) or NOT_FOUND (once its share moved), never another session; new sessions
//    go to the two left. The replica back (empty, same address): the other sessions go on, new
//    sessions spread over all three again, and sessions opened during the outage either go on or
//    (those whose ids hash to the returning replica) answer NOT_FOUND.
//  * The health check passes only SERVING: an in-process gRPC health service switched between
//    SERVING and NOT_SERVING takes its server DOWN and UP in the router.
//  * A replica drained by SIGTERM with streams running through the router finishes them all and
//    exits 0.
// Skipped (with a message) where haproxy is not installed.
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "multipole/v1/decode.grpc.pb.h"
#include "tests/server/server_process.h"

namespace mpa::server {
namespace {

namespace v1 = ::multipole::v1;
using testing::ChildProcess;
using ::testing::HasSubstr;
using ::testing::MatchesRegex;

const char kModelDir[] = MPA_SOURCE_DIR "/../shared/models/stories260K";
const char kRouterConfig[] = MPA_SOURCE_DIR "/deploy/helm/multipole/files/haproxy.cfg";
constexpr int kReplicas = 3;
constexpr int kPromptTokens = 3;  // per turn
constexpr int kNewTokens = 4;     // per turn

// The haproxy binary: $MPA_HAPROXY if set (a path; one that is not executable means none), else
// the first on PATH or in the sbin folders (Debian's is /usr/sbin/haproxy, which a non-root
// PATH may leave out); empty if none.
std::string FindHaproxy() {
  if (const char* chosen = std::getenv("MPA_HAPROXY")) {
    return access(chosen, X_OK) == 0 ? std::string(chosen) : "";
  }
  std::vector<std::string> dirs = {"/usr/sbin", "/usr/local/sbin", "/sbin"};
  if (const char* path = std::getenv("PATH")) {
    for (absl::string_view dir : absl::StrSplit(path, ':'))
      dirs.insert(dirs.begin(), std::string(dir));
  }
  for (const std::string& dir : dirs) {
    const std::string candidate = dir + "/haproxy";
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

void Prepare(grpc::ClientContext& context, const std::string& session) {
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  if (!session.empty()) context.AddMetadata("x-session-id", session);
}

// One session as the test tracks it.
struct Session {
  std::string id;
  int replica = -1;     // where it lives (asked directly)
  int64_t context = 0;  // tokens of its context, as the client counts them
};

// The outcome of one turn.
struct TurnResult {
  grpc::Status status;
  int64_t cached = -1;
  int64_t generated = 0;
};

class RouterE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    haproxy_ = FindHaproxy();
    if (haproxy_.empty()) {
      GTEST_SKIP() << "haproxy not found: the router test needs HAProxy 2.6 (Debian package "
                      "haproxy; tools/install-deps.sh installs it)";
    }
    if (!std::filesystem::exists(std::string(kModelDir) + "/config.json")) {
      GTEST_SKIP() << "stories260K not found at " << kModelDir;
    }
  }
  void TearDown() override {
    if (!config_path_.empty()) std::remove(config_path_.c_str());
  }

  // Starts replica `i` (on `port`, 0: a free one); returns false if it did not come up.
  bool StartReplica(int i, int port = 0, std::vector<std::string> flags = {}) {
    std::vector<std::string> argv = {MPA_SERVER_BINARY,
                                     absl::StrCat("--model=", kModelDir),
                                     absl::StrCat("--address=127.0.0.1:", port),
                                     "--metrics_address=",
                                     "--threads=1",
                                     "--max_sessions=512"};
    argv.insert(argv.end(), flags.begin(), flags.end());
    if (static_cast<int>(replicas_.size()) <= i) replicas_.resize(i + 1);
    replicas_[i] = std::make_unique<ChildProcess>(argv);
    std::optional<std::string> address =
        replicas_[i]->WaitForLine("listening on ", absl::Seconds(60));
    if (!address.has_value()) {
      ADD_FAILURE() << "replica " << i << ": " << replicas_[i]->StartFailure("listening on ");
      return false;
    }
    if (static_cast<int>(ports_.size()) <= i) ports_.resize(i + 1);
    ports_[i] = testing::PortOf(*address);
    if (static_cast<int>(direct_.size()) <= i) direct_.resize(i + 1);
    direct_[i] = v1::DecodeService::NewStub(
        grpc::CreateChannel(*address, grpc::InsecureChannelCredentials()));
    return true;
  }

  // Writes the router's configuration (the shared file and one `server` line per port) and
  // starts HAProxy on it; waits until every server is UP.
  void StartRouter(const std::vector<int>& ports) {
    std::ifstream in(kRouterConfig);
    ASSERT_TRUE(in) << "cannot read " << kRouterConfig;
    std::stringstream config;
    config << in.rdbuf();
    for (size_t i = 0; i < ports.size(); ++i) {
      config << "  server mpa" << i << " 127.0.0.1:" << ports[i] << "\n";
    }
    config_path_ = absl::StrCat(::testing::TempDir(), "/router_e2e_", getpid(), ".cfg");
    std::ofstream(config_path_) << config.str();
    router_port_ = testing::FreeLoopbackPort();
    monitor_port_ = testing::FreeLoopbackPort();
    ASSERT_GT(router_port_, 0);
    ASSERT_GT(monitor_port_, 0);
    setenv("MPA_ROUTER_BIND", absl::StrCat("127.0.0.1:", router_port_).c_str(), 1);
    setenv("MPA_ROUTER_MONITOR_BIND", absl::StrCat("127.0.0.1:", monitor_port_).c_str(), 1);
    router_ = std::make_unique<ChildProcess>(
        std::vector<std::string>{haproxy_, "-db", "-f", config_path_});
    for (size_t i = 0; i < ports.size(); ++i) {
      ASSERT_TRUE(WaitForState(static_cast<int>(i), "UP", absl::Seconds(30))) << "router output:\n"
                                                                              << router_->output();
    }
    router_stub_ = v1::DecodeService::NewStub(grpc::CreateChannel(
        absl::StrCat("127.0.0.1:", router_port_), grpc::InsecureChannelCredentials()));
  }

  // The router's view of server mpa<i> ("UP", "DOWN", "MAINT", ...), from its Prometheus
  // exporter; empty if it cannot be read.
  std::string State(int i) {
    std::optional<std::string> metrics = testing::HttpGet(monitor_port_, "/metrics");
    if (!metrics.has_value()) return "";
    const std::string prefix =
        absl::StrCat("haproxy_server_status{proxy=\"replicas\",server=\"mpa", i, "\",state=\"");
    for (absl::string_view line : absl::StrSplit(*metrics, '\n')) {
      if (!absl::StartsWith(line, prefix) || !absl::EndsWith(line, "} 1")) continue;
      line.remove_prefix(prefix.size());
      return std::string(line.substr(0, line.find('"')));
    }
    return "";
  }
  bool WaitForState(int i, const std::string& state, absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      if (State(i) == state) return true;
      absl::SleepFor(absl::Milliseconds(100));
    }
    return false;
  }

  // CreateSession through the router: with `id` (in the request and the metadata), or with
  // neither (the router proposes one). The new session's id, or the error.
  absl::StatusOr<std::string> Create(const std::string& id) {
    grpc::ClientContext context;
    Prepare(context, id);
    v1::CreateSessionRequest request;
    request.set_session_id(id);
    v1::CreateSessionResponse response;
    grpc::Status s = router_stub_->CreateSession(&context, request, &response);
    if (!s.ok())
      return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
    return response.session_id();
  }
  // Which live replica holds `id` (asked directly): its index, -1 if none, -2 if several.
  int Locate(const std::string& id) {
    int found = -1;
    for (size_t i = 0; i < direct_.size(); ++i) {
      if (replicas_[i] == nullptr || !replicas_[i]->Running()) continue;
      grpc::ClientContext context;
      Prepare(context, id);
      v1::GetSessionRequest request;
      request.set_session_id(id);
      v1::GetSessionResponse response;
      if (direct_[i]->GetSession(&context, request, &response).ok()) {
        found = found == -1 ? static_cast<int>(i) : -2;
      }
    }
    return found;
  }
  // One turn of `session` through the router: kPromptTokens ids, kNewTokens generated.
  TurnResult Turn(const Session& session) {
    TurnResult r;
    grpc::ClientContext context;
    Prepare(context, session.id);
    v1::GenerateRequest request;
    request.set_session_id(session.id);
    for (int t = 0; t < kPromptTokens; ++t) request.mutable_token_ids()->add_ids(5 + t);
    request.mutable_sampling()->set_max_new_tokens(kNewTokens);
    request.mutable_sampling()->set_ignore_eos(true);
    auto reader = router_stub_->Generate(&context, request);
    v1::GenerateResponse message;
    while (reader->Read(&message)) {
      if (message.has_result()) {
        r.cached = message.result().usage().cached_tokens();
        r.generated = message.result().usage().generated_tokens();
      }
    }
    r.status = reader->Finish();
    return r;
  }
  // Runs one turn of each session (8 at a time); results in the same order.
  std::vector<TurnResult> Turns(const std::vector<Session*>& sessions) {
    std::vector<TurnResult> results(sessions.size());
    std::atomic<size_t> next{0};
    std::vector<std::thread> workers;
    for (int w = 0; w < 8; ++w) {
      workers.emplace_back([&] {
        for (size_t i; (i = next++) < sessions.size();) results[i] = Turn(*sessions[i]);
      });
    }
    for (std::thread& t : workers) t.join();
    return results;
  }
  // The turn succeeded on the session's whole context (everything but the token sampled last,
  // which is fed with the turn's input); counts it.
  static void ExpectReused(Session& s, const TurnResult& r) {
    ASSERT_TRUE(r.status.ok()) << s.id << " (replica " << s.replica << "): code "
                               << r.status.error_code() << ": " << r.status.error_message();
    EXPECT_EQ(r.cached, s.context == 0 ? 0 : s.context - 1) << s.id;
    EXPECT_EQ(r.generated, kNewTokens) << s.id;
    s.context += kPromptTokens + kNewTokens;
  }
  // Opens `n` sessions with ids of the test's own, locates each; all must succeed.
  std::vector<Session> OpenSessions(int n, const std::string& prefix) {
    std::vector<Session> sessions;
    for (int i = 0; i < n; ++i) {
      Session s;
      s.id = absl::StrCat(prefix, "-", i, "-", Random());
      absl::StatusOr<std::string> id = Create(s.id);
      EXPECT_TRUE(id.ok()) << s.id << ": " << id.status();
      if (!id.ok()) continue;
      EXPECT_EQ(*id, s.id);
      s.replica = Locate(s.id);
      EXPECT_GE(s.replica, 0) << s.id << " is held by " << s.replica;
      sessions.push_back(s);
    }
    return sessions;
  }
  std::string Random() { return absl::StrCat(absl::Hex(rng_(), absl::kZeroPad16)); }
  static std::vector<Session*> Pointers(std::vector<Session>& sessions) {
    std::vector<Session*> out;
    for (Session& s : sessions) out.push_back(&s);
    return out;
  }
  static std::string Spread(const std::vector<Session>& sessions) {
    std::vector<int> count(kReplicas, 0);
    for (const Session& s : sessions) {
      if (s.replica >= 0) ++count[s.replica];
    }
    return absl::StrJoin(count, "/");
  }

  std::string haproxy_;
  std::string config_path_;
  std::vector<std::unique_ptr<ChildProcess>> replicas_;
  std::vector<int> ports_;
  std::vector<std::unique_ptr<v1::DecodeService::Stub>> direct_;
  std::unique_ptr<ChildProcess> router_;
  std::unique_ptr<v1::DecodeService::Stub> router_stub_;
  int router_port_ = 0;
  int monitor_port_ = 0;
  std::mt19937_64 rng_{std::random_device{}()};
};

TEST_F(RouterE2eTest, SessionsLandWhereTheyLiveAndOnlyAKilledReplicasSessionsFail) {
  for (int i = 0; i < kReplicas; ++i) ASSERT_TRUE(StartReplica(i));
  ASSERT_NO_FATAL_FAILURE(StartRouter(ports_));

  // 110 sessions under ids of the client's, 10 under ids the router proposes.
  std::vector<Session> sessions = OpenSessions(110, "chosen");
  for (int i = 0; i < 10; ++i) {
    absl::StatusOr<std::string> id = Create("");
    ASSERT_TRUE(id.ok()) << id.status();
    EXPECT_THAT(*id, MatchesRegex("[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}"));
    Session s;
    s.id = *id;
    s.replica = Locate(s.id);
    EXPECT_GE(s.replica, 0) << s.id;
    sessions.push_back(s);
  }
  ASSERT_EQ(sessions.size(), 120u);
  std::vector<int> per_replica(kReplicas, 0);
  for (const Session& s : sessions) ++per_replica[s.replica];
  for (int i = 0; i < kReplicas; ++i) EXPECT_GT(per_replica[i], 0) << Spread(sessions);

  // 3 turns each, every one on the replica that holds the session.
  int turns = 0;
  for (int turn = 0; turn < 3; ++turn) {
    std::vector<TurnResult> results = Turns(Pointers(sessions));
    for (size_t i = 0; i < sessions.size(); ++i) {
      ExpectReused(sessions[i], results[i]);
      ++turns;
    }
  }
  for (const Session& s : sessions) {
    ASSERT_EQ(Locate(s.id), s.replica) << s.id << " moved or was copied";
  }
  std::printf("router: %zu sessions (spread %s) x 3 turns: %d turns, all on their replica\n",
              sessions.size(), Spread(sessions).c_str(), turns);

  // A client that names its id in the request but not in the metadata: the router proposes an
  // id of its own for the call, and the server refuses the disagreement rather than opening a
  // session that later calls would not find.
  {
    grpc::ClientContext context;
    Prepare(context, "");
    v1::CreateSessionRequest request;
    request.set_session_id("no-metadata-" + Random());
    v1::CreateSessionResponse response;
    grpc::Status s = router_stub_->CreateSession(&context, request, &response);
    EXPECT_EQ(s.error_code(), grpc::INVALID_ARGUMENT);
    EXPECT_THAT(s.error_message(), HasSubstr("x-session-id metadata"));
  }
  // mpa_client chat through the router: its turns find the session (it sends the metadata).
  {
    auto [code, out] = testing::Shell(absl::StrCat("printf '5 6\\n7\\n8\\n' | ", MPA_CLIENT_BINARY,
                                                   " chat --server=127.0.0.1:", router_port_,
                                                   " --output=ids --max_new_tokens=2 2>&1"));
    EXPECT_EQ(code, 0) << out;
    EXPECT_THAT(out, HasSubstr("prompt 1, cached 3, generated 2"));
    EXPECT_THAT(out, HasSubstr("prompt 1, cached 6, generated 2"));
  }

  // Replica 1 dies. Turns at once: its sessions fail with a code a client acts on, every other
  // session goes on.
  constexpr int kKilled = 1;
  replicas_[kKilled]->Signal(SIGKILL);
  ASSERT_EQ(replicas_[kKilled]->Wait(absl::Seconds(10)), -1);  // killed by the signal
  std::map<int, int> codes;
  {
    std::vector<TurnResult> results = Turns(Pointers(sessions));
    for (size_t i = 0; i < sessions.size(); ++i) {
      if (sessions[i].replica == kKilled) {
        const grpc::StatusCode code = results[i].status.error_code();
        EXPECT_TRUE(code == grpc::UNAVAILABLE || code == grpc::NOT_FOUND)
            << sessions[i].id << ": code " << code << ": " << results[i].status.error_message();
        if (code == grpc::UNAVAILABLE) {
          EXPECT_THAT(results[i].status.error_message(), HasSubstr("multipole router: no replica"));
        }
        ++codes[code];
      } else {
        ExpectReused(sessions[i], results[i]);
      }
    }
  }
  // Once the router has taken it out, its sessions' ids hash to the others, which do not have
  // them: NOT_FOUND, and only for those.
  ASSERT_TRUE(WaitForState(kKilled, "DOWN", absl::Seconds(30))) << router_->output();
  {
    std::vector<TurnResult> results = Turns(Pointers(sessions));
    for (size_t i = 0; i < sessions.size(); ++i) {
      if (sessions[i].replica == kKilled) {
        EXPECT_EQ(results[i].status.error_code(), grpc::NOT_FOUND) << sessions[i].id;
        EXPECT_THAT(results[i].status.error_message(), HasSubstr("lost with a server"));
      } else {
        ExpectReused(sessions[i], results[i]);
      }
    }
  }
  std::printf(
      "router: replica %d killed: its %d sessions failed (first turn: %d UNAVAILABLE, %d "
      "NOT_FOUND; then NOT_FOUND), the other %zu went on\n",
      kKilled, per_replica[kKilled], codes[grpc::UNAVAILABLE], codes[grpc::NOT_FOUND],
      sessions.size() - per_replica[kKilled]);
  // New sessions meanwhile go to the two left.
  std::vector<Session> during = OpenSessions(30, "during");
  ASSERT_EQ(during.size(), 30u);
  for (const Session& s : during) EXPECT_NE(s.replica, kKilled);
  {
    std::vector<TurnResult> results = Turns(Pointers(during));
    for (size_t i = 0; i < during.size(); ++i) ExpectReused(during[i], results[i]);
  }

  // Replica 1 back, empty, at its address.
  ASSERT_TRUE(StartReplica(kKilled, ports_[kKilled]));
  ASSERT_TRUE(WaitForState(kKilled, "UP", absl::Seconds(30))) << router_->output();
  std::vector<Session*> survivors;
  for (Session& s : sessions) {
    if (s.replica != kKilled) survivors.push_back(&s);
  }
  {
    std::vector<TurnResult> results = Turns(survivors);
    for (size_t i = 0; i < survivors.size(); ++i) ExpectReused(*survivors[i], results[i]);
  }
  std::vector<Session> after = OpenSessions(60, "after");
  ASSERT_EQ(after.size(), 60u);
  std::vector<int> spread_after(kReplicas, 0);
  for (const Session& s : after) ++spread_after[s.replica];
  for (int i = 0; i < kReplicas; ++i) EXPECT_GT(spread_after[i], 0) << Spread(after);
  {
    std::vector<TurnResult> results = Turns(Pointers(after));
    for (size_t i = 0; i < after.size(); ++i) ExpectReused(after[i], results[i]);
  }
  // Sessions opened during the outage whose ids hash to the returning replica are sent there
  // now and are NOT_FOUND (they stay, stranded, where they were opened); the rest go on.
  int stranded = 0;
  {
    std::vector<TurnResult> results = Turns(Pointers(during));
    for (size_t i = 0; i < during.size(); ++i) {
      if (results[i].status.error_code() == grpc::NOT_FOUND) {
        ++stranded;
        EXPECT_EQ(Locate(during[i].id), during[i].replica) << during[i].id;
      } else {
        ExpectReused(during[i], results[i]);
      }
    }
  }
  std::printf(
      "router: replica %d back: %zu old sessions went on, 60 new ones spread %s; of 30 "
      "opened during the outage %d now hash to it (NOT_FOUND), %d went on\n",
      kKilled, survivors.size(), Spread(after).c_str(), stranded, 30 - stranded);
  EXPECT_TRUE(router_->Running()) << router_->output();
}

// The check passes only SERVING: a gRPC health service of this process, switched between
// SERVING and NOT_SERVING, takes its server in and out of the router.
TEST_F(RouterE2eTest, HealthCheckPassesOnlyServing) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  // Nothing but health: a generic service answers everything else (UNIMPLEMENTED) and gives the
  // server the polled queue it needs.
  grpc::CallbackGenericService nothing_else;
  builder.RegisterCallbackGenericService(&nothing_else);
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  ASSERT_NE(health, nullptr);
  health->SetServingStatus("multipole.v1.DecodeService", true);
  ASSERT_NO_FATAL_FAILURE(StartRouter({port}));
  health->SetServingStatus("multipole.v1.DecodeService", false);
  EXPECT_TRUE(WaitForState(0, "DOWN", absl::Seconds(20)));
  // The reason is the answer (a layer-7 mismatch at the SERVING expectation), not the network.
  EXPECT_THAT(router_->output(), HasSubstr("did not match content (binary)"));
  health->SetServingStatus("multipole.v1.DecodeService", true);
  EXPECT_TRUE(WaitForState(0, "UP", absl::Seconds(20)));
  // Another service's status does not count: only DecodeService's is asked for.
  health->SetServingStatus("", false);
  absl::SleepFor(absl::Seconds(3));
  EXPECT_EQ(State(0), "UP");
  server->Shutdown(std::chrono::system_clock::now());
  EXPECT_TRUE(WaitForState(0, "DOWN", absl::Seconds(20)));
}

// SIGTERM to a replica with streams running through the router: they all finish, the replica
// exits 0, and its sessions are then gone (a code a client acts on), the others' are not.
TEST_F(RouterE2eTest, ADrainedReplicaFinishesItsStreamsThroughTheRouter) {
  for (int i = 0; i < 2; ++i) ASSERT_TRUE(StartReplica(i, 0, {"--drain_timeout=60s"}));
  ASSERT_NO_FATAL_FAILURE(StartRouter(ports_));
  std::vector<Session> sessions = OpenSessions(40, "drain");
  ASSERT_EQ(sessions.size(), 40u);
  std::vector<Session*> on_zero;
  for (Session& s : sessions) {
    if (s.replica == 0) on_zero.push_back(&s);
  }
  ASSERT_FALSE(on_zero.empty());
  // Long streams on replica 0's sessions.
  std::vector<std::thread> streams;
  std::vector<grpc::Status> statuses(on_zero.size());
  std::vector<int64_t> generated(on_zero.size(), 0);
  std::atomic<int> started{0};
  for (size_t i = 0; i < on_zero.size(); ++i) {
    streams.emplace_back([&, i] {
      grpc::ClientContext context;
      Prepare(context, on_zero[i]->id);
      v1::GenerateRequest request;
      request.set_session_id(on_zero[i]->id);
      request.mutable_token_ids()->add_ids(1);
      request.mutable_sampling()->set_max_new_tokens(400);
      request.mutable_sampling()->set_ignore_eos(true);
      auto reader = router_stub_->Generate(&context, request);
      v1::GenerateResponse message;
      bool first = true;
      while (reader->Read(&message)) {
        if (first && message.tokens_size() > 0) {
          first = false;
          ++started;
        }
        if (message.has_result()) generated[i] = message.result().usage().generated_tokens();
      }
      statuses[i] = reader->Finish();
      if (first) ++started;  // ended before a token: counted, so the wait below ends
    });
  }
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (started < static_cast<int>(on_zero.size()) && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  replicas_[0]->Signal(SIGTERM);
  for (std::thread& t : streams) t.join();
  for (size_t i = 0; i < on_zero.size(); ++i) {
    EXPECT_TRUE(statuses[i].ok()) << statuses[i].error_message();
    EXPECT_EQ(generated[i], 400);
  }
  EXPECT_EQ(replicas_[0]->Wait(absl::Seconds(60)), 0) << replicas_[0]->output();
  ASSERT_TRUE(WaitForState(0, "DOWN", absl::Seconds(30)));
  std::vector<TurnResult> results = Turns(Pointers(sessions));
  for (size_t i = 0; i < sessions.size(); ++i) {
    if (sessions[i].replica == 0) {
      EXPECT_EQ(results[i].status.error_code(), grpc::NOT_FOUND) << sessions[i].id;
    } else {
      ExpectReused(sessions[i], results[i]);
    }
  }
}

}  // namespace
}  // namespace mpa::server
