#include "model/attention/quest_attention.h"

#include <cmath>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/multipole/cluster_selection.h"
#include "kernels/cpu/multipole/quest_pages.h"
#include "kernels/cpu/multipole/sparse_attention.h"
#include "model/attention/dense_attention.h"
#include "model/attention/multipole_attention.h"

namespace mpa {

namespace {

QuestSequenceState& StateOf(SequenceState& seq) {
  auto* state = dynamic_cast<QuestSequenceState*>(seq.backend_state().get());
  if (state == nullptr) {
    seq.backend_state() = std::make_unique<QuestSequenceState>(seq.num_layers());
    state = static_cast<QuestSequenceState*>(seq.backend_state().get());
  }
  return *state;
}

}  // namespace

void UpdateQuestPages(int layer, SequenceState& seq) {
  const MultipoleConfig& config = seq.attention().multipole;
  QuestSequenceState::Layer& state = StateOf(seq).layers[layer];
  const CachePartition part = PartitionCache(seq.num_tokens(), config);
  if (part.clustered_end <= state.paged_end) return;
  const int P = config.quest_page_tokens;
  const int d = seq.head_dim();
  const int num_pages = (part.clustered_tokens() + P - 1) / P;
  // The last page may have been partial: recompute from the page holding the old end.
  const int first_page =
      state.paged_end > part.sink_end ? (state.paged_end - part.sink_end) / P : 0;
  state.page_min.resize(seq.num_kv_heads());
  state.page_max.resize(seq.num_kv_heads());
  for (int h = 0; h < seq.num_kv_heads(); ++h) {
    state.page_min[h].resize(static_cast<size_t>(num_pages) * d);
    state.page_max[h].resize(static_cast<size_t>(num_pages) * d);
    cpu::QuestPageBoundsParams p;
    p.k_head = seq.layer(layer).KeyRow(h, 0);
    p.region_begin = part.sink_end;
    p.region_end = part.clustered_end;
    p.page_tokens = P;
    p.first_page = first_page;
    p.end_page = num_pages;
    p.head_dim = d;
    p.page_min = state.page_min[h].data();
    p.page_max = state.page_max[h].data();
    cpu::QuestPageBounds(p);
  }
  state.paged_end = part.clustered_end;
}

void QuestDecode(int num_heads, int layer, SequenceState& seq, const float* q_rot, float* out) {
  const MultipoleConfig& config = seq.attention().multipole;
  const QuestSequenceState::Layer& state = StateOf(seq).layers[layer];
  const int num_kv_heads = seq.num_kv_heads();
  const int d = seq.head_dim();
  const int group = num_heads / num_kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const cpu::KvView view = seq.View(layer);
  AttentionStats& stats = seq.stats();
  stats.decode_steps += 1;
  stats.tokens_total += int64_t{seq.num_tokens()} * num_kv_heads;

  CachePartition part = PartitionCache(seq.num_tokens(), config);
  part.clustered_end = std::max(part.sink_end, state.paged_end);
  if (part.clustered_tokens() < config.min_clustered_tokens || state.page_min.empty()) {
    SequenceDenseAttention(seq, layer, num_heads, q_rot, out);
    stats.tokens_attended_exact += int64_t{seq.num_tokens()} * num_kv_heads;
    return;
  }
  const int P = config.quest_page_tokens;
  const int num_pages = (part.clustered_tokens() + P - 1) / P;
  std::vector<int32_t> page_tokens(num_pages);
  for (int page = 0; page < num_pages; ++page) {
    page_tokens[page] = std::min(P, part.clustered_tokens() - page * P);
  }
  const int64_t budget = TokenBudget(config, part.clustered_tokens());
  std::vector<float> scores(num_pages);
  std::vector<uint8_t> selected(num_pages);
  for (int h = 0; h < num_kv_heads; ++h) {
    const float* q = q_rot + int64_t{h} * group * d;
    cpu::QuestPageScoreParams sp;
    sp.q = q;
    sp.page_min = state.page_min[h].data();
    sp.page_max = state.page_max[h].data();
    sp.num_pages = num_pages;
    sp.group_size = group;
    sp.head_dim = d;
    sp.scores = scores.data();
    cpu::QuestPageScores(sp);
    cpu::ClusterSelectionParams sel;
    sel.scores = scores.data();
    sel.counts = page_tokens.data();
    sel.num_clusters = num_pages;
    sel.token_budget = budget;
    sel.selected = selected.data();
    cpu::SelectClusters(sel);
    std::vector<cpu::TokenRange> ranges = {{0, part.sink_end},
                                           {part.clustered_end, part.num_tokens}};
    for (int page = 0; page < num_pages; ++page) {
      if (!selected[page]) continue;
      const int begin = part.sink_end + page * P;
      ranges.push_back({begin, begin + page_tokens[page]});
    }
    for (int g = 0; g < group; ++g) {
      cpu::PartialAttention acc(d);
      cpu::SparseExactParams ep;
      ep.q = q + int64_t{g} * d;
      ep.k_head = view.k + h * view.head_stride;
      ep.v_head = view.v + h * view.head_stride;
      ep.head_dim = d;
      ep.scale = scale;
      ep.position_ranges = ranges.data();
      ep.num_position_ranges = static_cast<int>(ranges.size());
      const int64_t tokens = cpu::AccumulateSparseExact(ep, acc);
      if (g == 0) stats.tokens_attended_exact += tokens;
      cpu::FinalizePartial(acc, out + (int64_t{h} * group + g) * d);
    }
    stats.centroids_scored += num_pages;
  }
}

}  // namespace mpa
