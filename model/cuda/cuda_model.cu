#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <numeric>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/linear.h"
#include "kernels/cuda/multipole/multipole_decode.h"
#include "kernels/cuda/norm_rope.h"
#include "kernels/cuda/prefill_attention.h"
#include "kernels/cuda/sampling.h"
#include "model/attention/cuda_clusters.h"
#include "model/attention/cuda_quest_pages.h"
#include "model/attention/multipole_attention.h"
#include "model/cuda/cuda_model.h"
#include "model/runtime/kv_blocks.h"
#include "model/runtime/rope.h"
#include "model/runtime/status_macros.h"
#include "model/runtime/step_checks.h"

namespace mpa {
namespace {

using cuda::bf16;

absl::Status CudaStatus(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(err)));
}
absl::Status BlasStatus(cublasStatus_t st, const char* what) {
  if (st == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": cuBLAS status ", static_cast<int>(st)));
}

#define MPA_CUDA(expr) MPA_RETURN_IF_ERROR(CudaStatus((expr), #expr))
#define MPA_BLAS(expr) MPA_RETURN_IF_ERROR(BlasStatus((expr), #expr))

// Every device allocation of the model, freed together.
class DeviceArena {
 public:
  ~DeviceArena() {
    for (void* p : ptrs_) cudaFree(p);
  }
  template <typename T>
  absl::StatusOr<T*> Alloc(int64_t n) {
    void* p = nullptr;
    const cudaError_t err = cudaMalloc(&p, std::max<int64_t>(n, 1) * sizeof(T));
    if (err != cudaSuccess) {
      return absl::ResourceExhaustedError(absl::StrCat("device allocation of ", n * sizeof(T),
                                                       " bytes failed: ", cudaGetErrorString(err)));
    }
    ptrs_.push_back(p);
    bytes_ += n * sizeof(T);
    return static_cast<T*>(p);
  }
  int64_t bytes() const { return bytes_; }

 private:
  std::vector<void*> ptrs_;
  int64_t bytes_ = 0;
};

struct DeviceLayer {
  bf16* qkv = nullptr;        // [(nq + 2 nkv) * hd, hidden]: q_proj | k_proj | v_proj rows
  float* qkv_bias = nullptr;  // [(nq + 2 nkv) * hd] or null
  float* q_norm = nullptr;    // [hd] or null
  float* k_norm = nullptr;
  float* input_norm = nullptr;  // [hidden]
  float* post_norm = nullptr;   // [hidden]
  bf16* o_proj = nullptr;       // [hidden, nq * hd]
  bf16* gate_up = nullptr;      // [2 ffn, hidden]: gate_proj | up_proj rows
  bf16* down = nullptr;         // [hidden, ffn]
  bf16* k_cache = nullptr;      // [num_pages, nkv, page, hd]
  bf16* v_cache = nullptr;
};

}  // namespace

struct CudaModel::Impl {
  DeviceArena arena;
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  std::vector<DeviceLayer> layers;
  bf16* embed = nullptr;    // [vocab, hidden]
  bf16* lm_head = nullptr;  // [vocab, hidden] (== embed when tied)
  float* final_norm = nullptr;
  float* rope_cos = nullptr;  // [max_pos, hd / 2]
  float* rope_sin = nullptr;
  // Activations for up to max_rows tokens.
  float* x = nullptr;              // [rows, hidden] residual stream
  bf16* h = nullptr;               // [rows, max(hidden, ffn)] normalised input / SwiGLU output
  float* qkv = nullptr;            // [rows, (nq + 2 nkv) * hd]
  bf16* q = nullptr;               // [rows, nq * hd]
  bf16* attn = nullptr;            // [rows, nq * hd]
  float* gate_up = nullptr;        // [rows, 2 ffn]
  float* logits = nullptr;         // [max_batch, vocab]
  int32_t* ids = nullptr;          // [rows]
  int32_t* positions = nullptr;    // [rows]
  int64_t* slots = nullptr;        // [rows]
  int32_t* block_table = nullptr;  // [max_batch, max_pages_per_seq]
  int32_t* seq_lens = nullptr;     // [max_batch]
  int32_t* q_starts = nullptr;     // [2]
  int32_t* greedy = nullptr;       // [max_batch]
  float* logprobs = nullptr;       // [max_batch]: the sampled ids' log-probabilities
  cuda::SamplingRow* sampling = nullptr;  // [max_batch]
  void* sampling_workspace = nullptr;     // SampleRowsWorkspaceBytes(max_batch)
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  void* blas_workspace = nullptr;  // cuBLAS's, set once so graph capture never allocates
  // Host staging of per-step metadata (one copy per step).
  std::vector<int32_t> h_ints;
  std::vector<int64_t> h_slots;
  std::vector<cuda::SamplingRow> h_sampling;
  // Multipole decode (a batch with a sparse sequence): per-step metadata, staged in one copy.
  int32_t* mp_ints = nullptr;  // sink_end | clustered_end | budget | coarse budget [max_batch] |
                               // num_clusters | coarse clusters [max_batch, nkv]
  uint8_t* mp_approximate = nullptr;  // [3, max_batch]: approximate, Quest, two-level flags
  // [7, layers, max_batch, nkv]: key / value centroids, begins; two levels: the coarse key /
  // value centroids, begins and fine runs.
  uintptr_t* mp_ptrs = nullptr;
  unsigned long long* mp_exact = nullptr;       // [max_batch] tokens attended exactly, this step
  unsigned long long* mp_exact_host = nullptr;  // pinned copy for the statistics
  void* mp_workspace = nullptr;                 // MultipoleDecodeWorkspaceBytes
  size_t mp_workspace_bytes = 0;
  int mp_workspace_clusters = 0;  // the cluster bucket the workspace holds
  std::vector<int32_t> h_mp_ints;
  std::vector<uint8_t> h_mp_approximate;
  std::vector<uintptr_t> h_mp_ptrs;
  std::vector<uintptr_t> uploaded_mp_ptrs;  // what d.mp_ptrs holds
  bool step_sparse = false;                 // this step runs the multipole decode
  bool step_quest = false;                  // ... and a sequence of the batch is Quest
  int step_cluster_bucket = 0;              // its max_clusters (a power of two)
  bool step_two_level = false;              // ... and a sequence of the batch has two levels
  int step_coarse_bucket = 0;               // their max coarse clusters (a power of two)
  int mp_workspace_coarse = 0;              // the coarse bucket the workspace holds
  // Cluster maintenance timing: a pair of events per sequence updated in the step.
  struct Timing {
    CudaSequence* seq;
    cudaEvent_t start, end;
    bool prefill;
  };
  std::vector<Timing> timings;
  std::vector<cudaEvent_t> spare_events;
  // Captured decode steps by (batch, length bucket, cluster bucket or 0 for dense), with the
  // step each was last used at.
  struct DecodeGraph {
    cudaGraphExec_t exec = nullptr;
    int64_t last_used = 0;
  };
  std::map<std::tuple<int, int, int, int>, DecodeGraph> graphs;
  int64_t graph_clock = 0;

  void ClearGraphs() {
    for (auto& [key, g] : graphs) cudaGraphExecDestroy(g.exec);
    graphs.clear();
  }
  cudaEvent_t TakeEvent() {
    cudaEvent_t e = nullptr;
    if (!spare_events.empty()) {
      e = spare_events.back();
      spare_events.pop_back();
    } else {
      cudaEventCreate(&e);
    }
    return e;
  }
  ~Impl() {
    ClearGraphs();
    for (const Timing& t : timings) {
      cudaEventDestroy(t.start);
      cudaEventDestroy(t.end);
    }
    for (cudaEvent_t e : spare_events) cudaEventDestroy(e);
    if (mp_exact_host != nullptr) cudaFreeHost(mp_exact_host);
    if (mp_workspace != nullptr) cudaFree(mp_workspace);
    if (blas != nullptr) cublasDestroy(blas);
    if (stream != nullptr) cudaStreamDestroy(stream);
  }
};

CudaSequence::CudaSequence(CudaModel* model) : model_(model) {}

CudaSequence::~CudaSequence() {
  if (model_ == nullptr) return;
  model_->DropClusters(*this);
  model_->ReleasePages(pages_);
}

CudaModel::CudaModel(const ModelConfig& config, const CudaModelOptions& options)
    : config_(config), options_(options), impl_(std::make_unique<Impl>()) {}

CudaModel::~CudaModel() = default;

absl::Status CudaModel::Init() {
  const ModelConfig& c = config_;
  MPA_RETURN_IF_ERROR(c.Validate());
  if (cuda::Log2PowerOfTwo(options_.page_size) < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_size must be a power of two (got ", options_.page_size, ")"));
  }
  if (options_.max_batch <= 0 || options_.max_prefill_chunk <= 0 || options_.max_kv_tokens <= 0) {
    return absl::InvalidArgumentError("max_batch, max_prefill_chunk and max_kv_tokens must be > 0");
  }
  MPA_CUDA(cudaSetDevice(options_.device));
  Impl& d = *impl_;
  MPA_CUDA(cudaStreamCreateWithFlags(&d.stream, cudaStreamNonBlocking));
  MPA_BLAS(cublasCreate(&d.blas));
  MPA_BLAS(cublasSetStream(d.blas, d.stream));

  const int64_t hidden = c.hidden_size, hd = c.head_dim, nq = c.num_heads, nkv = c.num_kv_heads;
  const int64_t ffn = c.intermediate_size, vocab = c.vocab_size;
  const int64_t qkv_rows = (nq + 2 * nkv) * hd;
  const int64_t num_pages = (options_.max_kv_tokens + options_.page_size - 1) / options_.page_size;
  max_pages_per_seq_ = (c.max_position_embeddings + options_.page_size - 1) / options_.page_size;
  const int64_t page_elems = nkv * options_.page_size * hd;
  d.layers.resize(c.num_layers);
  for (DeviceLayer& l : d.layers) {
    MPA_ASSIGN_OR_RETURN(l.qkv, d.arena.Alloc<bf16>(qkv_rows * hidden));
    if (c.attention_bias) {
      MPA_ASSIGN_OR_RETURN(l.qkv_bias, d.arena.Alloc<float>(qkv_rows));
    }
    if (c.qk_norm) {
      MPA_ASSIGN_OR_RETURN(l.q_norm, d.arena.Alloc<float>(hd));
      MPA_ASSIGN_OR_RETURN(l.k_norm, d.arena.Alloc<float>(hd));
    }
    MPA_ASSIGN_OR_RETURN(l.input_norm, d.arena.Alloc<float>(hidden));
    MPA_ASSIGN_OR_RETURN(l.post_norm, d.arena.Alloc<float>(hidden));
    MPA_ASSIGN_OR_RETURN(l.o_proj, d.arena.Alloc<bf16>(hidden * nq * hd));
    MPA_ASSIGN_OR_RETURN(l.gate_up, d.arena.Alloc<bf16>(2 * ffn * hidden));
    MPA_ASSIGN_OR_RETURN(l.down, d.arena.Alloc<bf16>(hidden * ffn));
    MPA_ASSIGN_OR_RETURN(l.k_cache, d.arena.Alloc<bf16>(num_pages * page_elems));
    MPA_ASSIGN_OR_RETURN(l.v_cache, d.arena.Alloc<bf16>(num_pages * page_elems));
  }
  MPA_ASSIGN_OR_RETURN(d.embed, d.arena.Alloc<bf16>(vocab * hidden));
  if (c.tie_word_embeddings) {
    d.lm_head = d.embed;
  } else {
    MPA_ASSIGN_OR_RETURN(d.lm_head, d.arena.Alloc<bf16>(vocab * hidden));
  }
  MPA_ASSIGN_OR_RETURN(d.final_norm, d.arena.Alloc<float>(hidden));
  weight_bytes_per_step_ =
      2 *
      (c.num_layers * (qkv_rows * hidden + hidden * nq * hd + 3 * ffn * hidden) + vocab * hidden);

  // RoPE table for every position the model allows; the Rope class carries the scaling variant.
  const Rope rope(c);
  const int64_t half = hd / 2, max_pos = c.max_position_embeddings;
  std::vector<float> cos(max_pos * half), sin(max_pos * half);
  for (int64_t p = 0; p < max_pos; ++p)
    rope.CosSin(static_cast<int>(p), &cos[p * half], &sin[p * half]);
  MPA_ASSIGN_OR_RETURN(d.rope_cos, d.arena.Alloc<float>(cos.size()));
  MPA_ASSIGN_OR_RETURN(d.rope_sin, d.arena.Alloc<float>(sin.size()));
  MPA_CUDA(cudaMemcpy(d.rope_cos, cos.data(), cos.size() * 4, cudaMemcpyHostToDevice));
  MPA_CUDA(cudaMemcpy(d.rope_sin, sin.data(), sin.size() * 4, cudaMemcpyHostToDevice));

  const int64_t rows = std::max(options_.max_batch, options_.max_prefill_chunk);
  MPA_ASSIGN_OR_RETURN(d.x, d.arena.Alloc<float>(rows * hidden));
  MPA_ASSIGN_OR_RETURN(d.h, d.arena.Alloc<bf16>(rows * std::max(hidden, ffn)));
  MPA_ASSIGN_OR_RETURN(d.qkv, d.arena.Alloc<float>(rows * qkv_rows));
  MPA_ASSIGN_OR_RETURN(d.q, d.arena.Alloc<bf16>(rows * nq * hd));
  MPA_ASSIGN_OR_RETURN(d.attn, d.arena.Alloc<bf16>(rows * nq * hd));
  MPA_ASSIGN_OR_RETURN(d.gate_up, d.arena.Alloc<float>(rows * 2 * ffn));
  MPA_ASSIGN_OR_RETURN(d.logits, d.arena.Alloc<float>(options_.max_batch * vocab));
  // ids | positions | seq_lens | q_starts | block table, one host-to-device copy per step.
  const int64_t ints =
      2 * rows + options_.max_batch + 2 + int64_t{options_.max_batch} * max_pages_per_seq_;
  MPA_ASSIGN_OR_RETURN(d.ids, d.arena.Alloc<int32_t>(ints));
  d.positions = d.ids + rows;
  d.seq_lens = d.positions + rows;
  d.q_starts = d.seq_lens + options_.max_batch;
  d.block_table = d.q_starts + 2;
  d.h_ints.assign(ints, 0);
  MPA_ASSIGN_OR_RETURN(d.slots, d.arena.Alloc<int64_t>(rows));
  MPA_ASSIGN_OR_RETURN(d.greedy, d.arena.Alloc<int32_t>(options_.max_batch));
  MPA_ASSIGN_OR_RETURN(d.logprobs, d.arena.Alloc<float>(options_.max_batch));
  MPA_ASSIGN_OR_RETURN(d.sampling, d.arena.Alloc<cuda::SamplingRow>(options_.max_batch));
  MPA_ASSIGN_OR_RETURN(char* sampling_ws, d.arena.Alloc<char>(static_cast<int64_t>(
                                              cuda::SampleRowsWorkspaceBytes(options_.max_batch))));
  d.sampling_workspace = sampling_ws;
  constexpr int64_t kBlasWorkspaceBytes = int64_t{32} << 20;
  MPA_ASSIGN_OR_RETURN(char* blas_ws, d.arena.Alloc<char>(kBlasWorkspaceBytes));
  d.blas_workspace = blas_ws;
  MPA_BLAS(cublasSetWorkspace(d.blas, d.blas_workspace, kBlasWorkspaceBytes));
  const int64_t mp_ints = 4 * int64_t{options_.max_batch} + 2 * int64_t{options_.max_batch} * nkv;
  MPA_ASSIGN_OR_RETURN(d.mp_ints, d.arena.Alloc<int32_t>(mp_ints));
  d.h_mp_ints.assign(mp_ints, 0);
  MPA_ASSIGN_OR_RETURN(d.mp_approximate, d.arena.Alloc<uint8_t>(3 * options_.max_batch));
  d.h_mp_approximate.assign(3 * options_.max_batch, 0);
  const int64_t mp_ptrs = 7 * int64_t{c.num_layers} * options_.max_batch * nkv;
  MPA_ASSIGN_OR_RETURN(d.mp_ptrs, d.arena.Alloc<uintptr_t>(mp_ptrs));
  d.h_mp_ptrs.assign(mp_ptrs, 0);
  MPA_ASSIGN_OR_RETURN(d.mp_exact, d.arena.Alloc<unsigned long long>(options_.max_batch));
  MPA_CUDA(cudaMallocHost(&d.mp_exact_host, options_.max_batch * sizeof(unsigned long long)));
  d.workspace_bytes =
      cuda::DecodeAttentionWorkspaceBytes(options_.max_batch, c.num_heads, c.head_dim, 256);
  MPA_ASSIGN_OR_RETURN(char* ws, d.arena.Alloc<char>(d.workspace_bytes));
  d.workspace = ws;

  free_pages_.resize(num_pages);
  std::iota(free_pages_.rbegin(), free_pages_.rend(), 0);  // pop_back hands out page 0 first

  int64_t state_bytes = options_.attention_state_bytes;
  if (state_bytes < 0) {
    const int64_t pool_bytes = 2 * c.num_layers * num_pages * page_elems * int64_t{sizeof(bf16)};
    size_t free_bytes = 0, total_bytes = 0;
    MPA_CUDA(cudaMemGetInfo(&free_bytes, &total_bytes));
    const int64_t spare = static_cast<int64_t>(free_bytes) - (int64_t{1} << 30);
    state_bytes = std::max<int64_t>(0, std::min(pool_bytes / 4, spare));
  }
  attention_budget_ = DeviceMemoryBudget(state_bytes);
  return absl::OkStatus();
}

namespace {

// Uploads fp32 host values as bf16 into dst through a reused staging buffer.
absl::Status UploadBf16(const std::vector<float>& src, bf16* dst, float* staging,
                        cudaStream_t stream) {
  if (src.empty()) return absl::OkStatus();
  MPA_CUDA(cudaMemcpyAsync(staging, src.data(), src.size() * 4, cudaMemcpyHostToDevice, stream));
  MPA_CUDA(cuda::ConvertToBf16(staging, static_cast<int64_t>(src.size()), dst, stream));
  return CudaStatus(cudaStreamSynchronize(stream), "upload");
}

absl::Status UploadF32(const std::vector<float>& src, float* dst, cudaStream_t stream) {
  if (src.empty()) return absl::OkStatus();
  MPA_CUDA(cudaMemcpyAsync(dst, src.data(), src.size() * 4, cudaMemcpyHostToDevice, stream));
  return CudaStatus(cudaStreamSynchronize(stream), "upload");
}

}  // namespace

absl::Status CudaModel::UploadWeights(const Weights& w) {
  const ModelConfig& c = config_;
  Impl& d = *impl_;
  size_t largest = w.embed_tokens.size();
  for (const LayerWeights& l : w.layers) {
    largest = std::max({largest, l.q_proj.size(), l.gate_proj.size(), l.down_proj.size()});
  }
  largest = std::max(largest, w.lm_head.size());
  DeviceArena staging_arena;
  MPA_ASSIGN_OR_RETURN(float* staging, staging_arena.Alloc<float>(largest));
  const int64_t hidden = c.hidden_size, hd = c.head_dim;
  const int64_t q_rows = int64_t{c.num_heads} * hd, kv_rows = int64_t{c.num_kv_heads} * hd;
  for (int i = 0; i < c.num_layers; ++i) {
    const LayerWeights& l = w.layers[i];
    DeviceLayer& dl = d.layers[i];
    MPA_RETURN_IF_ERROR(UploadBf16(l.q_proj, dl.qkv, staging, d.stream));
    MPA_RETURN_IF_ERROR(UploadBf16(l.k_proj, dl.qkv + q_rows * hidden, staging, d.stream));
    MPA_RETURN_IF_ERROR(
        UploadBf16(l.v_proj, dl.qkv + (q_rows + kv_rows) * hidden, staging, d.stream));
    if (dl.qkv_bias != nullptr) {
      std::vector<float> bias(q_rows + 2 * kv_rows, 0.0f);
      std::copy(l.q_bias.begin(), l.q_bias.end(), bias.begin());
      std::copy(l.k_bias.begin(), l.k_bias.end(), bias.begin() + q_rows);
      std::copy(l.v_bias.begin(), l.v_bias.end(), bias.begin() + q_rows + kv_rows);
      MPA_RETURN_IF_ERROR(UploadF32(bias, dl.qkv_bias, d.stream));
    }
    if (dl.q_norm != nullptr) {
      MPA_RETURN_IF_ERROR(UploadF32(l.q_norm, dl.q_norm, d.stream));
      MPA_RETURN_IF_ERROR(UploadF32(l.k_norm, dl.k_norm, d.stream));
    }
    MPA_RETURN_IF_ERROR(UploadF32(l.input_norm, dl.input_norm, d.stream));
    MPA_RETURN_IF_ERROR(UploadF32(l.post_attention_norm, dl.post_norm, d.stream));
    MPA_RETURN_IF_ERROR(UploadBf16(l.o_proj, dl.o_proj, staging, d.stream));
    MPA_RETURN_IF_ERROR(UploadBf16(l.gate_proj, dl.gate_up, staging, d.stream));
    MPA_RETURN_IF_ERROR(UploadBf16(l.up_proj, dl.gate_up + int64_t{c.intermediate_size} * hidden,
                                   staging, d.stream));
    MPA_RETURN_IF_ERROR(UploadBf16(l.down_proj, dl.down, staging, d.stream));
  }
  MPA_RETURN_IF_ERROR(UploadBf16(w.embed_tokens, d.embed, staging, d.stream));
  if (d.lm_head != d.embed)
    MPA_RETURN_IF_ERROR(UploadBf16(w.lm_head, d.lm_head, staging, d.stream));
  return UploadF32(w.final_norm, d.final_norm, d.stream);
}

absl::Status CudaModel::RandomizeWeights(uint64_t seed) {
  const ModelConfig& c = config_;
  Impl& d = *impl_;
  const int64_t hidden = c.hidden_size, hd = c.head_dim, ffn = c.intermediate_size;
  const int64_t qkv_rows = (int64_t{c.num_heads} + 2 * c.num_kv_heads) * hd;
  uint64_t tensor = seed * 1000003ull;
  auto matrix = [&](bf16* p, int64_t n) {
    return CudaStatus(cuda::FillNormalBf16(p, n, ++tensor, 0.0f, 0.02f, d.stream), "fill");
  };
  auto norm = [&](float* p, int64_t n) {
    return CudaStatus(cuda::FillNormalF32(p, n, ++tensor, 1.0f, 0.02f, d.stream), "fill");
  };
  for (DeviceLayer& l : d.layers) {
    MPA_RETURN_IF_ERROR(matrix(l.qkv, qkv_rows * hidden));
    if (l.qkv_bias != nullptr) {
      MPA_CUDA(cuda::FillNormalF32(l.qkv_bias, qkv_rows, ++tensor, 0.0f, 0.02f, d.stream));
    }
    if (l.q_norm != nullptr) {
      MPA_RETURN_IF_ERROR(norm(l.q_norm, hd));
      MPA_RETURN_IF_ERROR(norm(l.k_norm, hd));
    }
    MPA_RETURN_IF_ERROR(norm(l.input_norm, hidden));
    MPA_RETURN_IF_ERROR(norm(l.post_norm, hidden));
    MPA_RETURN_IF_ERROR(matrix(l.o_proj, hidden * c.num_heads * hd));
    MPA_RETURN_IF_ERROR(matrix(l.gate_up, 2 * ffn * hidden));
    MPA_RETURN_IF_ERROR(matrix(l.down, hidden * ffn));
  }
  MPA_RETURN_IF_ERROR(matrix(d.embed, int64_t{c.vocab_size} * hidden));
  if (d.lm_head != d.embed) MPA_RETURN_IF_ERROR(matrix(d.lm_head, int64_t{c.vocab_size} * hidden));
  MPA_RETURN_IF_ERROR(norm(d.final_norm, hidden));
  return CudaStatus(cudaStreamSynchronize(d.stream), "random weights");
}

absl::StatusOr<std::unique_ptr<CudaModel>> CudaModel::Load(const std::string& dir,
                                                           const CudaModelOptions& options) {
  MPA_ASSIGN_OR_RETURN(const ConfigAndWeights loaded, LoadConfigAndWeights(dir));
  return FromWeights(loaded.config, loaded.weights, options);
}

absl::StatusOr<std::unique_ptr<CudaModel>> CudaModel::FromWeights(const ModelConfig& config,
                                                                  const Weights& weights,
                                                                  const CudaModelOptions& options) {
  MPA_RETURN_IF_ERROR(CheckWeights(config, weights));
  std::unique_ptr<CudaModel> m(new CudaModel(config, options));
  MPA_RETURN_IF_ERROR(m->Init());
  MPA_RETURN_IF_ERROR(m->UploadWeights(weights));
  return m;
}

absl::StatusOr<std::unique_ptr<CudaModel>> CudaModel::Random(const ModelConfig& config,
                                                             uint64_t seed,
                                                             const CudaModelOptions& options) {
  std::unique_ptr<CudaModel> m(new CudaModel(config, options));
  MPA_RETURN_IF_ERROR(m->Init());
  MPA_RETURN_IF_ERROR(m->RandomizeWeights(seed));
  return m;
}

std::unique_ptr<CudaSequence> CudaModel::NewSequence() {
  return std::unique_ptr<CudaSequence>(new CudaSequence(this));
}

void CudaModel::ReleasePages(std::vector<int32_t>& pages) {
  free_pages_.insert(free_pages_.end(), pages.rbegin(), pages.rend());
  pages.clear();
}

absl::Status CudaModel::Reserve(CudaSequence& seq, int count) {
  const int ps = options_.page_size;
  const int64_t need = KvBlocksFor(int64_t{seq.num_tokens()} + count, ps) - seq.pages_.size();
  if (need > static_cast<int64_t>(free_pages_.size())) {
    return KvCacheFullError(need, ps, free_pages_.size(), KvBlocksFor(options_.max_kv_tokens, ps));
  }
  for (int64_t i = 0; i < need; ++i) {
    seq.pages_.push_back(free_pages_.back());
    free_pages_.pop_back();
  }
  return absl::OkStatus();
}

absl::Status CudaModel::Forward(int rows, bool prefill, int batch, int max_len, int max_new,
                                int first_logit_row, int logit_rows) {
  const ModelConfig& c = config_;
  Impl& d = *impl_;
  const int64_t hidden = c.hidden_size, hd = c.head_dim, nq = c.num_heads, nkv = c.num_kv_heads;
  const int64_t ffn = c.intermediate_size;
  const int64_t qkv_rows = (nq + 2 * nkv) * hd;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  cudaStream_t s = d.stream;

  // out = RmsNorm(n rows of residual) W^T, or with swiglu_out set, SwiGLU of the gate|up product.
  // A fused GEMV where it takes the shape (decode: 1-2 rows), else RmsNorm -> cuBLAS -> SiluMul
  // through d.h and d.gate_up.
  auto norm_linear = [&](const float* residual, const float* norm_weight, int n, const bf16* w,
                         int64_t out_features, float* y, bf16* swiglu_out) -> absl::Status {
    cuda::GemvParams g;
    g.norm_input = residual;
    g.norm_weight = norm_weight;
    g.eps = c.rms_norm_eps;
    g.w = w;
    g.rows = n;
    g.in_features = hidden;
    g.out_features = out_features;
    g.y = swiglu_out == nullptr ? y : nullptr;
    g.swiglu_out = swiglu_out;
    g.programmatic_launch = options_.programmatic_launch;
    if (cuda::GemvSupports(g)) return CudaStatus(cuda::Gemv(g, s), "fused norm GEMV");
    cuda::RmsNormParams norm;
    norm.residual = const_cast<float*>(residual);
    norm.weight = norm_weight;
    norm.rows = n;
    norm.n = c.hidden_size;
    norm.eps = c.rms_norm_eps;
    norm.out = d.h;
    MPA_CUDA(cuda::RmsNorm(norm, s));
    float* dst = swiglu_out == nullptr ? y : d.gate_up;
    MPA_BLAS(cuda::Linear(d.blas, {d.h, w, n, hidden, out_features, 0.0f, dst}));
    if (swiglu_out != nullptr) {
      MPA_CUDA(cuda::SiluMul(d.gate_up, n, static_cast<int>(out_features / 2), swiglu_out, s));
    }
    return absl::OkStatus();
  };
  // The residual stream += x W^T (o_proj, down_proj: beta = 1 accumulates for free).
  auto residual_linear = [&](const bf16* x, const bf16* w, int64_t in_features) -> absl::Status {
    cuda::GemvParams g;
    g.x = x;
    g.w = w;
    g.rows = rows;
    g.in_features = in_features;
    g.out_features = hidden;
    g.y = d.x;
    g.beta = 1.0f;
    g.programmatic_launch = options_.programmatic_launch;
    if (cuda::GemvSupports(g)) return CudaStatus(cuda::Gemv(g, s), "GEMV");
    MPA_BLAS(cuda::Linear(d.blas, {x, w, rows, in_features, hidden, 1.0f, d.x}));
    return absl::OkStatus();
  };

  if (!prefill && d.step_sparse) {
    MPA_CUDA(cudaMemsetAsync(d.mp_exact, 0, batch * sizeof(unsigned long long), s));
  }
  MPA_CUDA(cuda::EmbeddingGather(d.embed, d.ids, rows, c.hidden_size, d.x, s));
  for (int layer = 0; layer < c.num_layers; ++layer) {
    const DeviceLayer& l = d.layers[layer];
    const cuda::PagedKvCache kv{l.k_cache, l.v_cache, c.num_kv_heads, c.head_dim,
                                options_.page_size};
    MPA_RETURN_IF_ERROR(norm_linear(d.x, l.input_norm, rows, l.qkv, qkv_rows, d.qkv, nullptr));

    cuda::QkvPrepareParams prep;
    prep.qkv = d.qkv;
    prep.bias = l.qkv_bias;
    prep.q_norm = l.q_norm;
    prep.k_norm = l.k_norm;
    prep.eps = c.rms_norm_eps;
    prep.rope_cos = d.rope_cos;
    prep.rope_sin = d.rope_sin;
    prep.positions = d.positions;
    prep.rows = rows;
    prep.num_q_heads = c.num_heads;
    prep.num_kv_heads = c.num_kv_heads;
    prep.head_dim = c.head_dim;
    prep.q_out = d.q;
    prep.kv = kv;
    prep.slots = d.slots;
    MPA_CUDA(cuda::QkvPrepare(prep, s));

    if (prefill) {
      cuda::PrefillAttentionParams p;
      p.q = d.q;
      p.q_starts = d.q_starts;
      p.kv = kv;
      p.block_table = {d.block_table, max_pages_per_seq_};
      p.seq_lens = d.seq_lens;
      p.batch = batch;
      p.num_q_heads = c.num_heads;
      p.max_new_tokens = max_new;
      p.scale = scale;
      p.out = d.attn;
      MPA_CUDA(cuda::PrefillAttention(p, s));
    } else if (d.step_sparse) {
      cuda::MultipoleDecodeParams p;
      p.q = d.q;
      p.kv = kv;
      p.block_table = {d.block_table, max_pages_per_seq_};
      p.pool_pages = (options_.max_kv_tokens + options_.page_size - 1) / options_.page_size;
      p.seq_lens = d.seq_lens;
      const int mb = options_.max_batch;
      p.sink_end = d.mp_ints;
      p.clustered_end = d.mp_ints + mb;
      p.token_budget = d.mp_ints + 2 * mb;
      p.approximate = d.mp_approximate;
      p.quest = d.step_quest ? d.mp_approximate + mb : nullptr;
      // The clustered regions are reordered in place: slot s is row sink_end + s of the
      // sequence's own pages.
      p.clusters.pages = p.block_table;
      p.clusters.slots_after_sink = true;
      const int64_t table = int64_t{mb} * nkv;
      const int64_t per_kind = int64_t{c.num_layers} * table;
      p.clusters.key_centroids = reinterpret_cast<const bf16* const*>(d.mp_ptrs + layer * table);
      p.clusters.value_centroids =
          reinterpret_cast<const bf16* const*>(d.mp_ptrs + per_kind + layer * table);
      p.clusters.cluster_begin =
          reinterpret_cast<const int32_t* const*>(d.mp_ptrs + 2 * per_kind + layer * table);
      p.clusters.num_clusters = d.mp_ints + 4 * mb;
      p.clusters.max_clusters = d.step_cluster_bucket;
      if (d.step_two_level) {
        cuda::CoarseLevel& cl = p.clusters.coarse;
        auto kind = [&](int k) { return d.mp_ptrs + k * per_kind + layer * table; };
        cl.key_centroids = reinterpret_cast<const bf16* const*>(kind(3));
        cl.value_centroids = reinterpret_cast<const bf16* const*>(kind(4));
        cl.cluster_begin = reinterpret_cast<const int32_t* const*>(kind(5));
        cl.fine_begin = reinterpret_cast<const int32_t* const*>(kind(6));
        cl.num_clusters = d.mp_ints + 4 * mb + table;
        cl.max_clusters = d.step_coarse_bucket;
        cl.two_level = d.mp_approximate + 2 * mb;
        cl.token_budget = d.mp_ints + 3 * mb;
      }
      p.batch = batch;
      p.num_q_heads = c.num_heads;
      p.max_seq_len = max_len;
      p.scale = scale;
      p.out = d.attn;
      p.workspace = d.mp_workspace;
      p.workspace_bytes = d.mp_workspace_bytes;
      p.exact_tokens = d.mp_exact;
      MPA_CUDA(cuda::MultipoleDecode(p, s));
    } else {
      cuda::DecodeAttentionParams p;
      p.q = d.q;
      p.kv = kv;
      p.block_table = {d.block_table, max_pages_per_seq_};
      p.seq_lens = d.seq_lens;
      p.batch = batch;
      p.num_q_heads = c.num_heads;
      p.max_seq_len = max_len;
      p.scale = scale;
      p.out = d.attn;
      p.workspace = d.workspace;
      p.workspace_bytes = d.workspace_bytes;
      MPA_CUDA(cuda::DecodeAttention(p, s));
    }
    MPA_RETURN_IF_ERROR(residual_linear(d.attn, l.o_proj, nq * hd));
    MPA_RETURN_IF_ERROR(
        norm_linear(d.x, l.post_norm, rows, l.gate_up, 2 * ffn, d.gate_up, /*swiglu_out=*/d.h));
    MPA_RETURN_IF_ERROR(residual_linear(d.h, l.down, ffn));
  }
  MPA_RETURN_IF_ERROR(norm_linear(d.x + int64_t{first_logit_row} * hidden, d.final_norm, logit_rows,
                                  d.lm_head, c.vocab_size, d.logits, nullptr));
  last_logit_rows_ = logit_rows;
  return absl::OkStatus();
}

namespace {

// Decode graphs are keyed by an upper bound of the batch's longest context, rounded up to 1/32 of
// its power of two (at least 256 tokens): the attention's split shape then stays fixed for many
// steps, and the bound is at most ~3% above the true length (the kernels read the true lengths
// from the device, the bound only sizes the splits).
int LengthBucket(int len) {
  int64_t g = 256;
  while (g * 32 < len) g *= 2;
  return static_cast<int>((len + g - 1) / g * g);
}

constexpr int kMaxDecodeGraphs = 64;

}  // namespace

int CudaModel::num_decode_graphs() const { return static_cast<int>(impl_->graphs.size()); }

void CudaModel::set_programmatic_launch(bool enabled) {
  options_.programmatic_launch = enabled;
  impl_->ClearGraphs();
}

absl::Status CudaModel::DecodeForward(int batch, int length_bucket) {
  Impl& d = *impl_;
  if (!options_.decode_graphs) {
    return Forward(batch, /*prefill=*/false, batch, length_bucket, 1, 0, batch);
  }
  // A step with a Quest sequence launches the Quest scoring too: its own graph.
  const std::tuple<int, int, int, int> key(
      batch, length_bucket, d.step_sparse ? 2 * d.step_cluster_bucket + (d.step_quest ? 1 : 0) : 0,
      d.step_sparse && d.step_two_level ? d.step_coarse_bucket : 0);
  auto it = d.graphs.find(key);
  if (it == d.graphs.end()) {
    if (d.graphs.size() >= kMaxDecodeGraphs) {
      auto oldest = std::min_element(
          d.graphs.begin(), d.graphs.end(),
          [](const auto& a, const auto& b) { return a.second.last_used < b.second.last_used; });
      cudaGraphExecDestroy(oldest->second.exec);
      d.graphs.erase(oldest);
    }
    // Relaxed mode: the launchers' one-time attribute calls may run during the first capture.
    MPA_CUDA(cudaStreamBeginCapture(d.stream, cudaStreamCaptureModeRelaxed));
    const absl::Status forward =
        Forward(batch, /*prefill=*/false, batch, length_bucket, 1, 0, batch);
    cudaGraph_t graph = nullptr;
    const cudaError_t end = cudaStreamEndCapture(d.stream, &graph);
    if (!forward.ok() || end != cudaSuccess) {
      if (graph != nullptr) cudaGraphDestroy(graph);
      MPA_RETURN_IF_ERROR(forward);
      return CudaStatus(end, "decode graph capture");
    }
    cudaGraphExec_t exec = nullptr;
    const cudaError_t inst = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    MPA_CUDA(inst);
    it = d.graphs.emplace(key, Impl::DecodeGraph{exec, 0}).first;
  }
  it->second.last_used = ++d.graph_clock;
  MPA_CUDA(cudaGraphLaunch(it->second.exec, d.stream));
  last_logit_rows_ = batch;
  return absl::OkStatus();
}

absl::Status CudaModel::Prefill(CudaSequence& seq, absl::Span<const int32_t> tokens,
                                float* logits) {
  if (tokens.empty()) return absl::InvalidArgumentError("prefill needs at least one token");
  MPA_RETURN_IF_ERROR(CheckNewTokens(config_, seq.num_tokens(), tokens));
  MPA_RETURN_IF_ERROR(Reserve(seq, static_cast<int>(tokens.size())));
  Impl& d = *impl_;
  const int rows_cap = std::max(options_.max_batch, options_.max_prefill_chunk);
  const int ps = options_.page_size;
  for (size_t begin = 0; begin < tokens.size(); begin += options_.max_prefill_chunk) {
    const int n =
        static_cast<int>(std::min<size_t>(options_.max_prefill_chunk, tokens.size() - begin));
    const int first_pos = seq.num_tokens();
    // Metadata in one host buffer laid out as on the device.
    int32_t* ids = d.h_ints.data();
    int32_t* pos = ids + rows_cap;
    int32_t* lens = pos + rows_cap;
    int32_t* starts = lens + options_.max_batch;
    int32_t* table = starts + 2;
    d.h_slots.resize(n);
    for (int i = 0; i < n; ++i) {
      ids[i] = tokens[begin + i];
      pos[i] = first_pos + i;
      d.h_slots[i] = int64_t{seq.pages_[pos[i] / ps]} * ps + pos[i] % ps;
    }
    lens[0] = first_pos + n;
    starts[0] = 0;
    starts[1] = n;
    std::copy(seq.pages_.begin(), seq.pages_.end(), table);
    MPA_CUDA(cudaMemcpyAsync(d.ids, d.h_ints.data(),
                             (table - ids + seq.pages_.size()) * sizeof(int32_t),
                             cudaMemcpyHostToDevice, d.stream));
    MPA_CUDA(cudaMemcpyAsync(d.slots, d.h_slots.data(), n * sizeof(int64_t), cudaMemcpyHostToDevice,
                             d.stream));
    seq.tokens_.insert(seq.tokens_.end(), tokens.begin() + begin, tokens.begin() + begin + n);
    MPA_RETURN_IF_ERROR(Forward(n, /*prefill=*/true, 1, first_pos + n, n, n - 1, 1));
    last_lengths_.assign(1, first_pos + n);
    // The host buffers are rewritten by the next chunk: wait for this chunk's copies.
    MPA_CUDA(cudaStreamSynchronize(d.stream));
  }
  MPA_RETURN_IF_ERROR(MaintainClusters(seq, /*prefill=*/true));
  MPA_CUDA(cudaStreamSynchronize(d.stream));
  CompleteDecode();
  if (logits != nullptr) {
    MPA_CUDA(cudaMemcpyAsync(logits, d.logits, int64_t{config_.vocab_size} * 4,
                             cudaMemcpyDeviceToHost, d.stream));
    MPA_CUDA(cudaStreamSynchronize(d.stream));
  }
  return absl::OkStatus();
}

absl::Status CudaModel::EnqueueDecode(absl::Span<CudaSequence* const> seqs,
                                      absl::Span<const int32_t> tokens) {
  MPA_RETURN_IF_ERROR(CheckDecodeBatch(config_, seqs, tokens, options_.max_batch));
  for (CudaSequence* seq : seqs) MPA_RETURN_IF_ERROR(Reserve(*seq, 1));
  Impl& d = *impl_;
  const int batch = static_cast<int>(seqs.size());
  const int rows_cap = std::max(options_.max_batch, options_.max_prefill_chunk);
  const int ps = options_.page_size;
  int32_t* ids = d.h_ints.data();
  int32_t* pos = ids + rows_cap;
  int32_t* lens = pos + rows_cap;
  int32_t* table = lens + options_.max_batch + 2;
  d.h_slots.resize(batch);
  last_lengths_.resize(batch);
  int max_len = 0;
  for (int b = 0; b < batch; ++b) {
    CudaSequence& seq = *seqs[b];
    const int p = seq.num_tokens();
    ids[b] = tokens[b];
    pos[b] = p;
    lens[b] = p + 1;
    max_len = std::max(max_len, p + 1);
    d.h_slots[b] = int64_t{seq.pages_[p / ps]} * ps + p % ps;
    std::copy(seq.pages_.begin(), seq.pages_.end(), table + int64_t{b} * max_pages_per_seq_);
    seq.tokens_.push_back(tokens[b]);
    last_lengths_[b] = p + 1;
  }
  // Pageable sources: each copy returns once the host buffer has been read, so the staging
  // buffers may be rewritten by the next step without waiting for the device.
  MPA_CUDA(cudaMemcpyAsync(d.ids, d.h_ints.data(),
                           (table - ids + int64_t{batch} * max_pages_per_seq_) * sizeof(int32_t),
                           cudaMemcpyHostToDevice, d.stream));
  MPA_CUDA(cudaMemcpyAsync(d.slots, d.h_slots.data(), batch * sizeof(int64_t),
                           cudaMemcpyHostToDevice, d.stream));
  MPA_RETURN_IF_ERROR(StageMultipole(seqs));
  // Graph replay and direct launches see the same length bound, so they compute the same bits.
  MPA_RETURN_IF_ERROR(DecodeForward(batch, LengthBucket(max_len)));
  last_batch_.assign(seqs.begin(), seqs.end());
  if (d.step_sparse) {
    MPA_CUDA(cudaMemcpyAsync(d.mp_exact_host, d.mp_exact, batch * sizeof(unsigned long long),
                             cudaMemcpyDeviceToHost, d.stream));
  }
  // The new tokens' keys are in the cache: clusters catch up (after this step's attention, so
  // a token that completes an interval is attended exactly once more, from the recent window).
  for (CudaSequence* seq : seqs) MPA_RETURN_IF_ERROR(MaintainClusters(*seq, /*prefill=*/false));
  return absl::OkStatus();
}

absl::Status CudaModel::Decode(absl::Span<CudaSequence* const> seqs,
                               absl::Span<const int32_t> tokens, float* logits) {
  if (seqs.empty() && tokens.empty()) return absl::OkStatus();
  MPA_RETURN_IF_ERROR(EnqueueDecode(seqs, tokens));
  if (logits != nullptr) {
    MPA_CUDA(cudaMemcpyAsync(logits, impl_->logits,
                             static_cast<int64_t>(seqs.size()) * config_.vocab_size * 4,
                             cudaMemcpyDeviceToHost, impl_->stream));
  }
  MPA_CUDA(cudaStreamSynchronize(impl_->stream));
  CompleteDecode();
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> CudaModel::GreedyIds() {
  Impl& d = *impl_;
  std::vector<int32_t> ids(last_logit_rows_);
  if (ids.empty()) return ids;
  MPA_CUDA(cuda::ArgmaxRows(d.logits, last_logit_rows_, config_.vocab_size, d.greedy, d.stream));
  MPA_CUDA(cudaMemcpyAsync(ids.data(), d.greedy, ids.size() * 4, cudaMemcpyDeviceToHost, d.stream));
  MPA_CUDA(cudaStreamSynchronize(d.stream));
  return ids;
}

absl::Status CudaModel::EnqueueSample(absl::Span<const SamplingParams> params, int32_t* ids,
                                      float* logprobs) {
  Impl& d = *impl_;
  if (params.size() != static_cast<size_t>(last_logit_rows_) ||
      last_lengths_.size() != params.size()) {
    return absl::InvalidArgumentError(absl::StrCat("sampling got ", params.size(),
                                                   " parameter sets for ", last_logit_rows_,
                                                   " rows of logits"));
  }
  bool greedy = true;
  d.h_sampling.resize(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    const SamplingParams& sp = params[i];
    const absl::Status valid = sp.Validate();
    if (!valid.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("sampling row ", i, ": ", valid.message()));
    }
    cuda::SamplingRow& row = d.h_sampling[i];
    row.temperature = sp.temperature;
    row.top_k = sp.top_k;
    row.top_p = sp.top_p;
    // The draw depends on the session's seed and on how far the session has come.
    row.seed = sp.seed ^ (static_cast<uint64_t>(last_lengths_[i]) * 0xd1b54a32d192ed03ull);
    greedy = greedy && (sp.temperature == 0.0f || sp.top_k == 1);
  }
  const int rows = last_logit_rows_;
  if (greedy) {
    MPA_CUDA(cuda::ArgmaxRows(d.logits, rows, config_.vocab_size, d.greedy, d.stream));
  } else {
    MPA_CUDA(cudaMemcpyAsync(d.sampling, d.h_sampling.data(), rows * sizeof(cuda::SamplingRow),
                             cudaMemcpyHostToDevice, d.stream));
    MPA_CUDA(cuda::SampleRows(d.logits, rows, config_.vocab_size, d.sampling, d.greedy,
                              d.sampling_workspace,
                              cuda::SampleRowsWorkspaceBytes(options_.max_batch), d.stream));
  }
  MPA_CUDA(
      cudaMemcpyAsync(ids, d.greedy, rows * sizeof(int32_t), cudaMemcpyDeviceToHost, d.stream));
  if (logprobs != nullptr) {
    MPA_CUDA(cuda::LogProbRows(d.logits, rows, config_.vocab_size, d.greedy, d.logprobs, d.stream));
    MPA_CUDA(cudaMemcpyAsync(logprobs, d.logprobs, rows * sizeof(float), cudaMemcpyDeviceToHost,
                             d.stream));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> CudaModel::Sample(absl::Span<const SamplingParams> params,
                                                       std::vector<float>* logprobs) {
  std::vector<int32_t> ids(params.size());
  if (logprobs != nullptr) logprobs->assign(params.size(), 0.0f);
  MPA_RETURN_IF_ERROR(
      EnqueueSample(params, ids.data(), logprobs != nullptr ? logprobs->data() : nullptr));
  MPA_CUDA(cudaStreamSynchronize(impl_->stream));
  return ids;
}

absl::StatusOr<std::vector<int32_t>> CudaModel::DecodeAndSample(
    absl::Span<CudaSequence* const> seqs, absl::Span<const int32_t> tokens,
    absl::Span<const SamplingParams> params, float* logits, std::vector<float>* logprobs) {
  if (params.size() != seqs.size()) {
    return absl::InvalidArgumentError(absl::StrCat("decode got ", seqs.size(), " sequences but ",
                                                   params.size(), " sampling parameter sets"));
  }
  for (size_t i = 0; i < params.size(); ++i) {
    const absl::Status valid = params[i].Validate();
    if (!valid.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("sampling row ", i, ": ", valid.message()));
    }
  }
  std::vector<int32_t> ids(params.size());
  if (logprobs != nullptr) logprobs->assign(params.size(), 0.0f);
  if (ids.empty()) return ids;
  MPA_RETURN_IF_ERROR(EnqueueDecode(seqs, tokens));
  MPA_RETURN_IF_ERROR(
      EnqueueSample(params, ids.data(), logprobs != nullptr ? logprobs->data() : nullptr));
  if (logits != nullptr) {
    MPA_CUDA(cudaMemcpyAsync(logits, impl_->logits,
                             static_cast<int64_t>(seqs.size()) * config_.vocab_size * 4,
                             cudaMemcpyDeviceToHost, impl_->stream));
  }
  MPA_CUDA(cudaStreamSynchronize(impl_->stream));
  CompleteDecode();
  return ids;
}

absl::Status CudaModel::DeviceStatus() {
  cudaError_t e = cudaStreamSynchronize(impl_->stream);
  if (e == cudaSuccess) e = cudaPeekAtLastError();
  switch (e) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorHardwareStackError:
    case cudaErrorAssert:
    case cudaErrorECCUncorrectable:
    case cudaErrorLaunchTimeout:
    case cudaErrorDevicesUnavailable:
      return absl::UnavailableError(absl::StrCat("GPU ", options_.device, ": ", cudaGetErrorName(e),
                                                 ": ", cudaGetErrorString(e)));
    default:
      return absl::OkStatus();
  }
}

absl::Status CudaModel::AppendUncomputedContext(CudaSequence& seq, int count) {
  const std::vector<int32_t> ids(count, 0);
  MPA_RETURN_IF_ERROR(CheckNewTokens(config_, seq.num_tokens(), ids));
  MPA_RETURN_IF_ERROR(Reserve(seq, count));
  seq.tokens_.insert(seq.tokens_.end(), ids.begin(), ids.end());
  return absl::OkStatus();
}

absl::Status CudaModel::RefreshClusters(CudaSequence& seq) {
  MPA_RETURN_IF_ERROR(MaintainClusters(seq, /*prefill=*/true));
  MPA_CUDA(cudaStreamSynchronize(impl_->stream));
  CompleteDecode();
  return absl::OkStatus();
}

absl::Status CudaModel::FillKvCacheRandom(uint64_t seed) {
  const int64_t num_pages = (options_.max_kv_tokens + options_.page_size - 1) / options_.page_size;
  const int64_t n = num_pages * config_.num_kv_heads * options_.page_size * config_.head_dim;
  for (const DeviceLayer& l : impl_->layers) {
    MPA_CUDA(cuda::FillNormalBf16(l.k_cache, n, ++seed, 0.0f, 1.0f, impl_->stream));
    MPA_CUDA(cuda::FillNormalBf16(l.v_cache, n, ++seed, 0.0f, 1.0f, impl_->stream));
  }
  return Synchronize();
}

absl::Status CudaModel::Synchronize() {
  return CudaStatus(cudaStreamSynchronize(impl_->stream), "sync");
}

absl::Status CudaModel::SupportsAttention(const AttentionOptions& options) const {
  if (options.mode == AttentionMode::kDense) return absl::OkStatus();
  const std::string mode(AttentionModeName(options.mode));
  MPA_RETURN_IF_ERROR(options.multipole.Validate());
  const MultipoleConfig& m = options.multipole;
  const bool quest = options.mode == AttentionMode::kQuest;
  if (!quest && m.centroid_keys != CentroidKeys::kPostRope) {
    return absl::InvalidArgumentError(
        absl::StrCat("attention ", mode, " with centroid_keys ", CentroidKeysName(m.centroid_keys),
                     " is not available on the GPU (post_rope only: the GPU cache holds the "
                     "keys after RoPE)"));
  }
  const int group = config_.num_heads / config_.num_kv_heads;
  if (config_.head_dim % 8 != 0 || config_.head_dim > 256 ||
      (group != 1 && group != 2 && group != 4 && group != 8)) {
    return absl::InvalidArgumentError(
        absl::StrCat("attention ", mode,
                     " on the GPU needs head_dim a multiple of 8 up to 256 and 1, 2, 4 or 8 "
                     "query heads per KV head (this model: head_dim ",
                     config_.head_dim, ", group ", group, ")"));
  }
  const int max_block_clusters =
      ClustersForTokens(std::max(m.block_tokens, m.final_window_max), m.tokens_per_centroid);
  if (!quest && max_block_clusters > 16384) {
    return absl::InvalidArgumentError(absl::StrCat(
        "attention ", mode, ": blocks of up to ", std::max(m.block_tokens, m.final_window_max),
        " tokens at one centroid per ", m.tokens_per_centroid,
        " tokens make more clusters than the GPU lays out at once (16384)"));
  }
  return absl::OkStatus();
}

absl::Status CudaModel::SetAttention(CudaSequence& seq, const AttentionOptions& options) {
  MPA_RETURN_IF_ERROR(SupportsAttention(options));
  const bool sparse = options.mode != AttentionMode::kDense;
  const MultipoleConfig& old = seq.attention_.multipole;
  const MultipoleConfig& now = options.multipole;
  // Knobs that shape the clusters: a change rebuilds them (the budget and mode do not).
  const bool same_clusters =
      old.sink_tokens == now.sink_tokens && old.cluster_interval == now.cluster_interval &&
      old.tokens_per_centroid == now.tokens_per_centroid && old.block_tokens == now.block_tokens &&
      old.final_window_min == now.final_window_min &&
      old.final_window_max == now.final_window_max &&
      old.prefill_kmeans_iterations == now.prefill_kmeans_iterations &&
      old.update_kmeans_iterations == now.update_kmeans_iterations && old.seed == now.seed &&
      old.min_clustered_tokens == now.min_clustered_tokens;
  // Quest keeps page bounds, not clusters: a switch between the two drops the state.
  const bool was_quest = seq.attention_.mode == AttentionMode::kQuest;
  const bool is_quest = options.mode == AttentionMode::kQuest;
  if (!sparse || !same_clusters || was_quest != is_quest ||
      (is_quest && old.quest_page_tokens != now.quest_page_tokens)) {
    DropClusters(seq);
  }
  seq.attention_ = options;
  return absl::OkStatus();
}

void CudaModel::DropClusters(CudaSequence& seq) {
  if (seq.clusters_ == nullptr && seq.quest_ == nullptr) return;
  // The state's buffers may still be read by enqueued work.
  cudaStreamSynchronize(impl_->stream);
  seq.clusters_.reset();
  seq.quest_.reset();
}

absl::Status CudaModel::MaintainClusters(CudaSequence& seq, bool prefill) {
  if (seq.attention_.mode == AttentionMode::kDense) return absl::OkStatus();
  const bool quest = seq.attention_.mode == AttentionMode::kQuest;
  const MultipoleConfig& config = seq.attention_.multipole;
  const CachePartition part = PartitionCache(seq.num_tokens(), config);
  // Quest keeps page bounds where multipole keeps clusters, over the same region (as the CPU
  // reference: once the region reaches min_clustered_tokens, then up to the clustered end).
  CudaClusterState* state = seq.clusters_.get();
  const bool fresh = quest ? seq.quest_ == nullptr : state == nullptr;
  if (fresh) {
    if (part.clustered_tokens() < std::max(1, config.min_clustered_tokens)) return absl::OkStatus();
    if (part.clustered_end <= seq.cluster_retry_after_) return absl::OkStatus();
  } else if (part.clustered_end <= (quest ? seq.quest_->region_end() : state->region_end())) {
    return absl::OkStatus();
  }
  Impl& d = *impl_;
  CudaClusterState::Context ctx;
  for (const DeviceLayer& l : d.layers) {
    ctx.layers.push_back(
        {l.k_cache, l.v_cache, config_.num_kv_heads, config_.head_dim, options_.page_size});
  }
  ctx.pages = &seq.pages_;
  ctx.stream = d.stream;
  Impl::Timing timing{&seq, d.TakeEvent(), d.TakeEvent(), prefill};
  MPA_CUDA(cudaEventRecord(timing.start, d.stream));
  AttentionStats& stats = seq.stats_;
  absl::Status status;
  if (quest) {
    if (fresh) {
      seq.quest_ = std::make_unique<CudaQuestPages>(config.quest_page_tokens, config_.num_layers,
                                                    config_.num_kv_heads, config_.head_dim,
                                                    &attention_budget_);
    }
    status = seq.quest_->Update(ctx, part.sink_end, part.clustered_end);
    if (!prefill && status.ok()) stats.cluster_updates += 1;
  } else if (fresh) {
    seq.clusters_ = std::make_unique<CudaClusterState>(
        config, config_.num_layers, config_.num_kv_heads, config_.head_dim, &attention_budget_);
    status.Update(
        seq.clusters_->Build(ctx, part.sink_end, part.clustered_end, &stats.tokens_reclustered));
    if (!prefill && status.ok()) stats.cluster_updates += 1;
  } else {
    // One interval at a time while decoding, as the CPU reference. A prompt's later chunks (a
    // long prompt arrives in many) join in steps of up to half a block: each update re-clusters
    // the final window, so interval steps would cost a prompt of N tokens N / interval of them.
    const int step = prefill ? std::max(config.cluster_interval, config.block_tokens / 2)
                             : config.cluster_interval;
    while (status.ok() && state->region_end() < part.clustered_end) {
      const int next = std::min(state->region_end() + step, part.clustered_end);
      status.Update(state->Extend(ctx, next, &stats.tokens_reclustered));
      stats.cluster_updates += 1;
    }
  }
  MPA_CUDA(cudaEventRecord(timing.end, d.stream));
  d.timings.push_back(timing);
  if (!status.ok()) {
    // No device memory for the clusters (or pages): this sequence attends densely (exact) until
    // its region grows by another interval; the others are not disturbed.
    if (!absl::IsResourceExhausted(status)) return status;
    DropClusters(seq);
    seq.cluster_retry_after_ = part.clustered_end;
  }
  return absl::OkStatus();
}

absl::Status CudaModel::StageMultipole(absl::Span<CudaSequence* const> seqs) {
  Impl& d = *impl_;
  d.step_sparse = false;
  d.step_quest = false;
  d.step_two_level = false;
  int max_clusters = 1, max_coarse = 1;
  for (CudaSequence* seq : seqs) {
    if (seq->attention_.mode == AttentionMode::kDense) continue;
    d.step_sparse = true;
    if (seq->clusters_ != nullptr) {
      max_clusters = std::max(max_clusters, seq->clusters_->num_clusters());
      if (seq->clusters_->two_levels() && seq->attention_.mode != AttentionMode::kQuest) {
        d.step_two_level = true;
        max_coarse = std::max(max_coarse, seq->clusters_->num_coarse());
      }
    }
    if (seq->attention_.mode == AttentionMode::kQuest) {
      d.step_quest = true;
      if (seq->quest_ != nullptr) max_clusters = std::max(max_clusters, seq->quest_->num_pages());
    }
  }
  if (!d.step_sparse) return absl::OkStatus();
  if (max_clusters > cuda::kMaxClustersPerHead) {
    return absl::InvalidArgumentError(
        absl::StrCat("a sequence has ", max_clusters,
                     " clusters (or Quest pages) per KV head; the GPU decode ranks at most ",
                     cuda::kMaxClustersPerHead,
                     " (raise tokens_per_centroid or quest_page_tokens, or shorten the context)"));
  }
  int bucket = 64;
  while (bucket < max_clusters) bucket *= 2;
  bucket = std::min(bucket, cuda::kMaxClustersPerHead);
  d.step_cluster_bucket = bucket;
  int coarse_bucket = 0;
  if (d.step_two_level) {
    coarse_bucket = 64;
    while (coarse_bucket < max_coarse) coarse_bucket *= 2;
    coarse_bucket = std::min(coarse_bucket, cuda::kMaxClustersPerHead);
  }
  d.step_coarse_bucket = coarse_bucket;
  const ModelConfig& c = config_;
  if (bucket > d.mp_workspace_clusters || coarse_bucket > d.mp_workspace_coarse) {
    bucket = std::max(bucket, d.mp_workspace_clusters);
    coarse_bucket = std::max(coarse_bucket, d.mp_workspace_coarse);
    cuda::MultipoleShape shape;
    shape.batch = options_.max_batch;
    shape.num_q_heads = c.num_heads;
    shape.num_kv_heads = c.num_kv_heads;
    shape.head_dim = c.head_dim;
    shape.max_clusters = bucket;
    shape.max_coarse_clusters = coarse_bucket;
    shape.max_seq_len = static_cast<int>(
        std::min<int64_t>(c.max_position_embeddings, options_.max_kv_tokens + options_.page_size));
    // The splits depend on the step's batch: the largest need over every batch size.
    size_t bytes = 0;
    for (int b = 1; b <= options_.max_batch; ++b) {
      shape.batch = b;
      bytes = std::max(bytes, cuda::MultipoleDecodeWorkspaceBytes(shape));
    }
    MPA_CUDA(cudaStreamSynchronize(d.stream));
    d.ClearGraphs();  // captured steps hold the old workspace
    if (d.mp_workspace != nullptr) MPA_CUDA(cudaFree(d.mp_workspace));
    d.mp_workspace = nullptr;
    d.mp_workspace_clusters = 0;
    d.mp_workspace_coarse = 0;
    MPA_CUDA(cudaMalloc(&d.mp_workspace, bytes));
    d.mp_workspace_bytes = bytes;
    d.mp_workspace_clusters = bucket;
    d.mp_workspace_coarse = coarse_bucket;
  }
  const int mb = options_.max_batch, nkv = c.num_kv_heads;
  int32_t* sink = d.h_mp_ints.data();
  int32_t* cend = sink + mb;
  int32_t* budget = cend + mb;
  int32_t* coarse_budget = budget + mb;
  int32_t* clusters = coarse_budget + mb;
  int32_t* coarse_clusters = clusters + int64_t{mb} * nkv;
  int32_t* slot_table = coarse_clusters + int64_t{mb} * nkv;  // the end of the staged ints
  const int64_t table = int64_t{mb} * nkv, per_kind = int64_t{c.num_layers} * table;
  for (size_t b = 0; b < seqs.size(); ++b) {
    const CudaSequence& seq = *seqs[b];
    const CudaClusterState* state = seq.clusters_.get();
    const CudaQuestPages* quest = seq.quest_.get();
    const bool is_quest = seq.attention_.mode == AttentionMode::kQuest;
    const bool sparse = seq.attention_.mode != AttentionMode::kDense &&
                        (is_quest ? quest != nullptr : state != nullptr);
    d.h_mp_approximate[mb + b] = is_quest && sparse;
    sink[b] = !sparse ? 0 : is_quest ? quest->region_begin() : state->region_begin();
    cend[b] = !sparse ? 0 : is_quest ? quest->region_end() : state->region_end();
    budget[b] = sparse ? static_cast<int32_t>(std::min<int64_t>(
                             TokenBudget(seq.attention_.multipole, cend[b] - sink[b]), INT32_MAX))
                       : 0;
    d.h_mp_approximate[b] =
        seq.attention_.mode == AttentionMode::kMultipole && seq.attention_.multipole.approximate;
    const bool two = sparse && !is_quest && state->two_levels();
    d.h_mp_approximate[2 * mb + b] = two;
    coarse_budget[b] =
        two ? static_cast<int32_t>(std::min<double>(
                  std::ceil(static_cast<double>(budget[b]) *
                            static_cast<double>(seq.attention_.multipole.coarse_expansion)),
                  INT32_MAX))
            : 0;
    for (int h = 0; h < nkv; ++h) {
      clusters[b * nkv + h] = !sparse ? 0 : is_quest ? quest->num_pages() : state->num_clusters();
      coarse_clusters[b * nkv + h] = two ? state->num_coarse() : 0;
      for (int l = 0; l < c.num_layers; ++l) {
        const int64_t at = l * table + int64_t(b) * nkv + h;
        if (sparse && is_quest) {  // pages as clusters: bounds in the centroids' places
          d.h_mp_ptrs[at] = reinterpret_cast<uintptr_t>(quest->page_min(l, h));
          d.h_mp_ptrs[per_kind + at] = reinterpret_cast<uintptr_t>(quest->page_max(l, h));
          d.h_mp_ptrs[2 * per_kind + at] = reinterpret_cast<uintptr_t>(quest->page_begin());
          continue;
        }
        d.h_mp_ptrs[at] = sparse ? reinterpret_cast<uintptr_t>(state->key_centroids(l, h)) : 0;
        d.h_mp_ptrs[per_kind + at] =
            sparse ? reinterpret_cast<uintptr_t>(state->value_centroids(l, h)) : 0;
        d.h_mp_ptrs[2 * per_kind + at] =
            sparse ? reinterpret_cast<uintptr_t>(state->cluster_begin(l, h)) : 0;
        d.h_mp_ptrs[3 * per_kind + at] =
            two ? reinterpret_cast<uintptr_t>(state->coarse_key_centroids(l, h)) : 0;
        d.h_mp_ptrs[4 * per_kind + at] =
            two ? reinterpret_cast<uintptr_t>(state->coarse_value_centroids(l, h)) : 0;
        d.h_mp_ptrs[5 * per_kind + at] =
            two ? reinterpret_cast<uintptr_t>(state->coarse_cluster_begin(l, h)) : 0;
        d.h_mp_ptrs[6 * per_kind + at] =
            two ? reinterpret_cast<uintptr_t>(state->fine_of_coarse(l, h)) : 0;
      }
    }
  }
  const int64_t staged_ints = slot_table - sink;
  MPA_CUDA(cudaMemcpyAsync(d.mp_ints, d.h_mp_ints.data(), staged_ints * sizeof(int32_t),
                           cudaMemcpyHostToDevice, d.stream));
  MPA_CUDA(cudaMemcpyAsync(d.mp_approximate, d.h_mp_approximate.data(), 3 * mb,
                           cudaMemcpyHostToDevice, d.stream));
  // The pointer tables change only when a batch's sequences or their cluster buffers do.
  if (d.h_mp_ptrs != d.uploaded_mp_ptrs) {
    MPA_CUDA(cudaMemcpyAsync(d.mp_ptrs, d.h_mp_ptrs.data(), d.h_mp_ptrs.size() * sizeof(uintptr_t),
                             cudaMemcpyHostToDevice, d.stream));
    d.uploaded_mp_ptrs = d.h_mp_ptrs;
  }
  return absl::OkStatus();
}

void CudaModel::CompleteDecode() {
  Impl& d = *impl_;
  const ModelConfig& c = config_;
  if (d.step_sparse) {
    for (size_t b = 0; b < last_batch_.size(); ++b) {
      CudaSequence& seq = *last_batch_[b];
      if (seq.attention_.mode == AttentionMode::kDense) continue;
      AttentionStats& st = seq.stats_;
      st.decode_steps += c.num_layers;
      st.tokens_total += int64_t{seq.num_tokens()} * c.num_kv_heads * c.num_layers;
      st.tokens_attended_exact += static_cast<int64_t>(d.mp_exact_host[b]);
      if (seq.clusters_ != nullptr) {
        // Two levels: every coarse centroid and, at most, every fine one (the fine pass scores
        // only the expanded clusters' fine ones; this counts what the level holds).
        st.centroids_scored +=
            int64_t{seq.clusters_->num_clusters() + seq.clusters_->num_coarse()} * c.num_kv_heads *
            c.num_layers;
      }
      if (seq.quest_ != nullptr) {
        st.centroids_scored += int64_t{seq.quest_->num_pages()} * c.num_kv_heads * c.num_layers;
      }
    }
    d.step_sparse = false;
  }
  last_batch_.clear();
  for (const Impl::Timing& t : d.timings) {
    float ms = 0.0f;
    if (cudaEventElapsedTime(&ms, t.start, t.end) == cudaSuccess) {
      (t.prefill ? t.seq->stats_.prefill_cluster_seconds : t.seq->stats_.cluster_update_seconds) +=
          ms * 1e-3;
    }
    d.spare_events.push_back(t.start);
    d.spare_events.push_back(t.end);
  }
  d.timings.clear();
}

}  // namespace mpa
