#include "model/cpu_attention_backend.h"

#include <cmath>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/attention_blas.h"
#include "model/kv_cache.h"
#include "model/multipole_attention.h"
#include "model/quest_attention.h"

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
  cpu::DenseDecodeParams p;
  p.q = q_rot;
  p.kv = seq.View(layer);
  p.num_q_heads = config_.num_heads;
  p.num_kv_heads = config_.num_kv_heads;
  p.head_dim = config_.head_dim;
  p.scale = 1.0f / std::sqrt(static_cast<float>(config_.head_dim));
  p.out = out;
  if (use_blas_) {
    cpu::DenseDecodeAttentionBlas(p);
  } else {
    cpu::DenseDecodeAttention(p);
  }
  AttentionStats& stats = seq.stats();
  stats.decode_steps += 1;
  stats.tokens_attended_exact += int64_t{seq.num_tokens()} * config_.num_kv_heads;
  stats.tokens_total += int64_t{seq.num_tokens()} * config_.num_kv_heads;
}

}  // namespace mpa
