// Causal attention of many new tokens per sequence (prefill and chunked prefill) over the paged
// BF16 KV cache, tiled with an online softmax: a block holds one tile of query rows and streams
// key/value tiles through shared memory, so no score matrix larger than a tile ever exists.
#pragma once

#include "kernels/cuda/common.h"

namespace mpa::cuda {

// Which kernel runs. kAuto: for head_dim 64 and 128 a tensor-core kernel (FlashAttention-2 style:
// mma.sync bf16 -> fp32, 64 or 128 query rows x 64-key tiles, cp.async double buffering; with fp32
// output P enters the products as two bf16 terms), for every other head_dim a CUDA-core kernel.
// Tests and benchmarks force one; kTensorCore on another head_dim is invalid.
enum class PrefillKernel { kAuto, kCudaCore, kTensorCore };

struct PrefillAttentionParams {
  // The new tokens of all sequences, back to back: sequence b owns rows
  // [q_starts[b], q_starts[b + 1]), and they are its last (q_starts[b+1] - q_starts[b]) positions.
  const bf16* q = nullptr;            // [total_rows, num_q_heads, head_dim] after RoPE
  const int32_t* q_starts = nullptr;  // [batch + 1] device
  PagedKvCache kv;                    // already holds the new tokens' keys and values
  BlockTable block_table;
  const int32_t* seq_lens = nullptr;  // [batch] device: tokens in the cache, new ones included
  int batch = 0;
  int num_q_heads = 0;     // group = num_q_heads / num_kv_heads in {1, 2, 4, 8}
  int max_new_tokens = 0;  // host: max over b of q_starts[b+1] - q_starts[b] (sizes the grid)
  float scale = 0.0f;
  // Exactly one of the outputs is set.
  bf16* out = nullptr;       // [total_rows, num_q_heads, head_dim]
  float* out_f32 = nullptr;  // [total_rows, num_q_heads, head_dim]
  PrefillKernel kernel = PrefillKernel::kAuto;
  // Tuning knob for benchmarks, 0: the default (8 for head_dim 128, 4 for 64). Tensor-core kernel:
  // warps per block, 4 (64 query rows per block) or 8 (128 rows); anything else is invalid.
  int tensor_core_warps = 0;
};

// Supported: head_dim in {8, 16, 24, 32, 64, 96, 128, 256}. cudaErrorInvalidValue otherwise.
cudaError_t PrefillAttention(const PrefillAttentionParams& p, cudaStream_t stream);

}  // namespace mpa::cuda
