// Tiled causal prefill attention over the paged cache against the CPU reference: new token i of
// a sequence with `prefix` earlier tokens attends exactly to positions [0, prefix + i].
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/attention.h"
#include "kernels/cuda/prefill_attention.h"
#include "tests/kernels/cuda_test_util.h"

namespace mpa::cuda {
namespace {

using testing::DeviceBuffer;
using testing::HostPagedCache;
using testing::RelativeL2;

struct Seq {
  int prefix;  // tokens already in the cache before this chunk
  int new_tokens;
};

double RunCase(int hd, int group, int num_kv_heads, int page_size, const std::vector<Seq>& seqs,
               bool bf16_out, PrefillKernel kernel = PrefillKernel::kAuto, int warps = 0) {
  const uint64_t seed = testing::FreshSeed();
  std::string what = "hd" + std::to_string(hd) + " g" + std::to_string(group) + " page" +
                     std::to_string(page_size) + " kernel " +
                     std::to_string(static_cast<int>(kernel)) + " warps " + std::to_string(warps) +
                     " seed " + std::to_string(seed);
  SCOPED_TRACE(what);
  std::mt19937_64 rng(seed);
  const int batch = static_cast<int>(seqs.size());
  const int nq = num_kv_heads * group;
  std::vector<int> lens;
  std::vector<int32_t> starts = {0};
  int max_new = 0;
  for (const Seq& s : seqs) {
    lens.push_back(s.prefix + s.new_tokens);
    starts.push_back(starts.back() + s.new_tokens);
    max_new = std::max(max_new, s.new_tokens);
  }
  const int rows = starts.back();
  HostPagedCache cache(lens, num_kv_heads, hd, page_size, rng);
  std::vector<float> q = testing::RandomNormal(static_cast<size_t>(rows) * nq * hd, rng, 3.0f);
  const std::vector<uint16_t> q_bits = testing::ToBf16(q);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));

  std::vector<float> want(q.size());
  for (int b = 0; b < batch; ++b) {
    std::vector<float> kc, vc;
    cache.Contiguous(b, kc, vc);
    for (int i = 0; i < seqs[b].new_tokens; ++i) {
      const size_t row = static_cast<size_t>(starts[b] + i);
      cpu::DenseDecodeParams p;
      p.q = q.data() + row * nq * hd;
      p.kv = {kc.data(), vc.data(), static_cast<int64_t>(lens[b]) * hd, seqs[b].prefix + i + 1};
      p.num_q_heads = nq;
      p.num_kv_heads = num_kv_heads;
      p.head_dim = hd;
      p.scale = scale;
      p.out = want.data() + row * nq * hd;
      cpu::DenseDecodeAttention(p);
    }
  }

  DeviceBuffer<uint16_t> dq(q_bits), dk(cache.k_bits), dv(cache.v_bits);
  DeviceBuffer<int32_t> dtable(cache.table), dlens(std::vector<int32_t>(lens.begin(), lens.end()));
  DeviceBuffer<int32_t> dstarts(starts);
  DeviceBuffer<float> out_f32(q.size());
  DeviceBuffer<uint16_t> out_bf16(q.size());
  PrefillAttentionParams p;
  p.q = reinterpret_cast<const bf16*>(dq.get());
  p.q_starts = dstarts.get();
  p.kv = {reinterpret_cast<bf16*>(dk.get()), reinterpret_cast<bf16*>(dv.get()), num_kv_heads, hd,
          page_size};
  p.block_table = {dtable.get(), cache.max_pages};
  p.seq_lens = dlens.get();
  p.batch = batch;
  p.num_q_heads = nq;
  p.max_new_tokens = max_new;
  p.scale = scale;
  p.kernel = kernel;
  p.tensor_core_warps = warps;
  if (bf16_out) {
    p.out = reinterpret_cast<bf16*>(out_bf16.get());
  } else {
    p.out_f32 = out_f32.get();
  }
  EXPECT_EQ(PrefillAttention(p, nullptr), cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<float> got =
      bf16_out ? testing::FromBf16(out_bf16.Download()) : out_f32.Download();
  return RelativeL2(got, want);
}

constexpr double kF32Bound = 1e-4;
constexpr double kBf16Bound = 5e-3;

TEST(PrefillAttentionGpuTest, MatchesReferenceOnAwkwardShapes) {
  MPA_SKIP_WITHOUT_GPU();
  for (int hd : {8, 24, 64, 128}) {
    for (int group : {1, 2, 4, 8}) {
      // A fresh prompt, a chunk after a prefix that ends mid-page, and a one-token chunk.
      const std::vector<Seq> seqs = {{0, 77}, {37, 45 + group}, {100, 1}};
      EXPECT_LT(RunCase(hd, group, 2, 16, seqs, false), kF32Bound)
          << "hd " << hd << " group " << group;
    }
  }
}

// The CUDA-core kernel stays covered where the tensor-core one is the default.
TEST(PrefillAttentionGpuTest, CudaCoreKernelForcedOnTensorCoreShapes) {
  MPA_SKIP_WITHOUT_GPU();
  for (int hd : {64, 128}) {
    for (int group : {1, 4}) {
      const std::vector<Seq> seqs = {{0, 77}, {37, 45 + group}, {100, 1}};
      EXPECT_LT(RunCase(hd, group, 2, 16, seqs, false, PrefillKernel::kCudaCore), kF32Bound)
          << "hd " << hd << " group " << group;
    }
  }
}

// Several 64-key tiles, diagonals that start mid-tile (prefixes not multiples of 64), rows past
// the end of the last query tile, one-token chunks, in one mixed batch: bf16 output (one bf16
// term of P) and fp32 output (two terms), with 4 warps per block (64 rows, the default) and 8
// (128 rows, the benchmark knob).
TEST(PrefillAttentionGpuTest, TensorCoreKernelMixedBatch) {
  MPA_SKIP_WITHOUT_GPU();
  for (int warps : {4, 8}) {
    for (int hd : {64, 128}) {
      for (int group : {1, 2, 4, 8}) {
        for (int page : {16, 64}) {
          const std::vector<Seq> seqs = {
              {0, 200}, {70, 131}, {5, 1}, {300, 16 * warps / group + 3}, {0, 1}};
          EXPECT_LT(RunCase(hd, group, 2, page, seqs, true, PrefillKernel::kTensorCore, warps),
                    kBf16Bound)
              << "warps " << warps << " hd " << hd << " group " << group << " page " << page;
          EXPECT_LT(RunCase(hd, group, 2, page, seqs, false, PrefillKernel::kTensorCore, warps),
                    kF32Bound)
              << "warps " << warps << " hd " << hd << " group " << group << " page " << page;
        }
      }
    }
  }
}

TEST(PrefillAttentionGpuTest, TensorCoreKernelRefusesOtherHeadDims) {
  MPA_SKIP_WITHOUT_GPU();
  DeviceBuffer<uint16_t> q(8 * 24), k(16 * 24), v(16 * 24), out(8 * 24);
  DeviceBuffer<int32_t> table(std::vector<int32_t>{0}), lens(std::vector<int32_t>{8}),
      starts(std::vector<int32_t>{0, 8});
  PrefillAttentionParams p;
  p.q = reinterpret_cast<const bf16*>(q.get());
  p.q_starts = starts.get();
  p.kv = {reinterpret_cast<bf16*>(k.get()), reinterpret_cast<bf16*>(v.get()), 1, 24, 16};
  p.block_table = {table.get(), 1};
  p.seq_lens = lens.get();
  p.batch = 1;
  p.num_q_heads = 1;
  p.max_new_tokens = 8;
  p.scale = 0.2f;
  p.out = reinterpret_cast<bf16*>(out.get());
  p.kernel = PrefillKernel::kTensorCore;
  EXPECT_EQ(PrefillAttention(p, nullptr), cudaErrorInvalidValue);
  p.kernel = PrefillKernel::kAuto;
  p.tensor_core_warps = 6;
  EXPECT_EQ(PrefillAttention(p, nullptr), cudaErrorInvalidValue);
  p.tensor_core_warps = 0;
  EXPECT_EQ(PrefillAttention(p, nullptr), cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

TEST(PrefillAttentionGpuTest, LongPromptLargePagesBf16) {
  MPA_SKIP_WITHOUT_GPU();
  EXPECT_LT(RunCase(128, 4, 2, 64, {{0, 700}, {129, 3}}, true), kBf16Bound);
  EXPECT_LT(RunCase(128, 4, 2, 64, {{0, 700}}, false), kF32Bound);
}

}  // namespace
}  // namespace mpa::cuda
