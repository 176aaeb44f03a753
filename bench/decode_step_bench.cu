// A full decode step of the GPU model at the Qwen3-8B shape (random BF16 weights drawn on the
// device), batch 1 and 8, contexts 4K and 32K, against the byte floor: (weight bytes + KV bytes)
// over the device-to-device copy bandwidth measured in the same run. Also: each projection of a
// layer alone (our GEMV and cuBLAS against the copy rate), the batch-1 step without graphs and
// without programmatic launch, the step with sampling on the device, and prefill tokens/s for an
// 8K prompt.
//
// Usage: decode_step_bench [--out result.md] [--commit SHA]
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/linear.h"
#include "model/cuda/cuda_model.h"

namespace {

double Seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double CopyBandwidth() {
  const size_t bytes = size_t{2} << 30;
  void *a = nullptr, *b = nullptr;
  if (cudaMalloc(&a, bytes) != cudaSuccess || cudaMalloc(&b, bytes) != cudaSuccess) return 0;
  cudaMemset(a, 1, bytes);
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  std::vector<float> times;
  for (int t = 0; t < 7; ++t) {
    cudaEventRecord(start);
    for (int i = 0; i < 5; ++i) cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice);
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    times.push_back(ms / 5);
  }
  std::sort(times.begin(), times.end());
  cudaFree(a);
  cudaFree(b);
  return 2.0 * bytes / (times[times.size() / 2] * 1e-3);
}

// One projection shape of a decode step, timed alone: `repeats` back-to-back launches over
// different copies of W (the copies together far exceed the L2), events around them.
struct GemvCase {
  const char* name;
  int64_t in, out;
  bool norm, swiglu;
};

std::vector<std::string> GemvTable(double bw) {
  std::vector<std::string> lines;
  const int64_t pool_bytes = int64_t{3} << 30;
  mpa::cuda::bf16* pool = nullptr;
  float *x32 = nullptr, *norm_w = nullptr, *y = nullptr;
  mpa::cuda::bf16 *x16 = nullptr, *h = nullptr;
  if (cudaMalloc(&pool, pool_bytes) != cudaSuccess || cudaMalloc(&x32, 8 * 12288 * 4) ||
      cudaMalloc(&norm_w, 12288 * 4) || cudaMalloc(&y, 8 * 151936 * 4) ||
      cudaMalloc(&x16, 8 * 12288 * 2) || cudaMalloc(&h, 8 * 12288 * 2)) {
    lines.push_back("allocation failed");
    return lines;
  }
  mpa::cuda::FillNormalBf16(pool, pool_bytes / 2, 11, 0.0f, 0.02f, nullptr);
  mpa::cuda::FillNormalF32(x32, 8 * 12288, 12, 0.0f, 1.0f, nullptr);
  mpa::cuda::FillNormalF32(norm_w, 12288, 13, 1.0f, 0.02f, nullptr);
  mpa::cuda::FillNormalBf16(x16, 8 * 12288, 14, 0.0f, 1.0f, nullptr);
  cudaDeviceSynchronize();
  cublasHandle_t blas;
  cublasCreate(&blas);
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  const GemvCase cases[] = {{"qkv (norm fused)", 4096, 6144, true, false},
                            {"o_proj", 4096, 4096, false, false},
                            {"gate_up (norm + SwiGLU fused)", 4096, 24576, true, true},
                            {"gate_up plain", 4096, 24576, false, false},
                            {"down", 12288, 4096, false, false},
                            {"lm_head (norm fused)", 4096, 151936, true, false}};
  // variant: 0 cuBLAS, else loads in flight (4, 8, 16); +100: programmatic launch.
  const int variants[] = {0, 4, 8, 16, 108};
  for (int rows : {1, 2, 8}) {
    for (const GemvCase& gc : cases) {
      const int64_t bytes = gc.in * gc.out * 2;
      const int64_t copies = std::max<int64_t>(pool_bytes / bytes, 1);
      char line[512];
      int n = std::snprintf(line, sizeof(line), "| %d | %s | %lld x %lld | %.1f |", rows, gc.name,
                            static_cast<long long>(gc.out), static_cast<long long>(gc.in),
                            bytes * 1e-6);
      for (int v : variants) {
        if (rows > mpa::cuda::kGemvMaxRows && v != 0) {
          n += std::snprintf(line + n, sizeof(line) - n, " |");
          continue;
        }
        constexpr int kRepeats = 30;
        bool ok = true;
        auto launch = [&](int i) {
          const mpa::cuda::bf16* w = pool + (i % copies) * gc.in * gc.out;
          if (v == 0) {
            const float one = 1.0f, zero = 0.0f;
            ok &= cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, gc.out, rows, gc.in, &one, w,
                               CUDA_R_16BF, gc.in, x16, CUDA_R_16BF, gc.in, &zero, y, CUDA_R_32F,
                               gc.out, CUBLAS_COMPUTE_32F,
                               CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS;
            return;
          }
          mpa::cuda::GemvParams g;
          if (gc.norm) {
            g.norm_input = x32;
            g.norm_weight = norm_w;
          } else {
            g.x = x16;
          }
          g.w = w;
          g.rows = rows;
          g.in_features = gc.in;
          g.out_features = gc.out;
          if (gc.swiglu) {
            g.swiglu_out = h;
          } else {
            g.y = y;
          }
          g.loads_in_flight = v % 100;
          g.programmatic_launch = v >= 100;
          ok &= mpa::cuda::Gemv(g, nullptr) == cudaSuccess;
        };
        for (int i = 0; i < 3; ++i) launch(i);
        cudaEventRecord(start);
        for (int i = 0; i < kRepeats; ++i) launch(i);
        cudaEventRecord(stop);
        cudaEventSynchronize(stop);
        float ms = 0;
        cudaEventElapsedTime(&ms, start, stop);
        const double t = ms * 1e-3 / kRepeats;
        ok &= cudaGetLastError() == cudaSuccess;
        n += ok ? std::snprintf(line + n, sizeof(line) - n, " %.1f us %.0f%% |", t * 1e6,
                                100.0 * bytes / t / bw)
                : std::snprintf(line + n, sizeof(line) - n, " failed |");
      }
      std::printf("%s\n", line);
      lines.push_back(line);
    }
  }
  cublasDestroy(blas);
  cudaFree(pool);
  cudaFree(x32);
  cudaFree(norm_w);
  cudaFree(y);
  cudaFree(x16);
  cudaFree(h);
  return lines;
}

#define CHECK_OK(expr)                                                                \
  do {                                                                                \
    const absl::Status _s = (expr);                                                   \
    if (!_s.ok()) {                                                                   \
      std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, _s.ToString().c_str()); \
      return 1;                                                                       \
    }                                                                                 \
  } while (0)

}  // namespace

int main(int argc, char** argv) {
  std::string out_path, commit = "unknown";
  std::vector<int> prefill_only;  // prompt lengths: time their prefill only, print, exit
  bool multipole_only = false;    // time multipole against dense decode steps only, exit
  bool no_quest = false;          // ... without the Quest column
  // --probe MODE,CONTEXT,STEPS: one sequence in that attention mode at that context, STEPS decode
  // steps each checked for CUDA errors (a short run to put under compute-sanitizer), exit.
  std::string probe_mode;
  int probe_context = 0, probe_steps = 0;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--out") && i + 1 < argc) {
      out_path = argv[++i];
    } else if (!std::strcmp(argv[i], "--commit") && i + 1 < argc) {
      commit = argv[++i];
    } else if (!std::strcmp(argv[i], "--multipole_only")) {
      multipole_only = true;
    } else if (!std::strcmp(argv[i], "--no_quest")) {
      no_quest = true;
    } else if (!std::strcmp(argv[i], "--probe") && i + 1 < argc) {
      const std::string arg = argv[++i];
      const size_t c1 = arg.find(','), c2 = arg.rfind(',');
      if (c1 == std::string::npos || c2 == c1) {
        std::fprintf(stderr, "--probe wants MODE,CONTEXT,STEPS\n");
        return 2;
      }
      probe_mode = arg.substr(0, c1);
      probe_context = std::atoi(arg.substr(c1 + 1, c2 - c1 - 1).c_str());
      probe_steps = std::atoi(arg.substr(c2 + 1).c_str());
    } else if (!std::strcmp(argv[i], "--prefill_only") && i + 1 < argc) {
      for (const char* s = argv[++i]; *s;) {
        prefill_only.push_back(std::atoi(s));
        while (*s && *s != ',') ++s;
        if (*s == ',') ++s;
      }
    } else {
      std::fprintf(stderr,
                   "usage: %s [--out result.md] [--commit SHA] [--prefill_only N,N,...] "
                   "[--multipole_only [--no_quest]] [--probe MODE,CONTEXT,STEPS]\n",
                   argv[0]);
      return 2;
    }
  }
  auto config = mpa::NamedModelShape("qwen3-8b");
  if (!config.ok()) {
    std::fprintf(stderr, "%s\n", config.status().ToString().c_str());
    return 1;
  }
  const mpa::ModelConfig& c = *config;
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, 0);
  if (!probe_mode.empty()) {
    mpa::AttentionOptions attention;
    const absl::StatusOr<mpa::AttentionMode> mode = mpa::ParseAttentionMode(probe_mode);
    if (!mode.ok()) {
      std::fprintf(stderr, "--probe: %s\n", mode.status().ToString().c_str());
      return 2;
    }
    attention.mode = *mode;
    attention.multipole.token_budget_fraction = 0.05f;
    mpa::CudaModelOptions options;
    const char* e2e_flag = std::getenv("MPA_PROBE_E2E");
    const bool e2e = e2e_flag != nullptr && e2e_flag[0] == '1';
    options.max_batch = e2e ? 8 : 1;
    options.max_kv_tokens = e2e ? 170000 : probe_context + 4096;
    auto model_or = mpa::CudaModel::Random(c, 1, options);
    if (!model_or.ok()) {
      std::fprintf(stderr, "%s\n", model_or.status().ToString().c_str());
      return 1;
    }
    mpa::CudaModel& m = **model_or;
    // MPA_PROBE_NO_GRAPHS=1: every kernel launched directly (with CUDA_LAUNCH_BLOCKING=1 a fault
    // is then reported by the launch that made it).
    const char* no_graphs = std::getenv("MPA_PROBE_NO_GRAPHS");
    if (no_graphs != nullptr && no_graphs[0] == '1') m.set_decode_graphs(false);
    CHECK_OK(m.FillKvCacheRandom(5));
    // MPA_PROBE_E2E=1: as a server's requests: a dense, a multipole and then a MODE request, each
    // a prompt of CONTEXT random ids prefilled 1024 at a time and STEPS decode steps sampled on
    // the device (batch room 8, as mpa_server --max_batch_size=8).
    if (e2e) {
      std::mt19937 rng(7);
      std::vector<int32_t> prompt(probe_context);
      for (int32_t& id : prompt) id = static_cast<int32_t>(rng() % c.vocab_size);
      for (mpa::AttentionMode request :
           {mpa::AttentionMode::kDense, mpa::AttentionMode::kMultipole, attention.mode}) {
        mpa::AttentionOptions a = attention;
        a.mode = request;
        auto s = m.NewSequence();
        CHECK_OK(m.SetAttention(*s, a));
        for (int done = 0; done < probe_context; done += 1024) {
          const int n = std::min(1024, probe_context - done);
          const absl::Status st =
              m.Prefill(*s, absl::MakeConstSpan(prompt.data() + done, n), nullptr);
          if (!st.ok()) {
            std::printf("probe e2e %s: prefill at %d failed: %s\n",
                        std::string(mpa::AttentionModeName(request)).c_str(), done,
                        st.ToString().c_str());
            return 1;
          }
        }
        std::vector<mpa::CudaSequence*> one = {s.get()};
        const std::vector<mpa::SamplingParams> greedy(1);
        std::vector<int32_t> next = {prompt.back()};
        for (int i = 0; i < probe_steps; ++i) {
          auto ids = m.DecodeAndSample(one, next, greedy);
          if (!ids.ok()) {
            std::printf("probe e2e %s at %d: step %d failed: %s\n",
                        std::string(mpa::AttentionModeName(request)).c_str(), probe_context, i,
                        ids.status().ToString().c_str());
            return 1;
          }
          next = *ids;
        }
        std::printf("probe e2e %s at %d: %d steps ok (%lld of %lld exact)\n",
                    std::string(mpa::AttentionModeName(request)).c_str(), probe_context,
                    probe_steps, static_cast<long long>(s->stats().tokens_attended_exact),
                    static_cast<long long>(s->stats().tokens_total));
        std::fflush(stdout);
      }
      return 0;
    }
    auto seq = m.NewSequence();
    // MPA_PROBE_CHUNK=N: the context arrives N tokens at a time, the clusters (or Quest pages)
    // refreshed after each piece, as a long prompt that comes in several prefill calls.
    const char* chunk_env = std::getenv("MPA_PROBE_CHUNK");
    const int chunk =
        chunk_env != nullptr && std::atoi(chunk_env) > 0 ? std::atoi(chunk_env) : probe_context;
    CHECK_OK(m.SetAttention(*seq, attention));
    for (int done = 0; done < probe_context; done += chunk) {
      CHECK_OK(m.AppendUncomputedContext(*seq, std::min(chunk, probe_context - done)));
      CHECK_OK(m.RefreshClusters(*seq));
    }
    std::vector<mpa::CudaSequence*> ptrs = {seq.get()};
    for (int i = 0; i < probe_steps; ++i) {
      const absl::Status st = m.Decode(ptrs, {42}, nullptr);
      if (!st.ok()) {
        std::printf("probe %s at %d: step %d failed: %s\n", probe_mode.c_str(), probe_context, i,
                    st.ToString().c_str());
        return 1;
      }
    }
    std::printf("probe %s at %d: %d steps ok (%lld tokens attended exactly of %lld)\n",
                probe_mode.c_str(), probe_context, probe_steps,
                static_cast<long long>(seq->stats().tokens_attended_exact),
                static_cast<long long>(seq->stats().tokens_total));
    return 0;
  }
  const double bw = CopyBandwidth();
  std::printf("copy bandwidth %.0f GB/s\n", bw * 1e-9);
  if (!prefill_only.empty()) {
    // One prompt of each length on a fresh model sized for the longest (after a warm-up prompt).
    mpa::CudaModelOptions options;
    options.max_batch = 1;
    options.max_kv_tokens = *std::max_element(prefill_only.begin(), prefill_only.end()) + 2048;
    options.max_prefill_chunk = 8192;
    auto model_or = mpa::CudaModel::Random(c, 1, options);
    if (!model_or.ok()) {
      std::fprintf(stderr, "%s\n", model_or.status().ToString().c_str());
      return 1;
    }
    mpa::CudaModel& m = **model_or;
    {
      auto warm = m.NewSequence();
      CHECK_OK(m.Prefill(*warm, std::vector<int32_t>(512, 7), nullptr));
    }
    for (int n : prefill_only) {
      auto seq = m.NewSequence();
      std::vector<int32_t> prompt(n);
      for (size_t i = 0; i < prompt.size(); ++i)
        prompt[i] = static_cast<int32_t>((i * 7919) % c.vocab_size);
      CHECK_OK(m.Synchronize());
      const double t0 = Seconds();
      CHECK_OK(m.Prefill(*seq, prompt, nullptr));
      CHECK_OK(m.Synchronize());
      const double t = Seconds() - t0;
      std::printf("prefill %d tokens: %.3f s, %.0f tokens/s (device %s)\n", n, t, n / t, prop.name);
    }
    return 0;
  }
  const std::vector<std::string> gemv_rows = GemvTable(bw);
  mpa::CudaModelOptions options;
  options.max_batch = 8;
  options.max_kv_tokens = 8 * 32768 + 8 * 1024;
  // 128K at batch 4 holds 4 x 128K x 36 layers x 8 KV heads x 512 bytes = 77 GB of KV cache
  // besides 16 GB of weights: measured where the device has the memory (an H200, not an H100).
  size_t free_bytes = 0, total_bytes = 0;
  cudaMemGetInfo(&free_bytes, &total_bytes);
  const bool fits_128k_b4 = free_bytes > (size_t{110} << 30);
  if (multipole_only && fits_128k_b4) options.max_kv_tokens = 4 * 131072 + 8 * 1024;
  options.max_prefill_chunk = 8192;
  const double t_load = Seconds();
  auto model_or = mpa::CudaModel::Random(c, 1, options);
  if (!model_or.ok()) {
    std::fprintf(stderr, "%s\n", model_or.status().ToString().c_str());
    return 1;
  }
  mpa::CudaModel& m = **model_or;
  CHECK_OK(m.FillKvCacheRandom(5));
  if (multipole_only) {
    // Decode steps with every sequence in multipole (5% budget, default knobs) against dense, on
    // random cached keys and values clustered as a prefill would; then the online update's share
    // of the time over 384 steps (three updates of the default 128-token interval).
    mpa::AttentionOptions mp;
    mp.mode = mpa::AttentionMode::kMultipole;
    mp.multipole.token_budget_fraction = 0.05f;
    auto steps = [&](int batch, int context, const mpa::AttentionOptions* sparse, int n,
                     double* update_s) -> double {
      std::vector<std::unique_ptr<mpa::CudaSequence>> seqs;
      std::vector<mpa::CudaSequence*> ptrs;
      for (int b = 0; b < batch; ++b) {
        seqs.push_back(m.NewSequence());
        CHECK_OK(m.AppendUncomputedContext(*seqs.back(), context));
        if (sparse != nullptr) {
          CHECK_OK(m.SetAttention(*seqs.back(), *sparse));
          CHECK_OK(m.RefreshClusters(*seqs.back()));
        }
        ptrs.push_back(seqs.back().get());
      }
      const std::vector<int32_t> tokens(batch, 42);
      for (int i = 0; i < 3; ++i) CHECK_OK(m.Decode(ptrs, tokens, nullptr));
      std::vector<double> times;
      double before = 0;
      for (auto* s : ptrs) before += s->stats().cluster_update_seconds;
      for (int i = 0; i < n; ++i) {
        const double t0 = Seconds();
        CHECK_OK(m.Decode(ptrs, tokens, nullptr));
        times.push_back(Seconds() - t0);
      }
      double after = 0;
      for (auto* s : ptrs) after += s->stats().cluster_update_seconds;
      if (update_s != nullptr) *update_s = after - before;
      if (n > 20) {  // the total, updates included
        double total = 0;
        for (double t : times) total += t;
        return total;
      }
      std::sort(times.begin(), times.end());
      return times[times.size() / 2];
    };
    mpa::AttentionOptions quest = mp;
    quest.mode = mpa::AttentionMode::kQuest;
    std::printf(
        "| context | batch | dense ms | multipole ms | tokens/s ratio | quest ms | quest ratio "
        "|\n");
    // 128K less a few positions: the decode steps must stay inside the model's window.
    std::vector<std::pair<int, int>> shapes = {{32768, 1}, {32768, 4}, {131072 - 64, 1}};
    if (fits_128k_b4) {
      shapes.push_back({131072 - 64, 4});
    } else {
      std::printf("| 131008 | 4 | not measured: %.0f GB free, the KV cache alone takes 77 GB |\n",
                  free_bytes * 1e-9);
    }
    for (const auto& [context, batch] : shapes) {
      const double dense = steps(batch, context, nullptr, 20, nullptr);
      const double sparse = steps(batch, context, &mp, 20, nullptr);
      const double q = no_quest ? 0.0 : steps(batch, context, &quest, 20, nullptr);
      char quest_cells[64] = "not run | -";
      if (!no_quest)
        std::snprintf(quest_cells, sizeof(quest_cells), "%.3f | %.2fx", q * 1e3, dense / q);
      std::printf("| %d | %d | %.3f | %.3f | %.2fx | %s |\n", context, batch, dense * 1e3,
                  sparse * 1e3, dense / sparse, quest_cells);
      std::fflush(stdout);
    }
    double update_s = 0;
    const double total = steps(1, 32768, &mp, 384, &update_s);
    std::printf("online update at 32K, batch 1: %.1f ms of %.1f ms over 384 steps (%.2f%%)\n",
                update_s * 1e3, total * 1e3, 100.0 * update_s / total);
    return 0;
  }
  std::printf(
      "device %s, copy bandwidth %.0f GB/s; random Qwen3-8B weights in %.1f s, %.2f GB read per "
      "step\n",
      prop.name, bw * 1e-9, Seconds() - t_load, m.weight_bytes_per_step() * 1e-9);

  std::vector<std::string> rows;
  const int64_t kv_bytes_per_token = int64_t{c.num_layers} * c.num_kv_heads * c.head_dim * 2 * 2;
  // mode: 0 graphs + programmatic launch (default), 1 no graphs, 2 graphs without programmatic
  // launch, 3 default + greedy sampling on the device, 4 default + top-k/top-p sampling.
  const char* mode_names[] = {"graph", "no graph", "graph, no PDL", "graph + greedy sample",
                              "graph + top-k/p sample"};
  auto run = [&](int batch, int context, int mode) -> int {
    std::vector<std::unique_ptr<mpa::CudaSequence>> seqs;
    std::vector<mpa::CudaSequence*> ptrs;
    for (int b = 0; b < batch; ++b) {
      seqs.push_back(m.NewSequence());
      CHECK_OK(m.AppendUncomputedContext(*seqs.back(), context));
      ptrs.push_back(seqs.back().get());
    }
    m.set_decode_graphs(mode != 1);
    m.set_programmatic_launch(mode != 2);
    mpa::SamplingParams sp;
    if (mode == 4) {
      sp.temperature = 0.8f;
      sp.top_k = 50;
      sp.top_p = 0.9f;
    }
    const std::vector<mpa::SamplingParams> params(batch, sp);
    const std::vector<int32_t> tokens(batch, 42);
    auto step = [&]() -> absl::Status {
      if (mode < 3) return m.Decode(ptrs, tokens, nullptr);
      return m.DecodeAndSample(ptrs, tokens, params).status();
    };
    for (int i = 0; i < 3; ++i) CHECK_OK(step());
    std::vector<double> times;
    for (int i = 0; i < 20; ++i) {
      const double t0 = Seconds();
      CHECK_OK(step());
      times.push_back(Seconds() - t0);
    }
    std::sort(times.begin(), times.end());
    const double t = times[times.size() / 2];
    const double bytes =
        m.weight_bytes_per_step() + double{kv_bytes_per_token} * batch * (context + 13);
    const double floor_t = bytes / bw;
    char line[256];
    std::snprintf(line, sizeof(line), "| %d | %d | %s | %.2f | %.3f | %.3f | %.2fx | %.0f |", batch,
                  context, mode_names[mode], bytes * 1e-9, t * 1e3, floor_t * 1e3, t / floor_t,
                  batch / t);
    std::printf("%s\n", line);
    rows.push_back(line);
    return 0;
  };
  for (int batch : {1, 8}) {
    for (int context : {4096, 32768}) {
      if (run(batch, context, 0) != 0) return 1;
    }
  }
  for (int mode : {1, 2, 3, 4}) {
    if (run(1, 4096, mode) != 0) return 1;
  }
  m.set_decode_graphs(true);
  m.set_programmatic_launch(true);
  // Prefill of an 8K prompt (after a 512-token warm-up prompt).
  double prefill_tps = 0, prefill_s = 0;
  {
    auto warm = m.NewSequence();
    CHECK_OK(m.Prefill(*warm, std::vector<int32_t>(512, 7), nullptr));
    auto seq = m.NewSequence();
    std::vector<int32_t> prompt(8192);
    for (size_t i = 0; i < prompt.size(); ++i)
      prompt[i] = static_cast<int32_t>((i * 7919) % c.vocab_size);
    CHECK_OK(m.Synchronize());
    const double t0 = Seconds();
    CHECK_OK(m.Prefill(*seq, prompt, nullptr));
    CHECK_OK(m.Synchronize());
    prefill_s = Seconds() - t0;
    prefill_tps = prompt.size() / prefill_s;
    std::printf("prefill 8192 tokens: %.3f s, %.0f tokens/s\n", prefill_s, prefill_tps);
  }
  if (!out_path.empty()) {
    FILE* f = std::fopen(out_path.c_str(), "w");
    std::fprintf(f, "# Full decode step of the GPU model at the Qwen3-8B shape (H200)\n\n");
    std::fprintf(f,
                 "- commit: `%s`; device: %s; copy bandwidth %.0f GB/s (read + write), measured in "
                 "the same run\n",
                 commit.c_str(), prop.name, bw * 1e-9);
    std::fprintf(f,
                 "- model: random BF16 weights drawn on the device, 36 layers, hidden 4096, 32/8 "
                 "heads, head_dim 128, FFN 12288, vocab 151936; %.2f GB of weights read per step "
                 "(every matrix once, including the output matrix)\n",
                 m.weight_bytes_per_step() * 1e-9);
    std::fprintf(
        f,
        "- step = `CudaModel::Decode` wall time (host to host, logits left on the device; with "
        "sampling: `DecodeAndSample`, ids on the host), median of 20 after 3 warm-ups; contexts "
        "filled with random KV (no prefill); mode: graph = replayed CUDA graph, PDL = the GEMVs "
        "launched as programmatic dependents\n");
    std::fprintf(f,
                 "- floor = (weight bytes + KV bytes) / copy bandwidth; target: within 1.3x at "
                 "batch 1, 4K\n\n");
    std::fprintf(f,
                 "| batch | context | mode | GB read | step ms | floor ms | step / floor | "
                 "tokens/s |\n|---:|---:|---|---:|---:|---:|---:|---:|\n");
    for (const std::string& r : rows) std::fprintf(f, "%s\n", r.c_str());
    std::fprintf(f, "\nPrefill of one 8192-token prompt (one chunk): %.3f s, %.0f tokens/s.\n",
                 prefill_s, prefill_tps);
    std::fprintf(f,
                 "\nEach projection alone (time per launch and %% of the copy rate; 30 launches "
                 "back to back over copies of W that together exceed the L2; GEMV columns: "
                 "16-byte loads in flight per lane; PDL = programmatic launch):\n\n| rows | "
                 "projection | W shape | MB | cuBLAS | GEMV 4 | GEMV 8 | GEMV 16 | GEMV 8 + PDL "
                 "|\n|---:|---|---|---:|---:|---:|---:|---:|---:|\n");
    for (const std::string& r : gemv_rows) std::fprintf(f, "%s\n", r.c_str());
    std::fclose(f);
  }
  return 0;
}
