// The transformer on one NVIDIA GPU: BF16 weights on the device, projections and MLP through
// cuBLAS (BF16 in, FP32 accumulate), the residual stream in FP32, a paged BF16 KV cache, and the
// kernels of kernels/cuda for everything else. Same shape of interface as Model (model.h):
// Load / FromWeights / NewSequence / Prefill / Decode batched over sequences, plus seeded random
// weights generated on the device for benchmarks at real shapes (no checkpoint needed).
//
// A decode step of a batch of 1-2 sequences streams each weight matrix once through fused GEMV
// kernels (RMSNorm into the q|k|v, gate|up and output products, SwiGLU into gate|up), and every
// decode step runs as a replayed CUDA graph, cached per (batch size, context-length bucket): the
// kernels read token ids, positions, cache slots, lengths and block tables from device buffers
// that are rewritten before each replay. Next-token ids can be sampled on the device (greedy, or
// seeded temperature / top-k / top-p per sequence).
//
// Attention per sequence (SetAttention): dense, or Multipole Attention (multipole / exact-only)
// with the sequence's cluster hierarchy on the device (model/attention/cuda_clusters.h): clustered
// at the end of a prefill once the clustered region reaches min_clustered_tokens, updated online
// every cluster_interval tokens, and read by kernels/cuda/multipole's decode. A batch with any
// sparse sequence runs every sequence through the multipole decode (a dense one as a sequence
// without clusters, which is exact attention). Quest runs through the same decode, its pages of
// consecutive positions taking the clusters' place (model/attention/cuda_quest_pages.h).
// Two-level hierarchies (levels 2) keep a coarse level over the fine one (cuda_clusters.h). Not
// thread-safe: one engine thread drives it, as with Model. A CudaModel must outlive its sequences.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "model/attention/attention_backend.h"
#include "model/config/model_config.h"
#include "model/io/weights.h"
#include "model/runtime/device_memory_budget.h"
#include "model/runtime/sampler.h"

namespace mpa {

struct CudaModelOptions {
  int64_t max_kv_tokens = 1 << 16;  // KV capacity over all sequences, in tokens
  int page_size = 16;               // tokens per KV page, a power of two
  int max_batch = 64;               // sequences per Decode call
  int max_prefill_chunk = 4096;     // prompt tokens per forward pass (longer prompts are chunked)
  int device = 0;
  // Decode steps replay captured CUDA graphs (false: every kernel is launched each step; same
  // results bit for bit).
  bool decode_graphs = true;
  // The fused GEMVs are launched as programmatic dependents: each starts streaming its weights
  // while the kernel before it finishes (false: ordinary launches).
  bool programmatic_launch = true;
  // Device memory for the sparse modes' per-sequence state beside the KV pool (cluster centroids,
  // cluster bounds and slot maps; Quest page bounds), over all sequences. A sequence whose state
  // would pass it attends exactly until its region grows again. -1: a quarter of the KV pool's
  // bytes, less what the device lacks after the model's own allocations (1 GiB kept free).
  int64_t attention_state_bytes = -1;
};

class CudaModel;
class CudaClusterState;
class CudaQuestPages;

// A sequence's pages of the device KV cache, its token ids, its attention and, for the sparse
// modes, its cluster hierarchy.
class CudaSequence {
 public:
  ~CudaSequence();
  CudaSequence(const CudaSequence&) = delete;
  CudaSequence& operator=(const CudaSequence&) = delete;

  int num_tokens() const { return static_cast<int>(tokens_.size()); }
  const std::vector<int32_t>& tokens() const { return tokens_; }
  const AttentionOptions& attention() const { return attention_; }
  const AttentionStats& stats() const { return stats_; }
  // Null until the clustered region first reaches min_clustered_tokens (and for dense).
  const CudaClusterState* clusters() const { return clusters_.get(); }
  const CudaQuestPages* quest_pages() const { return quest_.get(); }  // null until built (Quest)

 private:
  friend class CudaModel;
  explicit CudaSequence(CudaModel* model);
  CudaModel* model_;
  std::vector<int32_t> pages_;  // page ids in the model's KV pool, in token order
  std::vector<int32_t> tokens_;
  AttentionOptions attention_;
  AttentionStats stats_;
  std::unique_ptr<CudaClusterState> clusters_;
  std::unique_ptr<CudaQuestPages> quest_;  // Quest's page bounds (mode quest)
  int cluster_retry_after_ = 0;  // clustering failed for want of memory at this clustered end
};

class CudaModel {
 public:
  // Reads config.json and the safetensors weights of `dir` and converts them to BF16 on the device.
  static absl::StatusOr<std::unique_ptr<CudaModel>> Load(const std::string& dir,
                                                         const CudaModelOptions& options);
  static absl::StatusOr<std::unique_ptr<CudaModel>> FromWeights(const ModelConfig& config,
                                                                const Weights& weights,
                                                                const CudaModelOptions& options);
  // Seeded random weights drawn on the device (matrices N(0, 0.02^2), norm weights N(1, 0.02^2)).
  static absl::StatusOr<std::unique_ptr<CudaModel>> Random(const ModelConfig& config, uint64_t seed,
                                                           const CudaModelOptions& options);
  ~CudaModel();

  const ModelConfig& config() const { return config_; }
  int64_t free_kv_tokens() const {
    return static_cast<int64_t>(free_pages_.size()) * options_.page_size;
  }
  // Bytes of weights a decode step reads (every matrix once, one embedding row per token).
  int64_t weight_bytes_per_step() const { return weight_bytes_per_step_; }
  // The sparse modes' state beside the KV pool (CudaModelOptions::attention_state_bytes).
  const DeviceMemoryBudget& attention_state_budget() const { return attention_budget_; }

  std::unique_ptr<CudaSequence> NewSequence();

  // Whether sequences of this model can attend with `options` on the GPU: OK, or
  // InvalidArgument naming what is not supported here (pre-RoPE centroids,
  // an unsupported head_dim or GQA group) or what is invalid in the config.
  absl::Status SupportsAttention(const AttentionOptions& options) const;
  // Sets how `seq` attends from its next step on. A change of multipole knobs drops its clusters
  // (rebuilt at the next step); dense drops them for good.
  absl::Status SetAttention(CudaSequence& seq, const AttentionOptions& options);

  // Appends `tokens` (causal attention, chunked by max_prefill_chunk) and writes the logits of
  // the last new position to logits[vocab] (host; may be null: they stay on the device).
  // InvalidArgument for ids out of range or a context past max_position_embeddings;
  // ResourceExhausted if the KV pool is full; Internal for CUDA/cuBLAS failures.
  absl::Status Prefill(CudaSequence& seq, absl::Span<const int32_t> tokens, float* logits);

  // One token for each sequence; logits[batch, vocab] on the host (may be null).
  absl::Status Decode(absl::Span<CudaSequence* const> seqs, absl::Span<const int32_t> tokens,
                      float* logits);

  // Greedy ids (argmax, lowest id on ties) of the logits the last Prefill/Decode left on the
  // device: one per row (1 after Prefill, batch after Decode).
  absl::StatusOr<std::vector<int32_t>> GreedyIds();

  // Next ids drawn on the device from the logits the last Prefill/Decode left there, one per row
  // with that row's params: temperature 0 (or top_k 1) is greedy as GreedyIds; otherwise
  // p_i ~ exp(logit_i / temperature) over the top-k set (ties with the k-th logit kept), cut to
  // the smallest top-p nucleus. The draw is a function of (params.seed, the row's sequence length
  // after the step), so a session that keeps its seed replays its choices exactly.
  // InvalidArgument for invalid params or a count other than the rows of the last step.
  // With `logprobs`, also each chosen id's log-probability under the raw logits (log softmax, as
  // the CPU Sampler reports it), computed on the device.
  absl::StatusOr<std::vector<int32_t>> Sample(absl::Span<const SamplingParams> params,
                                              std::vector<float>* logprobs = nullptr);

  // Decode followed by Sample: one host round trip per step. The logits stay on the device
  // unless `logits` ([batch, vocab] host) asks for a copy; `logprobs` as for Sample.
  absl::StatusOr<std::vector<int32_t>> DecodeAndSample(absl::Span<CudaSequence* const> seqs,
                                                       absl::Span<const int32_t> tokens,
                                                       absl::Span<const SamplingParams> params,
                                                       float* logits = nullptr,
                                                       std::vector<float>* logprobs = nullptr);

  // Turns graph replay of decode steps on or off (benchmarks and tests compare the two).
  void set_decode_graphs(bool enabled) { options_.decode_graphs = enabled; }
  // Turns programmatic dependent launch of the GEMVs on or off (drops the captured graphs).
  void set_programmatic_launch(bool enabled);
  // Decode graphs captured so far and kept (tests: a new length bucket captures a new one).
  int num_decode_graphs() const;

  // Benchmarks only: appends `count` tokens (id 0) whose cached keys and values are whatever the
  // pool holds (random after FillKvCacheRandom), without running the model, so decode can be
  // timed at long contexts without a long prefill first.
  absl::Status AppendUncomputedContext(CudaSequence& seq, int count);
  // Benchmarks only: clusters what AppendUncomputedContext appended (as a prefill would), now.
  absl::Status RefreshClusters(CudaSequence& seq);
  // Fills the whole KV pool with seeded N(0, 1) values.
  absl::Status FillKvCacheRandom(uint64_t seed);

  // Waits for the device (benchmarks time whole steps).
  absl::Status Synchronize();

  // OK unless the device context has failed for good: after an illegal memory access, a kernel
  // launch failure, a device-side assert or an uncorrectable ECC error, every CUDA call of this
  // process fails, and this returns Unavailable naming the fault (the server then exits).
  absl::Status DeviceStatus();

 private:
  friend class CudaSequence;
  struct Impl;
  CudaModel(const ModelConfig& config, const CudaModelOptions& options);
  absl::Status Init();
  absl::Status UploadWeights(const Weights& weights);
  absl::Status RandomizeWeights(uint64_t seed);
  // Brings seq's clusters (Quest: page bounds) in step with its cache (build once the region is
  // long enough, then one online update per interval); times the work into its stats.
  // `prefill`: a prompt chunk.
  absl::Status MaintainClusters(CudaSequence& seq, bool prefill);
  // Drops seq's clusters and returns their pages to the pool.
  void DropClusters(CudaSequence& seq);
  // Stages the multipole decode's per-step metadata of a batch (when any sequence is sparse).
  absl::Status StageMultipole(absl::Span<CudaSequence* const> seqs);
  // Folds the step's device counters into the sequences' statistics (after the stream synced).
  void CompleteDecode();
  absl::Status Reserve(CudaSequence& seq, int count);
  void ReleasePages(std::vector<int32_t>& pages);
  // Runs every layer over `rows` new tokens whose ids, positions and cache slots are already on
  // the device; then the logits of `logit_rows` rows starting at `first_logit_row`.
  absl::Status Forward(int rows, bool prefill, int batch, int max_len, int max_new,
                       int first_logit_row, int logit_rows);
  // The decode forward pass for `batch` sequences of at most `length_bucket` tokens: replays
  // (capturing first if needed) the graph for that shape, or launches it directly.
  absl::Status DecodeForward(int batch, int length_bucket);
  // Checks a decode batch, reserves its cache slots, stages its metadata and enqueues the step
  // (no host synchronisation).
  absl::Status EnqueueDecode(absl::Span<CudaSequence* const> seqs,
                             absl::Span<const int32_t> tokens);
  // Enqueues the sampling of the last step's logit rows and copies the ids to `ids` (and, if
  // `logprobs` is not null, their log-probabilities to it).
  absl::Status EnqueueSample(absl::Span<const SamplingParams> params, int32_t* ids,
                             float* logprobs);

  ModelConfig config_;
  CudaModelOptions options_;
  std::vector<int32_t> free_pages_;
  int max_pages_per_seq_ = 0;
  int last_logit_rows_ = 0;
  std::vector<int64_t> last_lengths_;      // per logit row: its sequence's length after the step
  std::vector<CudaSequence*> last_batch_;  // the sequences of the last decode step
  int64_t weight_bytes_per_step_ = 0;
  DeviceMemoryBudget attention_budget_{0};
  std::unique_ptr<Impl> impl_;
};

}  // namespace mpa
