// Split-KV paged decode attention against the CPU reference (kernels/cpu/attention.h).
#include <string>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/attention.h"
#include "kernels/cuda/decode_attention.h"
#include "tests/kernels/cuda_test_util.h"

namespace mpa::cuda {
namespace {

using testing::DeviceBuffer;
using testing::HostPagedCache;
using testing::RelativeL2;

struct Case {
  int head_dim;
  int group;
  int num_kv_heads;
  int page_size;
  std::vector<int> lens;
  int num_splits;  // 0: the launcher's choice
  bool bf16_out;
  DecodeKernel kernel = DecodeKernel::kAuto;
  // Rows past each sequence's end in its last page hold NaN: a kernel that lets an unused row into
  // a product (even times a zero weight) fails.
  bool nan_tail = false;
};

std::string Describe(const Case& c) {
  std::string s = "hd" + std::to_string(c.head_dim) + " g" + std::to_string(c.group) + " kv" +
                  std::to_string(c.num_kv_heads) + " page" + std::to_string(c.page_size) +
                  " splits" + std::to_string(c.num_splits) + (c.bf16_out ? " bf16" : " f32") +
                  (c.kernel == DecodeKernel::kTensorCore ? " tensor-core"
                   : c.kernel == DecodeKernel::kCudaCore ? " cuda-core"
                                                         : " auto") +
                  (c.nan_tail ? " nan-tail" : "") + " lens";
  for (int l : c.lens) s += " " + std::to_string(l);
  return s;
}

// Runs one case and returns the relative L2 error against the fp32 reference computed on the
// same bf16-rounded inputs.
double RunCase(const Case& c) {
  const uint64_t seed = testing::FreshSeed();
  SCOPED_TRACE(Describe(c) + " seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const int batch = static_cast<int>(c.lens.size());
  const int nq = c.num_kv_heads * c.group, hd = c.head_dim;
  HostPagedCache cache(c.lens, c.num_kv_heads, hd, c.page_size, rng);
  // A wider query spread than the keys' makes the softmax peaked, not nearly uniform.
  std::vector<float> q = testing::RandomNormal(static_cast<size_t>(batch) * nq * hd, rng, 3.0f);
  const std::vector<uint16_t> q_bits = testing::ToBf16(q);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));

  std::vector<float> want(q.size());
  for (int b = 0; b < batch; ++b) {
    std::vector<float> kc, vc;
    cache.Contiguous(b, kc, vc);
    cpu::DenseDecodeParams p;
    p.q = q.data() + static_cast<size_t>(b) * nq * hd;
    p.kv = {kc.data(), vc.data(), static_cast<int64_t>(c.lens[b]) * hd, c.lens[b]};
    p.num_q_heads = nq;
    p.num_kv_heads = c.num_kv_heads;
    p.head_dim = hd;
    p.scale = scale;
    p.out = want.data() + static_cast<size_t>(b) * nq * hd;
    cpu::DenseDecodeAttention(p);
  }

  if (c.nan_tail) {
    constexpr uint16_t kNanBits = 0x7fc0;
    for (int b = 0; b < batch; ++b) {
      const int pages = (c.lens[b] + c.page_size - 1) / c.page_size;
      for (int h = 0; h < c.num_kv_heads; ++h) {
        for (int t = c.lens[b]; t < pages * c.page_size; ++t) {
          const size_t row = cache.Index(b, h, t);
          std::fill_n(cache.k_bits.begin() + row, hd, kNanBits);
          std::fill_n(cache.v_bits.begin() + row, hd, kNanBits);
        }
      }
    }
  }
  DeviceBuffer<uint16_t> dq(q_bits), dk(cache.k_bits), dv(cache.v_bits);
  DeviceBuffer<int32_t> dtable(cache.table),
      dlens(std::vector<int32_t>(c.lens.begin(), c.lens.end()));
  DeviceBuffer<float> out_f32(q.size());
  DeviceBuffer<uint16_t> out_bf16(q.size());
  int max_len = 0;
  for (int l : c.lens) max_len = std::max(max_len, l);
  const size_t ws_bytes = DecodeAttentionWorkspaceBytes(batch, nq, hd, 64);
  DeviceBuffer<char> ws(ws_bytes);

  DecodeAttentionParams p;
  p.q = reinterpret_cast<const bf16*>(dq.get());
  p.kv = {reinterpret_cast<bf16*>(dk.get()), reinterpret_cast<bf16*>(dv.get()), c.num_kv_heads, hd,
          c.page_size};
  p.block_table = {dtable.get(), cache.max_pages};
  p.seq_lens = dlens.get();
  p.batch = batch;
  p.num_q_heads = nq;
  p.max_seq_len = max_len;
  p.scale = scale;
  p.num_splits = c.num_splits;
  p.kernel = c.kernel;
  if (c.bf16_out) {
    p.out = reinterpret_cast<bf16*>(out_bf16.get());
  } else {
    p.out_f32 = out_f32.get();
  }
  p.workspace = ws.get();
  p.workspace_bytes = ws_bytes;
  EXPECT_EQ(DecodeAttention(p, nullptr), cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<float> got =
      c.bf16_out ? testing::FromBf16(out_bf16.Download()) : out_f32.Download();
  return RelativeL2(got, want);
}

// fp32 output: the kernel accumulates in fp32 like the reference, so only summation order and
// exp2 rounding differ. bf16 output adds one rounding of each element (relative 2^-9).
constexpr double kF32Bound = 1e-4;
constexpr double kBf16Bound = 5e-3;

TEST(DecodeAttentionGpuTest, MatchesReferenceOnAwkwardShapes) {
  MPA_SKIP_WITHOUT_GPU();
  for (int hd : {8, 24, 64, 128}) {
    for (int group : {1, 2, 4, 8}) {
      for (int splits : {0, 1, 3}) {
        const Case c{hd, group, 2, 16, {1, 37, 1000 + hd + group}, splits, false};
        const double err = RunCase(c);
        EXPECT_LT(err, kF32Bound) << Describe(c);
      }
    }
  }
}

TEST(DecodeAttentionGpuTest, LargePagesAndMixedBatch) {
  MPA_SKIP_WITHOUT_GPU();
  for (int hd : {64, 128}) {
    const Case c{hd, 4, 3, 64, {5000, 63, 64, 65, 2, 777}, 0, false};
    EXPECT_LT(RunCase(c), kF32Bound) << Describe(c);
  }
}

TEST(DecodeAttentionGpuTest, Bf16OutputWithinRounding) {
  MPA_SKIP_WITHOUT_GPU();
  for (int splits : {0, 1, 5}) {
    const Case c{128, 4, 8, 16, {4099, 17, 333}, splits, true};
    EXPECT_LT(RunCase(c), kBf16Bound) << Describe(c);
  }
}

TEST(DecodeAttentionGpuTest, EmptySequenceGivesZeros) {
  MPA_SKIP_WITHOUT_GPU();
  // Sequence 0 is empty: its output rows must be written (as zeros), the rest still match.
  const Case c{64, 2, 2, 16, {0, 50}, 0, false};
  EXPECT_LT(RunCase(c), kF32Bound);
}

// The tensor-core kernel (head_dim 64 and 128): lengths around the 16-token tile and the
// 4-warp x 16-token block step, long single splits (more than 32 tiles per warp, so the page-number
// prefetch turns over), every group, pages of 16 and 32, NaN in the unused rows of last pages.
// P enters the products as two bf16 terms, so fp32 outputs keep the fp32 bound.
TEST(DecodeAttentionGpuTest, TensorCoreMatchesReferenceOnAwkwardShapes) {
  MPA_SKIP_WITHOUT_GPU();
  for (int hd : {64, 128}) {
    for (int group : {1, 2, 4, 8}) {
      for (int page : {16, 32}) {
        for (int splits : {0, 1, 3}) {
          const Case c{hd,
                       group,
                       2,
                       page,
                       {1, 15, 16, 17, 63, 65, 1000 + hd + group, 9001},
                       splits,
                       false,
                       DecodeKernel::kTensorCore,
                       true};
          EXPECT_LT(RunCase(c), kF32Bound) << Describe(c);
        }
      }
    }
  }
}

// The model's case: bf16 output, mixed batch lengths, within the bf16 rounding bound.
TEST(DecodeAttentionGpuTest, TensorCoreBf16OutputWithinRounding) {
  MPA_SKIP_WITHOUT_GPU();
  for (int group : {1, 2, 4, 8}) {
    for (int splits : {0, 1, 5}) {
      const Case c{
          128, group, 8, 16, {4099, 17, 333, 16, 1, 2048}, splits, true, DecodeKernel::kTensorCore,
          true};
      EXPECT_LT(RunCase(c), kBf16Bound) << Describe(c);
    }
  }
}

// The CUDA-core kernel still serves head_dim 64/128 when forced (and every other head_dim).
TEST(DecodeAttentionGpuTest, CudaCoreKernelOnTensorCoreShapes) {
  MPA_SKIP_WITHOUT_GPU();
  for (int hd : {64, 128}) {
    for (int group : {1, 4, 8}) {
      for (int splits : {0, 1, 3}) {
        const Case c{hd,
                     group,
                     2,
                     16,
                     {1, 37, 17, 1000 + hd + group},
                     splits,
                     false,
                     DecodeKernel::kCudaCore,
                     true};
        EXPECT_LT(RunCase(c), kF32Bound) << Describe(c);
      }
    }
  }
}

TEST(DecodeAttentionGpuTest, RejectsBadShapes) {
  MPA_SKIP_WITHOUT_GPU();
  DecodeAttentionParams p;
  EXPECT_EQ(DecodeAttention(p, nullptr), cudaErrorInvalidValue);  // no pointers
  DeviceBuffer<uint16_t> buf(1024);
  DeviceBuffer<int32_t> ints(16);
  DeviceBuffer<float> out(1024);
  p.q = reinterpret_cast<const bf16*>(buf.get());
  p.kv = {reinterpret_cast<bf16*>(buf.get()), reinterpret_cast<bf16*>(buf.get()), 2, 128, 24};
  p.block_table = {ints.get(), 1};
  p.seq_lens = ints.get();
  p.batch = 1;
  p.num_q_heads = 4;
  p.out_f32 = out.get();
  EXPECT_EQ(DecodeAttention(p, nullptr), cudaErrorInvalidValue);  // page size 24
  p.kv.page_size = 16;
  p.num_q_heads = 5;
  EXPECT_EQ(DecodeAttention(p, nullptr), cudaErrorInvalidValue);  // 5 heads over 2 KV heads
  p.num_q_heads = 4;
  p.kv.head_dim = 100;
  EXPECT_EQ(DecodeAttention(p, nullptr), cudaErrorInvalidValue);  // head_dim 100
  p.kernel = DecodeKernel::kTensorCore;
  p.kv.head_dim = 24;
  EXPECT_EQ(DecodeAttention(p, nullptr), cudaErrorInvalidValue);  // no tensor-core head_dim 24
  p.kv.head_dim = 128;
  p.kv.page_size = 8;
  EXPECT_EQ(DecodeAttention(p, nullptr), cudaErrorInvalidValue);  // tiles would cross pages
}

}  // namespace
}  // namespace mpa::cuda
