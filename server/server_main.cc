// mpa_server: serves one model over gRPC (multipole.v1.DecodeService, grpc.health.v1.Health,
// server reflection), in plaintext or over TLS (optionally mutual). SIGTERM/SIGINT drain: health
// goes NOT_SERVING, new work is refused with UNAVAILABLE, running generations finish (cancelled
// at --drain_timeout), then exit 0. A device fault no call recovers from (a GPU context lost):
// every generation fails with UNAVAILABLE naming it, health goes NOT_SERVING, exit 1.
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/impl/server_builder_option.h>
#include <grpcpp/impl/server_builder_plugin.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "model/attention/attention_backend.h"
#include "model/config/multipole_flags.h"
#include "model/io/error_line.h"
#include "server/api_keys.h"
#include "server/decode_scheduler.h"
#include "server/decode_service.h"
#include "server/metrics.h"
#include "server/metrics_endpoint.h"
#include "server/model_engine.h"
#include "server/tls_credentials.h"
#ifdef MPA_SERVER_WITH_CUDA
#include <dlfcn.h>

#include <filesystem>

#include "server/cuda_engine_module.h"
#endif

ABSL_FLAG(std::string, model, "", "Model folder (config.json, *.safetensors, tokenizer.json)");
ABSL_FLAG(std::string, device, "cpu",
          "Where the model runs: cpu, or cuda / cuda:N (one NVIDIA GPU; dense, multipole and "
          "exact-only attention; "
          "needs a build with MPA_WITH_CUDA)");
ABSL_FLAG(std::string, address, "0.0.0.0:50051",
          "Listening address host:port (port 0: pick a free one; the bound port is printed)");
ABSL_FLAG(int, max_sessions, 64, "Sessions open at once");
ABSL_FLAG(int64_t, max_kv_tokens, 65536, "KV cache capacity over all sessions, in tokens");
ABSL_FLAG(int, kv_block_tokens, 16, "Tokens per KV cache block (the admission unit)");
ABSL_FLAG(int64_t, attention_state_mb, -1,
          "--device=cuda: MiB of device memory for the sparse modes' per-session state beside "
          "the KV cache (cluster centroids and bounds, Quest page bounds); a session whose state "
          "would pass it attends exactly until its context grows again (-1: a quarter of the KV "
          "cache's bytes, or what the device has left less 1 GiB if that is less)");
ABSL_FLAG(int64_t, max_prompt_tokens, 0, "Input tokens per request (0: the model's context)");
ABSL_FLAG(int64_t, max_request_text_bytes, 0,
          "Bytes of a request's text, refused before it is tokenized (0: 16 per token of "
          "--max_prompt_tokens, at most 1 MiB). gRPC's receive limit is set from it and "
          "--max_prompt_tokens");
ABSL_FLAG(int64_t, max_total_tokens, 0,
          "Tokens per context: history + input + max_new_tokens (0: the model's context)");
ABSL_FLAG(absl::Duration, session_ttl, absl::Minutes(10),
          "Idle time after which a session is evicted (0: never)");
ABSL_FLAG(std::string, attention, "dense",
          "Default attention mode: dense, multipole, exact-only, quest");
// The default attention's knobs (--token_budget, ...) are in model/config/multipole_flags.h.
ABSL_FLAG(std::string, metrics_address, "0.0.0.0:9464",
          "Prometheus metrics at http://host:port/metrics, liveness at /healthz (\"\": off; port "
          "0: pick a free one, printed)");
ABSL_FLAG(std::string, api_keys_file, "",
          "File of API keys, one a line (\"name:key\" names it for logs; blank lines and # "
          "comments ignored; keys of at least 16 characters). Set: every DecodeService call must "
          "send \"authorization: Bearer <key>\", and a session belongs to the key that created "
          "it. Empty: no authentication (health and reflection are always open)");
ABSL_FLAG(int, max_sessions_per_key, -1,
          "Sessions one API key may hold open at once (-1: max_sessions / 4 rounded up; only "
          "with --api_keys_file)");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM certificate chain (the server's certificate first) for TLS on --address; needs "
          "--tls_key. Empty: plaintext gRPC");
ABSL_FLAG(std::string, tls_key, "", "PEM private key (unencrypted) of --tls_cert");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM bundle of CAs: set, every client must present a certificate one of them signed "
          "(mutual TLS; only with --tls_cert and --tls_key)");
ABSL_FLAG(int, tls_reload_interval_s, 600,
          "Seconds between re-reads of the TLS files, so a renewed certificate is served "
          "without a restart (replace the files atomically); 0: read them once at start-up");
ABSL_FLAG(std::string, health_address, "",
          "Also serve grpc.health.v1.Health alone, in plaintext, on this host:port (for "
          "Kubernetes gRPC probes, which cannot speak TLS; port 0: pick a free one, printed). "
          "Empty: off");
ABSL_FLAG(int, threads, 0, "BLAS threads (0: the library default)");
ABSL_FLAG(bool, reference, false,
          "CPU: plain fp32 loops instead of OpenBLAS for the matrix products. Slower, but a "
          "request's tokens no longer depend on what is batched with it (BLAS rounds "
          "differently at different batch sizes, which can flip a near-tie); for soak tests "
          "and reproductions");
ABSL_FLAG(int, prefill_chunk_tokens, -1,
          "Input tokens prefilled per engine step (bounds how long running streams wait; -1: 64 "
          "on the CPU, 1024 on a GPU, where a chunk costs a pass over the weights)");
ABSL_FLAG(int, max_batch_size, 64, "Sequences per decode call");
ABSL_FLAG(int, default_max_new_tokens, 256, "max_new_tokens when a request leaves it unset");
ABSL_FLAG(absl::Duration, drain_timeout, absl::Seconds(30),
          "On SIGTERM: how long running generations may take before they are cancelled");

namespace {

// --device: "cpu" gives -1, "cuda" 0 and "cuda:N" N; InvalidArgument otherwise.
absl::StatusOr<int> ParseDevice(const std::string& device) {
  if (device == "cpu") return -1;
  if (device == "cuda") return 0;
  int index = 0;
  if (device.rfind("cuda:", 0) == 0 && absl::SimpleAtoi(device.substr(5), &index) && index >= 0) {
    return index;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("'", device, "' is not a device (cpu, cuda or cuda:N are)"));
}

// The engine for --device (gpu: -1 for the CPU).
absl::StatusOr<std::unique_ptr<mpa::server::Engine>> LoadEngine(const std::string& model_dir,
                                                                int gpu) {
  if (gpu < 0) {
    mpa::ModelOptions options;
    options.max_kv_tokens = absl::GetFlag(FLAGS_max_kv_tokens);
    options.kv_block_tokens = absl::GetFlag(FLAGS_kv_block_tokens);
    options.threads = absl::GetFlag(FLAGS_threads);
    options.use_blas = !absl::GetFlag(FLAGS_reference);
    absl::StatusOr<std::unique_ptr<mpa::server::ModelEngine>> engine =
        mpa::server::ModelEngine::Load(model_dir, options);
    if (!engine.ok()) return engine.status();
    return std::unique_ptr<mpa::server::Engine>(std::move(engine).value());
  }
#ifdef MPA_SERVER_WITH_CUDA
  mpa::CudaModelOptions options;
  options.max_kv_tokens = absl::GetFlag(FLAGS_max_kv_tokens);
  options.page_size = absl::GetFlag(FLAGS_kv_block_tokens);  // a KV block is a cache page
  options.max_batch = absl::GetFlag(FLAGS_max_batch_size);
  options.device = gpu;
  const int64_t state_mb = absl::GetFlag(FLAGS_attention_state_mb);
  options.attention_state_bytes = state_mb < 0 ? -1 : state_mb << 20;
  // The module sits next to the binary; never closed (the engine's code lives in it).
  std::error_code error;
  const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", error);
  const std::string module = (self.parent_path() / mpa::server::kCudaEngineModule).string();
  void* handle = dlopen(module.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("--device=cuda: cannot load the GPU engine ", module, ": ", dlerror()));
  }
  auto create = reinterpret_cast<mpa::server::CudaEngineFactory>(
      dlsym(handle, mpa::server::kCudaEngineFactory));
  if (create == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("--device=cuda: ", module, " has no ", mpa::server::kCudaEngineFactory));
  }
  std::unique_ptr<mpa::server::Engine> engine;
  if (absl::Status s = create(model_dir, options, &engine); !s.ok()) return s;
  return engine;
#else
  return absl::FailedPreconditionError(
      "--device=cuda: this mpa_server was built without CUDA (configure with -DMPA_WITH_CUDA=ON "
      "on a machine with the CUDA toolkit)");
#endif
}

std::string BoundAddress(const std::string& address, int port) {
  const size_t colon = address.rfind(':');
  const std::string host = colon == std::string::npos ? address : address.substr(0, colon);
  return absl::StrCat(host, ":", port);
}

// Drops every ServerBuilder plugin. The reflection library registers its plugin for every
// server of the process; the plaintext health listener must serve health alone.
class WithoutPlugins : public grpc::ServerBuilderOption {
 public:
  void UpdateArguments(grpc::ChannelArguments*) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    plugins->clear();
  }
};

mpa::server::TlsOptions TlsOptionsFromFlags() {
  mpa::server::TlsOptions tls;
  tls.cert_file = absl::GetFlag(FLAGS_tls_cert);
  tls.key_file = absl::GetFlag(FLAGS_tls_key);
  tls.client_ca_file = absl::GetFlag(FLAGS_tls_client_ca);
  tls.reload_interval_s = absl::GetFlag(FLAGS_tls_reload_interval_s);
  return tls;
}

// A flag value that makes no sense, refused before anything loads: InvalidArgument naming the
// flag, its value and what it may be.
absl::Status CheckFlags() {
  struct IntRange {
    const char* flag;
    int64_t value;
    int64_t min;
    int64_t max;
    bool unset_is_minus_one;  // -1 keeps the design's default
  };
  constexpr int64_t kIntMax = std::numeric_limits<int>::max();
  const IntRange ranges[] = {
      {"max_sessions", absl::GetFlag(FLAGS_max_sessions), 1, 1 << 20, false},
      {"max_sessions_per_key", absl::GetFlag(FLAGS_max_sessions_per_key), 1, 1 << 20, true},
      {"max_kv_tokens", absl::GetFlag(FLAGS_max_kv_tokens), 1, int64_t{1} << 32, false},
      {"kv_block_tokens", absl::GetFlag(FLAGS_kv_block_tokens), 1, 1 << 16, false},
      {"attention_state_mb", absl::GetFlag(FLAGS_attention_state_mb), 0, int64_t{1} << 24, true},
      {"max_prompt_tokens", absl::GetFlag(FLAGS_max_prompt_tokens), 0, kIntMax, false},
      {"max_total_tokens", absl::GetFlag(FLAGS_max_total_tokens), 0, kIntMax, false},
      {"max_request_text_bytes", absl::GetFlag(FLAGS_max_request_text_bytes), 0, 1 << 30, false},
      {"token_budget", absl::GetFlag(FLAGS_token_budget), 1, kIntMax, true},
      {"cluster_ratio", absl::GetFlag(FLAGS_cluster_ratio), 1, kIntMax, true},
      {"levels", absl::GetFlag(FLAGS_levels), 1, 2, true},
      {"cluster_interval", absl::GetFlag(FLAGS_cluster_interval), 1, kIntMax, true},
      {"sink_tokens", absl::GetFlag(FLAGS_sink_tokens), 0, kIntMax, true},
      {"min_clustered_tokens", absl::GetFlag(FLAGS_min_clustered_tokens), 0, kIntMax, true},
      {"block_tokens", absl::GetFlag(FLAGS_block_tokens), 1, kIntMax, true},
      {"lookup_position", absl::GetFlag(FLAGS_lookup_position), 0, kIntMax, true},
      {"threads", absl::GetFlag(FLAGS_threads), 0, 1024, false},
      {"prefill_chunk_tokens", absl::GetFlag(FLAGS_prefill_chunk_tokens), 1, kIntMax, true},
      {"max_batch_size", absl::GetFlag(FLAGS_max_batch_size), 1, 1 << 16, false},
      {"default_max_new_tokens", absl::GetFlag(FLAGS_default_max_new_tokens), 1, kIntMax, false},
  };
  for (const IntRange& r : ranges) {
    if (r.unset_is_minus_one && r.value == -1) continue;
    if (r.value < r.min || r.value > r.max) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", r.flag, "=", r.value, ": must be in [", r.min, ", ", r.max, "]",
                       r.unset_is_minus_one ? " (or -1 for the default)" : ""));
    }
  }
  const float fraction = absl::GetFlag(FLAGS_token_budget_fraction);
  if (!(fraction >= 0.0f && fraction <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("--token_budget_fraction=", fraction,
                                                   ": must be in [0, 1] (0: use --token_budget)"));
  }
  const std::pair<const char*, absl::Duration> durations[] = {
      {"session_ttl", absl::GetFlag(FLAGS_session_ttl)},
      {"drain_timeout", absl::GetFlag(FLAGS_drain_timeout)},
  };
  for (const auto& [flag, value] : durations) {
    if (value < absl::ZeroDuration() || value == absl::InfiniteDuration()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", flag, "=", absl::FormatDuration(value), ": must be finite and >= 0"));
    }
  }
  if (absl::GetFlag(FLAGS_address).empty()) {
    return absl::InvalidArgumentError("--address: empty; give host:port");
  }
  return mpa::server::CheckTlsOptions(TlsOptionsFromFlags());
}

int Serve() {
  using mpa::server::DecodeScheduler;
  const std::string model_dir = absl::GetFlag(FLAGS_model);
  if (model_dir.empty()) {
    std::fprintf(stderr, "mpa_server: --model is required (a model folder)\n");
    return 2;
  }
  if (absl::Status s = CheckFlags(); !s.ok()) {
    std::fprintf(stderr, "mpa_server: %s\n", std::string(s.message()).c_str());
    return 2;
  }
  // Read before the model loads, so a bad keys file is refused at once.
  std::unique_ptr<mpa::server::ApiKeys> api_keys;
  if (const std::string path = absl::GetFlag(FLAGS_api_keys_file); !path.empty()) {
    absl::StatusOr<mpa::server::ApiKeys> keys = mpa::server::ApiKeys::Load(path);
    if (!keys.ok()) {
      std::fprintf(stderr, "mpa_server: --api_keys_file: %s\n",
                   std::string(keys.status().message()).c_str());
      return 2;
    }
    api_keys = std::make_unique<mpa::server::ApiKeys>(*std::move(keys));
  }
  // The TLS files are checked now too: a bad one is refused before the model loads, not found
  // by every client's failing handshake later.
  const mpa::server::TlsOptions tls = TlsOptionsFromFlags();
  std::shared_ptr<grpc::ServerCredentials> credentials;  // null: plaintext
  std::string tls_summary = "no --tls_cert: gRPC is plaintext";
  if (tls.enabled()) {
    absl::StatusOr<mpa::server::TlsMaterial> material = mpa::server::LoadTlsMaterial(tls);
    if (!material.ok()) {
      std::fprintf(stderr, "mpa_server: %s\n", std::string(material.status().message()).c_str());
      return 2;
    }
    credentials = mpa::server::MakeServerCredentials(tls, *material);
    tls_summary =
        absl::StrCat("TLS: certificate ", material->subject, " (chain of ",
                     material->chain_certificates, ", valid until ", material->not_after, ")");
    if (!tls.client_ca_file.empty()) {
      absl::StrAppend(&tls_summary, ", client certificates required (", material->client_cas,
                      " CAs)");
    }
    absl::StrAppend(&tls_summary,
                    tls.reload_interval_s > 0
                        ? absl::StrCat(", files re-read every ", tls.reload_interval_s, " s")
                        : ", files read once");
  }
  absl::StatusOr<mpa::AttentionMode> mode = mpa::ParseAttentionMode(absl::GetFlag(FLAGS_attention));
  if (!mode.ok()) {
    std::fprintf(stderr, "mpa_server: --attention: %s\n", mode.status().ToString().c_str());
    return 2;
  }
  absl::StatusOr<int> gpu = ParseDevice(absl::GetFlag(FLAGS_device));
  if (!gpu.ok()) {
    std::fprintf(stderr, "mpa_server: --device: %s\n", gpu.status().ToString().c_str());
    return 2;
  }
  absl::StatusOr<std::unique_ptr<mpa::server::Engine>> engine = LoadEngine(model_dir, *gpu);
  if (!engine.ok()) {
    std::fprintf(stderr, "mpa_server: loading %s: %s\n", mpa::ErrorLine(model_dir).c_str(),
                 mpa::ErrorLine(engine.status().message()).c_str());
    return 1;
  }
  mpa::server::SchedulerOptions options;
  options.max_sessions = absl::GetFlag(FLAGS_max_sessions);
  if (api_keys != nullptr) {
    const int per_key = absl::GetFlag(FLAGS_max_sessions_per_key);
    options.max_sessions_per_owner =
        per_key > 0 ? per_key : std::max(1, (options.max_sessions + 3) / 4);
  }
  options.max_prompt_tokens = absl::GetFlag(FLAGS_max_prompt_tokens);
  options.max_total_tokens = absl::GetFlag(FLAGS_max_total_tokens);
  options.session_ttl = absl::GetFlag(FLAGS_session_ttl);
  options.prefill_chunk_tokens = absl::GetFlag(FLAGS_prefill_chunk_tokens);
  if (options.prefill_chunk_tokens == -1) options.prefill_chunk_tokens = *gpu >= 0 ? 1024 : 64;
  options.max_batch_size = absl::GetFlag(FLAGS_max_batch_size);
  options.default_max_new_tokens = absl::GetFlag(FLAGS_default_max_new_tokens);
  options.default_attention.mode = *mode;
  if (absl::Status s = mpa::MultipoleConfigFromFlags(&options.default_attention.multipole);
      !s.ok()) {
    std::fprintf(stderr, "mpa_server: attention flags: %s\n", s.ToString().c_str());
    return 2;
  }
  if (absl::Status s = (*engine)->CheckAttention(options.default_attention); !s.ok()) {
    std::fprintf(stderr,
                 "mpa_server: --attention: %s attention is not available on device %s: %s; use "
                 "other knobs, --attention=dense or --device=cpu\n",
                 std::string(mpa::AttentionModeName(*mode)).c_str(),
                 (*engine)->info().device.c_str(), std::string(s.message()).c_str());
    return 2;
  }
  const mpa::server::EngineInfo& info = (*engine)->info();
  mpa::server::MetricsRegistry metrics(
      {info.model_name, info.architecture, std::string(mpa::AttentionModeName(*mode))});
  // Declared after the registry it serves and before the scheduler, so it is destroyed after
  // the scheduler's last report and before the registry.
  std::unique_ptr<mpa::server::MetricsEndpoint> metrics_endpoint;
  const std::string metrics_address = absl::GetFlag(FLAGS_metrics_address);
  if (!metrics_address.empty()) {
    absl::StatusOr<std::unique_ptr<mpa::server::MetricsEndpoint>> endpoint =
        mpa::server::MetricsEndpoint::Start(metrics_address, metrics.registry());
    if (!endpoint.ok()) {
      std::fprintf(stderr, "mpa_server: --metrics_address: %s\n",
                   std::string(endpoint.status().message()).c_str());
      return 1;
    }
    metrics_endpoint = std::move(endpoint).value();
  }
  DecodeScheduler scheduler(engine->get(), options, &metrics);
  // A device fault no call recovers from (the GPU context lost): the scheduler has failed every
  // generation and refuses new ones; the main thread is woken to exit with status 1, so that a
  // supervisor (Kubernetes, systemd) restarts the server on a fresh context.
  scheduler.set_fault_handler([](const absl::Status&) { kill(getpid(), SIGUSR1); });
  mpa::server::DecodeService service(&scheduler, &metrics,
                                     absl::GetFlag(FLAGS_max_request_text_bytes), api_keys.get());

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  const std::string address = absl::GetFlag(FLAGS_address);
  int port = 0;
  builder.AddListeningPort(
      address, credentials != nullptr ? credentials : grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  // Deliberately from the request limits (not gRPC's 4 MiB default): a message that no valid
  // request can need is refused by gRPC before it is parsed, let alone tokenized.
  builder.SetMaxReceiveMessageSize(static_cast<int>(std::min<int64_t>(
      mpa::server::MaxRequestBytes(service.limits()), std::numeric_limits<int>::max())));
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    std::fprintf(stderr, "mpa_server: cannot listen on %s\n", address.c_str());
    return 1;
  }
  // The plaintext health listener: a server of its own, so that nothing but health is reachable
  // without TLS. It mirrors the main server's serving status. Its generic service answers every
  // other method UNIMPLEMENTED, and gives it a completion queue that is polled (gRPC refuses to
  // build a server without one; the default health service brings its own, unpolled one).
  grpc::CallbackGenericService health_unimplemented;
  std::unique_ptr<grpc::Server> health_server;
  int health_port = 0;
  const std::string health_address = absl::GetFlag(FLAGS_health_address);
  if (!health_address.empty()) {
    grpc::ServerBuilder health_builder;
    health_builder.AddListeningPort(health_address, grpc::InsecureServerCredentials(),
                                    &health_port);
    health_builder.SetMaxReceiveMessageSize(4096);  // a health check is a few bytes
    health_builder.SetOption(std::make_unique<WithoutPlugins>());
    health_builder.RegisterCallbackGenericService(&health_unimplemented);
    health_server = health_builder.BuildAndStart();
    if (health_server == nullptr || health_port == 0) {
      std::fprintf(stderr, "mpa_server: --health_address: cannot listen on %s\n",
                   health_address.c_str());
      return 1;
    }
  }
  auto set_serving = [&](bool serving) {
    for (grpc::Server* s : {server.get(), health_server.get()}) {
      if (s == nullptr) continue;
      s->GetHealthCheckService()->SetServingStatus(
          multipole::v1::DecodeService::service_full_name(), serving);
      s->GetHealthCheckService()->SetServingStatus(serving);
    }
  };
  scheduler.Start();
  set_serving(true);
  std::printf(
      "mpa_server: model %s (%s, vocab %d, context %d, tokenizer %s), attention %s, device %s\n",
      info.model_name.c_str(), info.architecture.c_str(), info.vocab_size, info.max_context_tokens,
      info.has_tokenizer ? "yes" : "no", std::string(mpa::AttentionModeName(*mode)).c_str(),
      info.device.c_str());
  if (const auto [used, limit] = (*engine)->attention_state_bytes();
      limit > 0 || gpu.value() >= 0) {
    std::printf(
        "mpa_server: sparse attention state beside the KV cache: up to %.1f MiB "
        "(--attention_state_mb)%s\n",
        limit / 1048576.0, limit == 0 ? "; with none, every sparse request attends exactly" : "");
  }
  std::printf("mpa_server listening on %s\n", BoundAddress(address, port).c_str());
  std::printf("mpa_server: %s\n", tls_summary.c_str());
  if (api_keys != nullptr) {
    std::string names;
    for (const mpa::server::ApiKey& key : api_keys->keys()) {
      absl::StrAppend(&names, names.empty() ? "" : ", ", key.name);
    }
    std::printf("mpa_server: API keys required (%zu: %s), at most %d sessions per key\n",
                api_keys->keys().size(), names.c_str(), options.max_sessions_per_owner);
  } else {
    std::printf("mpa_server: no --api_keys_file: the DecodeService is open to every client\n");
  }
  if (metrics_endpoint != nullptr) {
    std::printf("mpa_server metrics on %s\n",
                BoundAddress(metrics_address, metrics_endpoint->port()).c_str());
  }
  if (health_server != nullptr) {
    std::printf("mpa_server health on %s (plaintext)\n",
                BoundAddress(health_address, health_port).c_str());
  }
  std::fflush(stdout);

  // Signals were blocked in every thread (see main); wait for one here.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGUSR1);  // the scheduler's fault handler
  int signal_number = 0;
  do {
    sigwait(&signals, &signal_number);
  } while (signal_number == SIGUSR1 && !scheduler.faulted());  // SIGUSR1 from elsewhere: ignored
  if (signal_number == SIGUSR1) {
    std::printf(
        "mpa_server: the model's device failed: %s; exiting with status 1 so that a supervisor "
        "restarts the server\n",
        std::string(scheduler.fault().message()).c_str());
    std::fflush(stdout);
    set_serving(false);
    // The failed streams have their final messages queued: a moment to reach the clients.
    service.open_streams().WaitForNone(absl::Now() + absl::Seconds(2));
    server->Shutdown(std::chrono::system_clock::now());
    if (health_server != nullptr) health_server->Shutdown(std::chrono::system_clock::now());
    scheduler.Stop();
    return 1;
  }

  const absl::Duration drain_timeout = absl::GetFlag(FLAGS_drain_timeout);
  std::printf("mpa_server: signal %d: draining (up to %s)\n", signal_number,
              absl::FormatDuration(drain_timeout).c_str());
  std::fflush(stdout);
  const absl::Time drain_start = absl::Now();
  set_serving(false);
  scheduler.BeginDrain();
  if (!scheduler.WaitForIdle(absl::Now() + drain_timeout)) {
    std::printf("mpa_server: drain deadline passed: cancelling %lld running generations\n",
                static_cast<long long>(scheduler.snapshot().active_generations));
    scheduler.CancelAll();
    scheduler.WaitForIdle(absl::Now() + absl::Seconds(5));
  }
  // Streams have their final messages queued; give their writes time to reach the clients.
  const bool streams_ended = service.open_streams().WaitForNone(absl::Now() + absl::Seconds(5));
  std::printf("mpa_server: generations drained after %.3f s (%d streams still open)\n",
              absl::ToDoubleSeconds(absl::Now() - drain_start), service.open_streams().count());
  std::fflush(stdout);
  // With every stream ended, what the graceful shutdown would still wait for is mostly idle
  // connections: a client with no call in progress reads the GOAWAY only when its channel's
  // backup poller runs (every 5 s by default), and the server waits for its acknowledgement. A
  // short grace lets unary calls in progress finish; then the remaining connections are closed.
  server->Shutdown(std::chrono::system_clock::now() +
                   (streams_ended ? std::chrono::milliseconds(250) : std::chrono::milliseconds(0)));
  if (health_server != nullptr) health_server->Shutdown(std::chrono::system_clock::now());
  std::printf("mpa_server: gRPC server shut down after %.3f s\n",
              absl::ToDoubleSeconds(absl::Now() - drain_start));
  std::fflush(stdout);
  scheduler.Stop();
  std::printf("mpa_server: stopped after %.3f s\n",
              absl::ToDoubleSeconds(absl::Now() - drain_start));
  std::fflush(stdout);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Serves a model over gRPC: mpa_server --model=DIR [--address=...]");
  mpa::ListFlagsInHelp("server/server_main.cc");
  absl::ParseCommandLine(argc, argv);
  // Block the shutdown signals before any thread starts, so only Serve's sigwait receives them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  return Serve();
}
