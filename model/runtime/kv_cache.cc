#include "model/runtime/kv_cache.h"

#include <algorithm>
#include <cstring>

namespace mpa {

int64_t KvBlockPool::free_blocks() const {
  std::lock_guard<std::mutex> lock(mu_);
  return num_blocks_ - used_;
}

absl::Status KvBlockPool::Acquire(int64_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  if (used_ + n > num_blocks_) {
    return KvCacheFullError(n, block_tokens_, num_blocks_ - used_, num_blocks_);
  }
  used_ += n;
  return absl::OkStatus();
}

void KvBlockPool::Release(int64_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  used_ = std::max<int64_t>(0, used_ - n);
}

SequenceState::SequenceState(KvBlockPool* pool, int num_layers, int num_kv_heads, int head_dim,
                             AttentionOptions options)
    : pool_(pool),
      num_kv_heads_(num_kv_heads),
      head_dim_(head_dim),
      layers_(num_layers),
      options_(std::move(options)) {
  for (LayerKv& l : layers_) l.head_dim = head_dim;
}

SequenceState::~SequenceState() {
  backend_state_.reset();
  if (pool_ != nullptr) pool_->Release(blocks_held_);
}

cpu::KvView SequenceState::View(int l) const {
  const LayerKv& kv = layers_[l];
  cpu::KvView view;
  view.k = kv.k.data();
  view.v = kv.v.data();
  view.head_stride = kv.head_stride();
  view.num_tokens = num_tokens();
  return view;
}

namespace {

// Moves [num_kv_heads, old_capacity, head_dim] rows into a [num_kv_heads, new_capacity, head_dim]
// buffer.
void Regrow(std::vector<float>& buf, int num_kv_heads, int old_capacity, int new_capacity,
            int head_dim, int used_tokens) {
  std::vector<float> grown(static_cast<size_t>(num_kv_heads) * new_capacity * head_dim, 0.0f);
  for (int h = 0; h < num_kv_heads; ++h) {
    if (used_tokens > 0) {
      std::memcpy(grown.data() + static_cast<size_t>(h) * new_capacity * head_dim,
                  buf.data() + static_cast<size_t>(h) * old_capacity * head_dim,
                  sizeof(float) * used_tokens * head_dim);
    }
  }
  buf.swap(grown);
}

}  // namespace

absl::Status SequenceState::Reserve(int count) {
  const int64_t needed_tokens = int64_t{num_tokens()} + count;
  if (pool_ != nullptr) {
    const int64_t blocks = pool_->BlocksFor(needed_tokens);
    if (blocks > blocks_held_) {
      if (absl::Status s = pool_->Acquire(blocks - blocks_held_); !s.ok()) return s;
      blocks_held_ = blocks;
    }
  }
  if (layers_.empty() || needed_tokens <= layers_[0].capacity) return absl::OkStatus();
  const int block = pool_ != nullptr ? pool_->block_tokens() : 16;
  // Grow geometrically so a long generation copies each row O(1) times on average.
  int64_t capacity = std::max<int64_t>(needed_tokens, int64_t{layers_[0].capacity} * 3 / 2);
  capacity = KvBlocksFor(capacity, block) * block;
  for (LayerKv& l : layers_) {
    Regrow(l.k, num_kv_heads_, l.capacity, static_cast<int>(capacity), head_dim_, num_tokens());
    Regrow(l.k_raw, num_kv_heads_, l.capacity, static_cast<int>(capacity), head_dim_, num_tokens());
    Regrow(l.v, num_kv_heads_, l.capacity, static_cast<int>(capacity), head_dim_, num_tokens());
    l.capacity = static_cast<int>(capacity);
  }
  return absl::OkStatus();
}

void SequenceState::CommitTokens(const int32_t* ids, int count) {
  tokens_.insert(tokens_.end(), ids, ids + count);
}

}  // namespace mpa
