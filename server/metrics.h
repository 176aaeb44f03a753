// MetricsRegistry: every metric family of mpa_server, declared once (name, help, unit in the
// name's suffix) over prometheus-cpp, and fed through the ServerObserver interface by the
// scheduler and the service. server_main serves registry() at http://<--metrics_address>/metrics.
//
// Per-request values (finish reasons, token counts, latencies, attention counters) are counted
// when a generation finishes, from its result and its share of the sequence's AttentionStats;
// prompt tokens, step and chunk timings as they happen; levels (sessions, KV) after every engine
// step. Every label value is created up front so a series reads 0 before its first event.
#pragma once

#include <array>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "server/server_observer.h"

namespace mpa::server {

// What is served, for mpa_build_info.
struct BuildInfo {
  std::string model;         // the model folder's name
  std::string architecture;  // e.g. LlamaForCausalLM
  std::string attention;     // the default attention mode's name
};

class MetricsRegistry : public ServerObserver {
 public:
  explicit MetricsRegistry(const BuildInfo& info);

  // The registry to expose (prometheus::Exposer::RegisterCollectable) or serialise.
  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }
  // The text exposition format of every family, as a scrape returns it.
  std::string Serialize() const;

  // Bucket upper bounds. Seconds: 100 us .. 100 s in 1-2.5-5 steps. Batch sizes: powers of two
  // 1 .. 1024. Fractions: 0.05 .. 1 in steps of 0.05.
  static std::vector<double> SecondsBuckets();
  static std::vector<double> BatchSizeBuckets();
  static std::vector<double> FractionBuckets();

  // ServerObserver.
  void OnDecodeStep(int batch_size, double seconds) override;
  void OnPrefillChunk(int64_t tokens, double seconds) override;
  void OnGenerationFinished(const FinishedGeneration& generation) override;
  void SetState(const ServerState& state) override;
  void OnRequestError(absl::StatusCode code, bool generate) override;

 private:
  static constexpr int kNumModes = 4;         // AttentionMode values
  static constexpr int kNumStatusCodes = 17;  // absl canonical codes 0..16

  std::shared_ptr<prometheus::Registry> registry_;

  prometheus::Counter* requests_length_;
  prometheus::Counter* requests_stop_;
  prometheus::Counter* requests_eos_;
  prometheus::Counter* requests_cancelled_;
  prometheus::Counter* requests_error_;
  std::array<prometheus::Counter*, kNumStatusCodes> request_errors_by_code_{};
  prometheus::Counter* prompt_tokens_;
  prometheus::Counter* cached_tokens_;
  prometheus::Counter* generated_tokens_;
  prometheus::Histogram* time_to_first_token_;
  prometheus::Histogram* time_per_output_token_;
  prometheus::Histogram* request_duration_;
  prometheus::Histogram* decode_step_;
  prometheus::Histogram* decode_batch_size_;
  prometheus::Histogram* prefill_chunk_;
  prometheus::Gauge* sessions_;
  prometheus::Gauge* active_generations_;
  prometheus::Gauge* kv_used_;
  prometheus::Gauge* kv_free_;
  prometheus::Gauge* attention_state_used_;
  prometheus::Gauge* attention_state_limit_;
  prometheus::Gauge* kv_usage_ratio_;
  std::array<prometheus::Histogram*, kNumModes> exact_fraction_by_mode_{};
  prometheus::Counter* attention_tokens_exact_;
  prometheus::Counter* attention_tokens_total_;
  prometheus::Counter* centroids_scored_;
  prometheus::Counter* cluster_updates_;
  prometheus::Counter* cluster_update_seconds_;
  prometheus::Counter* tokens_reclustered_;
  prometheus::Counter* prefill_cluster_seconds_;
};

}  // namespace mpa::server
