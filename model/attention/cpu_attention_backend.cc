#include "model/attention/cpu_attention_backend.h"

#include <cmath>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/attention_blas.h"
#include "model/attention/dense_attention.h"
#include "model/attention/multipole_attention.h"
#include "model/attention/quest_attention.h"
#include "model/runtime/kv_cache.h"

namespace mpa {

void CpuAttentionBackend::OnAppend(int layer, SequenceState& seq, int first_new) {
  // Dense attention keeps no per-sequence state; the sparse modes maintain their indices here.
  switch (seq.attention().mode) {
    case AttentionMode::kMultipole:
    case AttentionMode::kExactOnly:
      UpdateClusters(layer, seq, first_new);
      break;
    case AttentionMode::kQuest:
      UpdateQuestPages(layer, seq);
      break;
    case AttentionMode::kDense:
      break;
  }
}

void CpuAttentionBackend::Decode(int layer, SequenceState& seq, const float* q_rot,
                                 const float* q_raw, float* out) {
  switch (seq.attention().mode) {
    case AttentionMode::kMultipole:
    case AttentionMode::kExactOnly:
      MultipoleDecode(rope_, config_.num_heads, layer, seq, q_rot, q_raw, out);
      break;
    case AttentionMode::kQuest:
      QuestDecode(config_.num_heads, layer, seq, q_rot, out);
      break;
    case AttentionMode::kDense:
    default:
      DenseDecode(layer, seq, q_rot, out);
      break;
  }
}

void CpuAttentionBackend::DenseDecode(int layer, SequenceState& seq, const float* q_rot,
                                      float* out) {
  SequenceDenseAttention(seq, layer, config_.num_heads, q_rot, out, use_blas_);
  AttentionStats& stats = seq.stats();
  stats.decode_steps += 1;
  stats.tokens_attended_exact += int64_t{seq.num_tokens()} * config_.num_kv_heads;
  stats.tokens_total += int64_t{seq.num_tokens()} * config_.num_kv_heads;
}

}  // namespace mpa
