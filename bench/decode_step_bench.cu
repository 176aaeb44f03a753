// A full decode step of the GPU model at the Qwen3-8B shape (random BF16 weights drawn on the
// device), batch 1 and 8, contexts 4K and 32K, against the byte floor: (weight bytes + KV bytes)
// over the device-to-device copy bandwidth measured in the same run. Also prefill tokens/s for
// an 8K prompt.
//
// Usage: decode_step_bench [--out result.md] [--commit SHA]
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "model/cuda_model.h"

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
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--out") && i + 1 < argc) {
      out_path = argv[++i];
    } else if (!std::strcmp(argv[i], "--commit") && i + 1 < argc) {
      commit = argv[++i];
    } else {
      std::fprintf(stderr, "usage: %s [--out result.md] [--commit SHA]\n", argv[0]);
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
  const double bw = CopyBandwidth();
  mpa::CudaModelOptions options;
  options.max_batch = 8;
  options.max_kv_tokens = 8 * 32768 + 8 * 1024;
  options.max_prefill_chunk = 8192;
  const double t_load = Seconds();
  auto model_or = mpa::CudaModel::Random(c, 1, options);
  if (!model_or.ok()) {
    std::fprintf(stderr, "%s\n", model_or.status().ToString().c_str());
    return 1;
  }
  mpa::CudaModel& m = **model_or;
  CHECK_OK(m.FillKvCacheRandom(5));
  std::printf(
      "device %s, copy bandwidth %.0f GB/s; random Qwen3-8B weights in %.1f s, %.2f GB read per "
      "step\n",
      prop.name, bw * 1e-9, Seconds() - t_load, m.weight_bytes_per_step() * 1e-9);

  std::vector<std::string> rows;
  const int64_t kv_bytes_per_token = int64_t{c.num_layers} * c.num_kv_heads * c.head_dim * 2 * 2;
  for (int batch : {1, 8}) {
    for (int context : {4096, 32768}) {
      std::vector<std::unique_ptr<mpa::CudaSequence>> seqs;
      std::vector<mpa::CudaSequence*> ptrs;
      for (int b = 0; b < batch; ++b) {
        seqs.push_back(m.NewSequence());
        CHECK_OK(m.AppendUncomputedContext(*seqs.back(), context));
        ptrs.push_back(seqs.back().get());
      }
      const std::vector<int32_t> tokens(batch, 42);
      for (int i = 0; i < 3; ++i) CHECK_OK(m.Decode(ptrs, tokens, nullptr));
      std::vector<double> times;
      for (int i = 0; i < 20; ++i) {
        const double t0 = Seconds();
        CHECK_OK(m.Decode(ptrs, tokens, nullptr));
        times.push_back(Seconds() - t0);
      }
      std::sort(times.begin(), times.end());
      const double t = times[times.size() / 2];
      const double bytes =
          m.weight_bytes_per_step() + double{kv_bytes_per_token} * batch * (context + 13);
      const double floor_t = bytes / bw;
      char line[256];
      std::snprintf(line, sizeof(line), "| %d | %d | %.2f | %.3f | %.3f | %.2fx | %.0f |", batch,
                    context, bytes * 1e-9, t * 1e3, floor_t * 1e3, t / floor_t, batch / t);
      std::printf("%s\n", line);
      rows.push_back(line);
    }
  }
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
        "- step = `CudaModel::Decode` wall time (host to host, logits left on the device), median "
        "of 20 after 3 warm-ups; contexts filled with random KV (no prefill)\n");
    std::fprintf(f,
                 "- floor = (weight bytes + KV bytes) / copy bandwidth; target: within 1.3x at "
                 "batch 1, 4K\n\n");
    std::fprintf(f,
                 "| batch | context | GB read | step ms | floor ms | step / floor | tokens/s "
                 "|\n|---:|---:|---:|---:|---:|---:|---:|\n");
    for (const std::string& r : rows) std::fprintf(f, "%s\n", r.c_str());
    std::fprintf(f, "\nPrefill of one 8192-token prompt (one chunk): %.3f s, %.0f tokens/s.\n",
                 prefill_s, prefill_tps);
    std::fclose(f);
  }
  return 0;
}
