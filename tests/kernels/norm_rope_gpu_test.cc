// RMSNorm (with the residual add), and the q/k/v preparation (bias, per-head q/k norm, RoPE from
// a table, paged KV append) against the CPU reference ops.
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/norm_rope.h"
#include "tests/kernels/cuda_test_util.h"

namespace mpa::cuda {
namespace {

using testing::DeviceBuffer;
using testing::RelativeL2;

TEST(RmsNormGpuTest, AddsResidualAndNormalises) {
  MPA_SKIP_WITHOUT_GPU();
  const uint64_t seed = testing::FreshSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (int n : {8, 100, 4096}) {
    const int rows = 5;
    std::vector<float> x = testing::RandomNormal(static_cast<size_t>(rows) * n, rng, 2.0f);
    std::vector<float> delta = testing::RandomNormal(x.size(), rng);
    std::vector<float> w = testing::RandomNormal(n, rng);
    std::vector<float> want_res(x.size()), want(x.size());
    for (size_t i = 0; i < x.size(); ++i) want_res[i] = x[i] + delta[i];
    cpu::RmsNormRows(want_res.data(), w.data(), rows, n, 1e-5f, want.data());

    DeviceBuffer<float> dx(x), dd(delta), dw(w), out_f32(x.size());
    DeviceBuffer<uint16_t> out(x.size());
    RmsNormParams p;
    p.residual = dx.get();
    p.delta = dd.get();
    p.weight = dw.get();
    p.rows = rows;
    p.n = n;
    p.eps = 1e-5f;
    p.out = reinterpret_cast<bf16*>(out.get());
    p.out_f32 = out_f32.get();
    ASSERT_EQ(RmsNorm(p, nullptr), cudaSuccess);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_LT(RelativeL2(dx.Download(), want_res), 1e-7) << "n " << n;
    EXPECT_LT(RelativeL2(out_f32.Download(), want), 1e-5) << "n " << n;
    EXPECT_LT(RelativeL2(testing::FromBf16(out.Download()), want), 5e-3) << "n " << n;
  }
}

// Builds the expected q rows and cache rows on the CPU for QkvPrepare.
void RunQkvPrepare(int hd, int nq, int nkv, bool with_norm, bool with_bias) {
  const uint64_t seed = testing::FreshSeed();
  SCOPED_TRACE("hd " + std::to_string(hd) + " nq " + std::to_string(nq) + " nkv " +
               std::to_string(nkv) + " norm " + std::to_string(with_norm) + " bias " +
               std::to_string(with_bias) + " seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const int rows = 7, half = hd / 2, width = (nq + 2 * nkv) * hd, max_pos = 300, page = 16;
  std::vector<float> qkv = testing::RandomNormal(static_cast<size_t>(rows) * width, rng);
  std::vector<float> bias = testing::RandomNormal(width, rng, 0.5f);
  std::vector<float> qn = testing::RandomNormal(hd, rng), kn = testing::RandomNormal(hd, rng);
  // Any table works: random angles with a scale, as a yarn-style attention factor would give.
  std::vector<float> cos(static_cast<size_t>(max_pos) * half), sin(cos.size());
  std::uniform_real_distribution<float> angle(-3.14159f, 3.14159f);
  for (size_t i = 0; i < cos.size(); ++i) {
    const float a = angle(rng);
    cos[i] = 1.1f * std::cos(a);
    sin[i] = 1.1f * std::sin(a);
  }
  std::vector<int32_t> pos(rows);
  std::uniform_int_distribution<int> pick(0, max_pos - 1);
  for (int& x : pos) x = pick(rng);
  // Slots: distinct, spread over 4 pages of 16.
  std::vector<int64_t> slots(rows);
  std::vector<int64_t> all(4 * page);
  std::iota(all.begin(), all.end(), 0);
  std::shuffle(all.begin(), all.end(), rng);
  std::copy_n(all.begin(), rows, slots.begin());

  std::vector<float> want_q(static_cast<size_t>(rows) * nq * hd);
  const size_t cache_n = static_cast<size_t>(4) * nkv * page * hd;
  std::vector<float> want_k(cache_n, NAN), want_v(cache_n, NAN);
  for (int r = 0; r < rows; ++r) {
    std::vector<float> row(qkv.begin() + static_cast<size_t>(r) * width,
                           qkv.begin() + static_cast<size_t>(r + 1) * width);
    if (with_bias) {
      for (int i = 0; i < width; ++i) row[i] += bias[i];
    }
    float* q = row.data();
    float* k = q + nq * hd;
    const float* v = k + nkv * hd;
    if (with_norm) {
      cpu::RmsNormRows(q, qn.data(), nq, hd, 1e-6f, q);
      cpu::RmsNormRows(k, kn.data(), nkv, hd, 1e-6f, k);
    }
    cpu::ApplyRope(q, nq, hd, cos.data() + pos[r] * half, sin.data() + pos[r] * half);
    cpu::ApplyRope(k, nkv, hd, cos.data() + pos[r] * half, sin.data() + pos[r] * half);
    std::copy_n(q, nq * hd, want_q.begin() + static_cast<size_t>(r) * nq * hd);
    const int64_t pg = slots[r] / page, off = slots[r] % page;
    for (int h = 0; h < nkv; ++h) {
      const size_t dst = ((pg * nkv + h) * page + off) * hd;
      std::copy_n(k + h * hd, hd, want_k.begin() + dst);
      std::copy_n(v + h * hd, hd, want_v.begin() + dst);
    }
  }

  DeviceBuffer<float> dqkv(qkv), dbias(bias), dqn(qn), dkn(kn), dcos(cos), dsin(sin);
  DeviceBuffer<int32_t> dpos(pos);
  DeviceBuffer<int64_t> dslots(slots);
  DeviceBuffer<uint16_t> q_out(want_q.size()), kc(cache_n), vc(cache_n);
  QkvPrepareParams p;
  p.qkv = dqkv.get();
  p.bias = with_bias ? dbias.get() : nullptr;
  p.q_norm = with_norm ? dqn.get() : nullptr;
  p.k_norm = with_norm ? dkn.get() : nullptr;
  p.rope_cos = dcos.get();
  p.rope_sin = dsin.get();
  p.positions = dpos.get();
  p.rows = rows;
  p.num_q_heads = nq;
  p.num_kv_heads = nkv;
  p.head_dim = hd;
  p.q_out = reinterpret_cast<bf16*>(q_out.get());
  p.kv = {reinterpret_cast<bf16*>(kc.get()), reinterpret_cast<bf16*>(vc.get()), nkv, hd, page};
  p.slots = dslots.get();
  ASSERT_EQ(QkvPrepare(p, nullptr), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_LT(RelativeL2(testing::FromBf16(q_out.Download()), want_q), 5e-3);
  // Only the written slots are compared (the rest stay poisoned NaN in both).
  const std::vector<float> got_k = testing::FromBf16(kc.Download());
  const std::vector<float> got_v = testing::FromBf16(vc.Download());
  std::vector<float> gk, wk, gv, wv;
  for (size_t i = 0; i < cache_n; ++i) {
    if (std::isnan(want_k[i])) {
      EXPECT_TRUE(std::isnan(got_k[i])) << "wrote outside the slots at " << i;
      continue;
    }
    gk.push_back(got_k[i]);
    wk.push_back(want_k[i]);
    gv.push_back(got_v[i]);
    wv.push_back(want_v[i]);
  }
  EXPECT_EQ(gk.size(), static_cast<size_t>(rows) * nkv * hd);
  EXPECT_LT(RelativeL2(gk, wk), 5e-3);
  EXPECT_LT(RelativeL2(gv, wv), 5e-3);
}

TEST(QkvPrepareGpuTest, NormRopeAppendMatchReference) {
  MPA_SKIP_WITHOUT_GPU();
  for (int hd : {8, 64, 128}) {
    for (int group : {1, 2, 4, 8}) {
      RunQkvPrepare(hd, 2 * group, 2, /*with_norm=*/true, /*with_bias=*/false);
    }
    RunQkvPrepare(hd, 6, 3, /*with_norm=*/false, /*with_bias=*/true);
  }
}

}  // namespace
}  // namespace mpa::cuda
