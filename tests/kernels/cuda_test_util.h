// Helpers of the GPU kernel tests: device detection (tests skip without a GPU), device buffers,
// host-side bf16 rounding, fresh random inputs, and the relative L2 error that NaN never passes.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace mpa::cuda::testing {

inline bool HaveGpu() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

#define MPA_SKIP_WITHOUT_GPU()                                              \
  do {                                                                      \
    if (!::mpa::cuda::testing::HaveGpu()) GTEST_SKIP() << "no CUDA device"; \
  } while (0)

#define MPA_CUDA_OK(expr) ASSERT_EQ((expr), cudaSuccess) << cudaGetErrorString(expr)

// A device allocation of n elements of T. Starts poisoned (all bytes 0xff: NaN for float and
// bf16, -1 for integers) so an element no kernel wrote is caught.
template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t n) : n_(n) {
    if (n_ > 0 && cudaMalloc(&ptr_, n_ * sizeof(T)) == cudaSuccess) {
      cudaMemset(ptr_, 0xff, n_ * sizeof(T));
    }
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) { Upload(host); }
  ~DeviceBuffer() { cudaFree(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  T* get() const { return ptr_; }
  size_t size() const { return n_; }
  void Poison() { cudaMemset(ptr_, 0xff, n_ * sizeof(T)); }
  void Upload(const std::vector<T>& host) {
    cudaMemcpy(ptr_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice);
  }
  std::vector<T> Download() const {
    std::vector<T> host(n_);
    cudaMemcpy(host.data(), ptr_, n_ * sizeof(T), cudaMemcpyDeviceToHost);
    return host;
  }

 private:
  T* ptr_ = nullptr;
  size_t n_;
};

// bf16 <-> float on the host, round to nearest even (what __float2bfloat16_rn does).
inline uint16_t Bf16Bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float Bf16ToFloat(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}
inline float RoundBf16(float x) { return Bf16ToFloat(Bf16Bits(x)); }

// Rounds `values` to bf16 in place and returns the raw bits for upload.
inline std::vector<uint16_t> ToBf16(std::vector<float>& values) {
  std::vector<uint16_t> bits(values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    bits[i] = Bf16Bits(values[i]);
    values[i] = Bf16ToFloat(bits[i]);
  }
  return bits;
}
inline std::vector<float> FromBf16(const std::vector<uint16_t>& bits) {
  std::vector<float> out(bits.size());
  for (size_t i = 0; i < bits.size(); ++i) out[i] = Bf16ToFloat(bits[i]);
  return out;
}

// A fresh seed per call (printed by the tests through SCOPED_TRACE so failures replay).
inline uint64_t FreshSeed() {
  return (static_cast<uint64_t>(std::random_device{}()) << 32) ^ std::random_device{}();
}

inline std::vector<float> RandomNormal(size_t n, std::mt19937_64& rng, float stddev = 1.0f) {
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// ||got - want|| / ||want||; +inf if anything is NaN or infinite, or the sizes differ.
inline double RelativeL2(const std::vector<float>& got, const std::vector<float>& want) {
  if (got.size() != want.size()) return INFINITY;
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i]) || !std::isfinite(want[i])) return INFINITY;
    const double d = static_cast<double>(got[i]) - want[i];
    num += d * d;
    den += static_cast<double>(want[i]) * want[i];
  }
  if (den == 0.0) return num == 0.0 ? 0.0 : INFINITY;
  return std::sqrt(num / den);
}

// A paged KV cache filled with bf16-rounded random keys and values, its pages handed out in a
// shuffled order (so a kernel that ignores the block table fails), and per-sequence contiguous
// copies [num_kv_heads, len, head_dim] for the CPU reference.
struct HostPagedCache {
  int num_kv_heads = 0, head_dim = 0, page_size = 0, max_pages = 0;
  std::vector<int> lens;
  std::vector<int32_t> table;  // [batch, max_pages]
  std::vector<float> k, v;     // [num_pages, num_kv_heads, page_size, head_dim], bf16 values
  std::vector<uint16_t> k_bits, v_bits;

  HostPagedCache(const std::vector<int>& seq_lens, int kv_heads, int dim, int page,
                 std::mt19937_64& rng)
      : num_kv_heads(kv_heads), head_dim(dim), page_size(page), lens(seq_lens) {
    int total = 0;
    for (int len : lens) {
      max_pages = std::max(max_pages, (len + page - 1) / page);
      total += (len + page - 1) / page;
    }
    max_pages = std::max(max_pages, 1);
    const int num_pages = total + 3;  // spare pages stay unread
    std::vector<int32_t> order(num_pages);
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    table.assign(lens.size() * max_pages, -1);
    int next = 0;
    for (size_t b = 0; b < lens.size(); ++b) {
      for (int i = 0; i < (lens[b] + page - 1) / page; ++i)
        table[b * max_pages + i] = order[next++];
    }
    const size_t n = static_cast<size_t>(num_pages) * kv_heads * page * dim;
    k = RandomNormal(n, rng);
    v = RandomNormal(n, rng);
    k_bits = ToBf16(k);
    v_bits = ToBf16(v);
  }

  size_t Index(int b, int h, int t) const {
    const int page = table[b * max_pages + t / page_size];
    return ((static_cast<size_t>(page) * num_kv_heads + h) * page_size + t % page_size) * head_dim;
  }
  // [num_kv_heads, lens[b], head_dim]
  void Contiguous(int b, std::vector<float>& kc, std::vector<float>& vc) const {
    const int len = lens[b];
    kc.assign(static_cast<size_t>(num_kv_heads) * len * head_dim, 0.0f);
    vc.assign(kc.size(), 0.0f);
    for (int h = 0; h < num_kv_heads; ++h) {
      for (int t = 0; t < len; ++t) {
        const size_t src = Index(b, h, t);
        const size_t dst = (static_cast<size_t>(h) * len + t) * head_dim;
        std::copy_n(k.begin() + src, head_dim, kc.begin() + dst);
        std::copy_n(v.begin() + src, head_dim, vc.begin() + dst);
      }
    }
  }
};

}  // namespace mpa::cuda::testing
