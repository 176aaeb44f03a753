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
}

const bf16* CudaClusterState::key_centroids(int layer, int head) const {
  return key_centroids_ +
         (static_cast<int64_t>(layer) * num_kv_heads_ + head) * cluster_capacity_ * head_dim_;
}
const bf16* CudaClusterState::value_centroids(int layer, int head) const {
  return value_centroids_ +
         (static_cast<int64_t>(layer) * num_kv_heads_ + head) * cluster_capacity_ * head_dim_;
}
const int32_t* CudaClusterState::cluster_begin(int layer, int head) const {
  return cluster_begin_ +
         (static_cast<int64_t>(layer) * num_kv_heads_ + head) * (cluster_capacity_ + 1);
}
const int32_t* CudaClusterState::slot_positions(int layer, int head) const {
  return slot_positions_ + (static_cast<int64_t>(layer) * num_kv_heads_ + head) * slot_capacity_;
}

absl::Status CudaClusterState::Reserve(const Context& ctx, int clusters, int slots) {
  const int64_t rows = int64_t{num_layers_} * num_kv_heads_;
  if (clusters <= cluster_capacity_ && slots <= slot_capacity_) return absl::OkStatus();
  const int new_clusters = clusters > cluster_capacity_
                               ? std::max(clusters, cluster_capacity_ + cluster_capacity_ / 2)
                               : cluster_capacity_;
  const int new_slots = slots > slot_capacity_
                            ? std::max(slots, slot_capacity_ + slot_capacity_ / 2)
                            : slot_capacity_;
  // Charged first: the arrays at their new capacities (the old ones are freed on the stream).
  MPA_RETURN_IF_ERROR(charge_.Resize(
      rows * (int64_t{new_clusters} * head_dim_ * 2 * static_cast<int64_t>(sizeof(bf16)) +
              (int64_t{new_clusters} + 1) * 4 + int64_t{new_slots} * 4),
      "a sequence's cluster centroids"));
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
    MPA_CUDA_STATE(cuda::BuildClusterLayout(lp, d_points, d_values, ctx.stream));
  }
  return absl::OkStatus();
}

absl::Status CudaClusterState::Build(const Context& ctx, int begin, int end, int64_t* reclustered) {
  if (end <= begin) return absl::InvalidArgumentError("an empty clustered region");
  std::vector<CudaClusterBlock> blocks;
  int token = begin, cluster = 0;
  while (end - token > config_.final_window_max) {
    const int k = ClustersForTokens(config_.block_tokens, config_.tokens_per_centroid);
    blocks.push_back({token, token + config_.block_tokens, cluster, cluster + k});
    token += config_.block_tokens;
    cluster += k;
  }
  const int k = ClustersForTokens(end - token, config_.tokens_per_centroid);
  blocks.push_back({token, end, cluster, cluster + k});
  region_begin_ = begin;
  MPA_RETURN_IF_ERROR(Reserve(ctx, cluster + k, end - begin));
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
    const int k1 = ClustersForTokens(config_.block_tokens, config_.tokens_per_centroid);
    const int k2 = ClustersForTokens(new_end - split, config_.tokens_per_centroid);
    blocks.push_back({fw.token_begin, split, fw.cluster_begin, fw.cluster_begin + k1});
    blocks.push_back({split, new_end, fw.cluster_begin + k1, fw.cluster_begin + k1 + k2});
    const int last = static_cast<int>(blocks.size()) - 1;
    jobs.push_back({last - 1, 0, 0, true});
    jobs.push_back({last, 0, 0, true});
    iterations = config_.prefill_kmeans_iterations;
    tokens = int64_t{2} * n;
  } else {
    const int m = new_end - old_end;
    const int k_old = fw.cluster_end - fw.cluster_begin;
    const int k_new = std::clamp(ClustersForTokens(n, config_.tokens_per_centroid) - k_old, 0, m);
    fw.token_end = new_end;
    fw.cluster_end = fw.cluster_begin + k_old + k_new;
    blocks.back() = fw;
    jobs.push_back({static_cast<int>(blocks.size()) - 1, k_old, old_end - fw.token_begin, false});
  }
  MPA_RETURN_IF_ERROR(Reserve(ctx, blocks.back().cluster_end, new_end - region_begin_));
  blocks_ = std::move(blocks);
  region_end_ = new_end;
  *reclustered += tokens * num_kv_heads_ * num_layers_;
  return Run(ctx, jobs, iterations, old_end);
}

}  // namespace mpa
