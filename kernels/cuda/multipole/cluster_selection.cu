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
constexpr int kPer = kMaxClustersPerHead / kThreads;  // clusters per thread at most
constexpr int kBins = 256;                            // radix digit of 8 bits
constexpr int kHistBins = 2048;  // bins of the first pass over the score range (at most)
constexpr int kBinList = 1024;   // keys of the first miss's bin searched directly (at most)

// Rank keys: Order(score) << 32 | (kIdMax - cluster) << kCountBits | min(count, kCountMax), where
// Order maps floats to unsigned integers in the same order (sign flipped for positives, every bit
// for negatives; -0 as +0) and NaN to 0. A larger key ranks first; the lower cluster id first on
// equal scores (ids are unique, so the count bits never decide the order); NaN scores after every
// number; empty clusters are key 0, never selected. Multipole scores are >= 0, Quest's bounds any
// sign. The count rides along so that the passes after the scores read no cluster bounds; a count
// too large for its bits is looked up.
constexpr int kIdBits = 14;
static_assert(kMaxClustersPerHead == 1 << kIdBits, "cluster ids fill the id bits");
constexpr int kCountBits = 32 - kIdBits;
constexpr uint32_t kIdMax = (1u << kIdBits) - 1;
constexpr uint32_t kCountMax = (1u << kCountBits) - 1;

__device__ __forceinline__ uint32_t Order(float score) {
  if (isnan(score)) return 0u;
  const uint32_t bits = __float_as_uint(score == 0.0f ? 0.0f : score);
  return (bits & 0x80000000u) ? ~bits : bits | 0x80000000u;  // -inf: 0x007fffff > 0
}

__device__ __forceinline__ uint64_t RankKey(float score, int c, int count) {
  if (count <= 0) return 0;
  const uint32_t n = count < static_cast<int>(kCountMax) ? static_cast<uint32_t>(count) : kCountMax;
  return (static_cast<uint64_t>(Order(score)) << 32) |
         ((kIdMax - static_cast<uint32_t>(c)) << kCountBits) | n;
}
__device__ __forceinline__ int ClusterOf(uint64_t key) {
  return static_cast<int>(kIdMax - ((static_cast<uint32_t>(key) >> kCountBits) & kIdMax));
}
__device__ __forceinline__ int CountOf(uint64_t key, const int32_t* begin) {
  const uint32_t n = static_cast<uint32_t>(key) & kCountMax;
  if (n < kCountMax) return static_cast<int>(n);
  const int c = ClusterOf(key);
  return begin[c + 1] - begin[c];
}

// Exclusive prefix sum over the block (every thread passes one value); returns this thread's
// offset and sets *total. scratch: kWarps values. Starts and ends with a barrier.
template <typename T>
__device__ T BlockExclusiveScan(T x, T* scratch, T* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  T inclusive = x;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const T y = __shfl_up_sync(0xffffffffu, inclusive, off);
    if (lane >= off) inclusive += y;
  }
  __syncthreads();
  if (lane == 31) scratch[warp] = inclusive;
  __syncthreads();
  T w = scratch[lane];
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const T y = __shfl_up_sync(0xffffffffu, w, off);
    if (lane >= off) w += y;
  }
  // w: inclusive over warps up to `lane`; this thread wants the warps before its own.
  const T before_warp = __shfl_sync(0xffffffffu, w, warp > 0 ? warp - 1 : 0);
  *total = __shfl_sync(0xffffffffu, w, kWarps - 1);
  __syncthreads();
  return (warp > 0 ? before_warp : T{0}) + inclusive - x;
}

__device__ __forceinline__ uint64_t WarpMaxKey(uint64_t x) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const uint64_t y = __shfl_xor_sync(0xffffffffu, x, off);
    x = y > x ? y : x;
  }
  return x;
}

// The largest value over the block (every thread passes one); every thread gets it. One barrier:
// callers alternate between two scratch buffers of kWarps values, so a buffer is written again
// only after every thread has passed the barrier that follows its last read.
__device__ __forceinline__ uint64_t BlockMaxKey(uint64_t x, uint64_t* scratch) {
  x = WarpMaxKey(x);
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = x;
  __syncthreads();
  return WarpMaxKey(scratch[threadIdx.x & 31]);
}

// Phase marks of the benchmark's trace (block (0, 0) only; a.trace null: none).
__device__ __forceinline__ void Mark(const StepArgs& a, int i, long long value) {
  if (a.trace != nullptr && blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0) {
    a.trace[i] = value;
  }
}
// With a trace, every thread of the block reaches the mark before the clock is read, so a phase's
// time is that of its slowest thread (every call site is reached by the whole block).
__device__ __forceinline__ void MarkTime(const StepArgs& a, int i) {
  if (a.trace == nullptr) return;
  __syncthreads();
  if (blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0) a.trace[i] = clock64();
}

// The approximation partial of a (sequence, KV head) that has none: exact-only, or no clusters.
template <int G>
__device__ void WriteNoApproximation(const StepArgs& a, int b, int kvh) {
  const int64_t first_row =
      (static_cast<int64_t>(b) * a.partial_slots + a.approx_slot) * a.num_q_heads + kvh * G;
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
  __shared__ long long scan_scratch[kWarps];
  __shared__ uint64_t max_scratch[2][kWarps];
  __shared__ float red_m[G][kWarps], red_z[G][kWarps];
  __shared__ unsigned long long bin_tokens[kBins];
  __shared__ int bin_keys[kBins];
  __shared__ long long shared_above;
  __shared__ int shared_digit, shared_unique, shared_bin, bin_count;
  __shared__ unsigned shared_lo, shared_hi;
  __shared__ long long shared_total;
  __shared__ uint64_t shared_key;
  // Step 4: the score histogram, then the keys of the first miss's bin; step 6: one half of the
  // merge's sums [G][head_dim].
  __shared__ __align__(16) float corr_o[8 * 256 > kHistBins ? 8 * 256 : kHistBins];
  __shared__ float group_m[8], group_z[8], rest_l[8];  // the group's softmax max and normaliser
  static_assert(kBinList * sizeof(uint64_t) <= sizeof(corr_o), "the bin list reuses corr_o");

  const int kvh = blockIdx.x, b = blockIdx.y;
  const int hb = b * a.num_kv_heads + kvh;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int len = a.seq_lens[b];
  const int sink = min(a.sink_end[b], len);
  const int clustered_end = max(sink, min(a.clustered_end[b], len));
  const int num_clusters = a.num_clusters[hb];
  // The coarse pass of two levels selects (expands) up to ceil(expansion x budget) tokens, as the
  // CPU reference computes it (multipole_attention.cc).
  const bool coarse = a.expansion > 0.0f;
  int64_t budget = a.token_budget[b];
  if (coarse) {
    budget = a.coarse_budget != nullptr
                 ? a.coarse_budget[b]
                 : static_cast<int64_t>(
                       ceil(static_cast<double>(budget) * static_cast<double>(a.expansion)));
  }
  int32_t* rows = a.rows + static_cast<int64_t>(hb) * a.max_seq_len;
  const int mask = a.page_size - 1;
  MarkTime(a, 0);
  if (coarse && !TwoLevel(a, b)) {
    // A one-level (or Quest) sequence of a two-level call: its fine pass reads its own clusters.
    if (tid == 0) {
      a.list_count[hb] = a.fine_num_clusters[hb];
      a.selected_tokens[hb] = 0;
    }
    WriteNoApproximation<G>(a, b, kvh);
    return;
  }

  // 1. Sink and recent window.
  const int exact_positions = coarse ? 0 : sink + (len - clustered_end);
  const int32_t* table = a.pages + static_cast<int64_t>(b) * a.max_pages;
  for (int t = tid; t < exact_positions; t += kThreads) {
    const int pos = t < sink ? t : clustered_end + (t - sink);
    rows[t] = (table[pos >> a.page_shift] * a.num_kv_heads + kvh) * a.page_size + (pos & mask);
  }

  float* scores = a.scores + static_cast<int64_t>(hb) * a.max_clusters;
  uint8_t* selected = a.selected + static_cast<int64_t>(hb) * a.max_clusters;
  if (num_clusters <= 0) {
    for (int c = tid; c < a.max_clusters; c += kThreads) {
      scores[c] = 0.0f;
      selected[c] = 0;
    }
    if (tid == 0) {
      a.selected_tokens[hb] = 0;
      if (coarse) {  // an empty list: the fine pass attends to the sink and window alone
        a.list_count[hb] = 0;
        a.list_begin[static_cast<int64_t>(hb) * (a.max_fine + 1)] = 0;
      } else {
        a.row_counts[hb] = exact_positions;
        if (a.exact_tokens != nullptr) atomicAdd(&a.exact_tokens[b], exact_positions);
      }
    }
    WriteNoApproximation<G>(a, b, kvh);
    return;
  }
  // The cluster bounds (all loads issued before any store), the flags, the histogram.
  {
    const int32_t* cluster_begin = ClusterBounds(a, b, hb);
    int32_t v[kPer + 1];
#pragma unroll
    for (int i = 0; i <= kPer; ++i) {
      const int c = tid + i * kThreads;
      v[i] = c <= num_clusters ? __ldg(cluster_begin + c) : 0;
    }
#pragma unroll
    for (int i = 0; i <= kPer; ++i) {
      const int c = tid + i * kThreads;
      if (c <= num_clusters) begin[c] = v[i];
    }
  }
  for (int c = tid; c < a.max_clusters; c += kThreads) flags[c] = 0;
  int* hist = reinterpret_cast<int*>(corr_o);
  for (int i = tid; i < kHistBins; i += kThreads) hist[i] = 0;
  if (tid == 0) {
    shared_lo = 0xffffffffu;
    shared_hi = 0;
    shared_total = 0;
    bin_count = 0;
  }

  // Everything above reads what was there before the lookup began (the cluster bounds, the
  // step's metadata); from here on, the lookup's results. Launched as a programmatic dependent,
  // this block may have started while the lookup ran: wait for it to end (a no-op otherwise).
  detail::WaitForPreviousGrid();

  // 2. Normalisers from the lookup blocks' partials (one reduction for every query head).
  const float* logits = a.logits2 + static_cast<int64_t>(hb) * G * a.max_clusters;
  const float* norms = a.norms + static_cast<int64_t>(hb) * G * a.lookup_blocks * 2;
  const int used_blocks = (num_clusters + kLookupClustersPerBlock - 1) / kLookupClustersPerBlock;
  // Quest: the scores are the pages' bounds, written by the Quest launch; no normalisers.
  const bool quest = IsQuest(a, b);
  float m[G], z[G], inv_z[G];
  if (quest) {
#pragma unroll
    for (int g = 0; g < G; ++g) {
      m[g] = -INFINITY;
      z[g] = inv_z[g] = 0.0f;
    }
  } else {
    float bm[G], bz[G];
#pragma unroll
    for (int g = 0; g < G; ++g) {
      bm[g] = tid < used_blocks ? norms[(g * a.lookup_blocks + tid) * 2] : -INFINITY;
      bz[g] = tid < used_blocks ? norms[(g * a.lookup_blocks + tid) * 2 + 1] : 0.0f;
      const float wm = detail::WarpMax(bm[g]);
      if (lane == 0) red_m[g][warp] = wm;
    }
    __syncthreads();
#pragma unroll
    for (int g = 0; g < G; ++g) {
      m[g] = detail::WarpMax(red_m[g][lane]);
      const float wz = detail::WarpSum(
          m[g] != -INFINITY && bm[g] != -INFINITY ? bz[g] * exp2f(bm[g] - m[g]) : 0.0f);
      if (lane == 0) red_z[g][warp] = wz;
    }
    __syncthreads();
#pragma unroll
    for (int g = 0; g < G; ++g) {
      z[g] = detail::WarpSum(red_z[g][lane]);
      inv_z[g] = z[g] > 0.0f ? 1.0f / z[g] : 0.0f;
    }
    // Kept in shared memory for the approximation (registers are scarce at 1024 threads).
    if (tid == 0) {
#pragma unroll
      for (int g = 0; g < G; ++g) {
        group_m[g] = m[g];
        group_z[g] = z[g];
      }
    }
  }
  MarkTime(a, 1);

  // 3. Scores and rank keys (one pass over the logits, loads of four clusters in flight), with
  // the live clusters' token total and the range of their score bits. The fine pass of two levels
  // stops at its list's end (its capacity is far above its use).
  const int scan_end = ListedClusters(a, b) ? num_clusters : a.max_clusters;
  {
    long long tokens_local = 0;
    unsigned lo_local = 0xffffffffu, hi_local = 0;
#pragma unroll 4
    for (int i = 0; i < kPer; ++i) {
      const int c = tid + i * kThreads;
      if (c >= scan_end) break;
      float lg[G];
#pragma unroll
      for (int g = 0; g < G; ++g) lg[g] = quest ? 0.0f : __ldcg(logits + g * a.max_clusters + c);
      const int count = c < num_clusters ? begin[c + 1] - begin[c] : 0;
      float score = 0.0f;
      uint64_t key = 0;
      if (count > 0) {
        if (quest) {
          score = __ldcg(scores + c);
        } else {
#pragma unroll
          for (int g = 0; g < G; ++g) {
            if (m[g] != -INFINITY) score += exp2f(lg[g] - m[g]) * inv_z[g];
          }
        }
        key = RankKey(score, c, count);
        tokens_local += count;
        const unsigned u = static_cast<unsigned>(key >> 32);
        lo_local = min(lo_local, u);
        hi_local = max(hi_local, u);
      }
      if (!quest || count <= 0) scores[c] = score;
      keys[c] = key;
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      tokens_local += __shfl_xor_sync(0xffffffffu, tokens_local, off);
      lo_local = min(lo_local, __shfl_xor_sync(0xffffffffu, lo_local, off));
      hi_local = max(hi_local, __shfl_xor_sync(0xffffffffu, hi_local, off));
    }
    if (lane == 0 && tokens_local > 0) {
      atomicAdd(reinterpret_cast<unsigned long long*>(&shared_total),
                static_cast<unsigned long long>(tokens_local));
      atomicMin(&shared_lo, lo_local);
      atomicMax(&shared_hi, hi_local);
    }
  }
  __syncthreads();
  const long long total_tokens = shared_total;
  MarkTime(a, 2);

  // 4. The rule.
  if (budget > 0 && total_tokens > 0) {
    if (total_tokens <= budget) {
      for (int c = tid; c < num_clusters; c += kThreads) flags[c] = keys[c] != 0;
    } else {
      // 4a. Tokens per bin of the keys' score bits, spread linearly over the range the live
      // clusters use (float bits of positive scores are close to a log scale, and the map is
      // monotone in the key): the first miss lies in the bin where the running total from the
      // top first passes the budget. Bins spread the keys, so the shared atomics rarely collide.
      const unsigned lo = shared_lo;
      const unsigned span_bits = 32 - __clz(shared_hi - lo);  // bits of the largest offset
      const int bin_shift = span_bits > 11 ? static_cast<int>(span_bits) - 11 : 0;
      auto bin_of = [&](uint64_t key) {
        return static_cast<int>((static_cast<unsigned>(key >> 32) - lo) >> bin_shift);
      };
      for (int c = tid; c < num_clusters; c += kThreads) {
        const uint64_t key = keys[c];
        if (key != 0) atomicAdd(&hist[bin_of(key)], CountOf(key, begin));
      }
      __syncthreads();
      // Thread t owns bins kHistBins - 1 - t * per down; a scan from the top.
      constexpr int kHistPer = kHistBins / kThreads;
      long long local = 0;
#pragma unroll
      for (int i = 0; i < kHistPer; ++i) local += hist[kHistBins - 1 - tid * kHistPer - i];
      long long all;
      long long run = BlockExclusiveScan(local, scan_scratch, &all);
      if (run <= budget && run + local > budget) {
#pragma unroll
        for (int i = 0; i < kHistPer; ++i) {
          const int bin = kHistBins - 1 - tid * kHistPer - i;
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
      long long above = shared_above;
      MarkTime(a, 3);

      // 4b. The first miss: the key K of that bin with above + tokens(bin keys > K) <= budget <
      // that + count(K). The bin's keys are listed (the histogram is no longer needed) and each
      // thread tests one against the others; a bin with more keys than the list holds (scores
      // that all but tie) is narrowed by a radix select instead.
      uint64_t* bin_list = reinterpret_cast<uint64_t*>(corr_o);
      for (int c = tid; c < num_clusters; c += kThreads) {
        const uint64_t key = keys[c];
        if (key != 0 && bin_of(key) == miss_bin) {
          const int i = atomicAdd(&bin_count, 1);
          if (i < kBinList) bin_list[i] = key;
        }
      }
      __syncthreads();
      const int listed = bin_count;
      Mark(a, 16, listed);
      if (listed <= kBinList) {
        if (tid < listed) {
          const uint64_t key = bin_list[tid];
          long long larger = 0;
          for (int j = 0; j < listed; ++j) {
            const uint64_t other = bin_list[j];
            if (other > key) larger += CountOf(other, begin);
          }
          const long long before = above + larger;
          if (before <= budget && before + CountOf(key, begin) > budget) {
            shared_key = key;
            shared_above = before;
          }
        }
      } else {
        // Radix select among the keys of the bin: the largest key K with tokens(keys > K) +
        // count(K) > budget. prefix/prefix_mask: the digits decided so far; above: tokens of
        // larger keys.
        uint64_t prefix = 0, prefix_mask = 0;
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
            atomicAdd(&bin_tokens[digit], static_cast<unsigned long long>(CountOf(key, begin)));
            atomicAdd(&bin_keys[digit], 1);
          }
          __syncthreads();
          if (tid < 32) {
            // Lane l owns bins 255 - 8l down to 248 - 8l; the first bin from the top where the
            // running total passes the budget is the one that holds the first miss.
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
            long long r = above + before;
            int digit = -1;
            long long run_at = 0;
            for (int i = 0; i < 8; ++i) {
              const int d = kBins - 1 - 8 * lane - i;
              const long long t = static_cast<long long>(bin_tokens[d]);
              if (digit < 0 && r + t > budget) {
                digit = d;
                run_at = r;
              }
              r += t;
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
          if (key != 0 && (key & prefix_mask) == prefix && bin_of(key) == miss_bin) {
            shared_key = key;
          }
        }
      }
      __syncthreads();
      const uint64_t miss = shared_key;
      above = shared_above;
      MarkTime(a, 4);
      if (above == 0) {
        // The top cluster alone exceeds the budget: selected alone (boundary rule).
        if (tid == 0) flags[ClusterOf(miss)] = 1;
      } else {
        long long left = budget - above;
        // 4c. The prefix; and the largest tail candidate (a smaller key that fits in what is
        // left), the first taken.
        uint64_t best = 0;
        int held = 0;
#pragma unroll 4
        for (int i = 0; i < kPer; ++i) {
          const int c = tid + i * kThreads;
          if (c >= num_clusters) break;
          const uint64_t key = keys[c];
          if (key > miss) {
            flags[c] = 1;
          } else if (key != 0 && key < miss && CountOf(key, begin) <= left) {
            ++held;
            best = key > best ? key : best;
          }
        }
        if (a.trace != nullptr) {  // the benchmark's count of candidates
          held += __shfl_xor_sync(0xffffffffu, held, 16);
          held += __shfl_xor_sync(0xffffffffu, held, 8);
          held += __shfl_xor_sync(0xffffffffu, held, 4);
          held += __shfl_xor_sync(0xffffffffu, held, 2);
          held += __shfl_xor_sync(0xffffffffu, held, 1);
          if (lane == 0) atomicAdd(&bin_count, held);  // bin_count is free again
        }
        int buffer = 0;
        best = BlockMaxKey(best, max_scratch[buffer]);
        MarkTime(a, 9);
        int rounds = 0;
        // The walk in rank order takes every candidate that fits in what is left: the next one
        // taken is the largest key below the last taken that fits (one ranked between them did
        // not fit in more than is left now). Each round is one pass over the keys in shared
        // memory and one barrier.
        while (best != 0) {
          ++rounds;
          const int c = ClusterOf(best);
          left -= CountOf(best, begin);
          if (tid == 0) flags[c] = 1;
          if (left <= 0) break;
          const uint64_t bound = best;
          best = 0;
#pragma unroll 4
          for (int i = 0; i < kPer; ++i) {
            const int cc = tid + i * kThreads;
            if (cc >= num_clusters) break;
            const uint64_t key = keys[cc];
            if (key < bound && key > best && CountOf(key, begin) <= left) best = key;
          }
          buffer ^= 1;
          best = BlockMaxKey(best, max_scratch[buffer]);
        }
        Mark(a, 17, rounds);
        Mark(a, 18, bin_count - listed);
      }
    }
  }
  __syncthreads();
  MarkTime(a, 5);

  // 5. The selected clusters' slots in cluster order: (cluster, first token) pairs of the
  // selected clusters, compacted into `keys`, then every token placed by a binary search. One
  // scan carries both counts (clusters in the high 24 bits, tokens in the low 40).
  const int per = (num_clusters + kThreads - 1) / kThreads;
  const int c0 = min(num_clusters, tid * per), c1 = min(num_clusters, c0 + per);
  long long my_clusters = 0, my_tokens = 0;
  for (int c = c0; c < c1; ++c) {
    if (flags[c]) {
      ++my_clusters;
      my_tokens += begin[c + 1] - begin[c];
    }
  }
  constexpr int kTokenBits = 40;
  long long both_total;
  const long long both =
      BlockExclusiveScan((my_clusters << kTokenBits) | my_tokens, scan_scratch, &both_total);
  const int num_selected = static_cast<int>(both_total >> kTokenBits);
  const int selected_total = static_cast<int>(both_total & ((1ll << kTokenBits) - 1));
  int cluster_offset = static_cast<int>(both >> kTokenBits);
  int token_offset = static_cast<int>(both & ((1ll << kTokenBits) - 1));
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
  for (int c = tid; c < scan_end; c += kThreads) selected[c] = flags[c];
  if (coarse) {
    // 5'. The coarse pass lists the expanded clusters' fine clusters for the fine pass, in
    // cluster order: entry i is fine cluster list_ids[i], its tokens numbered from list_begin[i].
    const int32_t* fine_of = a.fine_of_coarse[hb];
    const int32_t* fine_begin = a.fine_slot_begin[hb];
    int my_entries = 0;
    for (int c = c0; c < c1; ++c) {
      if (flags[c]) my_entries += __ldg(fine_of + c + 1) - __ldg(fine_of + c);
    }
    long long entries_total;
    int entry = static_cast<int>(
        BlockExclusiveScan(static_cast<long long>(my_entries), scan_scratch, &entries_total));
    int32_t* ids = a.list_ids + static_cast<int64_t>(hb) * a.max_fine;
    int32_t* list_begin = a.list_begin + static_cast<int64_t>(hb) * (a.max_fine + 1);
    int tokens = static_cast<int>(both & ((1ll << kTokenBits) - 1));
    for (int c = c0; c < c1; ++c) {
      if (!flags[c]) continue;
      const int f1 = __ldg(fine_of + c + 1);
      for (int f = __ldg(fine_of + c); f < f1; ++f, ++entry) {
        if (entry < a.max_fine) {
          ids[entry] = f;
          list_begin[entry] = tokens + (__ldg(fine_begin + f) - begin[c]);
        }
      }
      tokens += begin[c + 1] - begin[c];
    }
    if (tid == 0) {
      const int listed = static_cast<int>(min(entries_total, static_cast<long long>(a.max_fine)));
      list_begin[listed] = selected_total;
      a.list_count[hb] = listed;
      a.selected_tokens[hb] = selected_total;
    }
  }
  __syncthreads();
  MarkTime(a, 11);
  const int32_t* ctable = a.clustered_pages + static_cast<int64_t>(b) * a.max_clustered_pages;
  const int slot_base = a.slots_after_sink ? a.sink_end[b] : 0;  // in place: rows of the region
  // The first slot of cluster c (the fine pass: of its list entry's fine cluster).
  const int32_t* level_begin = a.cluster_begin[hb];
  auto slot_start = [&](int c) {
    return ListedClusters(a, b) ? __ldg(level_begin + CentroidRow(a, b, hb, c)) : begin[c];
  };
  if (!coarse) {
    // Each thread writes a contiguous run of tokens: one binary search for its first token's
    // cluster, then a walk; the page-table loads of eight tokens are issued together.
    const int run = (selected_total + kThreads - 1) / kThreads;
    const int t0 = min(selected_total, tid * run), t1 = min(selected_total, t0 + run);
    int k = 0;
    if (t0 < t1) {
      int lo = 0, hi = num_selected - 1;  // the last selected cluster starting at or before t0
      while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (sel_first[mid] <= t0) {
          lo = mid;
        } else {
          hi = mid - 1;
        }
      }
      k = lo;
    }
    int next_first = k + 1 < num_selected ? sel_first[k + 1] : selected_total;
    int s = t0 < t1 ? slot_start(sel_cluster[k]) + (t0 - sel_first[k]) + slot_base : 0;
    for (int t = t0; t < t1; t += 8) {
      int slots[8];
#pragma unroll
      for (int u = 0; u < 8; ++u) {
        if (t + u == next_first && t + u < t1) {
          ++k;
          next_first = k + 1 < num_selected ? sel_first[k + 1] : selected_total;
          s = slot_start(sel_cluster[k]) + slot_base;
        }
        slots[u] = s++;
      }
      int32_t page[8];
#pragma unroll
      for (int u = 0; u < 8; ++u)
        page[u] = t + u < t1 ? __ldg(ctable + (slots[u] >> a.page_shift)) : 0;
#pragma unroll
      for (int u = 0; u < 8; ++u) {
        if (t + u < t1) {
          rows[exact_positions + t + u] =
              (page[u] * a.num_kv_heads + kvh) * a.page_size + (slots[u] & mask);
        }
      }
    }
  }
  if (tid == 0 && !coarse) {
    a.row_counts[hb] = exact_positions + selected_total;
    a.selected_tokens[hb] = selected_total;
    if (a.exact_tokens != nullptr) {
      atomicAdd(&a.exact_tokens[b],
                static_cast<unsigned long long>(exact_positions) + selected_total);
    }
  }
  Mark(a, 19, num_selected);
  MarkTime(a, 6);

  // 6. The approximation partial: the lookup summed N_c 2^(s_c - m_b) Vc_c over every cluster of
  // its block; merged here to the group max and less the selected clusters' terms, it is the sum
  // over the clusters not selected. The selected terms are the large ones, so the difference
  // loses bits against the whole sum, not against itself: its error is ~2^-24 of the whole sum,
  // i.e. of the output, and a difference under 2^-20 of the whole (all but nothing selected) is
  // taken as no approximation at all.
  if (!a.approximate[b] || quest) {
    WriteNoApproximation<G>(a, b, kvh);
    return;
  }
  // The selected clusters' terms: a slot of `lanes` threads reads a selected cluster's value row
  // (one coalesced row, 8 dimensions per thread) and its group's logits (the same address for the
  // slot: one transaction), kGc query heads per pass. Each warp's sums go to its own slice of
  // selected_o, and the merge below subtracts the 32 slices in order: no shared-memory float
  // atomics (on this hardware compare-and-swap loops: 32 warps adding onto the same addresses
  // cost 10-13 us whatever the number of selected clusters, bench/NOTES.md), and the same sums
  // from call to call.
  const int hd = a.head_dim;
  const int vecs = hd >> 3;  // 8-dimension pieces of a value row (head_dim is a multiple of 8)
  const int lanes = vecs <= 1    ? 1
                    : vecs <= 2  ? 2
                    : vecs <= 4  ? 4
                    : vecs <= 8  ? 8
                    : vecs <= 16 ? 16
                                 : 32;
  const int slot = tid / lanes, vlane = tid % lanes, slots_per_block = kThreads / lanes;
  MarkTime(a, 10);
  const bf16* value_centroids = a.value_centroids[hb];
  float* warp_o = a.selected_o + (static_cast<int64_t>(hb) * kSelectionWarps + warp) * G * hd;
  constexpr int kGc = G < 2 ? G : 2;
  constexpr int kTrip = 4;
  float my_l[G];  // this warp's weight sums (lane 0)
#pragma unroll
  for (int g0 = 0; g0 < G; g0 += kGc) {
    float acc[kGc][8], acc_l[kGc];
#pragma unroll
    for (int g = 0; g < kGc; ++g) {
      acc_l[g] = 0.0f;
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[g][e] = 0.0f;
    }
    for (int i0 = slot; i0 < num_selected; i0 += kTrip * slots_per_block) {
      int sc[kTrip];
      uint4 raw[kTrip];
      float lg[kTrip][kGc];
#pragma unroll
      for (int r = 0; r < kTrip; ++r) {
        const int i = i0 + r * slots_per_block;
        sc[r] = i < num_selected ? sel_cluster[i] : -1;
        raw[r] = vlane < vecs && sc[r] >= 0
                     ? __ldg(reinterpret_cast<const uint4*>(
                           value_centroids +
                           static_cast<int64_t>(CentroidRow(a, b, hb, sc[r])) * hd + vlane * 8))
                     : make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int g = 0; g < kGc; ++g) {
          lg[r][g] = sc[r] >= 0 ? __ldcg(logits + (g0 + g) * a.max_clusters + sc[r]) : -INFINITY;
        }
      }
#pragma unroll
      for (int r = 0; r < kTrip; ++r) {
        if (sc[r] < 0) continue;
        float x[8];
        detail::Bf16x8ToFloat(raw[r], x);
        const float n = static_cast<float>(begin[sc[r] + 1] - begin[sc[r]]);
#pragma unroll
        for (int g = 0; g < kGc; ++g) {
          const float w = n * exp2f(lg[r][g] - group_m[g0 + g]);
          acc_l[g] += w;
#pragma unroll
          for (int e = 0; e < 8; ++e) acc[g][e] = fmaf(w, x[e], acc[g][e]);
        }
      }
    }
    // The warp's slots hold the same dimensions: sum them (lanes apart), then lanes < `lanes`
    // write the warp's sums.
    for (int off = 16; off >= lanes; off >>= 1) {
#pragma unroll
      for (int g = 0; g < kGc; ++g) {
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[g][e] += __shfl_xor_sync(0xffffffffu, acc[g][e], off);
      }
    }
#pragma unroll
    for (int g = 0; g < kGc; ++g) {
      // A slot's lanes hold the same weight sum: the first lane of each slot counts it.
      my_l[g0 + g] = detail::WarpSum(vlane == 0 ? acc_l[g] : 0.0f);
      if (lane < lanes && vlane < vecs) {
        float4* dst = reinterpret_cast<float4*>(warp_o + (g0 + g) * hd + vlane * 8);
        dst[0] = make_float4(acc[g][0], acc[g][1], acc[g][2], acc[g][3]);
        dst[1] = make_float4(acc[g][4], acc[g][5], acc[g][6], acc[g][7]);
      }
    }
  }
  if (lane == 0) {
#pragma unroll
    for (int g = 0; g < G; ++g) red_m[g][warp] = my_l[g];  // red_m is free again
  }
  __syncthreads();  // the warps' sums (global and shared) are visible to the whole block
  MarkTime(a, 7);
  const float* block_o = a.approx_o + static_cast<int64_t>(hb) * G * a.lookup_blocks * hd;
  if (tid < G) {
    float l_sel = 0.0f;
    for (int w = 0; w < kSelectionWarps; ++w) l_sel += red_m[tid][w];  // in order
    const float l = group_z[tid] - l_sel;
    rest_l[tid] = group_m[tid] != -INFINITY && l > group_z[tid] * 0x1p-20f ? l : 0.0f;
  }
  __syncthreads();
  const int64_t first_row =
      (static_cast<int64_t>(b) * a.partial_slots + a.approx_slot) * a.num_q_heads + kvh * G;
  const float* sel_o = a.selected_o + static_cast<int64_t>(hb) * kSelectionWarps * G * hd;
  // Two threads per output where the block has them: one sums the lookup blocks' partials, the
  // other the selection warps' (each eight loads in flight), then the first combines.
  const int outputs = G * hd;
  const bool split = 2 * outputs <= kThreads;
  float* half_sum = reinterpret_cast<float*>(corr_o);  // [outputs], free again
  for (int t0 = 0; t0 < (split ? 2 * outputs : outputs); t0 += kThreads) {
    const int t = t0 + tid;
    const int o = split ? t % outputs : t;
    const int part = split ? t / outputs : 0;  // 0: lookup blocks (and, unsplit, warps); 1: warps
    const int g = o / hd, d = o % hd;
    const float l = t < (split ? 2 * outputs : outputs) ? rest_l[g] : 0.0f;
    float total = 0.0f, selected_sum = 0.0f;
    if (l > 0.0f && part == 0) {
      for (int blk0 = 0; blk0 < used_blocks; blk0 += 8) {
        float bo[8], bm[8];
#pragma unroll
        for (int u = 0; u < 8; ++u) {
          const int blk = blk0 + u;
          bm[u] = blk < used_blocks ? __ldcg(norms + (g * a.lookup_blocks + blk) * 2) : -INFINITY;
          bo[u] = blk < used_blocks
                      ? __ldcg(block_o + (static_cast<int64_t>(g) * a.lookup_blocks + blk) * hd + d)
                      : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < 8; ++u) {
          if (bm[u] != -INFINITY) total = fmaf(bo[u], exp2f(bm[u] - group_m[g]), total);
        }
      }
    }
    if (l > 0.0f && (part == 1 || !split)) {
      for (int w0 = 0; w0 < kSelectionWarps; w0 += 8) {
        float so[8];
#pragma unroll
        for (int u = 0; u < 8; ++u) so[u] = __ldcg(sel_o + ((w0 + u) * G + g) * hd + d);
#pragma unroll
        for (int u = 0; u < 8; ++u) selected_sum += so[u];
      }
    }
    if (split) {
      if (part == 1 && t < 2 * outputs) half_sum[o] = selected_sum;
      __syncthreads();
    }
    if (part == 0 && t < outputs) {
      if (split) selected_sum = half_sum[o];
      a.partial_o[(first_row + g) * hd + d] = l > 0.0f ? (total - selected_sum) / l : 0.0f;
      if (d == 0) a.partial_lse[first_row + g] = l > 0.0f ? group_m[g] + log2f(l) : -INFINITY;
    }
  }
  MarkTime(a, 8);
}

template <int G>
cudaError_t LaunchForGroup(const StepArgs& a, cudaStream_t stream) {
  // Once, for the largest selection (a host call that stream capture allows, but once is enough).
  static const cudaError_t attr =
      cudaFuncSetAttribute(ClusterSelectionKernel<G>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(SelectionSharedBytes(kMaxClustersPerHead)));
  if (attr != cudaSuccess) return attr;
  return detail::LaunchKernel(ClusterSelectionKernel<G>, dim3(a.num_kv_heads, a.batch),
                              dim3(kThreads), SelectionSharedBytes(a.max_clusters), stream,
                              a.programmatic_launch, a);
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
