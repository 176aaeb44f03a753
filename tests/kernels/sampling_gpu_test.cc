// Greedy argmax and seeded top-k / top-p sampling against a double-precision CPU reference.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/sampling.h"
#include "tests/kernels/cuda_test_util.h"

namespace mpa::cuda {
namespace {

using testing::DeviceBuffer;

TEST(SamplingGpuTest, ArgmaxTakesLowestIdOnTies) {
  MPA_SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(testing::FreshSeed());
  const int vocab = 151936, rows = 4;
  std::vector<float> logits = testing::RandomNormal(static_cast<size_t>(rows) * vocab, rng);
  logits[0 * vocab + 77] = 50.0f;
  logits[0 * vocab + 150000] = 50.0f;  // tie: 77 wins
  logits[1 * vocab + vocab - 1] = 60.0f;
  logits[2 * vocab + 0] = 60.0f;
  std::vector<int32_t> want(rows);
  for (int r = 0; r < rows; ++r) {
    const float* x = logits.data() + static_cast<size_t>(r) * vocab;
    want[r] = static_cast<int32_t>(std::max_element(x, x + vocab) - x);
  }
  DeviceBuffer<float> dl(logits);
  DeviceBuffer<int32_t> ids(rows);
  ASSERT_EQ(ArgmaxRows(dl.get(), rows, vocab, ids.get(), nullptr), cudaSuccess);
  EXPECT_EQ(ids.Download(), want);
  EXPECT_EQ(want[0], 77);
}

// The CPU Sampler's rules in double precision (the slow exact path): ids in rank order (logit
// descending, lower id first on ties), the first top_k, then the shortest prefix whose mass
// reaches top_p of theirs; the draw is the first id in rank order whose cumulative mass exceeds
// u * kept mass. `margin` is how close (relative to the kept mass, or to top_p) the draw or the
// top-p cut came to a boundary: below ~1e-5 float rounding may legitimately move the choice.
struct Reference {
  int32_t id = -1;
  std::vector<int32_t> kept;  // rank order
  double margin = 1.0;
};

std::vector<int32_t> RankOrder(const float* x, int vocab) {
  std::vector<int32_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return x[a] > x[b]; });
  return order;
}

Reference ReferenceSample(const float* x, const std::vector<int32_t>& order,
                          const SamplingRow& row) {
  const int vocab = static_cast<int>(order.size());
  Reference r;
  if (row.temperature <= 0.0f || row.top_k == 1) {
    r.id = order[0];
    r.kept = {order[0]};
    return r;
  }
  const int k = (row.top_k > 0 && row.top_k < vocab) ? row.top_k : vocab;
  const double mx = x[order[0]];
  std::vector<double> cum(k);
  double acc = 0;
  for (int i = 0; i < k; ++i) {
    acc += std::exp((static_cast<double>(x[order[i]]) - mx) / row.temperature);
    cum[i] = acc;
  }
  const double total = acc;
  int keep = k;
  if (row.top_p < 1.0f) {
    for (int i = 0; i < k; ++i) {
      if (cum[i] / total >= row.top_p) {
        keep = i + 1;
        break;
      }
    }
    r.margin = std::min(r.margin, std::abs(cum[keep - 1] / total - row.top_p));
    if (keep >= 2) r.margin = std::min(r.margin, std::abs(cum[keep - 2] / total - row.top_p));
  }
  const double kept_total = cum[keep - 1];
  const double target = SamplingUniform(row.seed) * kept_total;
  int chosen = keep - 1;
  for (int i = 0; i < keep; ++i) {
    if (cum[i] > target) {
      chosen = i;
      break;
    }
  }
  r.margin = std::min(r.margin, std::abs(cum[chosen] - target) / kept_total);
  if (chosen > 0) r.margin = std::min(r.margin, std::abs(target - cum[chosen - 1]) / kept_total);
  r.id = order[chosen];
  r.kept.assign(order.begin(), order.begin() + keep);
  return r;
}

// Logit rows of several shapes: smooth, peaked, quantized (many exact ties), partly masked.
std::vector<float> LogitRow(int vocab, int kind, std::mt19937_64& rng) {
  std::vector<float> x;
  switch (kind % 4) {
    case 0:
      x = testing::RandomNormal(vocab, rng, 2.0f);
      break;
    case 1:
      x = testing::RandomNormal(vocab, rng, 6.0f);
      break;
    case 2:
      x = testing::RandomNormal(vocab, rng, 2.0f);
      for (float& v : x) v = std::round(v * 2.0f) * 0.5f;  // ties everywhere, -0 and +0 too
      break;
    default: {
      x = testing::RandomNormal(vocab, rng, 3.0f);
      std::uniform_int_distribution<int> pick(0, vocab - 1);
      for (int i = 0; i < vocab / 3; ++i) x[pick(rng)] = -INFINITY;
      x[pick(rng)] = 4.0f;  // at least one finite
    }
  }
  return x;
}

// Every (top_k, top_p, temperature) combination over `bases` rows of each shape, `draws` seeds
// each: the chosen id equals the exact reference's unless the draw sits within float rounding
// of a boundary (then it must still be one the reference keeps).
void CheckAgainstReference(int vocab, int bases, int draws, bool own_workspace) {
  const uint64_t seed = testing::FreshSeed();
  SCOPED_TRACE("vocab " + std::to_string(vocab) + " seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::vector<SamplingRow> settings;
  for (int k : {0, 1, 5, 50, 1000}) {
    for (float p : {1.0f, 0.9f, 0.5f, 0.01f}) {
      for (float t : {0.3f, 1.0f, 1.7f}) settings.push_back({t, k, p, 0});
    }
  }
  settings.push_back({0.0f, 0, 1.0f, 0});
  settings.push_back({1.0f, vocab, 0.99f, 0});
  std::vector<std::vector<float>> base_rows;
  std::vector<std::vector<int32_t>> orders;
  for (int b = 0; b < bases; ++b) {
    base_rows.push_back(LogitRow(vocab, b, rng));
    orders.push_back(RankOrder(base_rows.back().data(), vocab));
  }
  std::vector<float> logits;
  std::vector<SamplingRow> params;
  std::vector<int> base_of;
  for (int b = 0; b < bases; ++b) {
    for (const SamplingRow& s : settings) {
      for (int d = 0; d < draws; ++d) {
        logits.insert(logits.end(), base_rows[b].begin(), base_rows[b].end());
        SamplingRow row = s;
        row.seed = rng();
        params.push_back(row);
        base_of.push_back(b);
      }
    }
  }
  const int rows = static_cast<int>(params.size());
  DeviceBuffer<float> dl(logits);
  DeviceBuffer<SamplingRow> dp(params);
  DeviceBuffer<int32_t> ids(rows), again(rows);
  if (own_workspace) {
    DeviceBuffer<char> ws(SampleRowsWorkspaceBytes(rows));
    ASSERT_EQ(SampleRows(dl.get(), rows, vocab, dp.get(), ids.get(), ws.get(), ws.size(), nullptr),
              cudaSuccess);
    EXPECT_EQ(
        SampleRows(dl.get(), rows, vocab, dp.get(), ids.get(), ws.get(), ws.size() - 1, nullptr),
        cudaErrorInvalidValue);
  } else {
    ASSERT_EQ(SampleRows(dl.get(), rows, vocab, dp.get(), ids.get(), nullptr), cudaSuccess);
  }
  ASSERT_EQ(SampleRows(dl.get(), rows, vocab, dp.get(), again.get(), nullptr), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<int32_t> got = ids.Download();
  EXPECT_EQ(got, again.Download()) << "same seeds must give the same ids";
  int near = 0, mismatches = 0;
  for (int r = 0; r < rows; ++r) {
    const int b = base_of[r];
    const Reference want = ReferenceSample(base_rows[b].data(), orders[b], params[r]);
    ASSERT_GE(got[r], 0) << "row " << r;
    ASSERT_LT(got[r], vocab) << "row " << r;
    const bool close = want.margin < 1e-5;
    near += close;
    if (got[r] == want.id) continue;
    ++mismatches;
    const SamplingRow& p = params[r];
    EXPECT_TRUE(close) << "row " << r << " (base " << b << ", t " << p.temperature << ", k "
                       << p.top_k << ", p " << p.top_p << ") chose " << got[r] << ", want "
                       << want.id << " (margin " << want.margin << ")";
    const bool kept_or_next =
        std::find(want.kept.begin(), want.kept.end(), got[r]) != want.kept.end() ||
        (want.kept.size() < orders[b].size() && orders[b][want.kept.size()] == got[r]);
    EXPECT_TRUE(kept_or_next) << "row " << r << " chose " << got[r] << " outside the kept set";
  }
  EXPECT_LT(near, rows / 4) << "too many rows within rounding of a boundary to be a test";
  ::testing::Test::RecordProperty("rows_near_boundaries", near);
  ::testing::Test::RecordProperty("mismatches_near_boundaries", mismatches);
}

TEST(SamplingGpuTest, SampleRowsMatchesReferenceAtQwenVocab) {
  MPA_SKIP_WITHOUT_GPU();
  CheckAgainstReference(151936, 4, 3, /*own_workspace=*/true);
}

TEST(SamplingGpuTest, SampleRowsMatchesReferenceAtAwkwardSizes) {
  MPA_SKIP_WITHOUT_GPU();
  for (int vocab : {1, 2, 31, 257, 1000, 5003, 65537}) {
    CheckAgainstReference(vocab, 4, 4, /*own_workspace=*/vocab % 2 == 0);
  }
}

// Many seeds over one small row: the draws' frequencies follow the kept distribution.
TEST(SamplingGpuTest, SampleRowsFollowsKeptDistribution) {
  MPA_SKIP_WITHOUT_GPU();
  const uint64_t seed = testing::FreshSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const int vocab = 64, rows = 40000;
  const std::vector<float> base = testing::RandomNormal(vocab, rng, 1.5f);
  const std::vector<int32_t> order = RankOrder(base.data(), vocab);
  const SamplingRow setting{1.5f, 20, 0.8f, 0};
  std::vector<float> logits;
  std::vector<SamplingRow> params;
  for (int r = 0; r < rows; ++r) {
    logits.insert(logits.end(), base.begin(), base.end());
    SamplingRow row = setting;
    row.seed = rng();
    params.push_back(row);
  }
  DeviceBuffer<float> dl(logits);
  DeviceBuffer<SamplingRow> dp(params);
  DeviceBuffer<int32_t> ids(rows);
  ASSERT_EQ(SampleRows(dl.get(), rows, vocab, dp.get(), ids.get(), nullptr), cudaSuccess);
  const std::vector<int32_t> got = ids.Download();
  const Reference ref = ReferenceSample(base.data(), order, setting);
  ASSERT_GE(ref.kept.size(), 5u);
  ASSERT_LT(ref.kept.size(), 20u);
  std::vector<double> want(vocab, 0.0);
  double total = 0;
  for (int32_t id : ref.kept) total += std::exp((base[id] - base[order[0]]) / setting.temperature);
  for (int32_t id : ref.kept) {
    want[id] = std::exp((base[id] - base[order[0]]) / setting.temperature) / total;
  }
  std::vector<double> count(vocab, 0.0);
  for (int32_t id : got) {
    ASSERT_GE(id, 0);
    ASSERT_LT(id, vocab);
    ASSERT_GT(want[id], 0.0) << "drew " << id << " outside the kept set";
    count[id] += 1;
  }
  double tv = 0;
  for (int i = 0; i < vocab; ++i) tv += std::abs(count[i] / rows - want[i]);
  // E[TV] ~ sum sqrt(p(1-p)/n) ~ 0.01 here; 0.03 is > 5 sigma of it.
  EXPECT_LT(tv / 2, 0.03);
}

}  // namespace
}  // namespace mpa::cuda
