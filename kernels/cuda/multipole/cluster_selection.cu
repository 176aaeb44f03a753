// Budgeted cluster selection on the GPU, and the list of rows the exact part reads. The CPU twins
// are kernels/cpu/multipole/centroid_lookup.cc (the scores) and cluster_selection.cc (the rule).
//
// One block of 1024 threads per (sequence, KV head), no sort:
//   1. rows of the sink and the recent window (positions through the block table);
//   2. the count-weighted softmax normaliser of each query head of the group, merged from the
//      lookup blocks' partials; score_c = sum_h 2^(s_hc - m_h) / sum_j N_j 2^(s_hj - m_h);
//   3. a 64-bit rank key per cluster (score bits + 1, then the complemented cluster id: a larger
//      key ranks first, lower id first on ties; NaN scores after every number; empty clusters are
//      key 0, never selected);
//   4. the rule of cluster_selection.h. Walking the ranking, the clusters before the first one
//      that does not fit (the first miss) are selected; a radix select on the keys, its histograms
//      weighted by token counts, finds the first miss without sorting. If that is the top cluster,
//      the boundary rule selects it alone. After it, every cluster that still fits in what is left
//      is taken in rank order: only clusters no larger than what is left can be, so they are
//      compacted and the largest-key one that fits is taken, again and again (each take spends a
//      token or more, so at most `left` rounds);
//   5. the selected clusters' slots, in cluster order, appended to the rows list.
#include <cmath>

#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/multipole/dispatch.cuh"
#include "kernels/cuda/multipole/multipole_decode.h"
#include "kernels/cuda/multipole/multipole_kernels.h"

namespace mpa::cuda::multipole {
namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr int kBins = 256;       // radix digit of 8 bits
constexpr int kHistBins = 2048;  // bins of the first pass over the score range

// Exclusive prefix sum over the block (every thread passes one value); returns this thread's
// offset and sets *total. scratch: kWarps ints. Starts and ends with a barrier.
__device__ int BlockExclusiveScan(int x, int* scratch, int* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int inclusive = x;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const int y = __shfl_up_sync(0xffffffffu, inclusive, off);
    if (lane >= off) inclusive += y;
  }
  __syncthreads();
  if (lane == 31) scratch[warp] = inclusive;
  __syncthreads();
  if (warp == 0) {
    int w = scratch[lane];
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
      const int y = __shfl_up_sync(0xffffffffu, w, off);
      if (lane >= off) w += y;
    }
    scratch[lane] = w;  // inclusive over warps
  }
  __syncthreads();
  const int before = (warp > 0 ? scratch[warp - 1] : 0) + inclusive - x;
  *total = scratch[kWarps - 1];
  __syncthreads();
  return before;
}

// The largest value over the block (every thread passes one); every thread gets it.
__device__ uint64_t BlockMaxKey(uint64_t x, uint64_t* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const uint64_t y = __shfl_xor_sync(0xffffffffu, x, off);
    x = y > x ? y : x;
  }
  __syncthreads();
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  x = scratch[lane];
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const uint64_t y = __shfl_xor_sync(0xffffffffu, x, off);
    x = y > x ? y : x;
  }
  return x;
}

__device__ __forceinline__ uint64_t RankKey(float score, int c, bool live) {
  if (!live) return 0;
  const uint32_t bits = isnan(score) ? 0u : __float_as_uint(score) + 1u;  // score >= 0
  return (static_cast<uint64_t>(bits) << 32) | static_cast<uint32_t>(~c);
}
__device__ __forceinline__ int ClusterOf(uint64_t key) {
  return static_cast<int>(~static_cast<uint32_t>(key));
}

// The approximation partial of a (sequence, KV head) that has none: exact-only, or no clusters.
template <int G>
__device__ void WriteNoApproximation(const StepArgs& a, int b, int kvh) {
  const int64_t first_row =
      (static_cast<int64_t>(b) * (a.exact_splits + 1) + a.exact_splits) * a.num_q_heads + kvh * G;
  for (int t = threadIdx.x; t < G * a.head_dim; t += blockDim.x) {
    a.partial_o[first_row * a.head_dim + t] = 0.0f;
    if (t % a.head_dim == 0) a.partial_lse[first_row + t / a.head_dim] = -INFINITY;
  }
}

template <int G>
__global__ void __launch_bounds__(kThreads) ClusterSelectionKernel(StepArgs a) {
  extern __shared__ __align__(16) unsigned char smem[];
  uint64_t* keys = reinterpret_cast<uint64_t*>(smem);                       // [max_clusters]
  int32_t* begin = reinterpret_cast<int32_t*>(keys + a.max_clusters);       // [max_clusters + 1]
  uint8_t* flags = reinterpret_cast<uint8_t*>(begin + a.max_clusters + 1);  // [max_clusters]
  __shared__ int scan_scratch[kWarps];
  __shared__ uint64_t max_scratch[kWarps];
  __shared__ float reduce_scratch[32];
  __shared__ unsigned long long bin_tokens[kBins];
  __shared__ int bin_keys[kBins];
  __shared__ long long shared_above;
  __shared__ int shared_digit, shared_unique, shared_bin;
  __shared__ uint64_t shared_key;
  // The selected clusters' value terms [G][head_dim] in step 6; the score histogram in step 4.
  __shared__ float corr_o[8 * 256 > kHistBins ? 8 * 256 : kHistBins];
  __shared__ float corr_l[8];  // and their weights [G]

  const int kvh = blockIdx.x, b = blockIdx.y;
  const int hb = b * a.num_kv_heads + kvh;
  const int tid = threadIdx.x;
  const int len = a.seq_lens[b];
  const int sink = min(a.sink_end[b], len);
  const int clustered_end = max(sink, min(a.clustered_end[b], len));
  const int num_clusters = a.num_clusters[hb];
  const int64_t budget = a.token_budget[b];
  int32_t* rows = a.rows + static_cast<int64_t>(hb) * a.max_seq_len;
  const int mask = a.page_size - 1;

  // 1. Sink and recent window.
  const int exact_positions = sink + (len - clustered_end);
  const int32_t* table = a.pages + static_cast<int64_t>(b) * a.max_pages;
  for (int t = tid; t < exact_positions; t += kThreads) {
    const int pos = t < sink ? t : clustered_end + (t - sink);
    rows[t] = (table[pos >> a.page_shift] * a.num_kv_heads + kvh) * a.page_size + (pos & mask);
  }

  for (int c = tid; c < a.max_clusters; c += kThreads) flags[c] = 0;
  float* scores = a.scores + static_cast<int64_t>(hb) * a.max_clusters;
  uint8_t* selected = a.selected + static_cast<int64_t>(hb) * a.max_clusters;
  if (num_clusters <= 0) {
    for (int c = tid; c < a.max_clusters; c += kThreads) {
      scores[c] = 0.0f;
      selected[c] = 0;
    }
    if (tid == 0) {
      a.row_counts[hb] = exact_positions;
      a.selected_tokens[hb] = 0;
      if (a.exact_tokens != nullptr) atomicAdd(&a.exact_tokens[b], exact_positions);
    }
    WriteNoApproximation<G>(a, b, kvh);
    return;
  }
  const int32_t* cluster_begin = a.cluster_begin[hb];
  for (int c = tid; c <= num_clusters; c += kThreads) begin[c] = cluster_begin[c];

  // 2. Normalisers from the lookup blocks' partials.
  const float* logits = a.logits2 + static_cast<int64_t>(hb) * G * a.max_clusters;
  const float* norms = a.norms + static_cast<int64_t>(hb) * G * a.lookup_blocks * 2;
  const int used_blocks = (num_clusters + kLookupClustersPerBlock - 1) / kLookupClustersPerBlock;
  float m[G], z[G], inv_z[G];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    float bm = -INFINITY, bz = 0.0f;
    if (tid < used_blocks) {
      bm = norms[(g * a.lookup_blocks + tid) * 2];
      bz = norms[(g * a.lookup_blocks + tid) * 2 + 1];
    }
    m[g] = detail::BlockMax(bm, reduce_scratch);
    z[g] = detail::BlockSum(m[g] != -INFINITY && bm != -INFINITY ? bz * exp2f(bm - m[g]) : 0.0f,
                            reduce_scratch);
    inv_z[g] = z[g] > 0.0f ? 1.0f / z[g] : 0.0f;
  }
  __syncthreads();  // begin[] is complete

  // 3. Scores and rank keys (one pass over the logits).
  long long total_tokens_local = 0;
  for (int c = tid; c < a.max_clusters; c += kThreads) {
    uint64_t key = 0;
    float score = 0.0f;
    if (c < num_clusters) {
      const int count = begin[c + 1] - begin[c];
      if (count > 0) {
#pragma unroll
        for (int g = 0; g < G; ++g) {
          if (m[g] != -INFINITY) score += exp2f(logits[g * a.max_clusters + c] - m[g]) * inv_z[g];
        }
        key = RankKey(score, c, true);
        total_tokens_local += count;
      }
    }
    scores[c] = score;
    keys[c] = key;
  }
  int total_tokens;
  BlockExclusiveScan(static_cast<int>(total_tokens_local), scan_scratch, &total_tokens);

  // 4. The rule.
  if (budget > 0 && total_tokens > 0) {
    if (total_tokens <= budget) {
      for (int c = tid; c < num_clusters; c += kThreads) flags[c] = keys[c] != 0;
    } else {
      // 4a. Tokens per bin of the keys' score bits, spread linearly over the range the live
      // clusters use (float bits of positive scores are close to a log scale, and the map is
      // monotone in the key): the first miss lies in the bin where the running total from the
      // top first passes the budget. Bins spread the keys, so the shared atomics rarely collide.
      unsigned lo_local = 0xffffffffu, hi_local = 0;
      for (int c = tid; c < num_clusters; c += kThreads) {
        const uint64_t key = keys[c];
        if (key == 0) continue;
        const unsigned u = static_cast<unsigned>(key >> 32);
        lo_local = min(lo_local, u);
        hi_local = max(hi_local, u);
      }
      const unsigned lo = ~static_cast<unsigned>(BlockMaxKey(~lo_local, max_scratch));
      const unsigned hi = static_cast<unsigned>(BlockMaxKey(hi_local, max_scratch));
      const uint64_t span = static_cast<uint64_t>(hi - lo) + 1;
      auto bin_of = [&](uint64_t key) {
        return static_cast<int>(
            (static_cast<uint64_t>(static_cast<unsigned>(key >> 32) - lo) * kHistBins) / span);
      };
      int* hist = reinterpret_cast<int*>(corr_o);  // step 6 reuses it
      for (int i = tid; i < kHistBins; i += kThreads) hist[i] = 0;
      __syncthreads();
      for (int c = tid; c < num_clusters; c += kThreads) {
        const uint64_t key = keys[c];
        if (key != 0) atomicAdd(&hist[bin_of(key)], begin[c + 1] - begin[c]);
      }
      __syncthreads();
      // Thread t owns bins kHistBins - 1 - t * per down; a scan from the top.
      constexpr int kPer = kHistBins / kThreads;
      int local = 0;
#pragma unroll
      for (int i = 0; i < kPer; ++i) local += hist[kHistBins - 1 - tid * kPer - i];
      int all;
      int run = BlockExclusiveScan(local, scan_scratch, &all);
      if (run <= budget && run + local > budget) {
#pragma unroll
        for (int i = 0; i < kPer; ++i) {
          const int bin = kHistBins - 1 - tid * kPer - i;
          if (run + hist[bin] > budget) {
            shared_bin = bin;
            shared_above = run;
            break;
          }
          run += hist[bin];
        }
      }
      __syncthreads();
      const int miss_bin = shared_bin;

      // 4b. Radix select of the first miss among the keys of that bin: the largest key K with
      // tokens(keys > K) + count(K) > budget. prefix/prefix_mask: the digits decided so far;
      // above: tokens of larger keys.
      uint64_t prefix = 0, prefix_mask = 0;
      long long above = shared_above;
      for (int shift = 56; shift >= 0; shift -= 8) {
        for (int i = tid; i < kBins; i += kThreads) {
          bin_tokens[i] = 0;
          bin_keys[i] = 0;
        }
        __syncthreads();
        for (int c = tid; c < num_clusters; c += kThreads) {
          const uint64_t key = keys[c];
          if (key == 0 || (key & prefix_mask) != prefix || bin_of(key) != miss_bin) continue;
          const int digit = static_cast<int>((key >> shift) & 0xff);
          atomicAdd(&bin_tokens[digit], static_cast<unsigned long long>(begin[c + 1] - begin[c]));
          atomicAdd(&bin_keys[digit], 1);
        }
        __syncthreads();
        if (tid < 32) {
          // Lane l owns bins 255 - 8l down to 248 - 8l; the first bin from the top where the
          // running total passes the budget is the one that holds the first miss.
          const int lane = tid;
          long long sum = 0;
#pragma unroll
          for (int i = 0; i < 8; ++i)
            sum += static_cast<long long>(bin_tokens[kBins - 1 - 8 * lane - i]);
          long long before = sum;
#pragma unroll
          for (int off = 1; off < 32; off <<= 1) {
            const long long y = __shfl_up_sync(0xffffffffu, before, off);
            if (lane >= off) before += y;
          }
          before -= sum;  // tokens of the bins above this lane's
          long long run = above + before;
          int digit = -1;
          long long run_at = 0;
          for (int i = 0; i < 8; ++i) {
            const int d = kBins - 1 - 8 * lane - i;
            const long long t = static_cast<long long>(bin_tokens[d]);
            if (digit < 0 && run + t > budget) {
              digit = d;
              run_at = run;
            }
            run += t;
          }
          const unsigned crossing = __ballot_sync(0xffffffffu, digit >= 0);
          if (lane == __ffs(crossing) - 1) {
            shared_above = run_at;
            shared_digit = digit;
            shared_unique = bin_keys[digit] == 1;
          }
        }
        __syncthreads();
        above = shared_above;
        prefix |= static_cast<uint64_t>(shared_digit) << shift;
        prefix_mask |= uint64_t{0xff} << shift;
        if (shared_unique) break;
      }
      // The first miss is the one key of the bin under the prefix.
      for (int c = tid; c < num_clusters; c += kThreads) {
        const uint64_t key = keys[c];
        if (key != 0 && (key & prefix_mask) == prefix && bin_of(key) == miss_bin) shared_key = key;
      }
      __syncthreads();
      const uint64_t miss = shared_key;
      if (above == 0) {
        // The top cluster alone exceeds the budget: selected alone (boundary rule).
        if (tid == 0) flags[ClusterOf(miss)] = 1;
      } else {
        long long left = budget - above;
        // 4c. The prefix; and the tail's candidates (smaller keys that fit in what is left)
        // compacted into the start of `keys` after every thread has read its own.
        uint64_t mine[kMaxClustersPerHead / kThreads];
        int held = 0;
        for (int c = tid; c < num_clusters; c += kThreads) {
          const uint64_t key = keys[c];
          if (key > miss) {
            flags[c] = 1;
          } else if (key != 0 && key < miss && begin[c + 1] - begin[c] <= left) {
            mine[held++] = key;
          }
        }
        int num_candidates;
        const int offset = BlockExclusiveScan(held, scan_scratch, &num_candidates);
        for (int i = 0; i < held; ++i) keys[offset + i] = mine[i];
        __syncthreads();
        // The walk in rank order takes every candidate that fits in what is left: the next one
        // taken is the largest key below the last taken that fits (one ranked between them did
        // not fit in more than is left now).
        uint64_t bound = miss;
        while (left > 0 && num_candidates > 0) {
          uint64_t best = 0;
          for (int i = tid; i < num_candidates; i += kThreads) {
            const uint64_t key = keys[i];
            if (key < bound && key > best &&
                begin[ClusterOf(key) + 1] - begin[ClusterOf(key)] <= left) {
              best = key;
            }
          }
          best = BlockMaxKey(best, max_scratch);
          if (best == 0) break;
          const int c = ClusterOf(best);
          left -= begin[c + 1] - begin[c];
          if (tid == 0) flags[c] = 1;
          bound = best;
        }
      }
    }
  }
  __syncthreads();

  // 5. The selected clusters' slots in cluster order: (cluster, first token) pairs of the
  // selected clusters, compacted into `keys`, then every token placed by a binary search.
  const int per = (num_clusters + kThreads - 1) / kThreads;
  const int c0 = min(num_clusters, tid * per), c1 = min(num_clusters, c0 + per);
  int my_clusters = 0, my_tokens = 0;
  for (int c = c0; c < c1; ++c) {
    if (flags[c]) {
      ++my_clusters;
      my_tokens += begin[c + 1] - begin[c];
    }
  }
  int num_selected, selected_total;
  const int cluster_offset = BlockExclusiveScan(my_clusters, scan_scratch, &num_selected);
  int token_offset = BlockExclusiveScan(my_tokens, scan_scratch, &selected_total);
  int32_t* sel_cluster = reinterpret_cast<int32_t*>(keys);
  int32_t* sel_first = sel_cluster + num_selected;
  for (int c = c0, i = cluster_offset; c < c1; ++c) {
    if (flags[c]) {
      sel_cluster[i] = c;
      sel_first[i] = token_offset;
      token_offset += begin[c + 1] - begin[c];
      ++i;
    }
  }
  for (int c = tid; c < a.max_clusters; c += kThreads) selected[c] = flags[c];
  __syncthreads();
  const int32_t* ctable = a.clustered_pages + static_cast<int64_t>(b) * a.max_clustered_pages;
  const int slot_base = a.slots_after_sink ? a.sink_end[b] : 0;  // in place: rows of the region
  for (int t = tid; t < selected_total; t += kThreads) {
    int lo = 0, hi = num_selected - 1;  // the last selected cluster starting at or before t
    while (lo < hi) {
      const int mid = (lo + hi + 1) >> 1;
      if (sel_first[mid] <= t) {
        lo = mid;
      } else {
        hi = mid - 1;
      }
    }
    const int s = begin[sel_cluster[lo]] + (t - sel_first[lo]) + slot_base;
    rows[exact_positions + t] =
        (ctable[s >> a.page_shift] * a.num_kv_heads + kvh) * a.page_size + (s & mask);
  }
  if (tid == 0) {
    a.row_counts[hb] = exact_positions + selected_total;
    a.selected_tokens[hb] = selected_total;
    if (a.exact_tokens != nullptr) {
      atomicAdd(&a.exact_tokens[b],
                static_cast<unsigned long long>(exact_positions) + selected_total);
    }
  }

  // 6. The approximation partial: the lookup summed N_c 2^(s_c - m_b) Vc_c over every cluster of
  // its block; merged here to the group max and less the selected clusters' terms, it is the sum
  // over the clusters not selected. The selected terms are the large ones, so the difference
  // loses bits against the whole sum, not against itself: its error is ~2^-24 of the whole sum,
  // i.e. of the output, and a difference under 2^-20 of the whole (all but nothing selected) is
  // taken as no approximation at all.
  if (!a.approximate[b]) {
    WriteNoApproximation<G>(a, b, kvh);
    return;
  }
  const int hd = a.head_dim;
  const int vecs = hd >> 3;
  const int lanes = vecs <= 1    ? 1
                    : vecs <= 2  ? 2
                    : vecs <= 4  ? 4
                    : vecs <= 8  ? 8
                    : vecs <= 16 ? 16
                                 : 32;
  const int slot = tid / lanes, lane = tid % lanes, slots_per_block = kThreads / lanes;
  for (int i = tid; i < G * hd; i += kThreads) corr_o[i] = 0.0f;
  if (tid < G) corr_l[tid] = 0.0f;
  __syncthreads();
  const bf16* value_centroids = a.value_centroids[hb];
  constexpr int kGc = G < 2 ? G : 2;  // query heads per pass (registers: 8 accumulators each)
#pragma unroll
  for (int g0 = 0; g0 < G; g0 += kGc) {
    float acc[kGc][8], acc_l[kGc];
#pragma unroll
    for (int g = 0; g < kGc; ++g) {
      acc_l[g] = 0.0f;
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[g][i] = 0.0f;
    }
    for (int i = slot; i < num_selected; i += 2 * slots_per_block) {
      // Two selected clusters per step, both loads issued first.
      const int j = i + slots_per_block;
      const int c0 = sel_cluster[i], c1 = j < num_selected ? sel_cluster[j] : -1;
      const uint4 r0 = lane < vecs
                           ? __ldg(reinterpret_cast<const uint4*>(
                                 value_centroids + static_cast<int64_t>(c0) * hd + lane * 8))
                           : make_uint4(0, 0, 0, 0);
      const uint4 r1 = lane < vecs && c1 >= 0
                           ? __ldg(reinterpret_cast<const uint4*>(
                                 value_centroids + static_cast<int64_t>(c1) * hd + lane * 8))
                           : make_uint4(0, 0, 0, 0);
      float v0[8], v1[8];
      detail::Bf16x8ToFloat(r0, v0);
      detail::Bf16x8ToFloat(r1, v1);
      const float n0 = static_cast<float>(begin[c0 + 1] - begin[c0]);
      const float n1 = c1 >= 0 ? static_cast<float>(begin[c1 + 1] - begin[c1]) : 0.0f;
#pragma unroll
      for (int g = 0; g < kGc; ++g) {
        const float* lg = logits + (g0 + g) * a.max_clusters;
        const float w0 = n0 * exp2f(lg[c0] - m[g0 + g]);
        const float w1 = c1 >= 0 ? n1 * exp2f(lg[c1] - m[g0 + g]) : 0.0f;
        acc_l[g] += w0 + w1;
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[g][e] = fmaf(w0, v0[e], fmaf(w1, v1[e], acc[g][e]));
      }
    }
    // Lanes that hold the same dimensions within a warp, then one atomic per warp and value.
#pragma unroll
    for (int off = 16; off >= 1; off >>= 1) {
      if (off < lanes) break;
#pragma unroll
      for (int g = 0; g < kGc; ++g) {
        acc_l[g] += __shfl_xor_sync(0xffffffffu, acc_l[g], off);
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[g][e] += __shfl_xor_sync(0xffffffffu, acc[g][e], off);
      }
    }
    if ((tid & 31) < lanes) {
#pragma unroll
      for (int g = 0; g < kGc; ++g) {
        if (lane < vecs) {
#pragma unroll
          for (int e = 0; e < 8; ++e) atomicAdd(&corr_o[(g0 + g) * hd + lane * 8 + e], acc[g][e]);
        }
        if (lane == 0) atomicAdd(&corr_l[g0 + g], acc_l[g]);
      }
    }
  }
  __syncthreads();
  const float* block_o = a.approx_o + static_cast<int64_t>(hb) * G * a.lookup_blocks * hd;
  __shared__ float group_m[8], rest_l[8];
  if (tid == 0) {
#pragma unroll
    for (int g = 0; g < G; ++g) {
      group_m[g] = m[g];
      const float l = z[g] - corr_l[g];
      rest_l[g] = m[g] != -INFINITY && l > z[g] * 0x1p-20f ? l : 0.0f;
    }
  }
  __syncthreads();
  const int64_t first_row =
      (static_cast<int64_t>(b) * (a.exact_splits + 1) + a.exact_splits) * a.num_q_heads + kvh * G;
  for (int t = tid; t < G * hd; t += kThreads) {
    const int g = t / hd, d = t % hd;
    const float l = rest_l[g];
    float total = 0.0f;
    if (l > 0.0f) {
      for (int blk = 0; blk < used_blocks; ++blk) {
        const float bm = norms[(g * a.lookup_blocks + blk) * 2];
        if (bm != -INFINITY) {
          total = fmaf(block_o[(static_cast<int64_t>(g) * a.lookup_blocks + blk) * hd + d],
                       exp2f(bm - group_m[g]), total);
        }
      }
    }
    a.partial_o[(first_row + g) * hd + d] = l > 0.0f ? (total - corr_o[t]) / l : 0.0f;
    if (d == 0) a.partial_lse[first_row + g] = l > 0.0f ? group_m[g] + log2f(l) : -INFINITY;
  }
}

template <int G>
cudaError_t LaunchForGroup(const StepArgs& a, cudaStream_t stream) {
  // Once, for the largest selection (a host call that stream capture allows, but once is enough).
  static const cudaError_t attr =
      cudaFuncSetAttribute(ClusterSelectionKernel<G>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(SelectionSharedBytes(kMaxClustersPerHead)));
  if (attr != cudaSuccess) return attr;
  const size_t bytes = SelectionSharedBytes(a.max_clusters);
  ClusterSelectionKernel<G><<<dim3(a.num_kv_heads, a.batch), kThreads, bytes, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

size_t SelectionSharedBytes(int max_clusters) {
  const size_t keys = sizeof(uint64_t) * max_clusters;
  const size_t begin = sizeof(int32_t) * (static_cast<size_t>(max_clusters) + 1);
  return keys + begin + static_cast<size_t>(max_clusters);
}

cudaError_t LaunchClusterSelection(const StepArgs& a, cudaStream_t stream) {
  return DispatchGroup(a.num_q_heads / a.num_kv_heads,
                       [&](auto g) { return LaunchForGroup<g()>(a, stream); });
}

}  // namespace mpa::cuda::multipole
