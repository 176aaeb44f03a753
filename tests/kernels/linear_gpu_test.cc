// The projection (bf16 in, fp32 accumulate; up to 2 rows through our GEMV kernel, more through
// cuBLAS) against a double-precision product of the same bf16-rounded inputs; the GEMV with the
// RMSNorm fused into its input and SwiGLU into its output against the unfused double reference.
#include <cmath>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/linear.h"
#include "tests/kernels/cuda_test_util.h"

namespace mpa::cuda {
namespace {

using testing::DeviceBuffer;
using testing::RelativeL2;

TEST(LinearGpuTest, MatchesDoubleReference) {
  MPA_SKIP_WITHOUT_GPU();
  const uint64_t seed = testing::FreshSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  cublasHandle_t handle;
  ASSERT_EQ(cublasCreate(&handle), CUBLAS_STATUS_SUCCESS);
  struct Shape {
    int rows, in, out;
    float beta;
  };
  for (const Shape s : {Shape{1, 8, 5, 0.0f}, Shape{3, 100, 64, 0.0f}, Shape{17, 4096, 300, 1.0f},
                        Shape{1, 4096, 6144, 0.0f}, Shape{8, 1000, 333, 1.0f},
                        Shape{5, 12288, 77, 1.0f}, Shape{2, 2056, 9, 0.0f}}) {
    std::vector<float> x = testing::RandomNormal(static_cast<size_t>(s.rows) * s.in, rng);
    std::vector<float> w = testing::RandomNormal(static_cast<size_t>(s.out) * s.in, rng);
    const std::vector<float> y0 = testing::RandomNormal(static_cast<size_t>(s.rows) * s.out, rng);
    const std::vector<uint16_t> xb = testing::ToBf16(x), wb = testing::ToBf16(w);
    std::vector<float> want(y0.size());
    for (int r = 0; r < s.rows; ++r) {
      for (int o = 0; o < s.out; ++o) {
        double acc = s.beta * y0[static_cast<size_t>(r) * s.out + o];
        for (int i = 0; i < s.in; ++i) {
          acc += static_cast<double>(x[static_cast<size_t>(r) * s.in + i]) *
                 w[static_cast<size_t>(o) * s.in + i];
        }
        want[static_cast<size_t>(r) * s.out + o] = static_cast<float>(acc);
      }
    }
    DeviceBuffer<uint16_t> dx(xb), dw(wb);
    DeviceBuffer<float> dy(y0);
    LinearParams p;
    p.x = reinterpret_cast<const bf16*>(dx.get());
    p.w = reinterpret_cast<const bf16*>(dw.get());
    p.rows = s.rows;
    p.in_features = s.in;
    p.out_features = s.out;
    p.beta = s.beta;
    p.y = dy.get();
    ASSERT_EQ(Linear(handle, p), CUBLAS_STATUS_SUCCESS);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_LT(RelativeL2(dy.Download(), want), 1e-5)
        << s.rows << "x" << s.in << " -> " << s.out << " beta " << s.beta;
  }
  cublasDestroy(handle);
}

// The fused GEMV: input = bf16(RmsNorm(x) * weight) or plain bf16 rows; output = y (+ beta y) or
// bf16(silu(gate) * up). Awkward sizes (8 features, out not a multiple of the block's 8 warps,
// several features per warp for the largest out), programmatic launch on and off.
TEST(LinearGpuTest, FusedGemvMatchesDoubleReference) {
  MPA_SKIP_WITHOUT_GPU();
  const uint64_t seed = testing::FreshSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  cudaStream_t stream;
  MPA_CUDA_OK(cudaStreamCreate(&stream));
  struct Shape {
    int rows, in, out;
    bool norm, swiglu;
    float beta;
    bool pdl;
  };
  const float eps = 1e-6f;
  for (const Shape s :
       {Shape{1, 8, 5, true, false, 0.0f, false}, Shape{2, 64, 22, true, true, 0.0f, true},
        Shape{1, 4096, 6144, true, false, 0.0f, true},
        Shape{2, 4104, 333, false, false, 1.0f, true},
        Shape{1, 1000, 2 * 77, false, true, 0.0f, false},
        Shape{2, 12288, 77, false, false, 1.0f, false},
        Shape{1, 256, 40000, true, false, 0.0f, true},
        Shape{2, 2048, 2 * 1500, true, true, 0.0f, true}}) {
    SCOPED_TRACE(std::to_string(s.rows) + "x" + std::to_string(s.in) + " -> " +
                 std::to_string(s.out) + (s.norm ? " norm" : "") + (s.swiglu ? " swiglu" : ""));
    std::vector<float> x = testing::RandomNormal(static_cast<size_t>(s.rows) * s.in, rng, 3.0f);
    std::vector<float> norm_w = testing::RandomNormal(s.in, rng);
    for (float& v : norm_w) v = 1.0f + 0.1f * v;
    std::vector<float> w = testing::RandomNormal(static_cast<size_t>(s.out) * s.in, rng);
    const std::vector<float> y0 = testing::RandomNormal(static_cast<size_t>(s.rows) * s.out, rng);
    const std::vector<uint16_t> wb = testing::ToBf16(w);
    std::vector<float> x_plain = x;
    const std::vector<uint16_t> xb = testing::ToBf16(x_plain);
    // The product's input rows as the kernel sees them (bf16).
    std::vector<double> in(static_cast<size_t>(s.rows) * s.in);
    for (int r = 0; r < s.rows; ++r) {
      double sum_sq = 0;
      for (int i = 0; i < s.in; ++i) sum_sq += double{x[r * s.in + i]} * x[r * s.in + i];
      const float inv = static_cast<float>(1.0 / std::sqrt(sum_sq / s.in + eps));
      for (int i = 0; i < s.in; ++i) {
        in[r * s.in + i] =
            s.norm ? testing::RoundBf16(x[r * s.in + i] * inv * norm_w[i]) : x_plain[r * s.in + i];
      }
    }
    const int units = s.swiglu ? s.out / 2 : s.out;
    std::vector<float> want(static_cast<size_t>(s.rows) * units);
    for (int r = 0; r < s.rows; ++r) {
      auto dot = [&](int o) {
        double acc = 0;
        for (int i = 0; i < s.in; ++i)
          acc += in[r * s.in + i] * w[static_cast<size_t>(o) * s.in + i];
        return acc;
      };
      for (int o = 0; o < units; ++o) {
        if (s.swiglu) {
          const double g = dot(o), u = dot(units + o);
          want[r * units + o] = static_cast<float>(g / (1.0 + std::exp(-g)) * u);
        } else {
          want[r * units + o] = static_cast<float>(s.beta * y0[r * s.out + o] + dot(o));
        }
      }
    }
    DeviceBuffer<float> dx(x), dnorm(norm_w), dy(y0);
    DeviceBuffer<uint16_t> dxb(xb), dw(wb), dh(static_cast<size_t>(s.rows) * units);
    GemvParams p;
    if (s.norm) {
      p.norm_input = dx.get();
      p.norm_weight = dnorm.get();
      p.eps = eps;
    } else {
      p.x = reinterpret_cast<const bf16*>(dxb.get());
    }
    p.w = reinterpret_cast<const bf16*>(dw.get());
    p.rows = s.rows;
    p.in_features = s.in;
    p.out_features = s.out;
    if (s.swiglu) {
      p.swiglu_out = reinterpret_cast<bf16*>(dh.get());
    } else {
      p.y = dy.get();
      p.beta = s.beta;
    }
    p.programmatic_launch = s.pdl;
    ASSERT_TRUE(GemvSupports(p));
    MPA_CUDA_OK(Gemv(p, stream));
    MPA_CUDA_OK(cudaStreamSynchronize(stream));
    const std::vector<float> got = s.swiglu ? testing::FromBf16(dh.Download()) : dy.Download();
    // fp32 accumulation: ~1e-6; a bf16 input element whose rounding flips with the last bit of
    // the norm scale moves the product by ~1e-4 at most; SwiGLU's bf16 output rounds by <= 2^-9.
    const double bound = s.swiglu ? 3e-3 : (s.norm ? 2e-4 : 1e-5);
    EXPECT_LT(RelativeL2(got, want), bound);
  }
  // Shapes it refuses (the caller then takes the unfused path).
  GemvParams bad;
  DeviceBuffer<float> y(64);
  DeviceBuffer<uint16_t> w(64 * 64), x(3 * 64);
  bad.x = reinterpret_cast<const bf16*>(x.get());
  bad.w = reinterpret_cast<const bf16*>(w.get());
  bad.in_features = 64;
  bad.out_features = 16;
  bad.y = y.get();
  bad.rows = 3;
  EXPECT_FALSE(GemvSupports(bad));
  EXPECT_EQ(Gemv(bad, stream), cudaErrorInvalidValue);
  bad.rows = 1;
  EXPECT_TRUE(GemvSupports(bad));
  bad.in_features = 60;
  EXPECT_FALSE(GemvSupports(bad));
  bad.in_features = 64;
  bad.norm_input = y.get();
  EXPECT_FALSE(GemvSupports(bad)) << "two inputs";
  cudaStreamDestroy(stream);
}

}  // namespace
}  // namespace mpa::cuda
