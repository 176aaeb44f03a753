// The attention step of the model behind one interface, so the model's layers never know
// whether attention is dense, multipole, or another sparse policy, or on which device it runs.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "model/config/multipole_config.h"

namespace mpa {

enum class AttentionMode {
  kDense,      // exact attention over every token
  kMultipole,  // selected clusters exact + centroid approximation for the rest
  kExactOnly,  // selected clusters exact, the rest dropped (Squeezed-Attention-style ablation)
  kQuest,      // Quest baseline: pages scored by min/max bound, top pages exact
};
absl::StatusOr<AttentionMode> ParseAttentionMode(absl::string_view name);
absl::string_view AttentionModeName(AttentionMode mode);

struct AttentionOptions {
  AttentionMode mode = AttentionMode::kDense;
  MultipoleConfig multipole;  // also supplies token_budget/sink/recent for kQuest
};

// Counters a sequence accumulates; the server exports them.
struct AttentionStats {
  int64_t decode_steps = 0;           // (layer x token) attention calls in decode
  int64_t tokens_attended_exact = 0;  // summed over calls and KV heads
  int64_t tokens_total = 0;           // summed over calls and KV heads
  int64_t centroids_scored = 0;
  int64_t cluster_updates = 0;
  int64_t tokens_reclustered = 0;
  double cluster_update_seconds = 0.0;
  double prefill_cluster_seconds = 0.0;

  double sparsity() const {  // fraction of the cache read exactly
    return tokens_total ? static_cast<double>(tokens_attended_exact) / tokens_total : 1.0;
  }
};

class SequenceState;

// Per-sequence state a backend keeps (cluster indices, ...); owned by the SequenceState.
class BackendSequenceState {
 public:
  virtual ~BackendSequenceState() = default;
};

class AttentionBackend {
 public:
  virtual ~AttentionBackend() = default;

  // Called once per layer after tokens [first_new, seq.num_tokens()) were written to that layer's
  // KV cache (a prefill chunk or one decoded token). Cluster maintenance happens here.
  virtual void OnAppend(int layer, SequenceState& seq, int first_new) = 0;

  // Attention for the sequence's newest token at `layer`. q_rot: [num_heads, head_dim] after
  // RoPE at the token's position; q_raw: the same before RoPE (for centroid lookup at a fixed
  // position, CentroidKeys::kPreRope). out: [num_heads, head_dim].
  virtual void Decode(int layer, SequenceState& seq, const float* q_rot, const float* q_raw,
                      float* out) = 0;
};

}  // namespace mpa
