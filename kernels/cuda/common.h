// Types shared by the CUDA kernels' public headers. Plain host-compilable C++: the launchers are
// called from host code built by the C++ compiler.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace mpa::cuda {

using bf16 = __nv_bfloat16;

// One layer's paged KV cache. Pages of page_size tokens come from one pool; inside a page each KV
// head's rows are contiguous (page_size * head_dim * 2 bytes, 4 KiB for 16 x 128), so a split of
// the context reads long runs at the copy rate.
struct PagedKvCache {
  bf16* k = nullptr;  // [num_pages, num_kv_heads, page_size, head_dim] keys after RoPE
  bf16* v = nullptr;  // same layout, values
  int num_kv_heads = 0;
  int head_dim = 0;
  int page_size = 0;  // tokens per page, a power of two
};

// Where sequence b's token t lives: page block_table[b * max_pages_per_seq + t / page_size].
struct BlockTable {
  const int32_t* pages = nullptr;  // [batch, max_pages_per_seq] device
  int max_pages_per_seq = 0;
};

// log2(e): turns natural-log logits into base-2 ones (the partials are kept in base 2).
inline constexpr float kLog2e = 1.4426950408889634f;

// Returns log2(x) for a power of two x > 0, else -1.
inline int Log2PowerOfTwo(int x) {
  if (x <= 0 || (x & (x - 1)) != 0) return -1;
  int s = 0;
  while ((1 << s) < x) ++s;
  return s;
}

}  // namespace mpa::cuda
