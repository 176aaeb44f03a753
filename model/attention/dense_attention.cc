#include "model/attention/dense_attention.h"

#include <cmath>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/attention_blas.h"

namespace mpa {

void SequenceDenseAttention(const SequenceState& seq, int layer, int num_heads, const float* q_rot,
                            float* out, bool use_blas) {
  cpu::DenseDecodeParams p;
  p.q = q_rot;
  p.kv = seq.View(layer);
  p.num_q_heads = num_heads;
  p.num_kv_heads = seq.num_kv_heads();
  p.head_dim = seq.head_dim();
  p.scale = 1.0f / std::sqrt(static_cast<float>(seq.head_dim()));
  p.out = out;
  if (use_blas) {
    cpu::DenseDecodeAttentionBlas(p);
  } else {
    cpu::DenseDecodeAttention(p);
  }
}

}  // namespace mpa
