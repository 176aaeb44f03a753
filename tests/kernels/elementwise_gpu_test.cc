// Embedding gather, SwiGLU, residual add, bf16 conversion and the seeded random fills.
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/elementwise.h"
#include "tests/kernels/cuda_test_util.h"

namespace mpa::cuda {
namespace {

using testing::DeviceBuffer;
using testing::RelativeL2;

TEST(ElementwiseGpuTest, EmbeddingGatherCopiesRows) {
  MPA_SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(testing::FreshSeed());
  const int vocab = 1000, hidden = 72;
  std::vector<float> table = testing::RandomNormal(static_cast<size_t>(vocab) * hidden, rng);
  const std::vector<uint16_t> bits = testing::ToBf16(table);
  const std::vector<int32_t> ids = {999, 0, 5, 5, 417};
  DeviceBuffer<uint16_t> dt(bits);
  DeviceBuffer<int32_t> di(ids);
  DeviceBuffer<float> out(ids.size() * hidden);
  ASSERT_EQ(EmbeddingGather(reinterpret_cast<const bf16*>(dt.get()), di.get(),
                            static_cast<int>(ids.size()), hidden, out.get(), nullptr),
            cudaSuccess);
  const std::vector<float> got = out.Download();
  for (size_t r = 0; r < ids.size(); ++r) {
    for (int i = 0; i < hidden; ++i) {
      ASSERT_EQ(got[r * hidden + i], table[static_cast<size_t>(ids[r]) * hidden + i]);
    }
  }
}

TEST(ElementwiseGpuTest, SiluMulMatchesReference) {
  MPA_SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(testing::FreshSeed());
  for (int ffn : {7, 300, 12288}) {
    const int rows = 3;
    const std::vector<float> gate_up =
        testing::RandomNormal(static_cast<size_t>(rows) * 2 * ffn, rng, 3.0f);
    std::vector<float> want(static_cast<size_t>(rows) * ffn);
    for (int r = 0; r < rows; ++r) {
      cpu::SiluMul(gate_up.data() + static_cast<size_t>(r) * 2 * ffn,
                   gate_up.data() + static_cast<size_t>(r) * 2 * ffn + ffn, ffn,
                   want.data() + static_cast<size_t>(r) * ffn);
    }
    DeviceBuffer<float> dg(gate_up);
    DeviceBuffer<uint16_t> out(want.size());
    ASSERT_EQ(SiluMul(dg.get(), rows, ffn, reinterpret_cast<bf16*>(out.get()), nullptr),
              cudaSuccess);
    EXPECT_LT(RelativeL2(testing::FromBf16(out.Download()), want), 5e-3) << "ffn " << ffn;
  }
}

TEST(ElementwiseGpuTest, AddAndConvert) {
  MPA_SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(testing::FreshSeed());
  const size_t n = 100003;
  const std::vector<float> x = testing::RandomNormal(n, rng), y = testing::RandomNormal(n, rng);
  DeviceBuffer<float> dx(x), dy(y);
  ASSERT_EQ(AddInPlace(dy.get(), dx.get(), n, nullptr), cudaSuccess);
  const std::vector<float> sum = dy.Download();
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(sum[i], y[i] + x[i]);
  DeviceBuffer<uint16_t> bits(n);
  ASSERT_EQ(ConvertToBf16(dx.get(), n, reinterpret_cast<bf16*>(bits.get()), nullptr), cudaSuccess);
  const std::vector<uint16_t> got = bits.Download();
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(got[i], testing::Bf16Bits(x[i])) << i;
}

TEST(ElementwiseGpuTest, FillNormalIsSeededAndNormal) {
  MPA_SKIP_WITHOUT_GPU();
  const int64_t n = 1 << 20;
  DeviceBuffer<float> a(n), b(n), c(n);
  ASSERT_EQ(FillNormalF32(a.get(), n, 42, 0.5f, 2.0f, nullptr), cudaSuccess);
  ASSERT_EQ(FillNormalF32(b.get(), n, 42, 0.5f, 2.0f, nullptr), cudaSuccess);
  ASSERT_EQ(FillNormalF32(c.get(), n, 43, 0.5f, 2.0f, nullptr), cudaSuccess);
  const std::vector<float> va = a.Download(), vb = b.Download(), vc = c.Download();
  EXPECT_EQ(va, vb);
  EXPECT_NE(va, vc);
  double sum = 0, sq = 0;
  int64_t beyond3 = 0;
  for (float x : va) {
    ASSERT_TRUE(std::isfinite(x));
    sum += x;
    sq += (x - 0.5) * (x - 0.5);
    if (std::abs(x - 0.5) > 3 * 2.0) ++beyond3;
  }
  EXPECT_NEAR(sum / n, 0.5, 0.01);
  EXPECT_NEAR(std::sqrt(sq / n), 2.0, 0.01);
  EXPECT_NEAR(static_cast<double>(beyond3) / n, 0.0027, 0.0005);  // normal tails, not uniform
  DeviceBuffer<uint16_t> h(n);
  ASSERT_EQ(FillNormalBf16(reinterpret_cast<bf16*>(h.get()), n, 42, 0.5f, 2.0f, nullptr),
            cudaSuccess);
  const std::vector<float> vh = testing::FromBf16(h.Download());
  EXPECT_LT(RelativeL2(vh, va), 5e-3);
}

}  // namespace
}  // namespace mpa::cuda
