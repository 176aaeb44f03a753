#include "model/attention/multipole_attention.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/multipole/centroid_approximation.h"
#include "kernels/cpu/multipole/centroid_lookup.h"
#include "kernels/cpu/multipole/cluster_selection.h"
#include "kernels/cpu/multipole/kmeans.h"
#include "kernels/cpu/multipole/sparse_attention.h"
#include "model/attention/dense_attention.h"

namespace mpa {

CachePartition PartitionCache(int num_tokens, const MultipoleConfig& config) {
  CachePartition part;
  part.num_tokens = num_tokens;
  part.sink_end = std::min(num_tokens, config.sink_tokens);
  const int interval = config.cluster_interval;
  const int intervals = (num_tokens - part.sink_end) / interval;
  part.clustered_end = part.sink_end + std::max(0, intervals - 1) * interval;
  return part;
}

int64_t TokenBudget(const MultipoleConfig& config, int clustered_tokens) {
  if (config.token_budget_fraction > 0.0f) {
    // The fraction is an fp32 approximation of a decimal (0.1f is 0.1 + 1.5e-9): discount its
    // representation error so that 10% of 1000 tokens is 100, not 101.
    const double exact = static_cast<double>(config.token_budget_fraction) * clustered_tokens;
    const double slack = exact * 0x1p-23;  // > the fp32 rounding of the fraction, 2^-24 relative
    return std::max<int64_t>(0, static_cast<int64_t>(std::ceil(exact - slack)));
  }
  return config.token_budget;
}

namespace {

// The selected clusters' runs of slots, for the sparse exact kernel.
void AppendSelectedRanges(const ClusterLevel& level, const uint8_t* selected,
                          std::vector<cpu::TokenRange>& ranges) {
  for (int c = 0; c < level.num_clusters(); ++c) {
    if (selected[c]) ranges.push_back(level.ranges[c]);
  }
}

}  // namespace

MultipoleHeadResult MultipoleHeadAttention(const MultipoleHeadParams& p) {
  const ClusterIndex& index = *p.index;
  const CachePartition& part = p.partition;
  const int G = p.group_size;
  const int d = p.head_dim;
  const ClusterLevel& fine = index.fine();
  const int num_fine = fine.num_clusters();
  MultipoleHeadResult result;

  // 1. Centroid lookup, and 2. selection. Single level: score every cluster, select to the
  // budget. Two levels: score the coarse clusters, expand the best ones (up to
  // coarse_expansion x budget tokens) into their fine clusters, score those and select among
  // them; coarse clusters left unexpanded are approximated by their coarse centroids.
  std::vector<float> fine_logits2(static_cast<size_t>(G) * num_fine);
  std::vector<float> fine_scores(num_fine);
  std::vector<uint8_t> fine_selected(num_fine, 0);
  std::vector<int32_t> fine_counts = fine.counts;  // two levels: 0 outside expanded clusters
  const ClusterLevel& coarse = index.coarse();
  const int num_coarse = coarse.num_clusters();
  std::vector<float> coarse_logits2(static_cast<size_t>(G) * num_coarse);
  std::vector<float> coarse_scores(num_coarse);
  std::vector<uint8_t> coarse_expanded(num_coarse, 0);

  // Which centroids stand for a cluster's keys, and which query scores them.
  auto key_centroids = [&](const ClusterLevel& level) {
    return p.centroid_keys == CentroidKeys::kPreRopeRotatedMeans
               ? level.rotated_key_centroids.data()
               : level.key_centroids.data();
  };
  cpu::CentroidLookupParams lookup;
  lookup.q = p.centroid_keys == CentroidKeys::kPreRope ? p.q_lookup : p.q_rot;
  lookup.group_size = G;
  lookup.head_dim = d;
  lookup.scale = p.scale;
  if (index.levels() == 2) {
    lookup.key_centroids = key_centroids(coarse);
    lookup.counts = coarse.counts.data();
    lookup.num_clusters = num_coarse;
    lookup.logits2 = coarse_logits2.data();
    lookup.scores = coarse_scores.data();
    cpu::CentroidLookup(lookup);
    result.centroids_scored += num_coarse;

    cpu::ClusterSelectionParams expand;
    expand.scores = coarse_scores.data();
    expand.counts = coarse.counts.data();
    expand.num_clusters = num_coarse;
    expand.token_budget =
        static_cast<int64_t>(std::ceil(static_cast<double>(p.token_budget) * p.coarse_expansion));
    expand.selected = coarse_expanded.data();
    cpu::SelectClusters(expand);
    for (int c = 0; c < num_fine; ++c) {
      if (!coarse_expanded[index.coarse_of_fine()[c]])
        fine_counts[c] = 0;
      else
        ++result.centroids_scored;
    }
  } else {
    result.centroids_scored += num_fine;
  }
  lookup.key_centroids = key_centroids(fine);
  lookup.counts = fine_counts.data();
  lookup.num_clusters = num_fine;
  lookup.logits2 = fine_logits2.data();
  lookup.scores = fine_scores.data();
  cpu::CentroidLookup(lookup);

  cpu::ClusterSelectionParams select;
  select.scores = fine_scores.data();
  select.counts = fine_counts.data();
  select.num_clusters = num_fine;
  select.token_budget = p.token_budget;
  select.selected = fine_selected.data();
  result.clustered_selected = cpu::SelectClusters(select);

  // 3. Exact attention over the sink, the recent window and the selected clusters' tokens.
  const cpu::TokenRange positions[2] = {{0, part.sink_end}, {part.clustered_end, part.num_tokens}};
  std::vector<cpu::TokenRange> selected_ranges;
  AppendSelectedRanges(fine, fine_selected.data(), selected_ranges);
  for (int h = 0; h < G; ++h) {
    cpu::PartialAttention exact(d);
    cpu::SparseExactParams sp;
    sp.q = p.q_rot + int64_t{h} * d;
    sp.k_head = p.k_head;
    sp.v_head = p.v_head;
    sp.head_dim = d;
    sp.scale = p.scale;
    sp.position_ranges = positions;
    sp.num_position_ranges = 2;
    sp.slots = index.slots().data();
    sp.slot_ranges = selected_ranges.data();
    sp.num_slot_ranges = static_cast<int>(selected_ranges.size());
    const int64_t exact_tokens = cpu::AccumulateSparseExact(sp, exact);
    if (h == 0) result.tokens_exact = exact_tokens;

    // 4. The multipole term: every other cluster through its centroid, N_c exp(s_c) Vc_c.
    if (p.approximate) {
      cpu::PartialAttention approx(d);
      cpu::CentroidApproximationParams ap;
      ap.logits2 = fine_logits2.data() + int64_t{h} * num_fine;
      ap.value_centroids = fine.value_centroids.data();
      ap.counts = fine_counts.data();
      ap.selected = fine_selected.data();
      ap.num_clusters = num_fine;
      ap.head_dim = d;
      cpu::AccumulateCentroidApproximation(ap, approx);
      if (index.levels() == 2) {
        ap.logits2 = coarse_logits2.data() + int64_t{h} * num_coarse;
        ap.value_centroids = coarse.value_centroids.data();
        ap.counts = coarse.counts.data();
        ap.selected = coarse_expanded.data();
        ap.num_clusters = num_coarse;
        cpu::AccumulateCentroidApproximation(ap, approx);
      }
      cpu::MergePartial(exact, approx);
    }
    cpu::FinalizePartial(exact, p.out + int64_t{h} * d);
  }
  return result;
}

HeadRows ClusteringRows(LayerKv& kv, int kv_head, CentroidKeys keys) {
  switch (keys) {
    case CentroidKeys::kPostRope:
      return HeadRows{kv.KeyRow(kv_head, 0), kv.ValueRow(kv_head, 0), nullptr};
    case CentroidKeys::kPreRopeRotatedMeans:
      return HeadRows{kv.RawKeyRow(kv_head, 0), kv.ValueRow(kv_head, 0), kv.KeyRow(kv_head, 0)};
    case CentroidKeys::kPreRope:
      break;
  }
  return HeadRows{kv.RawKeyRow(kv_head, 0), kv.ValueRow(kv_head, 0), nullptr};
}

namespace {

MultipoleSequenceState& StateOf(SequenceState& seq) {
  auto* state = dynamic_cast<MultipoleSequenceState*>(seq.backend_state().get());
  if (state == nullptr) {
    seq.backend_state() = std::make_unique<MultipoleSequenceState>(seq.num_layers());
    state = static_cast<MultipoleSequenceState*>(seq.backend_state().get());
  }
  return *state;
}

HeadRows RowsOf(SequenceState& seq, int layer, int kv_head) {
  return ClusteringRows(seq.layer(layer), kv_head, seq.attention().multipole.centroid_keys);
}

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

void UpdateClusters(int layer, SequenceState& seq, int first_new) {
  const MultipoleConfig& config = seq.attention().multipole;
  MultipoleSequenceState::Layer& state = StateOf(seq).layers[layer];
  const CachePartition part = PartitionCache(seq.num_tokens(), config);
  if (part.clustered_end <= state.clustered_end) return;
  AttentionStats& stats = seq.stats();
  const auto start = std::chrono::steady_clock::now();
  const int num_kv_heads = seq.num_kv_heads();

  if (state.heads.empty()) {
    // Dense until the clustered region is long enough to be worth clustering; then cluster all
    // of it at once (at the end of prefill, or the first time decoding crosses the threshold).
    // At least one token too: an index built over an empty region has no final window, so
    // Extend could not grow it and the tokens joining the region later would go unattended.
    if (part.clustered_tokens() < std::max(1, config.min_clustered_tokens)) return;
    for (int h = 0; h < num_kv_heads; ++h) {
      state.heads.emplace_back(config, seq.head_dim(), ClusterHeadSeed(config, layer, h));
      state.heads.back().Build(RowsOf(seq, layer, h), part.sink_end, part.clustered_end);
    }
    state.clustered_end = part.clustered_end;
    stats.tokens_reclustered += int64_t{part.clustered_tokens()} * num_kv_heads;
    const bool prefill = seq.num_tokens() - first_new > 1;  // a prompt chunk, not one token
    (prefill ? stats.prefill_cluster_seconds : stats.cluster_update_seconds) += SecondsSince(start);
    if (!prefill) stats.cluster_updates += 1;
    return;
  }
  // The online update, one interval at a time.
  while (state.clustered_end < part.clustered_end) {
    const int next = std::min(state.clustered_end + config.cluster_interval, part.clustered_end);
    for (int h = 0; h < num_kv_heads; ++h) {
      stats.tokens_reclustered += state.heads[h].Extend(RowsOf(seq, layer, h), next);
    }
    state.clustered_end = next;
    stats.cluster_updates += 1;
  }
  stats.cluster_update_seconds += SecondsSince(start);
}

void MultipoleDecode(const Rope& rope, int num_heads, int layer, SequenceState& seq,
                     const float* q_rot, const float* q_raw, float* out) {
  const MultipoleConfig& config = seq.attention().multipole;
  const MultipoleSequenceState::Layer& state = StateOf(seq).layers[layer];
  const int num_kv_heads = seq.num_kv_heads();
  const int d = seq.head_dim();
  const int group = num_heads / num_kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const cpu::KvView view = seq.View(layer);
  AttentionStats& stats = seq.stats();
  stats.decode_steps += 1;
  stats.tokens_total += int64_t{seq.num_tokens()} * num_kv_heads;

  if (state.heads.empty()) {  // dense fallback: the clustered region is still short
    SequenceDenseAttention(seq, layer, num_heads, q_rot, out);
    stats.tokens_attended_exact += int64_t{seq.num_tokens()} * num_kv_heads;
    return;
  }

  // Centroids of pre-RoPE keys are scored with the query rotated at the lookup position, i.e. as
  // if every clustered key sat lookup_position tokens before the query.
  std::vector<float> q_lookup;  // [num_heads, head_dim]
  if (config.centroid_keys == CentroidKeys::kPreRope) {
    q_lookup.assign(q_raw, q_raw + int64_t{num_heads} * d);
    rope.Apply(q_lookup.data(), num_heads, config.lookup_position);
  }

  CachePartition part = PartitionCache(seq.num_tokens(), config);
  part.clustered_end = state.clustered_end;  // tokens not yet clustered stay in the recent window
  const int64_t budget = TokenBudget(config, part.clustered_tokens());
  for (int h = 0; h < num_kv_heads; ++h) {
    MultipoleHeadParams p;
    p.index = &state.heads[h];
    p.partition = part;
    p.q_rot = q_rot + int64_t{h} * group * d;
    p.q_lookup = q_lookup.empty() ? nullptr : q_lookup.data() + int64_t{h} * group * d;
    p.k_head = view.k + h * view.head_stride;
    p.v_head = view.v + h * view.head_stride;
    p.group_size = group;
    p.head_dim = d;
    p.scale = scale;
    p.token_budget = budget;
    p.coarse_expansion = config.coarse_expansion;
    p.approximate = config.approximate && seq.attention().mode != AttentionMode::kExactOnly;
    p.centroid_keys = config.centroid_keys;
    p.out = out + int64_t{h} * group * d;
    const MultipoleHeadResult r = MultipoleHeadAttention(p);
    stats.tokens_attended_exact += r.tokens_exact;
    stats.centroids_scored += r.centroids_scored;
  }
}

}  // namespace mpa
