#include "model/attention/cluster_index.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/multipole/kmeans.h"

namespace mpa {

void ClusterLevel::Truncate(int n, int head_dim) {
  const size_t rows = static_cast<size_t>(n) * head_dim;
  counts.resize(n);
  ranges.resize(n);
  key_sums.resize(rows);
  value_sums.resize(rows);
  key_centroids.resize(rows);
  value_centroids.resize(rows);
  rotated_key_sums.resize(rows);
  rotated_key_centroids.resize(rows);
}

ClusterIndex::ClusterIndex(const MultipoleConfig& config, int head_dim, uint64_t seed)
    : config_(config), head_dim_(head_dim), levels_(config.levels), seed_(seed) {}

uint64_t ClusterHeadSeed(const MultipoleConfig& config, int layer, int kv_head) {
  cpu::SplitMix64 mix(uint64_t{config.seed} * 0x100000001B3ull + uint64_t(layer) * 4099 +
                      uint64_t(kv_head));
  return mix.Next();
}

uint64_t ClusterBlockSeed(uint64_t head_seed, int begin, int end) {
  cpu::SplitMix64 mix(head_seed ^ (uint64_t(begin) * 0x9E3779B97F4A7C15ull) ^
                      (uint64_t(end) * 0xC2B2AE3D27D4EB4Full));
  return mix.Next();
}

int ClustersForTokens(int tokens, int tokens_per_centroid) {
  const int k = (tokens + tokens_per_centroid - 1) / tokens_per_centroid;
  return std::clamp(k, 1, std::max(tokens, 1));
}

uint64_t ClusterIndex::BlockSeed(int begin, int end) const {
  return ClusterBlockSeed(seed_, begin, end);
}

int ClusterIndex::ClustersFor(int tokens, int tokens_per_centroid) const {
  return ClustersForTokens(tokens, tokens_per_centroid);
}

void ClusterIndex::DropLastBlockClusters() {
  const ClusterBlock& b = blocks_.back();
  fine_.Truncate(b.fine_begin, head_dim_);
  coarse_.Truncate(b.coarse_begin, head_dim_);
  coarse_of_fine_.resize(b.fine_begin);
}

void ClusterIndex::Build(const HeadRows& rows, int begin, int end) {
  blocks_.clear();
  fine_.Truncate(0, head_dim_);
  coarse_.Truncate(0, head_dim_);
  coarse_of_fine_.clear();
  region_begin_ = begin;
  region_end_ = end;
  slots_.assign(end - begin, 0);
  labels_.assign(end - begin, 0);
  int pos = begin;
  while (end - pos > config_.final_window_max) {
    ClusterNewBlock(rows, pos, pos + config_.block_tokens, config_.prefill_kmeans_iterations,
                    /*frozen=*/true);
    pos += config_.block_tokens;
  }
  if (end > pos) {
    ClusterNewBlock(rows, pos, end, config_.prefill_kmeans_iterations, /*frozen=*/false);
  }
}

void ClusterIndex::ClusterNewBlock(const HeadRows& rows, int begin, int end, int iterations,
                                   bool frozen) {
  const int n = end - begin;
  const int k = ClustersFor(n, config_.fine_ratio());
  std::vector<float> centroids(static_cast<size_t>(k) * head_dim_);
  std::vector<int32_t> local(n);
  cpu::KMeansParams km;
  km.points = rows.keys + int64_t{begin} * head_dim_;
  km.num_points = n;
  km.dim = head_dim_;
  km.num_clusters = k;
  km.iterations = iterations;
  km.seed_from_points = true;
  km.seed = BlockSeed(begin, end);
  km.centroids = centroids.data();
  km.labels = local.data();
  cpu::KMeansLloyd(km);

  ClusterBlock b;
  b.token_begin = begin;
  b.token_end = end;
  b.frozen = frozen;
  blocks_.push_back(b);
  Materialize(rows, blocks_.back(), local, k);
}

void ClusterIndex::Materialize(const HeadRows& rows, ClusterBlock& b,
                               std::vector<int32_t>& local_labels, int num_local) {
  const int d = head_dim_;
  const int n = b.num_tokens();
  // Per local cluster: token counts and fp32 sums of the clustered keys and of values.
  std::vector<int32_t> counts(num_local, 0);
  std::vector<float> key_sums(static_cast<size_t>(num_local) * d, 0.0f);
  std::vector<float> value_sums(static_cast<size_t>(num_local) * d, 0.0f);
  std::vector<float> rotated_sums(static_cast<size_t>(num_local) * d, 0.0f);
  for (int i = 0; i < n; ++i) {
    const int c = local_labels[i];
    const int64_t t = b.token_begin + i;
    ++counts[c];
    for (int j = 0; j < d; ++j) {
      key_sums[int64_t{c} * d + j] += rows.keys[t * d + j];
      value_sums[int64_t{c} * d + j] += rows.v[t * d + j];
      if (rows.rotated_keys != nullptr) {
        rotated_sums[int64_t{c} * d + j] += rows.rotated_keys[t * d + j];
      }
    }
  }
  // Non-empty clusters in the order they will be numbered. Two levels: cluster the fine
  // centroids (weighted by their token counts) into coarse clusters, then number fine clusters
  // coarse-major so every coarse cluster is a contiguous run.
  std::vector<int32_t> kept;
  for (int c = 0; c < num_local; ++c) {
    if (counts[c] > 0) kept.push_back(c);
  }
  std::vector<int32_t> coarse_label(num_local, 0);
  int num_coarse = 0;
  if (levels_ == 2) {
    const int kf = static_cast<int>(kept.size());
    std::vector<float> points(static_cast<size_t>(kf) * d), weights(kf);
    for (int i = 0; i < kf; ++i) {
      const int c = kept[i];
      weights[i] = static_cast<float>(counts[c]);
      for (int j = 0; j < d; ++j)
        points[int64_t{i} * d + j] = key_sums[int64_t{c} * d + j] / counts[c];
    }
    const int kc = std::min(ClustersFor(n, config_.coarse_tokens_per_centroid), kf);
    std::vector<float> coarse_centroids(static_cast<size_t>(kc) * d);
    std::vector<int32_t> labels(kf);
    cpu::KMeansParams km;
    km.points = points.data();
    km.weights = weights.data();
    km.num_points = kf;
    km.dim = d;
    km.num_clusters = kc;
    km.iterations = config_.prefill_kmeans_iterations;
    km.seed = BlockSeed(b.token_begin, b.token_end) ^ 0x5EEDC0A45Eull;
    km.centroids = coarse_centroids.data();
    km.labels = labels.data();
    cpu::KMeansLloyd(km);
    // Compact coarse ids to the non-empty ones, in id order.
    std::vector<int32_t> coarse_members(kc, 0), coarse_id(kc, -1);
    for (int i = 0; i < kf; ++i) ++coarse_members[labels[i]];
    for (int c = 0; c < kc; ++c) {
      if (coarse_members[c] > 0) coarse_id[c] = num_coarse++;
    }
    for (int i = 0; i < kf; ++i) coarse_label[kept[i]] = coarse_id[labels[i]];
    std::stable_sort(kept.begin(), kept.end(),
                     [&](int32_t a, int32_t c) { return coarse_label[a] < coarse_label[c]; });
  }
  // Renumber: local id -> global fine id.
  b.fine_begin = fine_.num_clusters();
  b.coarse_begin = coarse_.num_clusters();
  std::vector<int32_t> global(num_local, -1);
  for (size_t i = 0; i < kept.size(); ++i) global[kept[i]] = b.fine_begin + static_cast<int>(i);
  b.fine_end = b.fine_begin + static_cast<int>(kept.size());
  b.coarse_end = b.coarse_begin + num_coarse;

  // Fine level: counts, sums, centroids, ranges over this block's slots.
  fine_.Truncate(b.fine_end, d);
  const int slot_base = b.token_begin - region_begin_;
  int cursor = slot_base;
  for (size_t i = 0; i < kept.size(); ++i) {
    const int c = kept[i];
    const int g = global[c];
    fine_.counts[g] = counts[c];
    fine_.ranges[g] = {cursor, cursor + counts[c]};
    cursor += counts[c];
    for (int j = 0; j < d; ++j) {
      const float ks = key_sums[int64_t{c} * d + j], vs = value_sums[int64_t{c} * d + j];
      fine_.key_sums[int64_t{g} * d + j] = ks;
      fine_.value_sums[int64_t{g} * d + j] = vs;
      fine_.key_centroids[int64_t{g} * d + j] = ks / counts[c];
      fine_.value_centroids[int64_t{g} * d + j] = vs / counts[c];
      fine_.rotated_key_sums[int64_t{g} * d + j] = rotated_sums[int64_t{c} * d + j];
      fine_.rotated_key_centroids[int64_t{g} * d + j] =
          rotated_sums[int64_t{c} * d + j] / counts[c];
    }
  }
  // Labels and the cluster-major permutation (positions ascending inside a cluster).
  std::vector<int32_t> next(b.fine_end - b.fine_begin);
  for (int g = b.fine_begin; g < b.fine_end; ++g) next[g - b.fine_begin] = fine_.ranges[g].begin;
  for (int i = 0; i < n; ++i) {
    const int g = global[local_labels[i]];
    labels_[slot_base + i] = g;
    slots_[next[g - b.fine_begin]++] = b.token_begin + i;
  }

  // Coarse level: token counts and sums of its fine clusters; its range spans theirs.
  coarse_of_fine_.resize(b.fine_end);
  if (levels_ == 2) {
    coarse_.Truncate(b.coarse_end, d);
    for (int c = b.coarse_begin; c < b.coarse_end; ++c) {
      coarse_.counts[c] = 0;
      coarse_.ranges[c] = {INT32_MAX, INT32_MIN};
      std::fill_n(coarse_.key_sums.begin() + int64_t{c} * d, d, 0.0f);
      std::fill_n(coarse_.value_sums.begin() + int64_t{c} * d, d, 0.0f);
      std::fill_n(coarse_.rotated_key_sums.begin() + int64_t{c} * d, d, 0.0f);
    }
    for (size_t i = 0; i < kept.size(); ++i) {
      const int g = global[kept[i]];
      const int c = b.coarse_begin + coarse_label[kept[i]];
      coarse_of_fine_[g] = c;
      coarse_.counts[c] += fine_.counts[g];
      coarse_.ranges[c].begin = std::min(coarse_.ranges[c].begin, fine_.ranges[g].begin);
      coarse_.ranges[c].end = std::max(coarse_.ranges[c].end, fine_.ranges[g].end);
      for (int j = 0; j < d; ++j) {
        coarse_.key_sums[int64_t{c} * d + j] += fine_.key_sums[int64_t{g} * d + j];
        coarse_.value_sums[int64_t{c} * d + j] += fine_.value_sums[int64_t{g} * d + j];
        coarse_.rotated_key_sums[int64_t{c} * d + j] += fine_.rotated_key_sums[int64_t{g} * d + j];
      }
    }
    for (int c = b.coarse_begin; c < b.coarse_end; ++c) {
      for (int j = 0; j < d; ++j) {
        coarse_.key_centroids[int64_t{c} * d + j] =
            coarse_.key_sums[int64_t{c} * d + j] / coarse_.counts[c];
        coarse_.value_centroids[int64_t{c} * d + j] =
            coarse_.value_sums[int64_t{c} * d + j] / coarse_.counts[c];
        coarse_.rotated_key_centroids[int64_t{c} * d + j] =
            coarse_.rotated_key_sums[int64_t{c} * d + j] / coarse_.counts[c];
      }
    }
  } else {
    for (int g = b.fine_begin; g < b.fine_end; ++g) coarse_of_fine_[g] = -1;
  }
}

int64_t ClusterIndex::Extend(const HeadRows& rows, int new_end) {
  const int old_end = region_end_;
  const int m = new_end - old_end;
  if (m <= 0 || blocks_.empty()) return 0;
  const int d = head_dim_;
  region_end_ = new_end;
  slots_.resize(new_end - region_begin_);
  labels_.resize(new_end - region_begin_);

  ClusterBlock final_window = blocks_.back();
  final_window.token_end = new_end;
  const int n = final_window.num_tokens();
  const int k_old = final_window.fine_end - final_window.fine_begin;
  const int k_new = std::clamp(ClustersFor(n, config_.fine_ratio()) - k_old, 0, m);
  const int k = k_old + k_new;

  // Running state: the old clusters' sums and counts, then new clusters seeded from new tokens.
  std::vector<float> centroids(static_cast<size_t>(k) * d), sums(static_cast<size_t>(k) * d);
  std::vector<int32_t> counts(k, 0);
  for (int c = 0; c < k_old; ++c) {
    const int g = final_window.fine_begin + c;
    counts[c] = fine_.counts[g];
    for (int j = 0; j < d; ++j) {
      sums[int64_t{c} * d + j] = fine_.key_sums[int64_t{g} * d + j];
      centroids[int64_t{c} * d + j] = fine_.key_centroids[int64_t{g} * d + j];
    }
  }
  std::vector<int32_t> seeds(k_new);
  cpu::SampleDistinct(m, k_new, BlockSeed(old_end, new_end), seeds.data());
  for (int i = 0; i < k_new; ++i) {
    std::copy_n(rows.keys + int64_t{old_end + seeds[i]} * d, d,
                centroids.begin() + int64_t{k_old + i} * d);
  }
  // Assign the new tokens one by one, each moving its cluster's running mean.
  for (int t = old_end; t < new_end; ++t) {
    const float* x = rows.keys + int64_t{t} * d;
    const int c = cpu::NearestCentroid(x, centroids.data(), k, d);
    ++counts[c];
    for (int j = 0; j < d; ++j) {
      sums[int64_t{c} * d + j] += x[j];
      centroids[int64_t{c} * d + j] = sums[int64_t{c} * d + j] / counts[c];
    }
  }
  // Refine the whole final window with a few Lloyd passes; its labels are the final word.
  std::vector<int32_t> local(n);
  cpu::KMeansParams km;
  km.points = rows.keys + int64_t{final_window.token_begin} * d;
  km.num_points = n;
  km.dim = d;
  km.num_clusters = k;
  km.iterations = config_.update_kmeans_iterations;
  km.seed_from_points = false;
  km.centroids = centroids.data();
  km.labels = local.data();
  cpu::KMeansLloyd(km);

  DropLastBlockClusters();
  blocks_.back() = final_window;
  Materialize(rows, blocks_.back(), local, k);
  int64_t reclustered = n;

  if (n > config_.final_window_max) {
    // Freeze the oldest block_tokens of the final window; the remainder is the new final window.
    DropLastBlockClusters();
    blocks_.pop_back();
    const int split = final_window.token_begin + config_.block_tokens;
    ClusterNewBlock(rows, final_window.token_begin, split, config_.prefill_kmeans_iterations,
                    /*frozen=*/true);
    ClusterNewBlock(rows, split, new_end, config_.prefill_kmeans_iterations, /*frozen=*/false);
    reclustered += n;
  }
  return reclustered;
}

absl::Status ClusterIndex::CheckInvariants(const HeadRows* rows) const {
  auto fail = [](auto&&... parts) { return absl::InternalError(absl::StrCat(parts...)); };
  const int n = num_tokens();
  if (static_cast<int>(slots_.size()) != n || static_cast<int>(labels_.size()) != n) {
    return fail("slots/labels hold ", slots_.size(), "/", labels_.size(), " entries, region ", n);
  }
  // Slots are a permutation of the region.
  std::vector<uint8_t> seen(n, 0);
  for (int s = 0; s < n; ++s) {
    const int i = slots_[s] - region_begin_;
    if (i < 0 || i >= n || seen[i]) return fail("slot ", s, " holds position ", slots_[s]);
    seen[i] = 1;
  }
  // Counts == label histogram == range lengths; every slot of a range carries its label.
  const int kf = fine_.num_clusters();
  std::vector<int32_t> histogram(kf, 0);
  for (int i = 0; i < n; ++i) {
    if (labels_[i] < 0 || labels_[i] >= kf) return fail("label ", labels_[i], " out of range");
    ++histogram[labels_[i]];
  }
  for (int c = 0; c < kf; ++c) {
    const cpu::TokenRange r = fine_.ranges[c];
    if (fine_.counts[c] <= 0) return fail("fine cluster ", c, " is empty");
    if (fine_.counts[c] != histogram[c] || r.size() != fine_.counts[c]) {
      return fail("fine cluster ", c, ": count ", fine_.counts[c], ", labels ", histogram[c],
                  ", range ", r.size());
    }
    for (int s = r.begin; s < r.end; ++s) {
      if (labels_[slots_[s] - region_begin_] != c) return fail("slot ", s, " not in cluster ", c);
      if (s > r.begin && slots_[s] <= slots_[s - 1]) return fail("cluster ", c, " not ascending");
    }
  }
  // Blocks tile the region, and their clusters' ranges tile their slots.
  int pos = region_begin_, fine_id = 0, coarse_id = 0;
  for (size_t bi = 0; bi < blocks_.size(); ++bi) {
    const ClusterBlock& b = blocks_[bi];
    if (b.token_begin != pos || b.fine_begin != fine_id || b.coarse_begin != coarse_id) {
      return fail("block ", bi, " does not follow its predecessor");
    }
    if (b.frozen != (bi + 1 < blocks_.size())) return fail("block ", bi, " frozen flag");
    int slot = b.token_begin - region_begin_;
    for (int c = b.fine_begin; c < b.fine_end; ++c) {
      if (fine_.ranges[c].begin != slot) return fail("fine ranges of block ", bi, " leave gaps");
      slot = fine_.ranges[c].end;
    }
    if (slot != b.token_end - region_begin_) return fail("block ", bi, " slots not covered");
    for (int i = b.token_begin; i < b.token_end; ++i) {
      const int c = labels_[i - region_begin_];
      if (c < b.fine_begin || c >= b.fine_end) return fail("position ", i, " labelled outside");
    }
    pos = b.token_end;
    fine_id = b.fine_end;
    coarse_id = b.coarse_end;
  }
  if (pos != region_end_ || fine_id != kf) return fail("blocks do not cover the region");
  if (levels_ == 2) {
    const int kc = coarse_.num_clusters();
    if (coarse_id != kc) return fail("blocks do not cover the coarse clusters");
    std::vector<int32_t> sum(kc, 0);
    for (int c = 0; c < kf; ++c) {
      const int p = coarse_of_fine_[c];
      if (p < 0 || p >= kc) return fail("fine cluster ", c, " has coarse parent ", p);
      sum[p] += fine_.counts[c];
      const cpu::TokenRange r = coarse_.ranges[p];
      if (fine_.ranges[c].begin < r.begin || fine_.ranges[c].end > r.end) {
        return fail("fine cluster ", c, " outside its coarse range");
      }
    }
    for (int p = 0; p < kc; ++p) {
      if (coarse_.counts[p] <= 0 || coarse_.counts[p] != sum[p] ||
          coarse_.ranges[p].size() != coarse_.counts[p]) {
        return fail("coarse cluster ", p, ": count ", coarse_.counts[p], ", fine sum ", sum[p],
                    ", range ", coarse_.ranges[p].size());
      }
    }
  } else if (coarse_.num_clusters() != 0) {
    return fail("single level index has coarse clusters");
  }
  if (rows != nullptr) {
    const int d = head_dim_;
    const bool rotated = rows->rotated_keys != nullptr;
    const size_t size = static_cast<size_t>(kf) * d;
    std::vector<double> ks(size, 0.0), vs(size, 0.0), rs(rotated ? size : 0, 0.0);
    for (int i = 0; i < n; ++i) {
      const int c = labels_[i];
      const int64_t row = int64_t{region_begin_ + i} * d;
      for (int j = 0; j < d; ++j) {
        ks[int64_t{c} * d + j] += rows->keys[row + j];
        vs[int64_t{c} * d + j] += rows->v[row + j];
        if (rotated) rs[int64_t{c} * d + j] += rows->rotated_keys[row + j];
      }
    }
    // Relative 1e-4 between the members' mean (sums [kf, d]) and the stored centroids.
    auto means_match = [&](const std::vector<double>& sums, const std::vector<float>& centroids,
                           int c) {
      double norm = 0.0, err = 0.0;
      for (int j = 0; j < d; ++j) {
        const double mean = sums[int64_t{c} * d + j] / fine_.counts[c];
        norm += mean * mean;
        err += std::pow(mean - centroids[int64_t{c} * d + j], 2);
      }
      return std::sqrt(err) <= 1e-4 * std::sqrt(norm) + 1e-6;
    };
    for (int c = 0; c < kf; ++c) {
      if (!means_match(ks, fine_.key_centroids, c) || !means_match(vs, fine_.value_centroids, c) ||
          (rotated && !means_match(rs, fine_.rotated_key_centroids, c))) {
        return fail("centroids of cluster ", c, " do not match its members' means");
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace mpa
