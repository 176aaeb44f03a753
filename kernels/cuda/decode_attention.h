// Split-KV flash decoding over the paged BF16 KV cache: one new query token per sequence.
//
// Each thread block takes one (sequence, KV head, split): the GQA group's query heads are packed
// into one tile so every key/value row read from memory serves the whole group. A split keeps the
// base-2 online-softmax partial (o, m, l) of kernels/cpu/attention.h; splits are merged with the
// same rule. Decode is bound by reading the cache, so splits exist only to keep every
// multiprocessor busy when batch x KV heads is small.
//
// Two kernels: for head_dim 64 and 128 with pages of >= 16 tokens, a tensor-core kernel (each warp
// streams 16-token tiles through its own cp.async ring and computes S^T = K Q^T and O^T += V^T P^T
// with bf16 mma, the group's heads on the 8-wide side); for every other shape a CUDA-core kernel.
#pragma once

#include <cstddef>

#include "kernels/cuda/common.h"

namespace mpa::cuda {

// Which kernel runs. kAuto: the tensor-core one wherever it applies. Tests and benchmarks force
// one.
enum class DecodeKernel { kAuto, kCudaCore, kTensorCore };

// An explicit list of cache rows per (sequence, KV head), attended instead of the positions
// [0, seq_len): the sparse modes' sink, recent window and selected clusters. Row r of KV head h is
// the pool row at kv.k + r * head_dim, i.e. r = (page * num_kv_heads + h) * page_size + offset.
struct RowList {
  const int32_t* rows = nullptr;    // [batch, num_kv_heads, capacity] device
  const int32_t* counts = nullptr;  // [batch, num_kv_heads] device: rows to attend (<= capacity)
  int capacity = 0;
};

struct DecodeAttentionParams {
  const bf16* q = nullptr;  // [batch, num_q_heads, head_dim] after RoPE
  PagedKvCache kv;
  BlockTable block_table;
  const int32_t* seq_lens = nullptr;  // [batch] device: tokens in each sequence's cache (>= 0)
  int batch = 0;
  int num_q_heads = 0;  // a multiple of kv.num_kv_heads, group = num_q_heads / num_kv_heads <= 8
  int max_seq_len = 0;  // host: an upper bound of seq_lens (sizes the splits)
  float scale = 0.0f;   // softmax scale, usually 1/sqrt(head_dim)
  int num_splits = 0;   // 0: chosen from the device and max_seq_len
  // Exactly one of the outputs is set.
  bf16* out = nullptr;       // [batch, num_q_heads, head_dim]
  float* out_f32 = nullptr;  // [batch, num_q_heads, head_dim]
  // Scratch for split partials; DecodeAttentionWorkspaceBytes says how much a split count needs.
  // With too little, the launcher uses fewer splits.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  // Optional row lists (rows.rows set): seq_lens is then unused, num_splits must be given (> 0) and
  // is kept exactly, and each (sequence, KV head) spreads its own row count over the splits.
  RowList rows;
  // Partial slots after the splits' that another kernel filled before this call (the multipole
  // approximation term), merged with the splits' partials. With extra partials, the workspace
  // starts with partial_o [batch, num_splits + extra_partials, num_q_heads, head_dim] fp32, then
  // partial_lse [batch, num_splits + extra_partials, num_q_heads] fp32 (base-2 log-sum-exp, -inf
  // for an empty partial); slot num_splits + i is extra partial i.
  int extra_partials = 0;
  // kTensorCore on a shape it does not cover (head_dim not 64/128, pages < 16 tokens) is invalid.
  DecodeKernel kernel = DecodeKernel::kAuto;
  // Tuning knobs for benchmarks, 0: the default. CUDA-core kernel: 4 tokens per thread per stage,
  // 3 stages; other values take effect only for head_dim 128, group 4: (2, 4), (2, 6), (4, 2).
  // Tensor-core kernel: warps_per_block 4, pipeline_stages 3 (16-token tiles per warp); other
  // values take effect only for head_dim 128, group 4: (4, 2), (4, 4), (8, 3).
  int tokens_per_thread = 0;
  int pipeline_stages = 0;
  int warps_per_block = 0;
};

// Supported: head_dim in {8, 16, 24, 32, 64, 96, 128, 256}, group in {1, 2, 4, 8}.
// num_splits counts every partial slot (splits + extra partials).
size_t DecodeAttentionWorkspaceBytes(int batch, int num_q_heads, int head_dim, int num_splits);

// The split count the launcher would choose (for workspace sizing and benchmarks) for head_dim and
// the kernel asked for: one block per multiprocessor for the tensor-core kernel, two for the
// CUDA-core kernel, never splitting below ~256 tokens.
int ChooseDecodeSplits(int batch, int num_kv_heads, int max_seq_len, int page_size, int head_dim,
                       DecodeKernel kernel = DecodeKernel::kAuto);
// The CUDA-core kernel's choice (the launcher's for head_dim other than 64/128).
int ChooseDecodeSplits(int batch, int num_kv_heads, int max_seq_len, int page_size);

// cudaErrorInvalidValue on unsupported shapes or missing pointers.
cudaError_t DecodeAttention(const DecodeAttentionParams& p, cudaStream_t stream);

}  // namespace mpa::cuda
