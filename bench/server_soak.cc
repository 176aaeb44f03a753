// server_soak: a hostile-client soak of mpa_server (a benchmark program, not a CI test; see
// bench/NOTES.md). For --duration it keeps --streams generations streaming at once and checks
// every token id of every stream against the same request run alone on the idle server before
// the load (greedy or seeded sampling, so the ids are deterministic); meanwhile it sends cancel
// storms (client cancels, CancelGeneration, CloseSession and short deadlines mid-stream: what
// arrived must be a prefix of the reference), starts client processes and SIGKILLs them
// mid-stream, and samples the server's RSS, threads and open files. After the load it waits for
// the KV cache to return to its full capacity, runs every request alone again, and ends with a
// SIGTERM drain: streams in flight complete with the right ids, new work gets UNAVAILABLE, the
// server exits 0. It prints streams, tokens, mismatches, errors by gRPC code and RSS over time,
// writes them to --out, and exits 1 if any check failed.
//
//   build/bin/server_soak --server_binary=build/bin/mpa_server --duration=10m --out=soak.md
//   build/bin/server_soak --server=127.0.0.1:50051 --server_pid=1234   (a server started by hand)
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "multipole/v1/decode.grpc.pb.h"
#include "tests/server/health_check.h"

ABSL_FLAG(std::string, server_binary, "",
          "mpa_server to start (on a free loopback port) and drain at the end; empty: use "
          "--server");
ABSL_FLAG(std::string, model, "../shared/models/stories260K", "--model of the started server");
ABSL_FLAG(std::vector<std::string>, server_flags, {},
          "More flags for the started server (comma-separated)");
ABSL_FLAG(std::string, server_log, "",
          "Where the started server's output goes (default: a temp file)");
ABSL_FLAG(std::string, server, "", "Address of a running server (instead of --server_binary)");
ABSL_FLAG(int, server_pid, 0,
          "Process id of the --server, for its RSS and the SIGTERM drain (0: neither)");
ABSL_FLAG(absl::Duration, duration, absl::Minutes(10), "How long the load runs");
ABSL_FLAG(int, streams, 64, "Generations streaming at once during the load");
ABSL_FLAG(int, channels, 8, "gRPC connections the load's streams are spread over");
ABSL_FLAG(int, scenarios, 48, "Distinct requests (each checked against itself run alone)");
ABSL_FLAG(uint64_t, seed, 1, "Seed of the requests and of every random choice");
ABSL_FLAG(absl::Duration, storm_every, absl::Seconds(20), "Time between cancel storms");
ABSL_FLAG(int, storm_streams, 32, "Streams started and cancelled in one storm");
ABSL_FLAG(absl::Duration, kill_every, absl::Seconds(15), "Time between rounds of killed clients");
ABSL_FLAG(int, kill_clients, 4, "Client processes killed per round");
ABSL_FLAG(absl::Duration, sample_every, absl::Seconds(15), "Time between RSS samples");
ABSL_FLAG(int, drain_streams, 16, "Streams in flight when SIGTERM is sent");
ABSL_FLAG(double, rss_growth_limit, 0.05,
          "Largest growth of the RSS from the second quarter of the load to the last one, as a "
          "fraction (4 MiB at least) that still counts as flat");
ABSL_FLAG(std::string, out, "", "Also write the report (Markdown) to this file");
// Internal: the client process that gets killed.
ABSL_FLAG(std::string, killed_client, "", "(internal) stream from this address until killed");
ABSL_FLAG(bool, killed_client_session, false, "(internal) on an explicit session");
ABSL_FLAG(int, killed_client_vocab, 0, "(internal) the model's vocabulary size");
ABSL_FLAG(int, killed_client_tokens, 0, "(internal) max_new_tokens of its request");

extern char** environ;

namespace {

namespace v1 = ::multipole::v1;
using Stub = v1::DecodeService::Stub;
using Clock = std::chrono::system_clock;

std::string CodeName(grpc::StatusCode code) {
  static const char* const kNames[] = {"OK",
                                       "CANCELLED",
                                       "UNKNOWN",
                                       "INVALID_ARGUMENT",
                                       "DEADLINE_EXCEEDED",
                                       "NOT_FOUND",
                                       "ALREADY_EXISTS",
                                       "PERMISSION_DENIED",
                                       "RESOURCE_EXHAUSTED",
                                       "FAILED_PRECONDITION",
                                       "ABORTED",
                                       "OUT_OF_RANGE",
                                       "UNIMPLEMENTED",
                                       "INTERNAL",
                                       "UNAVAILABLE",
                                       "DATA_LOSS",
                                       "UNAUTHENTICATED"};
  const int i = static_cast<int>(code);
  return i >= 0 && i < 17 ? kNames[i] : absl::StrCat("CODE_", i);
}

// ---------------------------------------------------------------------------------------------
// Requests and their references.

// One conversation: a one-shot request, or turns on one explicit session.
struct Scenario {
  std::string label;
  bool session = false;
  std::vector<v1::GenerateRequest> turns;  // session_id filled in when run
  // Run alone on the idle server: each turn's ids and its final result.
  std::vector<std::vector<int32_t>> ids;
  std::vector<v1::GenerateResult> results;
};

struct StreamOutcome {
  std::vector<int32_t> ids;
  std::optional<v1::GenerateResult> result;
  grpc::Status status;
};

// Streams `request` to its end. on_first_token runs once, when the first token arrives.
StreamOutcome Stream(Stub& stub, grpc::ClientContext& context, const v1::GenerateRequest& request,
                     const std::function<void()>& on_first_token = {}) {
  StreamOutcome out;
  auto reader = stub.Generate(&context, request);
  v1::GenerateResponse message;
  bool first = true;
  while (reader->Read(&message)) {
    for (const auto& t : message.tokens()) out.ids.push_back(t.id());
    if (first && !out.ids.empty()) {
      first = false;
      if (on_first_token) on_first_token();
    }
    if (message.has_result()) out.result = message.result();
  }
  out.status = reader->Finish();
  return out;
}

void SetDeadline(grpc::ClientContext& context, absl::Duration d) {
  context.set_deadline(Clock::now() + absl::ToChronoMilliseconds(d));
}

// Where `got` first differs from `want` ("" if equal), for the report.
std::string Difference(const std::vector<int32_t>& got, const std::vector<int32_t>& want) {
  size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  if (i == got.size() && i == want.size()) return "";
  return absl::StrFormat("first difference at token %d of %d (want %d): got %s, want %s", i,
                         want.size(), got.size(), i < got.size() ? absl::StrCat(got[i]) : "end",
                         i < want.size() ? absl::StrCat(want[i]) : "end");
}

bool IsPrefix(const std::vector<int32_t>& got, const std::vector<int32_t>& want) {
  return got.size() <= want.size() && std::equal(got.begin(), got.end(), want.begin());
}

std::vector<int32_t> RandomPrompt(std::mt19937_64& rng, int vocab, int n) {
  std::uniform_int_distribution<int32_t> id(3, vocab - 1);
  std::vector<int32_t> ids = {1};  // BOS
  while (static_cast<int>(ids.size()) < n) ids.push_back(id(rng));
  return ids;
}

// A request of `new_tokens` tokens after `prompt` (or after `text` if not empty), greedy or
// seeded sampling, in one of the attention modes.
v1::GenerateRequest MakeRequest(std::mt19937_64& rng, const std::vector<int32_t>& prompt,
                                const std::string& text, int new_tokens, bool sampled, int vocab) {
  v1::GenerateRequest r;
  if (text.empty()) {
    for (int32_t id : prompt) r.mutable_token_ids()->add_ids(id);
  } else {
    r.set_text(text);
  }
  v1::SamplingParams* s = r.mutable_sampling();
  s->set_max_new_tokens(new_tokens);
  if (sampled) {
    s->set_temperature(std::uniform_real_distribution<float>(0.5f, 1.2f)(rng));
    if (rng() % 2) s->set_top_p(0.9f);
    if (rng() % 2) s->set_top_k(40);
    s->set_seed(rng());
  }
  // Half run past EOS; a few stop at a token id (the stop path, still deterministic).
  s->set_ignore_eos(rng() % 2 == 0);
  if (rng() % 8 == 0) s->add_stop_token_ids(std::uniform_int_distribution<int>(3, vocab - 1)(rng));
  switch (rng() % 8) {
    case 0:
      r.mutable_attention()->set_mode(v1::ATTENTION_MODE_MULTIPOLE);
      r.mutable_attention()->set_token_budget(64);
      break;
    case 1:
      r.mutable_attention()->set_mode(v1::ATTENTION_MODE_EXACT_ONLY);
      r.mutable_attention()->set_token_budget(64);
      break;
    case 2:
      r.mutable_attention()->set_mode(v1::ATTENTION_MODE_QUEST);
      r.mutable_attention()->set_token_budget(64);
      break;
    default:
      break;  // the server's default (dense)
  }
  return r;
}

std::vector<Scenario> MakeScenarios(const v1::GetModelInfoResponse& info, int n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  const int vocab = info.vocab_size();
  const int context = info.max_context_tokens();
  static const char* const kTexts[] = {
      "Once upon a time", "One day, a little girl named Lily", "The cat sat on the mat and",
      "Tom and his friend went to the park.", "Once upon a time, there was a big dog"};
  std::vector<Scenario> out;
  for (int i = 0; i < n; ++i) {
    Scenario s;
    const bool sampled = rng() % 2 == 1;
    const int kind = i % 4;  // 0, 1: token ids; 2: two turns on a session; 3: text
    if (kind == 2) {
      s.session = true;
      const int p1 = std::uniform_int_distribution<int>(1, 64)(rng);
      const int n1 = std::uniform_int_distribution<int>(8, 128)(rng);
      const int p2 = std::uniform_int_distribution<int>(1, 32)(rng);
      const int n2 =
          std::uniform_int_distribution<int>(8, std::max(8, context - p1 - n1 - p2 - 8))(rng);
      s.turns.push_back(MakeRequest(rng, RandomPrompt(rng, vocab, p1), "", n1, sampled, vocab));
      std::vector<int32_t> second = RandomPrompt(rng, vocab, p2 + 1);
      second.erase(second.begin());  // no BOS inside a conversation
      v1::GenerateRequest turn2 = MakeRequest(rng, second, "", std::min(n2, 200), !sampled, vocab);
      // Both turns attend the same way (the first turn's mode).
      *turn2.mutable_attention() = s.turns[0].attention();
      s.turns.push_back(turn2);
      s.label = absl::StrCat("session ", p1, "+", n1, " then ", p2, "+", std::min(n2, 200));
    } else if (kind == 3 && info.has_tokenizer()) {
      const std::string text = kTexts[rng() % 5];
      const int n1 = std::uniform_int_distribution<int>(16, 300)(rng);
      s.turns.push_back(MakeRequest(rng, {}, text, n1, sampled, vocab));
      s.label = absl::StrCat("text \"", text, "\"+", n1);
    } else {
      const int p = std::uniform_int_distribution<int>(1, 96)(rng);
      const int n1 = std::uniform_int_distribution<int>(16, std::min(320, context - p - 1))(rng);
      s.turns.push_back(MakeRequest(rng, RandomPrompt(rng, vocab, p), "", n1, sampled, vocab));
      s.label = absl::StrCat("ids ", p, "+", n1);
    }
    const v1::GenerateRequest& first = s.turns[0];
    absl::StrAppend(&s.label, sampled ? " sampled" : " greedy",
                    first.has_attention()
                        ? absl::StrCat(" ", v1::AttentionMode_Name(first.attention().mode()))
                        : "");
    out.push_back(std::move(s));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Counters and the report.

struct Report {
  std::mutex mu;
  std::map<std::string, int64_t> counts;      // named counters, in the report's order
  std::map<std::string, int64_t> unexpected;  // "RPC CODE" -> count
  std::map<std::string, int64_t> expected;    // "phase CODE" -> count
  std::vector<std::string> examples;          // first mismatches and errors, for the report
  std::atomic<int64_t> tokens{0};

  void Add(const std::string& name, int64_t n = 1) {
    std::lock_guard<std::mutex> lock(mu);
    counts[name] += n;
  }
  int64_t Get(const std::string& name) {
    std::lock_guard<std::mutex> lock(mu);
    auto it = counts.find(name);
    return it == counts.end() ? 0 : it->second;
  }
  void Example(std::string what) {
    std::lock_guard<std::mutex> lock(mu);
    if (examples.size() < 20) examples.push_back(std::move(what));
    std::fprintf(stderr, "server_soak: %s\n", examples.back().c_str());
  }
  void Unexpected(const std::string& rpc, const grpc::Status& status, const std::string& what) {
    {
      std::lock_guard<std::mutex> lock(mu);
      unexpected[absl::StrCat(rpc, " ", CodeName(status.error_code()))]++;
    }
    Example(absl::StrCat(what, ": ", rpc, " ", CodeName(status.error_code()), ": ",
                         status.error_message()));
  }
  void Expected(const std::string& phase, grpc::StatusCode code) {
    std::lock_guard<std::mutex> lock(mu);
    expected[absl::StrCat(phase, " ", CodeName(code))]++;
  }
  void Mismatch(const std::string& phase, const std::string& what) {
    Add(absl::StrCat("mismatches (", phase, ")"));
    Example(absl::StrCat("MISMATCH (", phase, "): ", what));
  }
};

// Compares a completed turn with its reference (ids, finish reason, usage).
void CheckComplete(Report& report, const std::string& phase, const Scenario& s, size_t turn,
                   const StreamOutcome& got) {
  const std::vector<int32_t>& want = s.ids[turn];
  const v1::GenerateResult& want_result = s.results[turn];
  std::string diff = Difference(got.ids, want);
  if (diff.empty() && got.result.has_value()) {
    const v1::Usage& a = got.result->usage();
    const v1::Usage& b = want_result.usage();
    if (got.result->finish_reason() != want_result.finish_reason()) {
      diff = absl::StrCat("finish reason ", v1::FinishReason_Name(got.result->finish_reason()),
                          ", alone ", v1::FinishReason_Name(want_result.finish_reason()));
    } else if (a.prompt_tokens() != b.prompt_tokens() || a.cached_tokens() != b.cached_tokens() ||
               a.generated_tokens() != b.generated_tokens()) {
      diff = absl::StrCat("usage ", a.ShortDebugString(), ", alone ", b.ShortDebugString());
    }
  } else if (diff.empty()) {
    diff = "no result message";
  }
  if (!diff.empty()) {
    report.Mismatch(phase, absl::StrCat(s.label, " turn ", turn + 1, ": ", diff));
  }
}

// ---------------------------------------------------------------------------------------------
// Running scenarios.

std::optional<std::string> CreateSession(Stub& stub, Report* report, const std::string& what) {
  grpc::ClientContext context;
  SetDeadline(context, absl::Seconds(30));
  v1::CreateSessionResponse r;
  grpc::Status status = stub.CreateSession(&context, v1::CreateSessionRequest(), &r);
  if (!status.ok()) {
    if (report != nullptr) report->Unexpected("CreateSession", status, what);
    return std::nullopt;
  }
  return r.session_id();
}

grpc::Status CloseSession(Stub& stub, const std::string& id) {
  grpc::ClientContext context;
  SetDeadline(context, absl::Seconds(30));
  v1::CloseSessionRequest request;
  request.set_session_id(id);
  v1::CloseSessionResponse r;
  return stub.CloseSession(&context, request, &r);
}

// Every turn of `s`, each a stream; the outcomes of the turns that ran.
std::vector<StreamOutcome> RunScenario(Stub& stub, const Scenario& s, Report* report,
                                       const std::string& what) {
  std::vector<StreamOutcome> out;
  std::string session;
  if (s.session) {
    std::optional<std::string> id = CreateSession(stub, report, what);
    if (!id) return out;
    session = *id;
  }
  for (const v1::GenerateRequest& turn : s.turns) {
    v1::GenerateRequest request = turn;
    request.set_session_id(session);
    grpc::ClientContext context;
    SetDeadline(context, absl::Minutes(5));
    out.push_back(Stream(stub, context, request));
    if (report != nullptr) report->tokens += out.back().ids.size();
    if (!out.back().status.ok()) break;
  }
  if (s.session) {
    grpc::Status status = CloseSession(stub, session);
    if (!status.ok() && report != nullptr) report->Unexpected("CloseSession", status, what);
  }
  return out;
}

// Runs every scenario alone, one after another; with `check`, compares with the references
// (else records them). False if a stream failed.
bool RunAlone(Stub& stub, std::vector<Scenario>& scenarios, Report& report, bool check,
              const std::string& phase) {
  for (Scenario& s : scenarios) {
    std::vector<StreamOutcome> got = RunScenario(stub, s, &report, phase);
    if (got.size() != s.turns.size() || !got.back().status.ok()) {
      if (!got.empty() && !got.back().status.ok()) {
        report.Unexpected("Generate", got.back().status, absl::StrCat(phase, ": ", s.label));
      }
      return false;
    }
    for (size_t t = 0; t < got.size(); ++t) {
      if (check) {
        CheckComplete(report, phase, s, t, got[t]);
      } else {
        if (!got[t].result.has_value()) return false;
        s.ids.push_back(got[t].ids);
        s.results.push_back(*got[t].result);
      }
    }
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// Processes: the server and the killed clients.

pid_t Spawn(const std::vector<std::string>& argv, int stdout_fd, const std::string& log_path) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  if (!log_path.empty()) {
    posix_spawn_file_actions_addopen(&actions, 1, log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                     0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
  } else {
    posix_spawn_file_actions_adddup2(&actions, stdout_fd, 1);
    posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
  }
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = -1;
  if (posix_spawn(&pid, args[0], &actions, nullptr, args.data(), ::environ) != 0) pid = -1;
  posix_spawn_file_actions_destroy(&actions);
  return pid;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Resident memory (KiB), threads and open descriptors of a process; nullopt once it is gone.
struct ProcessSample {
  double t_s = 0;
  int64_t rss_kib = 0;
  int threads = 0;
  int fds = 0;
  int64_t tokens = 0;  // received by the soak's clients so far
};

std::optional<ProcessSample> SampleProcess(int pid) {
  const std::string status = ReadFile(absl::StrCat("/proc/", pid, "/status"));
  if (status.empty()) return std::nullopt;
  ProcessSample s;
  std::istringstream lines(status);
  std::string line;
  while (std::getline(lines, line)) {
    auto value = [&](const char* key) -> std::optional<int64_t> {
      if (line.rfind(key, 0) != 0) return std::nullopt;
      int64_t v = 0;
      std::istringstream(line.substr(std::strlen(key))) >> v;
      return v;
    };
    if (auto v = value("VmRSS:")) s.rss_kib = *v;
    if (auto v = value("Threads:")) s.threads = static_cast<int>(*v);
  }
  std::error_code error;
  for (auto it = std::filesystem::directory_iterator(absl::StrCat("/proc/", pid, "/fd"), error);
       !error && it != std::filesystem::directory_iterator(); it.increment(error)) {
    ++s.fds;
  }
  return s;
}

// The exit status of a child (-1: still running or not ours; 128+N: killed by signal N).
int WaitChild(pid_t pid, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  do {
    int status = 0;
    const pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (r < 0) return -1;
    absl::SleepFor(absl::Milliseconds(20));
  } while (absl::Now() < deadline);
  return -1;
}

// The client process that gets killed: a long generation, read slowly; prints "streaming" once
// the first token arrived.
int KilledClientMain(const std::string& address, bool with_session, int vocab, int tokens) {
  auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  auto stub = v1::DecodeService::NewStub(channel);
  v1::GenerateRequest request;
  std::mt19937_64 rng(getpid());
  for (int32_t id : RandomPrompt(rng, vocab, 32)) request.mutable_token_ids()->add_ids(id);
  request.mutable_sampling()->set_max_new_tokens(tokens);
  request.mutable_sampling()->set_ignore_eos(true);
  if (with_session) {
    std::optional<std::string> id = CreateSession(*stub, nullptr, "");
    if (!id) return 2;
    request.set_session_id(*id);  // left open: the server evicts it after its TTL
  }
  grpc::ClientContext context;
  Stream(*stub, context, request, [] {
    std::printf("streaming\n");
    std::fflush(stdout);
    absl::SleepFor(absl::Milliseconds(50));  // a slow reader
  });
  return 0;
}

// ---------------------------------------------------------------------------------------------
// The phases.

struct Soak {
  std::string address;
  int server_pid = 0;
  bool own_server = false;
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  std::vector<std::unique_ptr<Stub>> stubs;
  std::vector<Scenario> scenarios;  // single-turn ones are also used by the storms
  std::vector<Scenario> drain_scenarios;
  Report report;
  absl::Time load_start;
  std::atomic<bool> stop{false};
  std::mutex samples_mu;
  std::vector<ProcessSample> samples;
};

void Worker(Soak& soak, int index, uint64_t seed) {
  std::mt19937_64 rng(seed * 1000003 + index);
  Stub& stub = *soak.stubs[index % soak.stubs.size()];
  while (!soak.stop.load()) {
    const Scenario& s = soak.scenarios[rng() % soak.scenarios.size()];
    const std::string what = absl::StrCat("load stream ", index, ": ", s.label);
    std::vector<StreamOutcome> got = RunScenario(stub, s, &soak.report, what);
    for (size_t t = 0; t < got.size(); ++t) {
      soak.report.Add("load streams");
      if (!got[t].status.ok()) {
        soak.report.Unexpected("Generate", got[t].status, what);
        break;
      }
      soak.report.Add("load streams completed");
      CheckComplete(soak.report, "load", s, t, got[t]);
    }
  }
}

// One stream of a cancel storm: a one-turn scenario cancelled by one of four means after a
// random delay; whatever arrived must be a prefix of the reference.
void StormStream(Soak& soak, const Scenario& s, int how, absl::Duration delay) {
  static const char* const kHow[] = {"client cancel", "CancelGeneration", "CloseSession",
                                     "deadline"};
  const std::string what = absl::StrCat("storm (", kHow[how], "): ", s.label);
  Stub& stub = *soak.stubs.back();  // the storm's own connection
  Report& report = soak.report;
  std::string session;
  if (how == 1 || how == 2) {
    std::optional<std::string> id = CreateSession(stub, &report, what);
    if (!id) return;
    session = *id;
  }
  v1::GenerateRequest request = s.turns[0];
  request.set_session_id(session);
  grpc::ClientContext context;
  SetDeadline(context, how == 3 ? delay : absl::Minutes(5));
  std::thread canceller;
  if (how != 3) {
    canceller = std::thread([&] {
      absl::SleepFor(delay);
      if (how == 0) {
        context.TryCancel();
        return;
      }
      grpc::ClientContext c;
      SetDeadline(c, absl::Seconds(30));
      grpc::Status status;
      if (how == 1) {
        v1::CancelGenerationRequest r;
        r.set_session_id(session);
        v1::CancelGenerationResponse response;
        status = stub.CancelGeneration(&c, r, &response);
      } else {
        v1::CloseSessionRequest r;
        r.set_session_id(session);
        v1::CloseSessionResponse response;
        status = stub.CloseSession(&c, r, &response);
      }
      if (!status.ok())
        report.Unexpected(how == 1 ? "CancelGeneration" : "CloseSession", status, what);
    });
  }
  StreamOutcome got = Stream(stub, context, request);
  if (canceller.joinable()) canceller.join();
  report.tokens += got.ids.size();
  report.Add("storm streams");
  const grpc::StatusCode code = got.status.error_code();
  const bool cancelled_by_client =
      (how == 0 && code == grpc::CANCELLED) || (how == 3 && code == grpc::DEADLINE_EXCEEDED);
  if (cancelled_by_client) {
    report.Expected("storm", code);
  } else if (!got.status.ok()) {
    report.Unexpected("Generate", got.status, what);
    return;
  }
  if (got.status.ok() && got.result.has_value() &&
      got.result->finish_reason() != v1::FINISH_REASON_CANCELLED) {
    report.Add("storm streams finished before their cancel");
    CheckComplete(report, "storm", s, 0, got);
  } else {
    if (got.status.ok()) report.Add("storm streams ended CANCELLED");
    if (!IsPrefix(got.ids, s.ids[0])) {
      report.Mismatch("storm",
                      absl::StrCat(what, ": cancelled after ", got.ids.size(),
                                   " tokens, not a prefix: ", Difference(got.ids, s.ids[0])));
    }
  }
  if (how == 1) {
    grpc::Status status = CloseSession(stub, session);
    if (!status.ok()) report.Unexpected("CloseSession", status, what);
  }
}

void Storms(Soak& soak, uint64_t seed) {
  std::mt19937_64 rng(seed * 7919 + 17);
  std::vector<const Scenario*> single;
  for (const Scenario& s : soak.scenarios) {
    if (!s.session) single.push_back(&s);
  }
  const absl::Duration every = absl::GetFlag(FLAGS_storm_every);
  absl::Time next = absl::Now() + every / 2;
  while (!soak.stop.load()) {
    if (absl::Now() < next) {
      absl::SleepFor(absl::Milliseconds(100));
      continue;
    }
    next += every;
    soak.report.Add("cancel storms");
    std::vector<std::thread> threads;
    for (int i = 0; i < absl::GetFlag(FLAGS_storm_streams); ++i) {
      const Scenario* s = single[rng() % single.size()];
      const int how = static_cast<int>(rng() % 4);
      const absl::Duration delay = absl::Milliseconds(rng() % 400);
      threads.emplace_back([&soak, s, how, delay] { StormStream(soak, *s, how, delay); });
    }
    for (auto& t : threads) t.join();
  }
}

void KilledClients(Soak& soak, const v1::GetModelInfoResponse& info, uint64_t seed) {
  std::mt19937_64 rng(seed * 104729 + 3);
  std::error_code error;
  const std::string self = std::filesystem::read_symlink("/proc/self/exe", error).string();
  const absl::Duration every = absl::GetFlag(FLAGS_kill_every);
  absl::Time next = absl::Now() + every / 3;
  while (!soak.stop.load()) {
    if (absl::Now() < next) {
      absl::SleepFor(absl::Milliseconds(100));
      continue;
    }
    next += every;
    for (int i = 0; i < absl::GetFlag(FLAGS_kill_clients); ++i) {
      int out[2];
      if (pipe2(out, O_CLOEXEC) != 0) continue;
      const bool with_session = rng() % 2 == 0;
      const bool before_first_token = rng() % 4 == 0;
      const pid_t pid =
          Spawn({self, absl::StrCat("--killed_client=", soak.address),
                 absl::StrCat("--killed_client_session=", with_session ? "true" : "false"),
                 absl::StrCat("--killed_client_vocab=", info.vocab_size()),
                 absl::StrCat("--killed_client_tokens=", info.max_context_tokens() - 40)},
                out[1], "");
      close(out[1]);
      if (pid < 0) {
        close(out[0]);
        soak.report.Example("could not start a client process");
        continue;
      }
      bool streaming = false;
      if (before_first_token) {
        absl::SleepFor(absl::Milliseconds(rng() % 50));
      } else {
        // Until it prints "streaming" (or 30 s), then a random time into the stream.
        const absl::Time deadline = absl::Now() + absl::Seconds(30);
        std::string text;
        while (!streaming && absl::Now() < deadline) {
          pollfd p{out[0], POLLIN, 0};
          if (poll(&p, 1, 100) > 0) {
            char buf[64];
            const ssize_t n = read(out[0], buf, sizeof(buf));
            if (n <= 0) break;
            text.append(buf, n);
            streaming = text.find("streaming") != std::string::npos;
          }
        }
        absl::SleepFor(absl::Milliseconds(rng() % 300));
      }
      kill(pid, SIGKILL);
      const int status = WaitChild(pid, absl::Seconds(10));
      close(out[0]);
      if (status == 128 + SIGKILL) {
        soak.report.Add(streaming ? "clients killed mid-stream"
                                  : "clients killed before streaming");
      } else {
        soak.report.Add("client processes that ended before their kill");
      }
    }
  }
}

void Sampler(Soak& soak) {
  if (soak.server_pid <= 0) return;
  const absl::Duration every = absl::GetFlag(FLAGS_sample_every);
  absl::Time next = absl::Now();
  while (!soak.stop.load()) {
    if (absl::Now() < next) {
      absl::SleepFor(absl::Milliseconds(100));
      continue;
    }
    next += every;
    std::optional<ProcessSample> s = SampleProcess(soak.server_pid);
    if (!s) return;
    s->t_s = absl::ToDoubleSeconds(absl::Now() - soak.load_start);
    s->tokens = soak.report.tokens.load();
    std::printf("server_soak: t=%5.0fs rss %7.1f MiB, %3d threads, %3d fds, %lld tokens\n", s->t_s,
                s->rss_kib / 1024.0, s->threads, s->fds, static_cast<long long>(s->tokens));
    std::fflush(stdout);
    std::lock_guard<std::mutex> lock(soak.samples_mu);
    soak.samples.push_back(*s);
  }
}

absl::StatusOr<v1::GetModelInfoResponse> ModelInfo(Stub& stub) {
  grpc::ClientContext context;
  SetDeadline(context, absl::Seconds(30));
  v1::GetModelInfoResponse info;
  grpc::Status status = stub.GetModelInfo(&context, v1::GetModelInfoRequest(), &info);
  if (!status.ok()) {
    return absl::UnavailableError(absl::StrCat("GetModelInfo: ", CodeName(status.error_code()),
                                               ": ", status.error_message()));
  }
  return info;
}

// After the load: the KV cache must return to its full capacity (sessions of killed clients go
// when their TTL passes). Returns the seconds it took, or -1.
double WaitForFreeKv(Soak& soak, absl::Duration timeout) {
  const absl::Time start = absl::Now();
  int64_t free = -1, capacity = 0;
  while (absl::Now() - start < timeout) {
    absl::StatusOr<v1::GetModelInfoResponse> info = ModelInfo(*soak.stubs[0]);
    if (info.ok()) {
      free = info->kv_free_tokens();
      capacity = info->kv_capacity_tokens();
      if (free == capacity) return absl::ToDoubleSeconds(absl::Now() - start);
    }
    absl::SleepFor(absl::Milliseconds(500));
  }
  soak.report.Example(absl::StrCat("KV cache did not return to capacity: ", free, " of ", capacity,
                                   " tokens free after ", absl::FormatDuration(timeout)));
  return -1;
}

struct DrainResult {
  bool ran = false;
  int streams_ok = 0;
  int unfinished_at_refusal = 0;  // drain streams still running when new work was refused
  grpc::StatusCode generate_refusal = grpc::OK;
  grpc::StatusCode session_refusal = grpc::OK;
  int health_during_drain = 0;
  int exit_status = -1;  // -1: unknown (not our child) or did not exit
  bool exited = false;
  double exit_seconds = 0;
};

DrainResult Drain(Soak& soak) {
  DrainResult d;
  if (soak.server_pid <= 0) return d;
  d.ran = true;
  Stub& stub = *soak.stubs[0];
  const int n = static_cast<int>(soak.drain_scenarios.size());
  std::vector<StreamOutcome> got(n);
  std::atomic<int> started{0}, finished{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      grpc::ClientContext context;
      SetDeadline(context, absl::Minutes(5));
      got[i] = Stream(*soak.stubs[i % soak.stubs.size()], context, soak.drain_scenarios[i].turns[0],
                      [&] { ++started; });
      ++finished;
    });
  }
  const absl::Time wait_until = absl::Now() + absl::Seconds(60);
  while (started.load() < n && absl::Now() < wait_until) absl::SleepFor(absl::Milliseconds(1));
  kill(soak.server_pid, SIGTERM);
  const absl::Time signalled = absl::Now();
  int health = 1;
  while (absl::Now() - signalled < absl::Seconds(10) &&
         (health = mpa::server::testing::HealthStatus(soak.channels[0])) == 1) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  d.health_during_drain = health;
  {
    grpc::ClientContext context;
    SetDeadline(context, absl::Seconds(30));
    v1::GenerateRequest r = soak.drain_scenarios[0].turns[0];
    d.generate_refusal = Stream(stub, context, r).status.error_code();
  }
  {
    grpc::ClientContext context;
    SetDeadline(context, absl::Seconds(30));
    v1::CreateSessionResponse r;
    d.session_refusal = stub.CreateSession(&context, v1::CreateSessionRequest(), &r).error_code();
  }
  soak.report.Expected("drain refusal", d.generate_refusal);
  soak.report.Expected("drain refusal", d.session_refusal);
  d.unfinished_at_refusal = n - finished.load();
  for (auto& t : threads) t.join();
  for (int i = 0; i < n; ++i) {
    soak.report.tokens += got[i].ids.size();
    soak.report.Add("drain streams");
    if (!got[i].status.ok()) {
      soak.report.Unexpected("Generate", got[i].status, "drain stream");
      continue;
    }
    const size_t before = soak.report.Get("mismatches (drain)");
    CheckComplete(soak.report, "drain", soak.drain_scenarios[i], 0, got[i]);
    if (soak.report.Get("mismatches (drain)") == static_cast<int64_t>(before)) ++d.streams_ok;
  }
  // The server's own exit status where it is our child; else until its process is gone.
  const absl::Duration exit_timeout = absl::Seconds(120);
  if (soak.own_server) {
    d.exit_status = WaitChild(soak.server_pid, exit_timeout);
    d.exited = d.exit_status >= 0;
  } else {
    while (absl::Now() - signalled < exit_timeout && kill(soak.server_pid, 0) == 0) {
      absl::SleepFor(absl::Milliseconds(20));
    }
    d.exited = kill(soak.server_pid, 0) != 0;
  }
  d.exit_seconds = absl::ToDoubleSeconds(absl::Now() - signalled);
  return d;
}

// Flatness: the largest RSS of the last quarter of the load against the largest of its second
// quarter (the first quarter is warm-up: allocator arenas and gRPC's buffers settle).
struct RssVerdict {
  bool flat = false;
  int64_t second_quarter_max = 0, last_quarter_max = 0, first = 0;
  double slope_kib_per_min = 0;  // least squares over the last three quarters
};

RssVerdict JudgeRss(const std::vector<ProcessSample>& samples, double load_s, double limit) {
  RssVerdict v;
  if (samples.size() < 4) return v;
  v.first = samples.front().rss_kib;
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  int n = 0;
  for (const ProcessSample& s : samples) {
    if (s.t_s > load_s) break;
    const double q = s.t_s / load_s;
    if (q >= 0.25 && q < 0.5) v.second_quarter_max = std::max(v.second_quarter_max, s.rss_kib);
    if (q >= 0.75) v.last_quarter_max = std::max(v.last_quarter_max, s.rss_kib);
    if (q >= 0.25) {
      const double x = s.t_s / 60, y = static_cast<double>(s.rss_kib);
      sx += x, sy += y, sxx += x * x, sxy += x * y, ++n;
    }
  }
  if (n >= 2 && n * sxx - sx * sx > 0)
    v.slope_kib_per_min = (n * sxy - sx * sy) / (n * sxx - sx * sx);
  const double allowed = std::max(4096.0, limit * static_cast<double>(v.second_quarter_max));
  v.flat = v.second_quarter_max > 0 && v.last_quarter_max > 0 &&
           v.last_quarter_max <= v.second_quarter_max + allowed;
  return v;
}

int SoakMain() {
  Soak soak;
  const uint64_t seed = absl::GetFlag(FLAGS_seed);
  const absl::Duration duration = absl::GetFlag(FLAGS_duration);
  std::string server_log;
  std::vector<std::string> server_argv;
  if (!absl::GetFlag(FLAGS_server_binary).empty()) {
    server_log = absl::GetFlag(FLAGS_server_log);
    if (server_log.empty()) {
      char path[] = "/tmp/server_soak_server_XXXXXX";
      const int fd = mkstemp(path);
      if (fd >= 0) close(fd);
      server_log = path;
    }
    // A short TTL, so sessions left by killed clients are evicted before the end-of-load check.
    server_argv = {absl::GetFlag(FLAGS_server_binary),
                   absl::StrCat("--model=", absl::GetFlag(FLAGS_model)), "--address=127.0.0.1:0",
                   "--metrics_address=", "--threads=1",
                   // Plain fp32 loops: a stream's tokens then do not depend on its batch (BLAS
                   // rounds differently at different batch sizes, which flips rare near-ties).
                   "--reference", "--max_sessions=256", "--session_ttl=20s", "--drain_timeout=60s"};
    for (const std::string& f : absl::GetFlag(FLAGS_server_flags)) server_argv.push_back(f);
    const pid_t pid = Spawn(server_argv, -1, server_log);
    if (pid < 0) {
      std::fprintf(stderr, "server_soak: cannot start %s\n", server_argv[0].c_str());
      return 1;
    }
    soak.server_pid = pid;
    soak.own_server = true;
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    while (soak.address.empty() && absl::Now() < deadline) {
      const std::string log = ReadFile(server_log);
      const size_t at = log.find("listening on ");
      if (at != std::string::npos && log.find('\n', at) != std::string::npos) {
        soak.address = log.substr(at + 13, log.find_first_of(" \n", at + 13) - at - 13);
      } else if (WaitChild(pid, absl::ZeroDuration()) >= 0) {
        break;
      } else {
        absl::SleepFor(absl::Milliseconds(50));
      }
    }
    if (soak.address.empty()) {
      std::fprintf(stderr, "server_soak: the server did not start:\n%s",
                   ReadFile(server_log).c_str());
      kill(pid, SIGKILL);
      return 1;
    }
  } else {
    soak.address = absl::GetFlag(FLAGS_server);
    soak.server_pid = absl::GetFlag(FLAGS_server_pid);
    if (soak.address.empty()) {
      std::fprintf(stderr, "server_soak: give --server_binary, or --server (and --server_pid)\n");
      return 2;
    }
  }
  // One more connection than --channels: the storms' own.
  for (int i = 0; i <= std::max(1, absl::GetFlag(FLAGS_channels)); ++i) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // a connection of its own
    soak.channels.push_back(
        grpc::CreateCustomChannel(soak.address, grpc::InsecureChannelCredentials(), args));
    soak.stubs.push_back(v1::DecodeService::NewStub(soak.channels.back()));
  }
  absl::StatusOr<v1::GetModelInfoResponse> info = ModelInfo(*soak.stubs[0]);
  if (!info.ok()) {
    std::fprintf(stderr, "server_soak: %s\n", std::string(info.status().message()).c_str());
    if (soak.own_server) kill(soak.server_pid, SIGKILL);
    return 1;
  }
  std::printf("server_soak: %s at %s (vocab %d, context %d, KV %lld tokens)\n",
              info->model_name().c_str(), soak.address.c_str(), info->vocab_size(),
              info->max_context_tokens(), static_cast<long long>(info->kv_capacity_tokens()));

  // References: every request alone, twice (the second run checks that alone is repeatable).
  soak.scenarios = MakeScenarios(*info, absl::GetFlag(FLAGS_scenarios), seed);
  {
    std::mt19937_64 rng(seed + 99);
    for (int i = 0; i < absl::GetFlag(FLAGS_drain_streams); ++i) {
      Scenario s;
      const int p = 8 + static_cast<int>(rng() % 24);
      const int n = info->max_context_tokens() - p - 8;
      v1::GenerateRequest r = MakeRequest(rng, RandomPrompt(rng, info->vocab_size(), p), "", n,
                                          i % 2 == 1, info->vocab_size());
      r.mutable_sampling()->set_ignore_eos(true);
      r.mutable_sampling()->clear_stop_token_ids();
      s.turns.push_back(r);
      s.label = absl::StrCat("drain ids ", p, "+", n);
      soak.drain_scenarios.push_back(std::move(s));
    }
  }
  const absl::Time ref_start = absl::Now();
  if (!RunAlone(*soak.stubs[0], soak.scenarios, soak.report, false, "reference") ||
      !RunAlone(*soak.stubs[0], soak.drain_scenarios, soak.report, false, "reference") ||
      !RunAlone(*soak.stubs[0], soak.scenarios, soak.report, true, "alone twice")) {
    std::fprintf(stderr, "server_soak: the reference runs failed\n");
    if (soak.own_server) kill(soak.server_pid, SIGKILL);
    return 1;
  }
  int64_t reference_tokens = 0;
  for (const Scenario& s : soak.scenarios) {
    for (const auto& ids : s.ids) reference_tokens += ids.size();
  }
  std::printf("server_soak: %zu requests run alone twice (%lld tokens each time) in %.1f s\n",
              soak.scenarios.size(), static_cast<long long>(reference_tokens),
              absl::ToDoubleSeconds(absl::Now() - ref_start));
  soak.report.tokens = 0;

  // The load.
  const int streams = absl::GetFlag(FLAGS_streams);
  std::printf("server_soak: %d streams for %s\n", streams, absl::FormatDuration(duration).c_str());
  std::fflush(stdout);
  soak.load_start = absl::Now();
  std::vector<std::thread> threads;
  for (int i = 0; i < streams; ++i) threads.emplace_back([&, i] { Worker(soak, i, seed); });
  threads.emplace_back([&] { Storms(soak, seed); });
  threads.emplace_back([&] { KilledClients(soak, *info, seed); });
  std::thread sampler([&] { Sampler(soak); });
  while (absl::Now() - soak.load_start < duration) absl::SleepFor(absl::Milliseconds(200));
  soak.stop = true;
  for (auto& t : threads) t.join();
  const double load_s = absl::ToDoubleSeconds(absl::Now() - soak.load_start);
  const int64_t load_tokens = soak.report.tokens.load();
  sampler.join();
  if (soak.server_pid > 0) {
    if (std::optional<ProcessSample> s = SampleProcess(soak.server_pid)) {
      s->t_s = load_s;
      s->tokens = load_tokens;
      soak.samples.push_back(*s);
    }
  }

  // After the load: KV back to capacity, every request alone again, then the drain.
  const double kv_seconds = WaitForFreeKv(soak, absl::Seconds(90));
  RunAlone(*soak.stubs[0], soak.scenarios, soak.report, true, "alone after the load");
  std::optional<ProcessSample> after =
      soak.server_pid > 0 ? SampleProcess(soak.server_pid) : std::nullopt;
  const DrainResult drain = Drain(soak);

  // The report.
  Report& r = soak.report;
  const RssVerdict rss = JudgeRss(soak.samples, load_s, absl::GetFlag(FLAGS_rss_growth_limit));
  int64_t mismatches = 0, unexpected = 0;
  for (const auto& [name, n] : r.counts) {
    if (name.rfind("mismatches", 0) == 0) mismatches += n;
  }
  for (const auto& [name, n] : r.unexpected) unexpected += n;
  std::vector<std::string> failures;
  if (mismatches > 0) failures.push_back(absl::StrCat(mismatches, " mismatches"));
  if (unexpected > 0) failures.push_back(absl::StrCat(unexpected, " unexpected errors"));
  if (kv_seconds < 0) failures.push_back("KV cache not back to capacity");
  if (soak.server_pid > 0 && !rss.flat) failures.push_back("RSS not flat");
  if (drain.ran) {
    if (drain.streams_ok != static_cast<int>(soak.drain_scenarios.size())) {
      failures.push_back("drain streams did not all complete");
    }
    if (drain.generate_refusal != grpc::UNAVAILABLE || drain.session_refusal != grpc::UNAVAILABLE) {
      failures.push_back("new work during the drain was not refused with UNAVAILABLE");
    }
    if (drain.unfinished_at_refusal == 0) {
      failures.push_back("every drain stream had ended before new work was tried");
    }
    if (!drain.exited || (soak.own_server && drain.exit_status != 0)) {
      failures.push_back("the server did not exit 0 after SIGTERM");
    }
  }

  std::ostringstream o;
  o << "# server_soak: " << info->model_name() << ", " << streams << " streams for "
    << absl::FormatDuration(duration) << "\n\n";
  if (!server_argv.empty()) o << "Server: `" << absl::StrJoin(server_argv, " ") << "`\n\n";
  o << "Soak: `server_soak --duration=" << absl::FormatDuration(duration)
    << " --streams=" << streams << " --channels=" << absl::GetFlag(FLAGS_channels)
    << " --scenarios=" << soak.scenarios.size() << " --seed=" << seed
    << " --storm_every=" << absl::FormatDuration(absl::GetFlag(FLAGS_storm_every))
    << " --storm_streams=" << absl::GetFlag(FLAGS_storm_streams)
    << " --kill_every=" << absl::FormatDuration(absl::GetFlag(FLAGS_kill_every))
    << " --kill_clients=" << absl::GetFlag(FLAGS_kill_clients)
    << " --drain_streams=" << soak.drain_scenarios.size() << "`\n\n";
  o << "Requests: " << soak.scenarios.size()
    << " (token ids, text, two turns on a session; greedy and seeded sampling; dense, "
       "multipole, exact-only, quest), each run alone twice before the load (identical) as the "
       "reference.\n\n";
  o << "| what | count |\n|---|---:|\n";
  for (const auto& [name, n] : r.counts) o << "| " << name << " | " << n << " |\n";
  if (mismatches == 0) o << "| mismatches | 0 |\n";
  o << "| tokens received during the load | " << load_tokens << " |\n";
  o << absl::StrFormat("| tokens per second during the load | %.0f |\n", load_tokens / load_s);
  o << "\nErrors by gRPC code, unexpected: ";
  if (r.unexpected.empty()) o << "none";
  for (const auto& [name, n] : r.unexpected) o << name << " " << n << "; ";
  o << "\n\nCodes expected by design (client cancels, deadlines, refusals while draining): ";
  for (const auto& [name, n] : r.expected) o << name << " " << n << "; ";
  o << "\n\n";
  if (kv_seconds >= 0) {
    o << absl::StrFormat("KV cache back to its full capacity %.1f s after the load ended.\n\n",
                         kv_seconds);
  } else {
    o << "KV cache NOT back to its full capacity after the load.\n\n";
  }
  if (soak.server_pid > 0) {
    o << "Server RSS over the load (sampled every "
      << absl::FormatDuration(absl::GetFlag(FLAGS_sample_every)) << "):\n\n"
      << "| t (s) | RSS (MiB) | threads | fds | tokens received |\n|---:|---:|---:|---:|---:|\n";
    for (const ProcessSample& s : soak.samples) {
      o << absl::StrFormat("| %.0f | %.1f | %d | %d | %lld |\n", s.t_s, s.rss_kib / 1024.0,
                           s.threads, s.fds, static_cast<long long>(s.tokens));
    }
    if (after) {
      o << absl::StrFormat("| after the KV check and the alone runs | %.1f | %d | %d | |\n",
                           after->rss_kib / 1024.0, after->threads, after->fds);
    }
    o << absl::StrFormat(
        "\nRSS %s: largest of the second quarter %.1f MiB, of the last quarter %.1f MiB "
        "(limit +%.0f%%, 4 MiB at least); least-squares slope over the last three quarters "
        "%+.1f KiB/min.\n\n",
        rss.flat ? "flat" : "NOT flat", rss.second_quarter_max / 1024.0,
        rss.last_quarter_max / 1024.0, 100 * absl::GetFlag(FLAGS_rss_growth_limit),
        rss.slope_kib_per_min);
  }
  if (drain.ran) {
    o << absl::StrFormat(
        "SIGTERM drain: %d of %zu streams in flight completed with the reference ids (%d still "
        "running when new work was tried); health during the drain %s; new Generate %s, "
        "CreateSession %s; server %s %.1f s after the signal.\n\n",
        drain.streams_ok, soak.drain_scenarios.size(), drain.unfinished_at_refusal,
        drain.health_during_drain == 2 ? "NOT_SERVING" : absl::StrCat(drain.health_during_drain),
        CodeName(drain.generate_refusal), CodeName(drain.session_refusal),
        !drain.exited     ? "did NOT exit"
        : soak.own_server ? absl::StrCat("exited with status ", drain.exit_status)
                          : std::string("exited"),
        drain.exit_seconds);
  }
  if (!r.examples.empty()) {
    o << "First problems:\n\n";
    for (const std::string& e : r.examples) o << "- " << e << "\n";
    o << "\n";
  }
  o << "Result: " << (failures.empty() ? "PASS" : "FAIL: " + absl::StrJoin(failures, ", ")) << "\n";
  std::printf("\n%s", o.str().c_str());
  if (!absl::GetFlag(FLAGS_out).empty()) {
    std::ofstream(absl::GetFlag(FLAGS_out)) << o.str();
  }
  if (soak.own_server && !drain.exited) kill(soak.server_pid, SIGKILL);
  if (!server_log.empty() && absl::GetFlag(FLAGS_server_log).empty()) {
    if (failures.empty()) {
      std::remove(server_log.c_str());
    } else {
      std::printf("server_soak: the server's output is in %s\n", server_log.c_str());
    }
  }
  return failures.empty() ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Soak of mpa_server: server_soak --server_binary=build/bin/mpa_server --duration=10m");
  absl::ParseCommandLine(argc, argv);
  if (!absl::GetFlag(FLAGS_killed_client).empty()) {
    return KilledClientMain(
        absl::GetFlag(FLAGS_killed_client), absl::GetFlag(FLAGS_killed_client_session),
        absl::GetFlag(FLAGS_killed_client_vocab), absl::GetFlag(FLAGS_killed_client_tokens));
  }
  signal(SIGPIPE, SIG_IGN);
  return SoakMain();
}
