// KV cache accounting shared by both transformers: the CPU's KvBlockPool (kv_cache.h) and the
// GPU's page pool (CudaModel) both hand out fixed-size blocks (the GPU calls them pages) and
// reserve per sequence, rounding up to whole blocks.
#pragma once

#include <cstdint>

#include "absl/status/status.h"

namespace mpa {

// Blocks of `block_tokens` tokens (> 0) that hold `tokens` tokens (>= 0): the ceiling.
inline int64_t KvBlocksFor(int64_t tokens, int64_t block_tokens) {
  return (tokens + block_tokens - 1) / block_tokens;
}

// ResourceExhausted for a reservation of `needed` more blocks of `block_tokens` tokens when only
// `free` of the pool's `total` blocks are free.
absl::Status KvCacheFullError(int64_t needed, int64_t block_tokens, int64_t free, int64_t total);

}  // namespace mpa
