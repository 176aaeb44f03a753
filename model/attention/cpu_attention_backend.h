// The CPU attention backend: the reference for every mode (dense, multipole, exact-only, quest).
#pragma once

#include "model/attention/attention_backend.h"
#include "model/config/model_config.h"
#include "model/runtime/rope.h"

namespace mpa {

class CpuAttentionBackend : public AttentionBackend {
 public:
  // use_blas: dense attention through BLAS (the fast path) instead of the reference loops.
  CpuAttentionBackend(const ModelConfig& config, const Rope& rope, bool use_blas = false)
      : config_(config), rope_(rope), use_blas_(use_blas) {}

  void OnAppend(int layer, SequenceState& seq, int first_new) override;
  void Decode(int layer, SequenceState& seq, const float* q_rot, const float* q_raw,
              float* out) override;

 private:
  void DenseDecode(int layer, SequenceState& seq, const float* q_rot, float* out);

  const ModelConfig& config_;
  const Rope& rope_;
  bool use_blas_;
};

}  // namespace mpa
