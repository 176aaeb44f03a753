#include "kernels/cpu/multipole/sparse_attention.h"

namespace mpa::cpu {

int64_t AccumulateSparseExact(const SparseExactParams& p, PartialAttention& acc) {
  int64_t tokens = 0;
  for (int r = 0; r < p.num_position_ranges; ++r) {
    const TokenRange& range = p.position_ranges[r];
    if (range.size() <= 0) continue;
    PartialOverTokenRange(p.q, p.k_head, p.v_head, p.head_dim, p.scale, range.begin, range.end,
                          acc);
    tokens += range.size();
  }
  for (int r = 0; r < p.num_slot_ranges; ++r) {
    const TokenRange& range = p.slot_ranges[r];
    if (range.size() <= 0) continue;
    PartialOverTokenList(p.q, p.k_head, p.v_head, p.head_dim, p.scale, p.slots + range.begin,
                         range.size(), acc);
    tokens += range.size();
  }
  return tokens;
}

}  // namespace mpa::cpu
