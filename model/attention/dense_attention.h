// Exact attention of a sequence's newest token over its whole cache at one layer: the dense mode,
// and the fallback every sparse mode takes while its clustered region is short.
#pragma once

#include "model/runtime/kv_cache.h"

namespace mpa {

// q_rot: [num_heads, head_dim] after RoPE; out: [num_heads, head_dim]. use_blas picks the BLAS
// fast path over the reference loops.
void SequenceDenseAttention(const SequenceState& seq, int layer, int num_heads, const float* q_rot,
                            float* out, bool use_blas = false);

}  // namespace mpa
