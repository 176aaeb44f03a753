// The Quest baseline (Tang et al., "Quest: Query-Aware Sparsity for Efficient Long-Context LLM
// Inference", 2024) over the same cache partition and token budget as Multipole Attention, so
// the two are compared on identical inputs: the sink and the recent window are exact; the
// "clustered" region is cut into pages of quest_page_tokens consecutive tokens, each page keeps
// per-channel min/max of its post-RoPE keys, and the pages with the highest upper bound on a
// logit are attended exactly until the budget is spent. Nothing approximates the other pages.
#pragma once

#include <vector>

#include "model/attention/attention_backend.h"
#include "model/runtime/kv_cache.h"

namespace mpa {

class QuestSequenceState : public BackendSequenceState {
 public:
  struct Layer {
    int paged_end = 0;                         // pages cover [sink_end, paged_end)
    std::vector<std::vector<float>> page_min;  // per KV head [num_pages, head_dim]
    std::vector<std::vector<float>> page_max;  // per KV head [num_pages, head_dim]
  };
  explicit QuestSequenceState(int num_layers) : layers(num_layers) {}
  std::vector<Layer> layers;
};

// Brings layer `layer`'s page bounds up to the cache partition's clustered end.
void UpdateQuestPages(int layer, SequenceState& seq);

// Quest attention for the newest token at `layer`; dense while the paged region is shorter than
// min_clustered_tokens (as multipole), so both modes fall back at the same length.
void QuestDecode(int num_heads, int layer, SequenceState& seq, const float* q_rot, float* out);

}  // namespace mpa
