// The engine thread (DESIGN.md section 2): the only thread that touches the engine and session
// state. RPC threads post commands; each loop iteration runs them, evicts expired sessions and
// makes one Step(): at most one prefill chunk of one new input (so running streams stall for
// one chunk at most), then one batched decode over every generation that is decoding
// (continuous batching: generations join and leave between steps).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/engine.h"
#include "server/server_observer.h"
#include "server/session_manager.h"
#include "server/types.h"

namespace mpa::server {

struct SchedulerOptions {
  int max_sessions = 64;
  // Explicit sessions one owner (API key) may hold at once (0: no limit of its own).
  int max_sessions_per_owner = 0;
  // Tokens of one request's input (0: the model's context length).
  int64_t max_prompt_tokens = 0;
  // Tokens of a whole context: earlier turns + input + max_new_tokens (0: the model's context
  // length; never more than it).
  int64_t max_total_tokens = 0;
  absl::Duration session_ttl = absl::Minutes(10);
  int prefill_chunk_tokens = 64;  // tokens per prefill step of one input
  int max_batch_size = 64;        // sequences per Decode call
  int default_max_new_tokens = 256;
  AttentionOptions default_attention;
};

// Counters for monitoring, readable from any thread (the metrics hook).
struct SchedulerSnapshot {
  int64_t sessions = 0;            // explicit sessions open
  int64_t active_generations = 0;  // admitted, not finished
  int64_t kv_free_tokens = 0;
  int64_t steps = 0;             // engine steps run
  int64_t tokens_generated = 0;  // over the server's life
  int64_t prefill_tokens = 0;    // over the server's life
  int64_t last_batch_size = 0;
};

class DecodeScheduler {
 public:
  // observer (may be null; outlives the scheduler) hears of steps, finished generations and
  // levels, on the engine thread.
  DecodeScheduler(Engine* engine, SchedulerOptions options, ServerObserver* observer = nullptr);
  ~DecodeScheduler();  // Stop()

  void Start();
  // Fails every running generation with UNAVAILABLE and joins the thread. Later calls fail with
  // UNAVAILABLE at once.
  void Stop();

  Engine& engine() const { return *engine_; }
  const SchedulerOptions& options() const { return options_; }
  // The effective limits (0 flags resolved against the model).
  int64_t max_prompt_tokens() const;
  int64_t max_total_tokens() const;

  // Commands: the callbacks run on the engine thread (or on the caller's, when refused at once)
  // and must not block. `owner` is who asks (an API key's owner string, empty without keys):
  // a session is bound to its creator, and a command naming another owner's session fails
  // with NotFound exactly as for an unknown id.
  // requested_id: the id the client chose (validated, see session_id.h), empty for a fresh one;
  // an id `owner` already holds is AlreadyExists.
  void CreateSession(std::string owner, AttentionOverride attention, std::string requested_id,
                     std::function<void(absl::StatusOr<SessionInfo>)> done);
  // Errors (unknown session, limits, busy session, drain) go to sink->Fail.
  void Generate(GenerateParams params, std::shared_ptr<GenerationSink> sink);
  // done(true) if a generation was running and will stop.
  void CancelGeneration(std::string owner, std::string session_id,
                        std::function<void(absl::StatusOr<bool>)> done);
  void CloseSession(std::string owner, std::string session_id,
                    std::function<void(absl::Status)> done);
  void GetSession(std::string owner, std::string session_id,
                  std::function<void(absl::StatusOr<SessionInfo>)> done);
  // A sink that reports_close() delivered its whole stream (or its client went away): the
  // session's idle time starts now.
  void StreamClosed(std::string owner, std::string session_id);

  // Drain: from now on CreateSession and Generate are refused with UNAVAILABLE; running
  // generations continue.
  void BeginDrain();
  bool draining() const { return draining_.load(); }
  // Called once, on the engine thread, when the engine's device fails for good (Engine::
  // DeviceStatus after a failed step); right after it every generation is failed with UNAVAILABLE
  // naming the fault, and from then on new requests are refused. Set before Start().
  void set_fault_handler(std::function<void(const absl::Status&)> handler) {
    fault_handler_ = std::move(handler);
  }
  bool faulted() const { return faulted_.load(); }
  // The fault, once faulted() is true (written before the flag is set, never after).
  const absl::Status& fault() const { return fault_; }
  // Blocks until no generation is running or the deadline passes; true if none is running.
  bool WaitForIdle(absl::Time deadline);
  // Stops every running generation at the next step (finish reason CANCELLED).
  void CancelAll();

  SchedulerSnapshot snapshot() const;

 private:
  void Post(std::function<void()> command, std::function<void()> refuse);
  void Run();
  void Step();
  void RunCommands(std::deque<std::function<void()>>& commands);

  // Engine-thread helpers.
  void StartGeneration(GenerateParams params, std::shared_ptr<GenerationSink> sink);
  void PrefillChunk(Generation& gen);
  void DecodeBatch(const std::vector<Generation*>& batch);
  // Records a sampled token; finishes the generation if a stop condition holds.
  void Emit(Generation& gen, int32_t token, float logprob);
  void FinishGeneration(Generation& gen, FinishReason reason);
  void FailGeneration(Generation& gen, const absl::Status& status);
  // After a failed engine call: whether the device failed for good (then every generation is
  // failed, the handler called, and true returned).
  bool CheckDeviceFault();
  void EndGeneration(Generation& gen);
  void EvictExpired();
  SessionInfo Describe(const Session& s) const;
  int64_t ReservedGrowthBlocks() const;
  // InvalidArgument naming the mode and the device when the engine cannot attend in `mode`.
  absl::Status CheckAttentionSupported(AttentionMode mode) const;
  void PublishSnapshot();

  Engine* engine_;
  SchedulerOptions options_;
  ServerObserver* observer_;                            // may be null
  SessionManager sessions_;                             // engine thread only
  std::list<std::unique_ptr<Generation>> generations_;  // engine thread only; arrival order
  std::vector<float> logits_;                           // [max_batch_size, vocab]

  std::mutex mu_;
  std::condition_variable wake_;     // commands arrived / stop
  std::condition_variable idle_cv_;  // a generation ended
  std::deque<std::function<void()>> commands_;
  bool stop_ = false;
  bool stopped_ = false;
  bool cancel_all_ = false;
  bool processing_ = false;  // the engine thread took commands and has not published since
  std::thread thread_;
  std::atomic<bool> draining_{false};
  std::atomic<bool> faulted_{false};
  absl::Status fault_;  // engine thread
  std::function<void(const absl::Status&)> fault_handler_;

  // Snapshot counters.
  std::atomic<int64_t> snap_sessions_{0}, snap_active_{0}, snap_kv_free_tokens_{0}, snap_steps_{0},
      snap_tokens_{0}, snap_prefill_{0}, snap_batch_{0};
};

}  // namespace mpa::server
