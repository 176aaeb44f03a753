// The KV cache of the CPU engine. Capacity is accounted in fixed-size blocks drawn from one pool
// shared by all sequences (admission control); each sequence stores, per layer and KV head, its
// rows contiguously: [num_kv_heads][capacity][head_dim] floats, grown a block at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/status/status.h"
#include "kernels/cpu/attention.h"
#include "model/attention/attention_backend.h"
#include "model/runtime/kv_blocks.h"

namespace mpa {

class KvBlockPool {
 public:
  KvBlockPool(int64_t num_blocks, int block_tokens)
      : num_blocks_(num_blocks), block_tokens_(block_tokens) {}

  int block_tokens() const { return block_tokens_; }
  int64_t num_blocks() const { return num_blocks_; }
  int64_t free_blocks() const;
  int64_t BlocksFor(int64_t tokens) const { return KvBlocksFor(tokens, block_tokens_); }

  // ResourceExhausted (KvCacheFullError: the need and what is free) if fewer than n blocks are
  // free.
  absl::Status Acquire(int64_t n);
  void Release(int64_t n);

 private:
  mutable std::mutex mu_;
  int64_t num_blocks_;
  int block_tokens_;
  int64_t used_ = 0;
};

// One layer's cache for one sequence.
struct LayerKv {
  std::vector<float> k;      // [num_kv_heads, capacity, head_dim] keys after RoPE
  std::vector<float> k_raw;  // same, keys before RoPE (the pre-RoPE CentroidKeys cluster these)
  std::vector<float> v;      // same, values
  int64_t head_stride() const { return capacity * head_dim; }
  int capacity = 0;
  int head_dim = 0;

  float* KeyRow(int kv_head, int t) {
    return k.data() + kv_head * head_stride() + int64_t{t} * head_dim;
  }
  float* RawKeyRow(int kv_head, int t) {
    return k_raw.data() + kv_head * head_stride() + int64_t{t} * head_dim;
  }
  float* ValueRow(int kv_head, int t) {
    return v.data() + kv_head * head_stride() + int64_t{t} * head_dim;
  }
};

// A sequence (one session's context): its tokens, KV cache, attention options and the
// backend's per-sequence state. Owned by whoever drives the model (the scheduler).
class SequenceState {
 public:
  SequenceState(KvBlockPool* pool, int num_layers, int num_kv_heads, int head_dim,
                AttentionOptions options);
  ~SequenceState();
  SequenceState(const SequenceState&) = delete;
  SequenceState& operator=(const SequenceState&) = delete;

  int num_tokens() const { return static_cast<int>(tokens_.size()); }
  const std::vector<int32_t>& tokens() const { return tokens_; }
  int num_layers() const { return static_cast<int>(layers_.size()); }
  int num_kv_heads() const { return num_kv_heads_; }
  int head_dim() const { return head_dim_; }
  LayerKv& layer(int l) { return layers_[l]; }
  const LayerKv& layer(int l) const { return layers_[l]; }
  cpu::KvView View(int l) const;

  // Makes room for `count` more tokens (acquiring pool blocks as needed); the caller then writes
  // rows [num_tokens(), num_tokens() + count) of every layer and calls CommitTokens.
  absl::Status Reserve(int count);
  void CommitTokens(const int32_t* ids, int count);

  const AttentionOptions& attention() const { return options_; }
  void set_attention(const AttentionOptions& options) { options_ = options; }
  AttentionStats& stats() { return stats_; }
  const AttentionStats& stats() const { return stats_; }
  std::unique_ptr<BackendSequenceState>& backend_state() { return backend_state_; }

 private:
  KvBlockPool* pool_;
  int num_kv_heads_;
  int head_dim_;
  int64_t blocks_held_ = 0;
  std::vector<LayerKv> layers_;
  std::vector<int32_t> tokens_;
  AttentionOptions options_;
  AttentionStats stats_;
  std::unique_ptr<BackendSequenceState> backend_state_;
};

}  // namespace mpa
