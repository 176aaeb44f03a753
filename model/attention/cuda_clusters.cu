#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/multipole/kmeans.h"
#include "kernels/cuda/multipole/cluster_layout.h"
#include "kernels/cuda/multipole/kmeans.h"
#include "model/attention/cluster_index.h"
#include "model/attention/cuda_clusters.h"
#include "model/cuda/cuda_status.h"
#include "model/runtime/status_macros.h"

namespace mpa {
namespace {

using cuda::bf16;

// Stream-ordered scratch of one maintenance call, freed on the stream when it goes.
class Scratch {
 public:
  explicit Scratch(cudaStream_t stream) : stream_(stream) {}
  ~Scratch() {
    for (void* p : ptrs_) cudaFreeAsync(p, stream_);
  }
  template <typename T>
  absl::StatusOr<T*> Alloc(int64_t n) {
    void* p = nullptr;
    const cudaError_t err = cudaMallocAsync(&p, std::max<int64_t>(n, 1) * sizeof(T), stream_);
    if (err != cudaSuccess) return CudaStateStatus(err, "cluster maintenance scratch");
    ptrs_.push_back(p);
    return static_cast<T*>(p);
  }
  template <typename T>
  absl::StatusOr<T*> Upload(const std::vector<T>& host) {
    MPA_ASSIGN_OR_RETURN(T * d, Alloc<T>(static_cast<int64_t>(host.size())));
    // Pageable source: returns once the host vector has been read.
    MPA_CUDA_STATE(
        cudaMemcpyAsync(d, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice, stream_));
    return d;
  }

 private:
  cudaStream_t stream_;
  std::vector<void*> ptrs_;
};

// Reallocates rows x old_width bytes (pitched) into rows x new_width, keeping each row's start.
template <typename T>
absl::Status Grow(T** ptr, int64_t rows, int64_t old_width, int64_t new_width,
                  cudaStream_t stream) {
  void* fresh = nullptr;
  MPA_CUDA_STATE(
      cudaMallocAsync(&fresh, std::max<int64_t>(rows * new_width, 1) * sizeof(T), stream));
  if (*ptr != nullptr && old_width > 0) {
    MPA_CUDA_STATE(cudaMemcpy2DAsync(fresh, new_width * sizeof(T), *ptr, old_width * sizeof(T),
                                     old_width * sizeof(T), rows, cudaMemcpyDeviceToDevice,
                                     stream));
  }
  if (*ptr != nullptr) MPA_CUDA_STATE(cudaFreeAsync(*ptr, stream));
  *ptr = static_cast<T*>(fresh);
  return absl::OkStatus();
}

}  // namespace

CudaClusterState::CudaClusterState(const MultipoleConfig& config, int num_layers, int num_kv_heads,
                                   int head_dim, DeviceMemoryBudget* budget)
    : config_(config),
      num_layers_(num_layers),
      num_kv_heads_(num_kv_heads),
      head_dim_(head_dim),
      charge_(budget) {}

CudaClusterState::~CudaClusterState() {
  cudaFree(key_centroids_);
  cudaFree(value_centroids_);
  cudaFree(cluster_begin_);
  cudaFree(slot_positions_);
  cudaFree(coarse_key_centroids_);
  cudaFree(coarse_value_centroids_);
  cudaFree(coarse_cluster_begin_);
  cudaFree(fine_of_coarse_);
}

int CudaClusterState::FineClusters(int tokens) const {
  return ClustersForTokens(tokens, config_.fine_ratio());
}
int CudaClusterState::CoarseClusters(int tokens) const {
  return two_levels() ? std::min(ClustersForTokens(tokens, config_.coarse_tokens_per_centroid),
                                 FineClusters(tokens))
                      : 0;
}

const bf16* CudaClusterState::key_centroids(int layer, int head) const {
  return key_centroids_ + HeadIndex(layer, head) * cluster_capacity_ * head_dim_;
}
const bf16* CudaClusterState::value_centroids(int layer, int head) const {
  return value_centroids_ + HeadIndex(layer, head) * cluster_capacity_ * head_dim_;
}
const int32_t* CudaClusterState::cluster_begin(int layer, int head) const {
  return cluster_begin_ + HeadIndex(layer, head) * (cluster_capacity_ + 1);
}
const int32_t* CudaClusterState::slot_positions(int layer, int head) const {
  return slot_positions_ + HeadIndex(layer, head) * slot_capacity_;
}
const bf16* CudaClusterState::coarse_key_centroids(int layer, int head) const {
  return coarse_key_centroids_ + HeadIndex(layer, head) * coarse_capacity_ * head_dim_;
}
const bf16* CudaClusterState::coarse_value_centroids(int layer, int head) const {
  return coarse_value_centroids_ + HeadIndex(layer, head) * coarse_capacity_ * head_dim_;
}
const int32_t* CudaClusterState::coarse_cluster_begin(int layer, int head) const {
  return coarse_cluster_begin_ + HeadIndex(layer, head) * (coarse_capacity_ + 1);
}
const int32_t* CudaClusterState::fine_of_coarse(int layer, int head) const {
  return fine_of_coarse_ + HeadIndex(layer, head) * (coarse_capacity_ + 1);
}

absl::Status CudaClusterState::Reserve(const Context& ctx, int clusters, int slots, int coarse) {
  const int64_t rows = int64_t{num_layers_} * num_kv_heads_;
  if (clusters <= cluster_capacity_ && slots <= slot_capacity_ && coarse <= coarse_capacity_) {
    return absl::OkStatus();
  }
  const int new_clusters = clusters > cluster_capacity_
                               ? std::max(clusters, cluster_capacity_ + cluster_capacity_ / 2)
                               : cluster_capacity_;
  const int new_slots = slots > slot_capacity_
                            ? std::max(slots, slot_capacity_ + slot_capacity_ / 2)
                            : slot_capacity_;
  const int new_coarse = coarse > coarse_capacity_
                             ? std::max(coarse, coarse_capacity_ + coarse_capacity_ / 2)
                             : coarse_capacity_;
  // Charged first: the arrays at their new capacities (the old ones are freed on the stream).
  const int64_t per_cluster = int64_t{head_dim_} * 2 * static_cast<int64_t>(sizeof(bf16));
  MPA_RETURN_IF_ERROR(charge_.Resize(
      rows * (int64_t{new_clusters} * per_cluster + (int64_t{new_clusters} + 1) * 4 +
              int64_t{new_slots} * 4 +
              (new_coarse > 0 ? int64_t{new_coarse} * per_cluster + (int64_t{new_coarse} + 1) * 8
                              : 0)),
      "a sequence's cluster centroids"));
  if (coarse > coarse_capacity_) {
    const int cap = new_coarse;
    const int old = coarse_capacity_;
    MPA_RETURN_IF_ERROR(Grow(&coarse_key_centroids_, rows, int64_t{old} * head_dim_,
                             int64_t{cap} * head_dim_, ctx.stream));
    MPA_RETURN_IF_ERROR(Grow(&coarse_value_centroids_, rows, int64_t{old} * head_dim_,
                             int64_t{cap} * head_dim_, ctx.stream));
    MPA_RETURN_IF_ERROR(
        Grow(&coarse_cluster_begin_, rows, old > 0 ? old + 1 : 0, cap + 1, ctx.stream));
    MPA_RETURN_IF_ERROR(Grow(&fine_of_coarse_, rows, old > 0 ? old + 1 : 0, cap + 1, ctx.stream));
    coarse_capacity_ = cap;
  }
  if (clusters > cluster_capacity_) {
    const int cap = new_clusters;
    MPA_RETURN_IF_ERROR(Grow(&key_centroids_, rows, int64_t{cluster_capacity_} * head_dim_,
                             int64_t{cap} * head_dim_, ctx.stream));
    MPA_RETURN_IF_ERROR(Grow(&value_centroids_, rows, int64_t{cluster_capacity_} * head_dim_,
                             int64_t{cap} * head_dim_, ctx.stream));
    MPA_RETURN_IF_ERROR(Grow(&cluster_begin_, rows,
                             cluster_capacity_ > 0 ? cluster_capacity_ + 1 : 0, cap + 1,
                             ctx.stream));
    cluster_capacity_ = cap;
  }
  if (slots > slot_capacity_) {
    const int cap = new_slots;
    MPA_RETURN_IF_ERROR(Grow(&slot_positions_, rows, slot_capacity_, cap, ctx.stream));
    slot_capacity_ = cap;
  }
  return absl::OkStatus();
}

absl::Status CudaClusterState::Run(const Context& ctx, const std::vector<Job>& jobs, int iterations,
                                   int laid_out_end) {
  const int H = num_kv_heads_, D = head_dim_;
  // One layer's jobs (every head x block), reused for each layer: the points and centroids of a
  // layer at a time bound the scratch.
  std::vector<cuda::ClusterJob> layout;
  std::vector<cuda::KMeansProblem> problems;
  int64_t points = 0, clusters = 0;
  int max_points = 0, max_clusters = 0, max_keep = 0;
  for (int h = 0; h < H; ++h) {
    for (const Job& j : jobs) {
      const CudaClusterBlock& b = blocks_[j.block];
      cuda::ClusterJob c;
      c.kv_head = h;
      c.first_position = b.token_begin;
      c.num_points = b.token_end - b.token_begin;
      c.point_begin = points;
      c.first_slot = b.token_begin - region_begin_;
      c.first_cluster = b.cluster_begin;
      c.num_clusters = b.cluster_end - b.cluster_begin;
      c.centroid_begin = clusters;
      c.keep_clusters = j.seeded ? 0 : j.keep_clusters;
      layout.push_back(c);
      problems.push_back({points, c.num_points, clusters, c.num_clusters});
      points += c.num_points;
      clusters += c.num_clusters;
      max_points = std::max(max_points, c.num_points);
      max_clusters = std::max(max_clusters, c.num_clusters);
      max_keep = std::max(max_keep, c.keep_clusters);
    }
  }
  if (max_clusters > cuda::kMaxClustersPerJob) {
    return absl::InvalidArgumentError(
        absl::StrCat("a block of up to ", max_points, " tokens makes ", max_clusters,
                     " clusters; the GPU lays out at most ", cuda::kMaxClustersPerJob));
  }
  // The positions the jobs cover (contiguous), and whether some of their rows were reordered by
  // an earlier layout: then each layer's rows are located first (the freeze of a final window
  // re-clusters rows reordered as one block into two).
  int range_begin = blocks_[jobs.front().block].token_begin, range_end = range_begin;
  for (const Job& j : jobs) {
    range_begin = std::min(range_begin, blocks_[j.block].token_begin);
    range_end = std::max(range_end, blocks_[j.block].token_end);
  }
  const int range = range_end - range_begin;
  const bool locate = laid_out_end > range_begin;
  Scratch scratch(ctx.stream);
  MPA_ASSIGN_OR_RETURN(cuda::ClusterJob * d_jobs, scratch.Upload(layout));
  MPA_ASSIGN_OR_RETURN(cuda::KMeansProblem * d_problems, scratch.Upload(problems));
  MPA_ASSIGN_OR_RETURN(bf16 * d_points, scratch.Alloc<bf16>(points * D));
  MPA_ASSIGN_OR_RETURN(bf16 * d_values, scratch.Alloc<bf16>(points * D));
  int32_t* d_position_rows = nullptr;
  if (locate) {
    MPA_ASSIGN_OR_RETURN(d_position_rows, scratch.Alloc<int32_t>(int64_t{H} * range));
  }
  MPA_ASSIGN_OR_RETURN(int32_t * d_labels, scratch.Alloc<int32_t>(points));
  MPA_ASSIGN_OR_RETURN(int32_t * d_counts, scratch.Alloc<int32_t>(clusters));
  MPA_ASSIGN_OR_RETURN(float* d_centroids, scratch.Alloc<float>(clusters * D));
  const size_t ws_bytes = cuda::KMeansWorkspaceBytes(points, clusters, D);
  MPA_ASSIGN_OR_RETURN(char* d_ws, scratch.Alloc<char>(static_cast<int64_t>(ws_bytes)));
  MPA_ASSIGN_OR_RETURN(int32_t * d_pages, scratch.Upload(*ctx.pages));
  int32_t* d_seeds = nullptr;
  std::vector<int32_t> seeds(clusters);

  // Two levels: one coarse k-means problem per job over its fine centroids.
  const bool two = two_levels();
  std::vector<cuda::CoarseJob> coarse_jobs;
  std::vector<cuda::KMeansProblem> coarse_problems;
  int64_t coarse_rows = 0;
  int max_coarse = 0;
  if (two) {
    for (const cuda::ClusterJob& c : layout) {
      const CudaClusterBlock& b = blocks_[jobs[coarse_jobs.size() % jobs.size()].block];
      const int kc = b.coarse_end - b.coarse_begin;
      coarse_jobs.push_back({kc, coarse_rows, b.coarse_begin});
      coarse_problems.push_back({c.centroid_begin, c.num_clusters, coarse_rows, kc});
      coarse_rows += kc;
      max_coarse = std::max(max_coarse, kc);
    }
  }
  cuda::CoarseLayoutParams cp;
  cuda::KMeansParams ckp;
  std::vector<int32_t> coarse_seeds(coarse_rows);
  int32_t *d_coarse_seeds = nullptr, *d_fine_of = nullptr, *d_perm_counts = nullptr;
  float *d_perm_centroids = nullptr, *d_weights = nullptr;
  bf16* d_cpoints = nullptr;
  if (two) {
    cp.jobs = d_jobs;  // the fine jobs, uploaded above
    MPA_ASSIGN_OR_RETURN(cp.coarse_jobs, scratch.Upload(coarse_jobs));
    cp.num_jobs = static_cast<int>(layout.size());
    cp.max_points = max_points;
    cp.max_clusters = max_clusters;
    cp.max_coarse = max_coarse;
    cp.head_dim = D;
    cp.coarse_stride = coarse_capacity_;
    MPA_ASSIGN_OR_RETURN(const cuda::KMeansProblem* d_cproblems, scratch.Upload(coarse_problems));
    MPA_ASSIGN_OR_RETURN(d_cpoints, scratch.Alloc<bf16>(clusters * D));
    MPA_ASSIGN_OR_RETURN(d_weights, scratch.Alloc<float>(clusters));
    MPA_ASSIGN_OR_RETURN(int32_t * d_clabels, scratch.Alloc<int32_t>(clusters));
    MPA_ASSIGN_OR_RETURN(int32_t * d_ccounts, scratch.Alloc<int32_t>(coarse_rows));
    MPA_ASSIGN_OR_RETURN(float* d_ccentroids, scratch.Alloc<float>(coarse_rows * D));
    const size_t cws_bytes = cuda::KMeansWorkspaceBytes(clusters, coarse_rows, D);
    MPA_ASSIGN_OR_RETURN(char* d_cws, scratch.Alloc<char>(static_cast<int64_t>(cws_bytes)));
    MPA_ASSIGN_OR_RETURN(d_coarse_seeds, scratch.Alloc<int32_t>(coarse_rows));
    MPA_ASSIGN_OR_RETURN(d_fine_of,
                         scratch.Alloc<int32_t>(int64_t{cp.num_jobs} * (max_coarse + 1)));
    MPA_ASSIGN_OR_RETURN(d_perm_counts, scratch.Alloc<int32_t>(clusters));
    MPA_ASSIGN_OR_RETURN(d_perm_centroids, scratch.Alloc<float>(clusters * D));
    cp.coarse_labels = d_clabels;
    ckp.points = d_cpoints;
    ckp.problems = d_cproblems;
    ckp.num_problems = cp.num_jobs;
    ckp.head_dim = D;
    ckp.total_points = clusters;
    ckp.total_clusters = coarse_rows;
    ckp.max_points = max_clusters;
    ckp.max_clusters = max_coarse;
    ckp.seeds = d_coarse_seeds;
    ckp.weights = d_weights;
    ckp.iterations = config_.prefill_kmeans_iterations;
    ckp.centroids = d_ccentroids;
    ckp.labels = d_clabels;
    ckp.counts = d_ccounts;
    ckp.workspace = d_cws;
    ckp.workspace_bytes = cws_bytes;
  }

  for (int layer = 0; layer < num_layers_; ++layer) {
    // Seeds as the CPU reference draws them for this (layer, head, block).
    size_t next = 0;
    for (int h = 0; h < H; ++h) {
      const uint64_t head_seed = ClusterHeadSeed(config_, layer, h);
      for (const Job& j : jobs) {
        const CudaClusterBlock& b = blocks_[j.block];
        const int n = b.token_end - b.token_begin, k = b.cluster_end - b.cluster_begin;
        const int keep = j.seeded ? 0 : j.keep_clusters;
        std::fill_n(seeds.begin() + next, keep, -1);
        const int pool = j.seeded ? n : n - j.first_new_point;
        const int first = j.seeded ? 0 : j.first_new_point;
        const uint64_t seed =
            j.seeded ? ClusterBlockSeed(head_seed, b.token_begin, b.token_end)
                     : ClusterBlockSeed(head_seed, b.token_begin + j.first_new_point, b.token_end);
        if (k - keep > 0) {
          cpu::SampleDistinct(pool, k - keep, seed, seeds.data() + next + keep);
          for (int i = keep; i < k; ++i) seeds[next + i] += first;
        }
        next += k;
      }
    }
    if (d_seeds == nullptr) {
      MPA_ASSIGN_OR_RETURN(d_seeds, scratch.Alloc<int32_t>(clusters));
    }
    MPA_CUDA_STATE(cudaMemcpyAsync(d_seeds, seeds.data(), seeds.size() * 4, cudaMemcpyHostToDevice,
                                   ctx.stream));

    cuda::ClusterLayoutParams lp;
    lp.kv = ctx.layers[layer];
    lp.pages = d_pages;
    lp.slot_pages = d_pages;  // in place
    lp.slot_row_offset = region_begin_;
    lp.jobs = d_jobs;
    lp.num_jobs = static_cast<int>(layout.size());
    lp.max_points = max_points;
    lp.max_clusters = max_clusters;
    lp.labels = d_labels;
    lp.counts = d_counts;
    lp.centroids = d_centroids;
    lp.cluster_stride = cluster_capacity_;
    lp.slot_stride = slot_capacity_;
    const int64_t head_block = int64_t{layer} * H;
    lp.cluster_begin = cluster_begin_ + head_block * (cluster_capacity_ + 1);
    lp.key_centroids = key_centroids_ + head_block * cluster_capacity_ * D;
    lp.value_centroids = value_centroids_ + head_block * cluster_capacity_ * D;
    lp.slot_positions = slot_positions_ + head_block * slot_capacity_;
    if (locate) {
      lp.position_rows_begin = range_begin;
      lp.position_rows_stride = range;
      MPA_CUDA_STATE(cuda::LocatePositions(lp, range_begin - region_begin_, range,
                                           laid_out_end - region_begin_, d_position_rows,
                                           ctx.stream));
      lp.position_rows = d_position_rows;
    }
    MPA_CUDA_STATE(cuda::GatherRows(lp, d_points, d_values, ctx.stream));
    MPA_CUDA_STATE(cuda::LoadKeyCentroids(lp, max_keep, d_centroids, ctx.stream));

    cuda::KMeansParams kp;
    kp.points = d_points;
    kp.problems = d_problems;
    kp.num_problems = static_cast<int>(problems.size());
    kp.head_dim = D;
    kp.total_points = points;
    kp.total_clusters = clusters;
    kp.max_points = max_points;
    kp.max_clusters = max_clusters;
    kp.seeds = d_seeds;
    kp.iterations = iterations;
    kp.centroids = d_centroids;
    kp.labels = d_labels;
    kp.counts = d_counts;
    kp.workspace = d_ws;
    kp.workspace_bytes = ws_bytes;
    MPA_CUDA_STATE(cuda::KMeansLloyd(kp, ctx.stream));
    if (two) {
      // The coarse level: seeds as the CPU draws them, the weighted k-means of the fine
      // centroids, the fine clusters renumbered coarse-major before the layout.
      size_t at = 0;
      for (int h = 0; h < H; ++h) {
        const uint64_t head_seed = ClusterHeadSeed(config_, layer, h);
        for (const Job& j : jobs) {
          const CudaClusterBlock& b = blocks_[j.block];
          const int k = b.cluster_end - b.cluster_begin, kc = b.coarse_end - b.coarse_begin;
          cpu::SampleDistinct(
              k, kc, ClusterBlockSeed(head_seed, b.token_begin, b.token_end) ^ 0x5EEDC0A45Eull,
              coarse_seeds.data() + at);
          at += kc;
        }
      }
      MPA_CUDA_STATE(cudaMemcpyAsync(d_coarse_seeds, coarse_seeds.data(), coarse_seeds.size() * 4,
                                     cudaMemcpyHostToDevice, ctx.stream));
      MPA_CUDA_STATE(
          cuda::CoarsePoints(d_centroids, d_counts, clusters, D, d_cpoints, d_weights, ctx.stream));
      MPA_CUDA_STATE(cuda::KMeansLloyd(ckp, ctx.stream));
      MPA_CUDA_STATE(cuda::RenumberCoarseMajor(cp, d_labels, d_centroids, d_counts,
                                               d_perm_centroids, d_perm_counts, d_fine_of,
                                               ctx.stream));
      lp.counts = d_perm_counts;
      lp.centroids = d_perm_centroids;
    }
    MPA_CUDA_STATE(cuda::BuildClusterLayout(lp, d_points, d_values, ctx.stream));
    if (two) {
      cp.coarse_cluster_begin = coarse_cluster_begin_ + head_block * (coarse_capacity_ + 1);
      cp.fine_of_coarse = fine_of_coarse_ + head_block * (coarse_capacity_ + 1);
      cp.coarse_key_centroids = coarse_key_centroids_ + head_block * coarse_capacity_ * D;
      cp.coarse_value_centroids = coarse_value_centroids_ + head_block * coarse_capacity_ * D;
      MPA_CUDA_STATE(cuda::BuildCoarseLevel(cp, lp, d_fine_of, ctx.stream));
    }
  }
  return absl::OkStatus();
}

absl::Status CudaClusterState::Build(const Context& ctx, int begin, int end, int64_t* reclustered) {
  if (end <= begin) return absl::InvalidArgumentError("an empty clustered region");
  std::vector<CudaClusterBlock> blocks;
  int token = begin, cluster = 0, coarse = 0;
  while (end - token > config_.final_window_max) {
    const int k = FineClusters(config_.block_tokens), kc = CoarseClusters(config_.block_tokens);
    blocks.push_back(
        {token, token + config_.block_tokens, cluster, cluster + k, coarse, coarse + kc});
    token += config_.block_tokens;
    cluster += k;
    coarse += kc;
  }
  const int k = FineClusters(end - token), kc = CoarseClusters(end - token);
  blocks.push_back({token, end, cluster, cluster + k, coarse, coarse + kc});
  region_begin_ = begin;
  MPA_RETURN_IF_ERROR(Reserve(ctx, cluster + k, end - begin, coarse + kc));
  blocks_ = std::move(blocks);
  region_end_ = end;
  std::vector<Job> jobs;
  for (int b = 0; b < static_cast<int>(blocks_.size()); ++b) jobs.push_back({b, 0, 0, true});
  *reclustered += int64_t{end - begin} * num_kv_heads_ * num_layers_;
  return Run(ctx, jobs, config_.prefill_kmeans_iterations, begin);
}

absl::Status CudaClusterState::Extend(const Context& ctx, int new_end, int64_t* reclustered) {
  const int old_end = region_end_;
  if (new_end <= old_end || blocks_.empty()) return absl::OkStatus();
  // The blocks after the update, committed only once the memory for them is there.
  std::vector<CudaClusterBlock> blocks = blocks_;
  CudaClusterBlock fw = blocks.back();
  const int n = new_end - fw.token_begin;
  std::vector<Job> jobs;
  int iterations = config_.update_kmeans_iterations;
  int64_t tokens = n;
  if (n > config_.final_window_max) {
    // The final window freezes its first block_tokens; both parts are clustered anew (the CPU's
    // update of the whole window before the freeze is replaced by this result there too).
    blocks.pop_back();
    const int split = fw.token_begin + config_.block_tokens;
    const int k1 = FineClusters(config_.block_tokens), k2 = FineClusters(new_end - split);
    const int c1 = CoarseClusters(config_.block_tokens), c2 = CoarseClusters(new_end - split);
    blocks.push_back({fw.token_begin, split, fw.cluster_begin, fw.cluster_begin + k1,
                      fw.coarse_begin, fw.coarse_begin + c1});
    blocks.push_back({split, new_end, fw.cluster_begin + k1, fw.cluster_begin + k1 + k2,
                      fw.coarse_begin + c1, fw.coarse_begin + c1 + c2});
    const int last = static_cast<int>(blocks.size()) - 1;
    jobs.push_back({last - 1, 0, 0, true});
    jobs.push_back({last, 0, 0, true});
    iterations = config_.prefill_kmeans_iterations;
    tokens = int64_t{2} * n;
  } else {
    const int m = new_end - old_end;
    const int k_old = fw.cluster_end - fw.cluster_begin;
    const int k_new = std::clamp(FineClusters(n) - k_old, 0, m);
    fw.token_end = new_end;
    fw.cluster_end = fw.cluster_begin + k_old + k_new;
    fw.coarse_end = fw.coarse_begin + std::min(CoarseClusters(n), k_old + k_new);
    blocks.back() = fw;
    jobs.push_back({static_cast<int>(blocks.size()) - 1, k_old, old_end - fw.token_begin, false});
  }
  MPA_RETURN_IF_ERROR(
      Reserve(ctx, blocks.back().cluster_end, new_end - region_begin_, blocks.back().coarse_end));
  blocks_ = std::move(blocks);
  region_end_ = new_end;
  *reclustered += tokens * num_kv_heads_ * num_layers_;
  return Run(ctx, jobs, iterations, old_end);
}

}  // namespace mpa
