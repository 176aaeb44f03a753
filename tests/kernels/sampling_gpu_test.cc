// Greedy argmax and seeded top-k / top-p sampling against a double-precision CPU reference.
#include <algorithm>
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

// The CPU twin of SampleRows in double precision: the kept set and the chosen id for a draw.
int32_t ReferenceSample(const float* x, int vocab, const SamplingRow& row,
                        std::vector<bool>* kept) {
  if (row.temperature <= 0.0f || row.top_k == 1) {
    kept->assign(vocab, false);
    const int32_t id = static_cast<int32_t>(std::max_element(x, x + vocab) - x);
    (*kept)[id] = true;
    return id;
  }
  std::vector<double> v(vocab);
  for (int i = 0; i < vocab; ++i) v[i] = static_cast<double>(x[i] / row.temperature);
  std::vector<double> sorted = v;
  std::sort(sorted.begin(), sorted.end(), std::greater<>());
  double threshold = -INFINITY;
  if (row.top_k > 0 && row.top_k < vocab) threshold = sorted[row.top_k - 1];
  const double mx = sorted[0];
  double total = 0;
  for (int i = 0; i < vocab; ++i) {
    if (v[i] >= threshold) total += std::exp(v[i] - mx);
  }
  if (row.top_p < 1.0f) {
    double acc = 0;
    for (double s : sorted) {
      if (s < threshold) break;
      acc += std::exp(s - mx);
      if (acc >= row.top_p * total) {
        threshold = s;
        break;
      }
    }
    total = 0;
    for (int i = 0; i < vocab; ++i) {
      if (v[i] >= threshold) total += std::exp(v[i] - mx);
    }
  }
  kept->assign(vocab, false);
  const double target = SamplingUniform(row.seed) * total;
  double acc = 0;
  int32_t chosen = -1;
  for (int i = 0; i < vocab; ++i) {
    if (v[i] < threshold) continue;
    (*kept)[i] = true;
    acc += std::exp(v[i] - mx);
    if (chosen < 0 && acc > target) chosen = i;
  }
  return chosen;
}

TEST(SamplingGpuTest, SampleRowsMatchesReferenceDraws) {
  MPA_SKIP_WITHOUT_GPU();
  const uint64_t seed = testing::FreshSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const int vocab = 5003;
  const std::vector<SamplingRow> settings = {
      {0.0f, 0, 1.0f, 0},  {1.0f, 0, 1.0f, 0}, {0.7f, 50, 1.0f, 0},    {1.3f, 0, 0.9f, 0},
      {1.0f, 20, 0.5f, 0}, {1.0f, 1, 1.0f, 0}, {2.0f, vocab, 0.99f, 0}};
  const int draws = 64;
  const int rows = static_cast<int>(settings.size()) * draws;
  std::vector<float> base = testing::RandomNormal(vocab, rng, 2.0f);
  base[10] = base[11] = 7.0f;  // a tie at the top
  std::vector<float> logits;
  std::vector<SamplingRow> params;
  for (const SamplingRow& s : settings) {
    for (int d = 0; d < draws; ++d) {
      logits.insert(logits.end(), base.begin(), base.end());
      SamplingRow row = s;
      row.seed = rng();
      params.push_back(row);
    }
  }
  DeviceBuffer<float> dl(logits);
  DeviceBuffer<SamplingRow> dp(params);
  DeviceBuffer<int32_t> ids(rows), again(rows);
  ASSERT_EQ(SampleRows(dl.get(), rows, vocab, dp.get(), ids.get(), nullptr), cudaSuccess);
  ASSERT_EQ(SampleRows(dl.get(), rows, vocab, dp.get(), again.get(), nullptr), cudaSuccess);
  const std::vector<int32_t> got = ids.Download();
  EXPECT_EQ(got, again.Download()) << "same seeds must give the same ids";
  int mismatches = 0;
  for (int r = 0; r < rows; ++r) {
    std::vector<bool> kept;
    const int32_t want =
        ReferenceSample(logits.data() + static_cast<size_t>(r) * vocab, vocab, params[r], &kept);
    ASSERT_GE(got[r], 0);
    ASSERT_LT(got[r], vocab);
    EXPECT_TRUE(kept[got[r]]) << "row " << r << " chose " << got[r] << " outside the kept set";
    if (got[r] != want) ++mismatches;
  }
  // A draw may land within float rounding of a boundary between two ids; that is all.
  EXPECT_LE(mismatches, 2) << "of " << rows;
}

}  // namespace
}  // namespace mpa::cuda
