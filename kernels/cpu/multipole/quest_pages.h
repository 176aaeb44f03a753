// The Quest baseline (Tang et al., 2024): keys are grouped in fixed pages of consecutive tokens;
// each page keeps the per-channel minimum and maximum of its keys, and a query ranks pages by the
// upper bound sum_i max(q_i * min_i, q_i * max_i) of any key's logit in the page.
#pragma once

#include <cstdint>

namespace mpa::cpu {

// Per-channel min/max of pages [first_page, end_page) of one KV head. Page p covers token
// positions [region_begin + p * page_tokens, min(region_begin + (p + 1) * page_tokens,
// region_end)).
struct QuestPageBoundsParams {
  const float* k_head = nullptr;  // [>= region_end, head_dim] keys after RoPE
  int region_begin = 0;
  int region_end = 0;
  int page_tokens = 16;
  int first_page = 0;
  int end_page = 0;
  int head_dim = 0;
  float* page_min = nullptr;  // [>= end_page, head_dim] out (rows first_page..end_page-1)
  float* page_max = nullptr;  // [>= end_page, head_dim] out
};
void QuestPageBounds(const QuestPageBoundsParams& p);

struct QuestPageScoreParams {
  const float* q = nullptr;         // [group_size, head_dim] query heads of the group after RoPE
  const float* page_min = nullptr;  // [num_pages, head_dim]
  const float* page_max = nullptr;  // [num_pages, head_dim]
  int num_pages = 0;
  int group_size = 0;
  int head_dim = 0;
  // [num_pages] out: the largest upper bound over the group's heads (a page matters if any head
  // of the group may attend to it); unscaled dot-product units.
  float* scores = nullptr;
};
void QuestPageScores(const QuestPageScoreParams& p);

}  // namespace mpa::cpu
