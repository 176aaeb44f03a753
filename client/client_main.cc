// mpa_client: talks to mpa_server.
//   mpa_client generate --prompt="Once upon a time"   streams one generation to the terminal
//   mpa_client chat                                     multi-turn conversation on one session
//   mpa_client bench --concurrency=8 --duration=10s     load generator with latency percentiles
//   mpa_client health                                   the server's gRPC health status
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <sys/random.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/statusor.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/latency_stats.h"
#include "google/protobuf/util/json_util.h"
#include "multipole/v1/decode.grpc.pb.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(std::string, server, "localhost:50051", "Server address host:port");
ABSL_FLAG(std::string, prompt, "", "generate: input text");
ABSL_FLAG(std::string, prompt_ids, "",
          "generate: input as comma- or space-separated token ids (instead of --prompt)");
ABSL_FLAG(std::string, session, "",
          "generate, chat: continue this session (default: generate runs one-shot, chat opens a "
          "session with a random id and closes it at the end)");
ABSL_FLAG(int, max_new_tokens, -1, "Tokens to generate (-1: the server's default)");
ABSL_FLAG(double, temperature, 0.0, "0: greedy");
ABSL_FLAG(double, top_p, 1.0, "Nucleus sampling threshold (1: off)");
ABSL_FLAG(int, top_k, 0, "Top-k sampling (0: off)");
ABSL_FLAG(uint64_t, seed, 0, "Sampling seed");
ABSL_FLAG(std::vector<std::string>, stop, {}, "Stop strings (comma-separated)");
ABSL_FLAG(bool, ignore_eos, false, "Keep generating past end-of-sequence tokens");
ABSL_FLAG(std::string, attention, "",
          "Attention mode override: dense, multipole, exact-only, quest");
ABSL_FLAG(int, token_budget, 0, "Token budget override (0: keep)");
ABSL_FLAG(std::string, output, "text",
          "generate/chat: text (the text as it streams), ids (token ids), json (one line per "
          "message)");
ABSL_FLAG(bool, stats, true, "generate/chat: print the finish reason and timings to stderr");
ABSL_FLAG(double, timeout, 600, "Per-call deadline in seconds");
ABSL_FLAG(std::string, api_key, "",
          "API key sent as \"authorization: Bearer <key>\" (default: the MPA_API_KEY "
          "environment variable; none: send no key)");
ABSL_FLAG(std::string, tls_ca, "",
          "PEM file of the CAs to trust for the server's certificate; set, the connection uses "
          "TLS (default: plaintext)");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM client certificate chain, for servers that require one (mutual TLS); needs "
          "--tls_key and --tls_ca");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert");
ABSL_FLAG(std::string, tls_server_name, "",
          "Name to expect in the server's certificate instead of --server's host (e.g. when "
          "connecting by IP address or through a tunnel); needs --tls_ca");
// bench
ABSL_FLAG(int, concurrency, 8, "bench: concurrent streams");
ABSL_FLAG(int, prompt_tokens, 64, "bench: prompt length in tokens (random ids)");
ABSL_FLAG(int, output_tokens, 64, "bench: tokens generated per request (EOS ignored)");
ABSL_FLAG(absl::Duration, duration, absl::Seconds(10), "bench: how long to send requests");
ABSL_FLAG(int, requests, 0, "bench: stop after this many requests (0: run for --duration)");
ABSL_FLAG(std::string, json_out, "", "bench: also write the results as JSON to this file");
// health
ABSL_FLAG(std::string, health_service, "multipole.v1.DecodeService",
          "health: the service whose status to ask for (\"\": the server as a whole)");

namespace v1 = ::multipole::v1;

namespace {

// The whole of a PEM file named by --flag; an error line names the flag and the file. Only a
// first sanity check (gRPC reads the PEM itself and would otherwise just fail to connect).
absl::StatusOr<std::string> ReadPem(const char* flag, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, "=", path, ": cannot read: ", std::strerror(errno)));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (text.str().find("-----BEGIN ") == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, "=", path, ": not a PEM file (no \"-----BEGIN\" line)"));
  }
  return text.str();
}

// The channel to --server: plaintext, or TLS with --tls_ca (and a client certificate with
// --tls_cert/--tls_key). InvalidArgument naming the flag for a bad combination or file.
absl::StatusOr<std::shared_ptr<grpc::Channel>> OpenChannel() {
  const std::string ca = absl::GetFlag(FLAGS_tls_ca);
  const std::string cert = absl::GetFlag(FLAGS_tls_cert);
  const std::string key = absl::GetFlag(FLAGS_tls_key);
  const std::string server_name = absl::GetFlag(FLAGS_tls_server_name);
  if (cert.empty() != key.empty()) {
    return absl::InvalidArgumentError(cert.empty() ? "--tls_key: needs --tls_cert"
                                                   : "--tls_cert: needs --tls_key");
  }
  if (ca.empty()) {
    if (!cert.empty()) return absl::InvalidArgumentError("--tls_cert: needs --tls_ca (TLS)");
    if (!server_name.empty()) {
      return absl::InvalidArgumentError("--tls_server_name: needs --tls_ca (TLS)");
    }
    return grpc::CreateChannel(absl::GetFlag(FLAGS_server), grpc::InsecureChannelCredentials());
  }
  grpc::SslCredentialsOptions ssl;
  absl::StatusOr<std::string> roots = ReadPem("tls_ca", ca);
  if (!roots.ok()) return roots.status();
  ssl.pem_root_certs = *std::move(roots);
  if (!cert.empty()) {
    absl::StatusOr<std::string> chain = ReadPem("tls_cert", cert);
    if (!chain.ok()) return chain.status();
    absl::StatusOr<std::string> private_key = ReadPem("tls_key", key);
    if (!private_key.ok()) return private_key.status();
    ssl.pem_cert_chain = *std::move(chain);
    ssl.pem_private_key = *std::move(private_key);
  }
  grpc::ChannelArguments arguments;
  if (!server_name.empty()) arguments.SetSslTargetNameOverride(server_name);
  return grpc::CreateCustomChannel(absl::GetFlag(FLAGS_server), grpc::SslCredentials(ssl),
                                   arguments);
}

// --api_key, else MPA_API_KEY (an environment variable keeps the key out of the process
// list), else none.
const std::string& ApiKey() {
  static const std::string* const key = [] {
    std::string flag = absl::GetFlag(FLAGS_api_key);
    if (!flag.empty()) return new std::string(std::move(flag));
    const char* env = std::getenv("MPA_API_KEY");
    return new std::string(env != nullptr ? env : "");
  }();
  return *key;
}

// Every call's deadline and credentials, and for a call of a session its id as "x-session-id"
// metadata, which a proxy in front of several servers routes by (decode.proto).
void PrepareContext(grpc::ClientContext& context, const std::string& session_id = "") {
  context.set_deadline(
      std::chrono::system_clock::now() +
      std::chrono::milliseconds(static_cast<int64_t>(absl::GetFlag(FLAGS_timeout) * 1000)));
  if (!ApiKey().empty()) context.AddMetadata("authorization", absl::StrCat("Bearer ", ApiKey()));
  if (!session_id.empty()) context.AddMetadata("x-session-id", session_id);
}

// A new session's id, chosen here so that a proxy can route its CreateSession to the replica
// that will hold it: 128 bits from the kernel's cryptographic generator, so it cannot be guessed.
absl::StatusOr<std::string> NewSessionId() {
  unsigned char bytes[16];
  size_t got = 0;
  while (got < sizeof(bytes)) {
    const ssize_t n = getrandom(bytes + got, sizeof(bytes) - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return absl::InternalError(absl::StrCat("getrandom: ", std::strerror(errno)));
    got += static_cast<size_t>(n);
  }
  return absl::StrCat("cli-", absl::BytesToHexString(absl::string_view(
                                  reinterpret_cast<const char*>(bytes), sizeof(bytes))));
}

int Fail(const std::string& what, const grpc::Status& status) {
  std::fprintf(stderr, "mpa_client: %s failed: %s: %s\n", what.c_str(),
               absl::StrCat("code ", static_cast<int>(status.error_code())).c_str(),
               status.error_message().c_str());
  return 1;
}

bool ParseIds(const std::string& text, v1::TokenIds* out) {
  for (absl::string_view piece :
       absl::StrSplit(text, absl::ByAnyChar(", \t\n"), absl::SkipEmpty())) {
    int32_t id;
    if (!absl::SimpleAtoi(piece, &id)) return false;
    out->add_ids(id);
  }
  return out->ids_size() > 0;
}

bool FillCommon(v1::GenerateRequest& request) {
  v1::SamplingParams* s = request.mutable_sampling();
  s->set_temperature(static_cast<float>(absl::GetFlag(FLAGS_temperature)));
  if (absl::GetFlag(FLAGS_top_p) != 1.0)
    s->set_top_p(static_cast<float>(absl::GetFlag(FLAGS_top_p)));
  s->set_top_k(absl::GetFlag(FLAGS_top_k));
  s->set_seed(absl::GetFlag(FLAGS_seed));
  if (absl::GetFlag(FLAGS_max_new_tokens) >= 0)
    s->set_max_new_tokens(absl::GetFlag(FLAGS_max_new_tokens));
  for (const std::string& stop : absl::GetFlag(FLAGS_stop)) s->add_stop(stop);
  s->set_ignore_eos(absl::GetFlag(FLAGS_ignore_eos));
  const std::string mode = absl::GetFlag(FLAGS_attention);
  if (!mode.empty()) {
    v1::AttentionMode m;
    if (mode == "dense")
      m = v1::ATTENTION_MODE_DENSE;
    else if (mode == "multipole")
      m = v1::ATTENTION_MODE_MULTIPOLE;
    else if (mode == "exact-only" || mode == "exact_only")
      m = v1::ATTENTION_MODE_EXACT_ONLY;
    else if (mode == "quest")
      m = v1::ATTENTION_MODE_QUEST;
    else {
      std::fprintf(stderr, "mpa_client: --attention: unknown mode '%s'\n", mode.c_str());
      return false;
    }
    request.mutable_attention()->set_mode(m);
  }
  if (absl::GetFlag(FLAGS_token_budget) > 0) {
    request.mutable_attention()->set_token_budget(absl::GetFlag(FLAGS_token_budget));
  }
  return true;
}

const char* FinishName(v1::FinishReason r) {
  switch (r) {
    case v1::FINISH_REASON_LENGTH:
      return "length";
    case v1::FINISH_REASON_STOP:
      return "stop";
    case v1::FINISH_REASON_EOS:
      return "eos";
    case v1::FINISH_REASON_CANCELLED:
      return "cancelled";
    default:
      return "unspecified";
  }
}

// Streams one Generate call to stdout in the --output format. Returns the exit code.
int StreamGenerate(v1::DecodeService::Stub& stub, const v1::GenerateRequest& request) {
  grpc::ClientContext context;
  PrepareContext(context, request.session_id());
  const std::string format = absl::GetFlag(FLAGS_output);
  const absl::Time start = absl::Now();
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader =
      stub.Generate(&context, request);
  v1::GenerateResponse message;
  bool first_id = true;
  std::optional<v1::GenerateResult> result;
  while (reader->Read(&message)) {
    if (format == "json") {
      std::string line;
      google::protobuf::util::JsonPrintOptions options;
      options.add_whitespace = false;
      (void)google::protobuf::util::MessageToJsonString(message, &line, options);
      std::printf("%s\n", line.c_str());
    } else {
      for (const v1::GeneratedToken& t : message.tokens()) {
        if (format == "ids") {
          std::printf(first_id ? "%d" : " %d", t.id());
          first_id = false;
        } else {
          std::fwrite(t.text().data(), 1, t.text().size(), stdout);
        }
      }
      if (message.has_result() && format == "text") {
        std::fwrite(message.result().text_tail().data(), 1, message.result().text_tail().size(),
                    stdout);
      }
    }
    std::fflush(stdout);
    if (message.has_result()) result = message.result();
  }
  grpc::Status status = reader->Finish();
  if (format != "json") std::printf("\n");
  std::fflush(stdout);
  if (!status.ok()) return Fail("Generate", status);
  if (result.has_value() && absl::GetFlag(FLAGS_stats)) {
    const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
    const auto& u = result->usage();
    const auto& st = result->stats();
    std::fprintf(stderr,
                 "[finish: %s | prompt %lld, cached %lld, generated %lld tokens | ttft %.1f ms, "
                 "%.1f tokens/s | sparsity %.3f | %.2f s]\n",
                 FinishName(result->finish_reason()), static_cast<long long>(u.prompt_tokens()),
                 static_cast<long long>(u.cached_tokens()),
                 static_cast<long long>(u.generated_tokens()),
                 st.time_to_first_token_seconds() * 1e3,
                 st.decode_seconds() > 0 ? (u.generated_tokens() - 1) / st.decode_seconds() : 0.0,
                 st.mean_sparsity(), seconds);
  }
  return 0;
}

int RunGenerate(const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = v1::DecodeService::NewStub(channel);
  v1::GenerateRequest request;
  request.set_session_id(absl::GetFlag(FLAGS_session));
  if (!absl::GetFlag(FLAGS_prompt_ids).empty()) {
    if (!ParseIds(absl::GetFlag(FLAGS_prompt_ids), request.mutable_token_ids())) {
      std::fprintf(stderr, "mpa_client: --prompt_ids: expected integers, got '%s'\n",
                   absl::GetFlag(FLAGS_prompt_ids).c_str());
      return 2;
    }
  } else if (!absl::GetFlag(FLAGS_prompt).empty()) {
    request.set_text(absl::GetFlag(FLAGS_prompt));
  } else {
    std::fprintf(stderr, "mpa_client generate: give --prompt or --prompt_ids\n");
    return 2;
  }
  if (!FillCommon(request)) return 2;
  return StreamGenerate(*stub, request);
}

int RunChat(const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = v1::DecodeService::NewStub(channel);
  v1::CreateSessionResponse session;
  const bool opened = absl::GetFlag(FLAGS_session).empty();
  if (opened) {
    absl::StatusOr<std::string> id = NewSessionId();
    if (!id.ok()) {
      std::fprintf(stderr, "mpa_client: %s\n", std::string(id.status().message()).c_str());
      return 1;
    }
    grpc::ClientContext context;
    PrepareContext(context, *id);
    v1::CreateSessionRequest request;
    request.set_session_id(*id);
    grpc::Status status = stub->CreateSession(&context, request, &session);
    if (!status.ok()) return Fail("CreateSession", status);
  } else {
    session.set_session_id(absl::GetFlag(FLAGS_session));
  }
  std::fprintf(stderr, "session %s (an empty line or end of input ends the chat)\n",
               session.session_id().c_str());
  const bool ids = absl::GetFlag(FLAGS_output) == "ids";
  std::string line;
  int rc = 0;
  for (;;) {
    std::fprintf(stderr, "> ");
    std::fflush(stderr);
    if (!std::getline(std::cin, line) || line.empty()) break;
    v1::GenerateRequest request;
    request.set_session_id(session.session_id());
    if (ids) {
      if (!ParseIds(line, request.mutable_token_ids())) {
        std::fprintf(stderr, "expected token ids\n");
        continue;
      }
    } else {
      request.set_text(line);
    }
    if (!FillCommon(request)) return 2;
    rc = StreamGenerate(*stub, request);
    if (rc != 0) break;
  }
  if (!opened) return rc;  // a session given with --session stays open
  grpc::ClientContext context;
  PrepareContext(context, session.session_id());
  v1::CloseSessionRequest close;
  close.set_session_id(session.session_id());
  v1::CloseSessionResponse closed;
  grpc::Status status = stub->CloseSession(&context, close, &closed);
  if (!status.ok() && rc == 0) return Fail("CloseSession", status);
  return rc;
}

// grpc.health.v1.Health/Check of --health_service through the generic stub (the messages are
// one string field and one enum field, encoded here). Prints the status; exit 0 only if SERVING.
int RunHealth(const std::shared_ptr<grpc::Channel>& channel) {
  const std::string service = absl::GetFlag(FLAGS_health_service);
  std::string request_bytes;
  if (!service.empty()) {
    if (service.size() > 127) {
      std::fprintf(stderr, "mpa_client: --health_service: longer than 127 bytes\n");
      return 2;
    }
    request_bytes = std::string("\x0a") + static_cast<char>(service.size()) + service;
  }
  grpc::GenericStub generic(channel);
  grpc::ClientContext context;
  PrepareContext(context);
  grpc::CompletionQueue queue;
  grpc::Slice slice(request_bytes);
  grpc::ByteBuffer request(&slice, 1);
  grpc::ByteBuffer response;
  grpc::Status status;
  auto call = generic.PrepareUnaryCall(&context, "/grpc.health.v1.Health/Check", request, &queue);
  call->StartCall();
  call->Finish(&response, &status, nullptr);
  void* tag;
  bool ok;
  queue.Next(&tag, &ok);
  queue.Shutdown();
  while (queue.Next(&tag, &ok)) {
  }
  if (!status.ok()) return Fail("Health/Check", status);
  std::vector<grpc::Slice> slices;
  (void)response.Dump(&slices);
  std::string bytes;
  for (const grpc::Slice& s : slices)
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  // HealthCheckResponse{status = 1}: field 1, varint; absent means UNKNOWN (0).
  const int code = bytes.size() == 2 && bytes[0] == 0x08 ? bytes[1] : (bytes.empty() ? 0 : -1);
  const char* names[] = {"UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"};
  std::printf("%s\n", code >= 0 && code <= 3 ? names[code] : "unparsable answer");
  return code == 1 ? 0 : 1;
}

struct RequestSample {
  double ttft = 0.0;     // seconds from send to the first token
  double latency = 0.0;  // seconds from send to the end of the stream
  int64_t tokens = 0;
  std::vector<double> inter_token;  // seconds between consecutive tokens
};

int RunBench(const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = v1::DecodeService::NewStub(channel);
  v1::GetModelInfoResponse info;
  {
    grpc::ClientContext context;
    PrepareContext(context);
    grpc::Status status = stub->GetModelInfo(&context, v1::GetModelInfoRequest(), &info);
    if (!status.ok()) return Fail("GetModelInfo", status);
  }
  const int concurrency = std::max(1, absl::GetFlag(FLAGS_concurrency));
  const int prompt_tokens = std::max(1, absl::GetFlag(FLAGS_prompt_tokens));
  const int output_tokens = std::max(1, absl::GetFlag(FLAGS_output_tokens));
  const int max_requests = absl::GetFlag(FLAGS_requests);
  const absl::Duration duration = absl::GetFlag(FLAGS_duration);
  std::fprintf(stderr, "bench: %s (%s), %d streams, %d prompt + %d output tokens, %s%s\n",
               info.model_name().c_str(), absl::GetFlag(FLAGS_server).c_str(), concurrency,
               prompt_tokens, output_tokens, absl::FormatDuration(duration).c_str(),
               max_requests > 0 ? absl::StrCat(" or ", max_requests, " requests").c_str() : "");

  std::mutex mu;
  std::vector<RequestSample> samples;
  std::vector<std::string> errors;
  std::atomic<int> started{0};
  const absl::Time begin = absl::Now();
  const absl::Time end = begin + duration;
  std::vector<std::thread> workers;
  for (int w = 0; w < concurrency; ++w) {
    workers.emplace_back([&, w] {
      std::mt19937 rng(1234 + w);
      // Random ids past the usual special tokens (ids 0..2).
      std::uniform_int_distribution<int32_t> id(std::min(3, info.vocab_size() - 1),
                                                info.vocab_size() - 1);
      while (absl::Now() < end) {
        if (max_requests > 0 && started.fetch_add(1) >= max_requests) break;
        v1::GenerateRequest request;
        if (info.has_bos_token_id()) request.mutable_token_ids()->add_ids(info.bos_token_id());
        while (request.token_ids().ids_size() < prompt_tokens) {
          request.mutable_token_ids()->add_ids(id(rng));
        }
        request.mutable_sampling()->set_max_new_tokens(output_tokens);
        request.mutable_sampling()->set_ignore_eos(true);
        FillCommon(request);
        request.mutable_sampling()->set_max_new_tokens(output_tokens);
        request.mutable_sampling()->set_ignore_eos(true);
        grpc::ClientContext context;
        PrepareContext(context);
        RequestSample sample;
        const absl::Time sent = absl::Now();
        absl::Time last = sent;
        auto reader = stub->Generate(&context, request);
        v1::GenerateResponse message;
        while (reader->Read(&message)) {
          const int n = message.tokens_size();
          if (n == 0) continue;
          const absl::Time now = absl::Now();
          if (sample.tokens == 0) {
            sample.ttft = absl::ToDoubleSeconds(now - sent);
            // Several tokens in the first message: the rest arrived together with it.
            for (int i = 1; i < n; ++i) sample.inter_token.push_back(0.0);
          } else {
            const double gap = absl::ToDoubleSeconds(now - last) / n;
            for (int i = 0; i < n; ++i) sample.inter_token.push_back(gap);
          }
          sample.tokens += n;
          last = now;
        }
        grpc::Status status = reader->Finish();
        sample.latency = absl::ToDoubleSeconds(absl::Now() - sent);
        std::lock_guard<std::mutex> lock(mu);
        if (status.ok()) {
          samples.push_back(std::move(sample));
        } else {
          errors.push_back(
              absl::StrCat(static_cast<int>(status.error_code()), ": ", status.error_message()));
        }
      }
    });
  }
  for (auto& t : workers) t.join();
  const double wall = absl::ToDoubleSeconds(absl::Now() - begin);

  std::vector<double> ttft, itl, latency, per_request_rate;
  int64_t tokens = 0;
  for (const RequestSample& s : samples) {
    ttft.push_back(s.ttft);
    latency.push_back(s.latency);
    itl.insert(itl.end(), s.inter_token.begin(), s.inter_token.end());
    tokens += s.tokens;
    if (s.latency > s.ttft && s.tokens > 1)
      per_request_rate.push_back((s.tokens - 1) / (s.latency - s.ttft));
  }
  const mpa::client::Summary ttft_s = mpa::client::Summarize(ttft);
  const mpa::client::Summary itl_s = mpa::client::Summarize(itl);
  const mpa::client::Summary latency_s = mpa::client::Summarize(latency);
  const mpa::client::Summary rate_s = mpa::client::Summarize(per_request_rate);
  const double throughput = wall > 0 ? tokens / wall : 0.0;
  const double request_rate = wall > 0 ? samples.size() / wall : 0.0;

  std::printf("%s", mpa::client::FormatTable({{"time to first token", ttft_s},
                                              {"inter-token latency", itl_s},
                                              {"request latency", latency_s}},
                                             1e3, "ms")
                        .c_str());
  std::printf(
      "%s",
      mpa::client::FormatTable({{"per-stream decode rate", rate_s}}, 1.0, "tokens/s").c_str());
  std::printf(
      "requests %zu ok, %zu failed in %.2f s: %.2f requests/s, %.1f output tokens/s, "
      "%.1f total tokens/s\n",
      samples.size(), errors.size(), wall, request_rate, throughput,
      wall > 0 ? (tokens + static_cast<double>(samples.size()) * prompt_tokens) / wall : 0.0);
  for (size_t i = 0; i < errors.size() && i < 5; ++i) {
    std::printf("error: %s\n", errors[i].c_str());
  }

  const std::string json_path = absl::GetFlag(FLAGS_json_out);
  if (!json_path.empty()) {
    auto summary = [](const mpa::client::Summary& s) {
      return nlohmann::json{{"count", s.count}, {"mean", s.mean}, {"min", s.min}, {"p50", s.p50},
                            {"p90", s.p90},     {"p99", s.p99},   {"max", s.max}};
    };
    nlohmann::json j;
    j["server"] = absl::GetFlag(FLAGS_server);
    j["model"] = info.model_name();
    j["config"] = {
        {"concurrency", concurrency},     {"prompt_tokens", prompt_tokens},
        {"output_tokens", output_tokens}, {"duration_seconds", absl::ToDoubleSeconds(duration)},
        {"max_requests", max_requests},   {"temperature", absl::GetFlag(FLAGS_temperature)}};
    j["wall_seconds"] = wall;
    j["requests_ok"] = samples.size();
    j["requests_failed"] = errors.size();
    j["output_tokens"] = tokens;
    j["output_tokens_per_second"] = throughput;
    j["requests_per_second"] = request_rate;
    j["time_to_first_token_seconds"] = summary(ttft_s);
    j["inter_token_latency_seconds"] = summary(itl_s);
    j["request_latency_seconds"] = summary(latency_s);
    j["per_stream_tokens_per_second"] = summary(rate_s);
    std::ofstream out(json_path);
    out << j.dump(2) << "\n";
    if (!out) {
      std::fprintf(stderr, "mpa_client: cannot write %s\n", json_path.c_str());
      return 1;
    }
  }
  return errors.empty() && !samples.empty() ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "mpa_client <generate|chat|bench|health> [--server=host:port] [--tls_ca=FILE] [flags]\n"
      "  generate  stream one generation (--prompt or --prompt_ids) to stdout\n"
      "  chat      multi-turn conversation on one session, one turn per input line\n"
      "  bench     load generator: --concurrency --prompt_tokens --output_tokens --duration\n"
      "  health    grpc.health.v1 status of --health_service; exit 0 only if SERVING");
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() != 2) {
    std::fprintf(stderr, "%s\n", absl::ProgramUsageMessage().data());
    return 2;
  }
  const std::string command = args[1];
  int (*run)(const std::shared_ptr<grpc::Channel>&) = nullptr;
  if (command == "generate") run = RunGenerate;
  if (command == "chat") run = RunChat;
  if (command == "bench") run = RunBench;
  if (command == "health") run = RunHealth;
  if (run == nullptr) {
    std::fprintf(stderr, "mpa_client: unknown command '%s'\n%s\n", command.c_str(),
                 absl::ProgramUsageMessage().data());
    return 2;
  }
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = OpenChannel();
  if (!channel.ok()) {
    std::fprintf(stderr, "mpa_client: %s\n", std::string(channel.status().message()).c_str());
    return 2;
  }
  return run(*channel);
}
