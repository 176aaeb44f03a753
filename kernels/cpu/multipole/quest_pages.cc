#include "kernels/cpu/multipole/quest_pages.h"

#include <algorithm>
#include <cmath>

namespace mpa::cpu {

void QuestPageBounds(const QuestPageBoundsParams& p) {
  const int d = p.head_dim;
  for (int page = p.first_page; page < p.end_page; ++page) {
    float* mn = p.page_min + int64_t{page} * d;
    float* mx = p.page_max + int64_t{page} * d;
    std::fill_n(mn, d, INFINITY);
    std::fill_n(mx, d, -INFINITY);
    const int begin = p.region_begin + page * p.page_tokens;
    const int end = std::min(begin + p.page_tokens, p.region_end);
    for (int t = begin; t < end; ++t) {
      const float* k = p.k_head + int64_t{t} * d;
      for (int i = 0; i < d; ++i) {
        mn[i] = std::min(mn[i], k[i]);
        mx[i] = std::max(mx[i], k[i]);
      }
    }
  }
}

void QuestPageScores(const QuestPageScoreParams& p) {
  const int d = p.head_dim;
  for (int page = 0; page < p.num_pages; ++page) {
    const float* mn = p.page_min + int64_t{page} * d;
    const float* mx = p.page_max + int64_t{page} * d;
    float best = -INFINITY;
    for (int h = 0; h < p.group_size; ++h) {
      const float* q = p.q + int64_t{h} * d;
      float bound = 0.0f;
      for (int i = 0; i < d; ++i) bound += std::max(q[i] * mn[i], q[i] * mx[i]);
      best = std::max(best, bound);
    }
    p.scores[page] = best;
  }
}

}  // namespace mpa::cpu
