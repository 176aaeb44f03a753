// The projection (bf16 in, fp32 accumulate; up to 8 rows through our GEMV kernel, more through
// cuBLAS) against a double-precision product of the same bf16-rounded inputs.
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

}  // namespace
}  // namespace mpa::cuda
