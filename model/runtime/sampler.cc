#include "model/runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "absl/strings/str_cat.h"

namespace mpa {

absl::Status SamplingParams::Validate() const {
  if (!(temperature >= 0.0f) || !std::isfinite(temperature)) {
    return absl::InvalidArgumentError(
        absl::StrCat("temperature must be a finite number >= 0 (got ", temperature, ")"));
  }
  if (top_k < 0)
    return absl::InvalidArgumentError(absl::StrCat("top_k must be >= 0 (got ", top_k, ")"));
  if (!(top_p > 0.0f && top_p <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("top_p must be in (0, 1] (got ", top_p, ")"));
  }
  return absl::OkStatus();
}

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {}

float LogProbOf(const float* logits, int vocab, int32_t id) {
  const float max = *std::max_element(logits, logits + vocab);
  double sum = 0.0;
  for (int i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(logits[i] - max));
  return static_cast<float>(logits[id] - max - std::log(sum));
}

int32_t Sampler::Sample(const float* logits, int vocab, float* logprob) {
  int32_t chosen = 0;
  // Descending logit order, lower id first on ties; NaN (a broken row) ranks below every number,
  // as on the device, and the comparison stays a strict weak order for the sort.
  auto by_logit = [&](int32_t a, int32_t b) {
    const float la = logits[a], lb = logits[b];
    if (std::isnan(la) || std::isnan(lb)) return !std::isnan(la) || (std::isnan(lb) && a < b);
    return la > lb || (la == lb && a < b);
  };
  if (params_.temperature == 0.0f) {
    for (int32_t i = 1; i < vocab; ++i) {
      if (by_logit(i, chosen)) chosen = i;
    }
  } else {
    // Candidates in rank order, cut by top-k, then top-p.
    std::vector<int32_t> order(vocab);
    std::iota(order.begin(), order.end(), 0);
    const int k = params_.top_k > 0 ? std::min(params_.top_k, vocab) : vocab;
    std::partial_sort(order.begin(), order.begin() + k, order.end(), by_logit);
    order.resize(k);
    // In double: 1/temperature overflows fp32 for temperatures below ~3e-39, and 0 * inf would
    // make the top candidate's weight NaN.
    const double inv_t = 1.0 / static_cast<double>(params_.temperature);
    const double max = logits[order[0]];
    std::vector<double> probs(k);
    double total = 0.0;
    for (int i = 0; i < k; ++i) {
      const double p = std::exp((static_cast<double>(logits[order[i]]) - max) * inv_t);
      probs[i] = std::isnan(p) ? 0.0 : p;  // NaN logits get no mass
      total += probs[i];
    }
    if (!(total > 0.0)) {  // every candidate NaN: fall back to the first in rank order
      probs.assign(k, 0.0);
      probs[0] = total = 1.0;
    }
    int keep = k;
    if (params_.top_p < 1.0f) {
      double cumulative = 0.0;
      for (int i = 0; i < k; ++i) {
        cumulative += probs[i] / total;
        if (cumulative >= params_.top_p) {
          keep = i + 1;
          break;
        }
      }
    }
    double kept_total = 0.0;
    for (int i = 0; i < keep; ++i) kept_total += probs[i];
    std::uniform_real_distribution<double> uniform(0.0, kept_total);
    const double r = uniform(rng_);
    double acc = 0.0;
    chosen = order[0];
    for (int i = 0; i < keep; ++i) {
      if (probs[i] == 0.0) continue;  // no mass: never drawn, even if r rounds up to the total
      acc += probs[i];
      chosen = order[i];
      if (r < acc) break;
    }
  }
  if (logprob != nullptr) *logprob = LogProbOf(logits, vocab, chosen);
  return chosen;
}

}  // namespace mpa
