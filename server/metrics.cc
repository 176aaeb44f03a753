#include "server/metrics.h"

#include <algorithm>
#include <string>

#include "prometheus/text_serializer.h"

namespace mpa::server {

namespace {

prometheus::Family<prometheus::Counter>& CounterFamily(prometheus::Registry& registry,
                                                       const std::string& name,
                                                       const std::string& help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(registry);
}

prometheus::Family<prometheus::Gauge>& GaugeFamily(prometheus::Registry& registry,
                                                   const std::string& name,
                                                   const std::string& help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(registry);
}

prometheus::Family<prometheus::Histogram>& HistogramFamily(prometheus::Registry& registry,
                                                           const std::string& name,
                                                           const std::string& help) {
  return prometheus::BuildHistogram().Name(name).Help(help).Register(registry);
}

constexpr AttentionMode kModes[] = {AttentionMode::kDense, AttentionMode::kMultipole,
                                    AttentionMode::kExactOnly, AttentionMode::kQuest};

}  // namespace

std::vector<double> MetricsRegistry::SecondsBuckets() {
  std::vector<double> b;
  for (double decade = 1e-4; decade < 100.0; decade *= 10.0) {
    b.push_back(decade);
    b.push_back(decade * 2.5);
    b.push_back(decade * 5.0);
  }
  b.push_back(100.0);
  return b;
}

std::vector<double> MetricsRegistry::BatchSizeBuckets() {
  std::vector<double> b;
  for (int size = 1; size <= 1024; size *= 2) b.push_back(size);
  return b;
}

std::vector<double> MetricsRegistry::FractionBuckets() {
  std::vector<double> b;
  for (int i = 1; i <= 20; ++i) b.push_back(i / 20.0);
  return b;
}

MetricsRegistry::MetricsRegistry(const BuildInfo& info)
    : registry_(std::make_shared<prometheus::Registry>()) {
  prometheus::Registry& r = *registry_;

  GaugeFamily(r, "mpa_build_info", "What is served (always 1): model, architecture, attention")
      .Add({{"model", info.model},
            {"architecture", info.architecture},
            {"attention", info.attention}})
      .Set(1);

  auto& requests =
      CounterFamily(r, "mpa_requests_total",
                    "Generate calls that ended, by finish reason (error: refused or failed)");
  requests_length_ = &requests.Add({{"finish_reason", "length"}});
  requests_stop_ = &requests.Add({{"finish_reason", "stop"}});
  requests_eos_ = &requests.Add({{"finish_reason", "eos"}});
  requests_cancelled_ = &requests.Add({{"finish_reason", "cancelled"}});
  requests_error_ = &requests.Add({{"finish_reason", "error"}});

  auto& errors = CounterFamily(r, "mpa_request_errors_total",
                               "RPCs refused or failed, by gRPC status code name");
  for (int code = 1; code < kNumStatusCodes; ++code) {
    request_errors_by_code_[code] =
        &errors.Add({{"code", absl::StatusCodeToString(static_cast<absl::StatusCode>(code))}});
  }

  prompt_tokens_ = &CounterFamily(r, "mpa_prompt_tokens_total",
                                  "Input tokens prefilled (including a session's carried-over "
                                  "last token)")
                        .Add({});
  cached_tokens_ = &CounterFamily(r, "mpa_cached_tokens_total",
                                  "Tokens already in a session's KV cache when a turn started")
                        .Add({});
  generated_tokens_ = &CounterFamily(r, "mpa_generated_tokens_total",
                                     "Tokens generated, counted when their request finishes")
                           .Add({});

  time_to_first_token_ =
      &HistogramFamily(r, "mpa_time_to_first_token_seconds",
                       "Seconds from a request's arrival to its first generated token")
           .Add({}, SecondsBuckets());
  time_per_output_token_ =
      &HistogramFamily(r, "mpa_time_per_output_token_seconds",
                       "Per request: seconds from the first to the last token / (generated - 1)")
           .Add({}, SecondsBuckets());
  request_duration_ = &HistogramFamily(r, "mpa_request_duration_seconds",
                                       "Seconds from a request's arrival to its final message")
                           .Add({}, SecondsBuckets());
  decode_step_ =
      &HistogramFamily(r, "mpa_decode_step_seconds", "Seconds of one batched decode step")
           .Add({}, SecondsBuckets());
  decode_batch_size_ =
      &HistogramFamily(r, "mpa_decode_batch_size", "Sequences per batched decode step")
           .Add({}, BatchSizeBuckets());
  prefill_chunk_ = &HistogramFamily(r, "mpa_prefill_chunk_seconds", "Seconds of one prefill chunk")
                        .Add({}, SecondsBuckets());

  sessions_ = &GaugeFamily(r, "mpa_sessions", "Open sessions").Add({});
  active_generations_ =
      &GaugeFamily(r, "mpa_active_generations", "Generate calls admitted and not finished").Add({});
  auto& kv = GaugeFamily(r, "mpa_kv_cache_tokens", "KV cache capacity in tokens, used or free");
  kv_used_ = &kv.Add({{"state", "used"}});
  kv_free_ = &kv.Add({{"state", "free"}});
  attention_state_used_ =
      &GaugeFamily(r, "mpa_attention_state_bytes",
                   "Device memory in use for the sparse modes' per-sequence state beside the KV "
                   "cache (cluster centroids and bounds, Quest page bounds)")
           .Add({});
  attention_state_limit_ =
      &GaugeFamily(r, "mpa_attention_state_limit_bytes",
                   "Limit of mpa_attention_state_bytes (--attention_state_mb; 0 where the engine "
                   "keeps that state with the KV cache, as the CPU does)")
           .Add({});
  kv_usage_ratio_ =
      &GaugeFamily(r, "mpa_kv_cache_usage_ratio", "KV cache tokens used / capacity").Add({});

  auto& exact = HistogramFamily(r, "mpa_attention_exact_fraction",
                                "Per request: fraction of the KV cache read exactly in decode "
                                "(1 = dense), by attention mode");
  for (AttentionMode mode : kModes) {
    exact_fraction_by_mode_[static_cast<int>(mode)] =
        &exact.Add({{"mode", std::string(AttentionModeName(mode))}}, FractionBuckets());
  }
  auto& attention_tokens =
      CounterFamily(r, "mpa_attention_tokens_total",
                    "KV tokens read exactly (kind=exact) or present (kind=total) in decode, "
                    "summed over steps, layers and KV heads");
  attention_tokens_exact_ = &attention_tokens.Add({{"kind", "exact"}});
  attention_tokens_total_ = &attention_tokens.Add({{"kind", "total"}});
  centroids_scored_ =
      &CounterFamily(r, "mpa_centroids_scored_total", "Cluster centroids scored by lookups")
           .Add({});
  cluster_updates_ =
      &CounterFamily(r, "mpa_cluster_updates_total", "Online cluster updates").Add({});
  cluster_update_seconds_ = &CounterFamily(r, "mpa_cluster_update_seconds_total",
                                           "Wall time spent in online cluster updates")
                                 .Add({});
  tokens_reclustered_ = &CounterFamily(r, "mpa_tokens_reclustered_total",
                                       "Tokens re-clustered by online cluster updates")
                             .Add({});
  prefill_cluster_seconds_ = &CounterFamily(r, "mpa_prefill_cluster_seconds_total",
                                            "Wall time spent clustering prompts at prefill")
                                  .Add({});
}

std::string MetricsRegistry::Serialize() const {
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

void MetricsRegistry::OnDecodeStep(int batch_size, double seconds) {
  decode_step_->Observe(seconds);
  decode_batch_size_->Observe(batch_size);
}

void MetricsRegistry::OnPrefillChunk(int64_t tokens, double seconds) {
  prefill_chunk_->Observe(seconds);
  prompt_tokens_->Increment(static_cast<double>(tokens));
}

void MetricsRegistry::OnGenerationFinished(const FinishedGeneration& g) {
  const GenerationResult& r = g.result;
  switch (r.finish_reason) {
    case FinishReason::kLength:
      requests_length_->Increment();
      break;
    case FinishReason::kStop:
      requests_stop_->Increment();
      break;
    case FinishReason::kEos:
      requests_eos_->Increment();
      break;
    case FinishReason::kCancelled:
      requests_cancelled_->Increment();
      break;
  }
  cached_tokens_->Increment(static_cast<double>(r.cached_tokens));
  generated_tokens_->Increment(static_cast<double>(r.generated_tokens));
  if (r.generated_tokens > 0) time_to_first_token_->Observe(r.time_to_first_token_seconds);
  if (r.generated_tokens > 1) {
    time_per_output_token_->Observe(r.decode_seconds / static_cast<double>(r.generated_tokens - 1));
  }
  request_duration_->Observe(g.duration_seconds);

  const AttentionStats& a = g.attention;
  // Only a request that decoded has a fraction: a prompt-only turn reads no cache.
  if (a.tokens_total > 0) {
    exact_fraction_by_mode_[static_cast<int>(g.mode)]->Observe(a.sparsity());
  }
  attention_tokens_exact_->Increment(static_cast<double>(a.tokens_attended_exact));
  attention_tokens_total_->Increment(static_cast<double>(a.tokens_total));
  centroids_scored_->Increment(static_cast<double>(a.centroids_scored));
  cluster_updates_->Increment(static_cast<double>(a.cluster_updates));
  cluster_update_seconds_->Increment(std::max(0.0, a.cluster_update_seconds));
  tokens_reclustered_->Increment(static_cast<double>(a.tokens_reclustered));
  prefill_cluster_seconds_->Increment(std::max(0.0, a.prefill_cluster_seconds));
}

void MetricsRegistry::SetState(const ServerState& s) {
  sessions_->Set(static_cast<double>(s.sessions));
  active_generations_->Set(static_cast<double>(s.active_generations));
  kv_used_->Set(static_cast<double>(s.kv_used_tokens));
  kv_free_->Set(static_cast<double>(s.kv_free_tokens));
  attention_state_used_->Set(static_cast<double>(s.attention_state_bytes));
  attention_state_limit_->Set(static_cast<double>(s.attention_state_limit_bytes));
  const int64_t capacity = s.kv_used_tokens + s.kv_free_tokens;
  kv_usage_ratio_->Set(capacity > 0 ? static_cast<double>(s.kv_used_tokens) / capacity : 0.0);
}

void MetricsRegistry::OnRequestError(absl::StatusCode code, bool generate) {
  int index = static_cast<int>(code);
  if (index <= 0 || index >= kNumStatusCodes) index = static_cast<int>(absl::StatusCode::kUnknown);
  request_errors_by_code_[index]->Increment();
  if (generate) requests_error_->Increment();
}

}  // namespace mpa::server
