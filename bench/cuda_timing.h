// Timing helpers of the CUDA benchmark programs: medians of back-to-back calls timed with CUDA
// events, and the device-to-device copy bandwidth every byte floor is measured against.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <vector>

#include "bench/cuda_check.h"

namespace {

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Median over `trials` of the mean time of `iters` back-to-back calls of fn(i), in seconds.
template <typename Fn>
double TimeIt(Fn&& fn, int iters, int trials) {
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  for (int i = 0; i < 3; ++i) fn(i);
  CHECK_CUDA(cudaDeviceSynchronize());
  std::vector<double> times;
  for (int t = 0; t < trials; ++t) {
    CHECK_CUDA(cudaEventRecord(start));
    for (int i = 0; i < iters; ++i) fn(i);
    CHECK_CUDA(cudaEventRecord(stop));
    CHECK_CUDA(cudaEventSynchronize(stop));
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
    times.push_back(ms * 1e-3 / iters);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return Median(times);
}

// Device-to-device copy bandwidth, counting bytes read plus bytes written.
double CopyBandwidth() {
  const size_t bytes = size_t{2} << 30;
  void *a, *b;
  CHECK_CUDA(cudaMalloc(&a, bytes));
  CHECK_CUDA(cudaMalloc(&b, bytes));
  CHECK_CUDA(cudaMemset(a, 1, bytes));
  const double t = TimeIt(
      [&](int) { CHECK_CUDA(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice)); }, 10, 5);
  cudaFree(a);
  cudaFree(b);
  return 2.0 * bytes / t;
}

}  // namespace
