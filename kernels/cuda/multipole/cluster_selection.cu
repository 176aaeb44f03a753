// Budgeted cluster selection on the GPU, and the list of rows the exact part reads. The CPU twins
// are kernels/cpu/multipole/centroid_lookup.cc (the scores) and cluster_selection.cc (the rule).
//
// One block of 1024 threads per (sequence, KV head):
//   1. rows of the sink and the recent window (positions through the block table);
//   2. per query head of the group, the count-weighted softmax normaliser over the centroid
//      logits; score_c = sum_h 2^(s_hc - m_h) / sum_j N_j 2^(s_hj - m_h);
//   3. a bitonic sort in shared memory of 64-bit keys (score bits + 1, then the complemented
//      cluster id: descending order = higher score first, lower id first on ties; NaN scores rank
//      after every number; empty clusters are key 0 and never selected);
//   4. the rule of cluster_selection.h: if the top cluster alone exceeds a positive budget it is
//      selected alone; otherwise the longest prefix of the ranking that fits is selected (a
//      prefix sum of counts), then the rest of the ranking is walked in order, taking every
//      cluster that still fits — only clusters no larger than what the prefix left can, so they
//      are compacted first and one warp walks them;
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
// Ranks per thread at the largest sort (kMaxClustersPerHead clusters).
constexpr int kRanksPerThread = 16;

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

__device__ __forceinline__ uint64_t RankKey(float score, int c, bool live) {
  if (!live) return 0;
  const uint32_t bits = isnan(score) ? 0u : __float_as_uint(score) + 1u;  // score >= 0
  return (static_cast<uint64_t>(bits) << 32) | static_cast<uint32_t>(~c);
}
__device__ __forceinline__ int ClusterOf(uint64_t key) {
  return static_cast<int>(~static_cast<uint32_t>(key));
}

template <int G>
__global__ void __launch_bounds__(kThreads) ClusterSelectionKernel(StepArgs a, int sort_capacity) {
  extern __shared__ __align__(16) unsigned char smem[];
  uint64_t* keys = reinterpret_cast<uint64_t*>(smem);                       // [sort_capacity]
  int32_t* begin = reinterpret_cast<int32_t*>(keys + sort_capacity);        // [max_clusters + 1]
  uint8_t* flags = reinterpret_cast<uint8_t*>(begin + a.max_clusters + 1);  // [max_clusters]
  __shared__ int scan_scratch[kWarps];
  __shared__ float reduce_scratch[32];
  __shared__ int shared_first_miss, shared_used, shared_candidates;

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
    return;
  }
  const int32_t* cluster_begin = a.cluster_begin[hb];
  for (int c = tid; c <= num_clusters; c += kThreads) begin[c] = cluster_begin[c];
  __syncthreads();

  // 2. Normalisers of the count-weighted softmax, per query head of the group.
  const float* logits = a.logits2 + static_cast<int64_t>(hb) * G * a.max_clusters;
  float m[G], z[G];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    float x = -INFINITY;
    for (int c = tid; c < num_clusters; c += kThreads) {
      if (begin[c + 1] > begin[c]) x = fmaxf(x, logits[g * a.max_clusters + c]);
    }
    m[g] = detail::BlockMax(x, reduce_scratch);
    float s = 0.0f;
    if (m[g] != -INFINITY) {
      for (int c = tid; c < num_clusters; c += kThreads) {
        const int count = begin[c + 1] - begin[c];
        if (count > 0) s += count * exp2f(logits[g * a.max_clusters + c] - m[g]);
      }
    }
    z[g] = detail::BlockSum(s, reduce_scratch);
  }

  // 3. Scores and the ranking.
  int n = 2;
  while (n < num_clusters) n <<= 1;
  for (int c = tid; c < n; c += kThreads) {
    uint64_t key = 0;
    if (c < num_clusters) {
      const bool live = begin[c + 1] > begin[c];
      float score = 0.0f;
      if (live) {
#pragma unroll
        for (int g = 0; g < G; ++g) {
          if (m[g] != -INFINITY) score += exp2f(logits[g * a.max_clusters + c] - m[g]) / z[g];
        }
      }
      scores[c] = score;
      key = RankKey(score, c, live);
    }
    keys[c] = key;
  }
  for (int c = num_clusters + tid; c < a.max_clusters; c += kThreads) scores[c] = 0.0f;
  __syncthreads();
  for (int k = 2; k <= n; k <<= 1) {
    for (int j = k >> 1; j > 0; j >>= 1) {
      for (int i = tid; i < n; i += kThreads) {
        const int partner = i ^ j;
        if (partner > i) {
          const uint64_t x = keys[i], y = keys[partner];
          const bool descending = (i & k) == 0;
          if (descending ? x < y : x > y) {
            keys[i] = y;
            keys[partner] = x;
          }
        }
      }
      __syncthreads();
    }
  }

  // 4. The selection rule.
  int selected_total = 0;
  if (budget > 0 && keys[0] != 0) {
    const int top = ClusterOf(keys[0]);
    const int top_count = begin[top + 1] - begin[top];
    if (top_count > budget) {
      if (tid == 0) flags[top] = 1;
    } else {
      // Prefix: thread t owns ranks [t * per, (t + 1) * per).
      const int per = (n + kThreads - 1) / kThreads;
      const int r0 = min(n, tid * per), r1 = min(n, r0 + per);
      int local = 0;
      for (int r = r0; r < r1; ++r) {
        const uint64_t key = keys[r];
        if (key != 0) local += begin[ClusterOf(key) + 1] - begin[ClusterOf(key)];
      }
      int total_tokens;
      int64_t inclusive = BlockExclusiveScan(local, scan_scratch, &total_tokens);
      if (tid == 0) {
        shared_first_miss = n;
        shared_used = total_tokens;
      }
      __syncthreads();
      // The first rank that is empty or does not fit ends the prefix (both conditions only grow).
      for (int r = r0; r < r1; ++r) {
        const uint64_t key = keys[r];
        const int count = key != 0 ? begin[ClusterOf(key) + 1] - begin[ClusterOf(key)] : 0;
        const int64_t before = inclusive;
        inclusive += count;
        const bool miss = key == 0 || inclusive > budget;
        if (miss) {
          const bool prev_miss = r > 0 && (keys[r - 1] == 0 || before > budget);
          if (!prev_miss) {
            shared_first_miss = r;
            shared_used = static_cast<int>(before);
          }
          break;
        }
        flags[ClusterOf(key)] = 1;
      }
      __syncthreads();
      const int first_miss = shared_first_miss;
      const int64_t left = budget - shared_used;
      // Tail: clusters after the first miss that fit in what is left, compacted in rank order.
      int my_candidates = 0;
      for (int r = max(r0, first_miss); r < r1; ++r) {
        const uint64_t key = keys[r];
        if (key == 0) break;
        const int count = begin[ClusterOf(key) + 1] - begin[ClusterOf(key)];
        if (count <= left) ++my_candidates;
      }
      int num_candidates;
      int offset = BlockExclusiveScan(my_candidates, scan_scratch, &num_candidates);
      // Keys are read into the candidate list below; the list reuses the start of `keys`, which
      // holds ranks < first_miss or candidates already copied: read all of this thread's
      // candidates before any thread writes.
      uint64_t mine[kRanksPerThread];
      int held = 0;
      if (left > 0) {
        for (int r = max(r0, first_miss); r < r1 && held < kRanksPerThread; ++r) {
          const uint64_t key = keys[r];
          if (key == 0) break;
          const int count = begin[ClusterOf(key) + 1] - begin[ClusterOf(key)];
          if (count <= left) mine[held++] = key;
        }
      }
      __syncthreads();
      if (left > 0) {
        for (int i = 0; i < held; ++i) keys[offset + i] = mine[i];
      }
      if (tid == 0) shared_candidates = left > 0 ? num_candidates : 0;
      __syncthreads();
      if (tid < 32) {
        int64_t remaining = left;
        const int lane = tid;
        for (int base = 0; base < shared_candidates && remaining > 0; base += 32) {
          const int i = base + lane;
          int count = 0, cluster = 0;
          if (i < shared_candidates) {
            cluster = ClusterOf(keys[i]);
            count = begin[cluster + 1] - begin[cluster];
          }
          int last = -1;
          while (true) {
            const unsigned fits = __ballot_sync(
                0xffffffffu, i < shared_candidates && count <= remaining && lane > last);
            if (fits == 0) break;
            const int j = __ffs(fits) - 1;
            remaining -= __shfl_sync(0xffffffffu, count, j);
            if (lane == j) flags[cluster] = 1;
            last = j;
          }
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
  int num_selected;
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
    const int s = begin[sel_cluster[lo]] + (t - sel_first[lo]);
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
}

int SortCapacity(int max_clusters) {
  int n = 2;
  while (n < max_clusters) n <<= 1;
  return n;
}

template <int G>
cudaError_t LaunchForGroup(const StepArgs& a, cudaStream_t stream) {
  // Once, for the largest sort (a host call that stream capture allows, but once is enough).
  static const cudaError_t attr =
      cudaFuncSetAttribute(ClusterSelectionKernel<G>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(SelectionSharedBytes(kMaxClustersPerHead)));
  if (attr != cudaSuccess) return attr;
  const size_t bytes = SelectionSharedBytes(a.max_clusters);
  ClusterSelectionKernel<G>
      <<<dim3(a.num_kv_heads, a.batch), kThreads, bytes, stream>>>(a, SortCapacity(a.max_clusters));
  return cudaGetLastError();
}

}  // namespace

size_t SelectionSharedBytes(int max_clusters) {
  const size_t keys = sizeof(uint64_t) * SortCapacity(max_clusters);
  const size_t begin = sizeof(int32_t) * (static_cast<size_t>(max_clusters) + 1);
  return keys + begin + static_cast<size_t>(max_clusters);
}

cudaError_t LaunchClusterSelection(const StepArgs& a, cudaStream_t stream) {
  return DispatchGroup(a.num_q_heads / a.num_kv_heads,
                       [&](auto g) { return LaunchForGroup<g()>(a, stream); });
}

}  // namespace mpa::cuda::multipole
