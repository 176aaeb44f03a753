// Device sampling cost at the Qwen3 vocabulary (151936): SampleRows for a few settings and logit
// shapes, and ArgmaxRows for comparison. Time per call (us) with CUDA events, median of 15
// repeats of 50 back-to-back calls on one stream (the logits stay in L2 as after the LM head).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "bench/cuda_check.h"
#include "kernels/cuda/sampling.h"

int main() {
  using mpa::cuda::SamplingRow;
  const int vocab = 151936;
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, vocab %d\n\n", prop.name, vocab);
  std::printf("| rows | logits (stddev) | temperature | top_k | top_p | us per call |\n");
  std::printf("|---:|---|---:|---:|---:|---:|\n");
  std::mt19937_64 rng(20261101);
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreate(&stream));
  cudaEvent_t e0, e1;
  CHECK_CUDA(cudaEventCreate(&e0));
  CHECK_CUDA(cudaEventCreate(&e1));
  struct Case {
    float stddev;
    SamplingRow row;  // temperature 0 with top_k -1: ArgmaxRows
  };
  const Case cases[] = {{2.0f, {0.0f, -1, 1.0f, 0}},   {2.0f, {0.8f, 50, 0.9f, 0}},
                        {6.0f, {0.8f, 50, 0.9f, 0}},   {6.0f, {1.0f, 0, 0.9f, 0}},
                        {2.0f, {1.0f, 0, 0.9f, 0}},    {2.0f, {1.0f, 0, 1.0f, 0}},
                        {2.0f, {1.0f, 1000, 0.5f, 0}}, {2.0f, {0.7f, 5, 1.0f, 0}}};
  for (int rows : {1, 8}) {
    std::vector<float> logits(static_cast<size_t>(rows) * vocab);
    float* d_logits;
    SamplingRow* d_params;
    int32_t* d_ids;
    CHECK_CUDA(cudaMalloc(&d_logits, logits.size() * sizeof(float)));
    CHECK_CUDA(cudaMalloc(&d_params, rows * sizeof(SamplingRow)));
    CHECK_CUDA(cudaMalloc(&d_ids, rows * sizeof(int32_t)));
    const size_t ws_bytes = mpa::cuda::SampleRowsWorkspaceBytes(rows);
    void* ws;
    CHECK_CUDA(cudaMalloc(&ws, ws_bytes));
    for (const Case& c : cases) {
      std::normal_distribution<float> normal(0.0f, c.stddev);
      for (float& v : logits) v = normal(rng);
      CHECK_CUDA(cudaMemcpy(d_logits, logits.data(), logits.size() * sizeof(float),
                            cudaMemcpyHostToDevice));
      std::vector<SamplingRow> params(rows, c.row);
      for (int r = 0; r < rows; ++r) params[r].seed = rng();
      CHECK_CUDA(
          cudaMemcpy(d_params, params.data(), rows * sizeof(SamplingRow), cudaMemcpyHostToDevice));
      const bool argmax = c.row.top_k < 0;
      auto call = [&] {
        if (argmax) {
          CHECK_CUDA(mpa::cuda::ArgmaxRows(d_logits, rows, vocab, d_ids, stream));
        } else {
          CHECK_CUDA(
              mpa::cuda::SampleRows(d_logits, rows, vocab, d_params, d_ids, ws, ws_bytes, stream));
        }
      };
      for (int i = 0; i < 5; ++i) call();
      CHECK_CUDA(cudaStreamSynchronize(stream));
      std::vector<float> times;
      for (int rep = 0; rep < 15; ++rep) {
        CHECK_CUDA(cudaEventRecord(e0, stream));
        for (int i = 0; i < 50; ++i) call();
        CHECK_CUDA(cudaEventRecord(e1, stream));
        CHECK_CUDA(cudaEventSynchronize(e1));
        float ms = 0;
        CHECK_CUDA(cudaEventElapsedTime(&ms, e0, e1));
        times.push_back(ms * 1000.0f / 50);
      }
      std::sort(times.begin(), times.end());
      if (argmax) {
        std::printf("| %d | normal (%.0f) | argmax | | | %.1f |\n", rows, c.stddev, times[7]);
      } else {
        std::printf("| %d | normal (%.0f) | %.1f | %d | %.2f | %.1f |\n", rows, c.stddev,
                    c.row.temperature, c.row.top_k, c.row.top_p, times[7]);
      }
    }
    CHECK_CUDA(cudaFree(ws));
    CHECK_CUDA(cudaFree(d_ids));
    CHECK_CUDA(cudaFree(d_params));
    CHECK_CUDA(cudaFree(d_logits));
  }
  return 0;
}
