// What the engine thread and the gRPC edge report as they work, for monitoring. The scheduler
// and the service hold a ServerObserver* (nullptr: nobody watches, as in the scheduler tests);
// MetricsRegistry (metrics.h) is the implementation that feeds Prometheus. Keeping this a
// small interface keeps prometheus-cpp out of the scheduler and the service.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "model/attention/attention_backend.h"
#include "server/types.h"

namespace mpa::server {

// One Generate call that ended with a finish reason (failures go to OnRequestError instead).
struct FinishedGeneration {
  GenerationResult result;
  // This generation's share of its sequence's counters: the stats at its end minus the stats
  // when it was admitted (prefill clustering, decode lookups and online updates of this turn).
  AttentionStats attention;
  AttentionMode mode = AttentionMode::kDense;  // the mode the generation ran in
  double duration_seconds = 0.0;               // arrival to the final message
};

// Levels the scheduler publishes after each engine step.
struct ServerState {
  int64_t sessions = 0;            // explicit sessions open
  int64_t active_generations = 0;  // admitted, not finished
  int64_t kv_used_tokens = 0;      // KV capacity held by contexts, in tokens (whole blocks)
  int64_t kv_free_tokens = 0;
  int64_t attention_state_bytes = 0;        // sparse modes' device state beside the KV pool
  int64_t attention_state_limit_bytes = 0;  // ... and its limit (0: none kept apart)
};

// Every method must be cheap and never block: the engine thread calls the first four between
// steps, the RPC threads call OnRequestError.
class ServerObserver {
 public:
  virtual ~ServerObserver() = default;
  // One successful batched decode call over batch_size sequences.
  virtual void OnDecodeStep(int batch_size, double seconds) {}
  // One successful prefill chunk of `tokens` tokens.
  virtual void OnPrefillChunk(int64_t tokens, double seconds) {}
  virtual void OnGenerationFinished(const FinishedGeneration& generation) {}
  virtual void SetState(const ServerState& state) {}
  // An RPC refused or failed with `code` (never OK); generate: it was a Generate call.
  virtual void OnRequestError(absl::StatusCode code, bool generate) {}
};

}  // namespace mpa::server
