#include <algorithm>
#include <cmath>

#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/sampling.h"

namespace mpa::cuda {
namespace {

constexpr int kThreads = 1024;

// Order-preserving map of floats to unsigned keys (larger float, larger key).
__device__ __forceinline__ uint32_t OrderedKey(float x) {
  const uint32_t u = __float_as_uint(x);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

struct ArgMax {
  float value;
  int index;
};

__device__ __forceinline__ ArgMax Better(ArgMax a, ArgMax b) {
  if (b.value > a.value || (b.value == a.value && b.index < a.index)) return b;
  return a;
}

__device__ ArgMax BlockArgmax(const float* x, int n, float* sv, int* si) {
  ArgMax best{-INFINITY, n};
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const float v = x[i];
    if (v > best.value || (v == best.value && i < best.index)) best = {v, i};
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    ArgMax other{__shfl_xor_sync(0xffffffffu, best.value, o),
                 __shfl_xor_sync(0xffffffffu, best.index, o)};
    best = Better(best, other);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) {
    sv[warp] = best.value;
    si[warp] = best.index;
  }
  __syncthreads();
  if (warp == 0) {
    best = lane < (blockDim.x >> 5) ? ArgMax{sv[lane], si[lane]} : ArgMax{-INFINITY, n};
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      ArgMax other{__shfl_xor_sync(0xffffffffu, best.value, o),
                   __shfl_xor_sync(0xffffffffu, best.index, o)};
      best = Better(best, other);
    }
    if (lane == 0) {
      sv[0] = best.value;
      si[0] = best.index;
    }
  }
  __syncthreads();
  return {sv[0], si[0]};
}

__global__ void __launch_bounds__(kThreads)
    ArgmaxKernel(const float* logits, int vocab, int32_t* ids) {
  __shared__ float sv[32];
  __shared__ int si[32];
  const ArgMax best = BlockArgmax(logits + static_cast<int64_t>(blockIdx.x) * vocab, vocab, sv, si);
  if (threadIdx.x == 0) ids[blockIdx.x] = best.index < vocab ? best.index : 0;
}

// Seeded sampling in four launches, with exact integer masses so that every partial sum is
// order-independent (deterministic) and the histogram's bins agree exactly with the elements:
//   1. Partials: the max of each of S chunks of a row (S blocks per row fill the GPU at batch 1).
//   2. Histogram: each element's distance d = (max - x) / temperature (nats below the top) falls
//      in one of kBins bins by the float bits of d (monotone in x); count and mass per bin.
//   3. Gather: the bins that must hold every id the cuts keep (and the draw) are found from the
//      histogram; their ids are appended to a list of at most kCap candidates per row.
//   4. Final: one block per row picks, by radix selection over 64-bit keys (logit key, then id so
//      lower ids rank first on ties), the k-th candidate, the top-p cut and the drawn id.
// When the needed bins hold more than kCap ids (flat rows, large k) the final block selects over
// the whole row instead, filtering by bin: slower, same answer.
constexpr int kSplitThreads = 256;
constexpr int kFinalThreads = 1024;
constexpr int kMaxSplits = 64;
constexpr int kBins = 1024;
constexpr int kCap = 2048;
// Bin of d: 6 mantissa bits of d's float, for d in [2^-8, 2^8) nats; below in bin 0, above (and
// NaN) in the last bin.
constexpr int kBinShift = 17;
constexpr int kBinBase = (127 - 8) << 6;

__device__ __forceinline__ float Distance(float x, float max_x, float inv_t) {
  // _rn: no contraction, so every kernel computes the same bits for the same element.
  return __fmul_rn(__fsub_rn(max_x, x), inv_t);
}

__device__ __forceinline__ int BinOf(float d) {
  if (!(d >= 0.0f)) return kBins - 1;
  const int b = static_cast<int>(__float_as_uint(d) >> kBinShift) - kBinBase;
  return min(max(b, 0), kBins - 1);
}

// exp(-d) in fixed point with 2^mass_shift for 1: sums of a row stay below 2^62.
__device__ __forceinline__ uint64_t FixedMass(float d, float scale) {
  const float e = exp2f(__fmul_rn(-d, kLog2e));
  if (!(e > 0.0f)) return 0;
  return __float2ull_rz(__fmul_rn(fminf(e, 1.0f), scale));
}

// Larger key: larger logit, then lower id.
__device__ __forceinline__ uint64_t SortKey(float x, int id) {
  // x + 0 turns -0 into +0: the two compare equal, so they tie (lower id first).
  return (static_cast<uint64_t>(OrderedKey(__fadd_rn(x, 0.0f))) << 32) |
         (0xffffffffu - static_cast<uint32_t>(id));
}

struct RowWorkspace {
  float* part_value;     // [kMaxSplits]
  int* part_index;       // [kMaxSplits]
  uint32_t* hist_count;  // [kBins]
  uint64_t* hist_mass;   // [kBins]
  uint32_t* cand_count;  // [1]
  int32_t* cand;         // [kCap]
};

constexpr size_t kRowBytes = kMaxSplits * 8 + kBins * 12 + 8 + kCap * 4;  // 8-byte aligned

__device__ __forceinline__ RowWorkspace RowSpace(void* workspace, int row) {
  char* base = static_cast<char*>(workspace) + static_cast<size_t>(row) * kRowBytes;
  RowWorkspace w;
  w.hist_mass = reinterpret_cast<uint64_t*>(base);
  w.part_value = reinterpret_cast<float*>(base + kBins * 8);
  w.part_index = reinterpret_cast<int*>(base + kBins * 8 + kMaxSplits * 4);
  w.hist_count = reinterpret_cast<uint32_t*>(base + kBins * 8 + kMaxSplits * 8);
  w.cand_count = reinterpret_cast<uint32_t*>(base + kBins * 12 + kMaxSplits * 8);
  w.cand = reinterpret_cast<int32_t*>(base + kBins * 12 + kMaxSplits * 8 + 8);
  return w;
}

struct RowSettings {
  bool greedy;
  float inv_t;
  int top_k;  // 0: off
  float top_p;
  float scale;  // 2^mass_shift
};

__device__ __forceinline__ RowSettings Settings(const SamplingRow& p, int vocab) {
  RowSettings s;
  s.greedy = p.temperature <= 0.0f || p.top_k == 1;
  s.inv_t = s.greedy ? 1.0f : 1.0f / p.temperature;
  s.top_k = (p.top_k > 0 && p.top_k < vocab) ? p.top_k : 0;
  s.top_p = p.top_p;
  int bits = 0;
  while ((1ll << bits) < vocab) ++bits;
  s.scale = __int_as_float((127 + 62 - bits) << 23);  // 2^(62 - bits), exactly
  return s;
}

__global__ void __launch_bounds__(kSplitThreads)
    PartialMaxKernel(const float* logits, int vocab, int splits, int chunk, void* workspace) {
  __shared__ float sv[32];
  __shared__ int si[32];
  const int row = blockIdx.y, split = blockIdx.x;
  const RowWorkspace w = RowSpace(workspace, row);
  const int lo = split * chunk, hi = min(vocab, lo + chunk);
  const float* x = logits + static_cast<int64_t>(row) * vocab;
  const ArgMax best = BlockArgmax(x + lo, max(hi - lo, 0), sv, si);
  if (threadIdx.x == 0) {
    w.part_value[split] = best.value;
    w.part_index[split] = best.index < hi - lo ? lo + best.index : vocab;
    if (split == 0) *w.cand_count = 0;
  }
  // The histogram of this row is zeroed here; the next launch fills it.
  for (int i = split * kSplitThreads + threadIdx.x; i < kBins; i += splits * kSplitThreads) {
    w.hist_count[i] = 0;
    w.hist_mass[i] = 0;
  }
}

__device__ __forceinline__ ArgMax RowMax(const RowWorkspace& w, int splits) {
  ArgMax best{-INFINITY, 0x7fffffff};
  for (int s = 0; s < splits; ++s) best = Better(best, {w.part_value[s], w.part_index[s]});
  return best;
}

__global__ void __launch_bounds__(kSplitThreads)
    HistogramKernel(const float* logits, int vocab, int splits, int chunk,
                    const SamplingRow* params, void* workspace, int32_t* ids) {
  __shared__ uint32_t count[kBins];
  __shared__ unsigned long long mass[kBins];
  const int row = blockIdx.y, split = blockIdx.x;
  const RowWorkspace w = RowSpace(workspace, row);
  const RowSettings s = Settings(params[row], vocab);
  const ArgMax best = RowMax(w, splits);
  if (s.greedy) {
    if (split == 0 && threadIdx.x == 0) ids[row] = best.index < vocab ? best.index : 0;
    return;
  }
  for (int i = threadIdx.x; i < kBins; i += kSplitThreads) {
    count[i] = 0;
    mass[i] = 0;
  }
  __syncthreads();
  const float* x = logits + static_cast<int64_t>(row) * vocab;
  const int lo = split * chunk, hi = min(vocab, lo + chunk);
  for (int i = lo + threadIdx.x; i < hi; i += kSplitThreads) {
    const float d = Distance(x[i], best.value, s.inv_t);
    const int b = BinOf(d);
    atomicAdd(&count[b], 1u);
    const uint64_t m = FixedMass(d, s.scale);
    if (m != 0) atomicAdd(&mass[b], static_cast<unsigned long long>(m));
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kBins; i += kSplitThreads) {
    if (count[i] != 0) atomicAdd(&w.hist_count[i], count[i]);
    if (mass[i] != 0) {
      atomicAdd(reinterpret_cast<unsigned long long*>(&w.hist_mass[i]), mass[i]);
    }
  }
}

// Which bins hold what the final selection needs: ids in bins [lo, hi], above them `above_count`
// ids of mass `above_mass` (all kept, all ranked first). `total` is the row's whole mass.
struct Cut {
  int lo, hi;
  uint32_t count;  // ids in [lo, hi]
  uint64_t above_mass;
  uint32_t above_count;
  uint64_t total;
};

__device__ __forceinline__ uint64_t ScaleDraw(float u, uint64_t total) {
  // floor(u * total) exactly: u has 24 bits.
  const uint64_t m = static_cast<uint64_t>(u * 16777216.0f);
  const uint64_t lo = m * total, hi = __umul64hi(m, total);
  return (hi << 40) | (lo >> 24);
}

__device__ __forceinline__ uint64_t CeilFraction(float p, uint64_t total) {
  const double t = ceil(static_cast<double>(p) * static_cast<double>(total));
  uint64_t r = t <= 0.0 ? 1 : static_cast<uint64_t>(t);
  return min(max(r, uint64_t{1}), max(total, uint64_t{1}));
}

// Every thread of the block gets the same Cut. blockDim.x divides kBins or is a multiple of it.
__device__ Cut FindCut(const RowWorkspace& w, const RowSettings& s, float u) {
  __shared__ uint32_t cum_count[kBins];
  __shared__ unsigned long long cum_mass[kBins];
  __shared__ Cut cut;
  __syncthreads();
  if (threadIdx.x < 32) {
    // One warp scans the 1024 bins: lane l owns 32 consecutive bins.
    const int lane = threadIdx.x, per = kBins / 32;
    uint32_t c = 0;
    uint64_t m = 0;
    for (int j = 0; j < per; ++j) {
      c += w.hist_count[lane * per + j];
      m += w.hist_mass[lane * per + j];
      cum_count[lane * per + j] = c;
      cum_mass[lane * per + j] = m;
    }
    uint32_t c_incl = c;
    uint64_t m_incl = m;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const uint32_t co = __shfl_up_sync(0xffffffffu, c_incl, o);
      const uint64_t mo = __shfl_up_sync(0xffffffffu, m_incl, o);
      if (lane >= o) {
        c_incl += co;
        m_incl += mo;
      }
    }
    const uint32_t c_excl = c_incl - c;
    const uint64_t m_excl = m_incl - m;
    for (int j = 0; j < per; ++j) {
      cum_count[lane * per + j] += c_excl;
      cum_mass[lane * per + j] += m_excl;
    }
    __syncwarp();
    // First bin whose cumulative count (or mass) reaches a target.
    auto first_count = [&](uint32_t target) {
      int found = kBins - 1;
      for (int base = 0; base < kBins; base += 32) {
        const unsigned hit = __ballot_sync(0xffffffffu, cum_count[base + lane] >= target);
        if (hit) {
          found = base + __ffs(hit) - 1;
          break;
        }
      }
      return found;
    };
    auto first_mass = [&](uint64_t target) {
      int found = kBins - 1;
      for (int base = 0; base < kBins; base += 32) {
        const unsigned hit = __ballot_sync(0xffffffffu, cum_mass[base + lane] >= target);
        if (hit) {
          found = base + __ffs(hit) - 1;
          break;
        }
      }
      return found;
    };
    const uint64_t total = cum_mass[kBins - 1];
    Cut r;
    r.total = total;
    r.lo = 0;
    if (s.top_k > 0) {
      r.hi = first_count(static_cast<uint32_t>(s.top_k));
    } else if (s.top_p < 1.0f) {
      r.hi = first_mass(CeilFraction(s.top_p, total));
    } else {
      // No cut: only the bin of the draw is needed.
      r.hi = r.lo = first_mass(ScaleDraw(u, total) + 1);
    }
    r.above_count = r.lo > 0 ? cum_count[r.lo - 1] : 0;
    r.above_mass = r.lo > 0 ? cum_mass[r.lo - 1] : 0;
    r.count = cum_count[r.hi] - r.above_count;
    if (lane == 0) cut = r;
  }
  __syncthreads();
  return cut;
}

__global__ void __launch_bounds__(kSplitThreads)
    GatherKernel(const float* logits, int vocab, int splits, int chunk, const SamplingRow* params,
                 void* workspace) {
  const int row = blockIdx.y, split = blockIdx.x;
  const SamplingRow p = params[row];
  const RowSettings s = Settings(p, vocab);
  if (s.greedy) return;
  const RowWorkspace w = RowSpace(workspace, row);
  const Cut cut = FindCut(w, s, SamplingUniform(p.seed));
  if (cut.count > kCap) return;
  const ArgMax best = RowMax(w, splits);
  const float* x = logits + static_cast<int64_t>(row) * vocab;
  const int lo = split * chunk, hi = min(vocab, lo + chunk);
  for (int i = lo + threadIdx.x; i < hi; i += kSplitThreads) {
    const int b = BinOf(Distance(x[i], best.value, s.inv_t));
    if (b >= cut.lo && b <= cut.hi) w.cand[atomicAdd(w.cand_count, 1u)] = i;
  }
}

struct Selection {
  uint64_t key;       // the selected candidate's key
  uint32_t count_ge;  // ids ranked at or above it (including Cut::above_count)
  uint64_t mass_ge;   // their mass
  bool found;
};

// The candidates the final block selects from: a list in shared memory, or the row filtered by
// bin when the list would not fit.
struct Candidates {
  const uint64_t* keys;  // [n] shared, or null: scan the row
  const uint64_t* masses;
  int n;
  const float* x;
  int vocab;
  float max_x, inv_t, scale;
  int bin_lo, bin_hi;

  template <typename F>
  __device__ __forceinline__ void ForEach(F&& f) const {
    if (keys != nullptr) {
      for (int i = threadIdx.x; i < n; i += blockDim.x) f(keys[i], masses[i]);
    } else {
      for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        const float v = x[i];
        const float d = Distance(v, max_x, inv_t);
        const int b = BinOf(d);
        if (b >= bin_lo && b <= bin_hi) f(SortKey(v, i), FixedMass(d, scale));
      }
    }
  }
};

// The largest candidate key K (>= floor) whose rank-ordered weight (mass when by_mass, else
// count) of candidates with key >= K, plus what lies above the candidates, reaches target: eight
// passes of 8-bit digits from the top.
__device__ Selection Select(const Candidates& c, uint64_t floor, bool by_mass, uint64_t target,
                            uint32_t above_count, uint64_t above_mass) {
  __shared__ uint32_t hc[256];
  __shared__ unsigned long long hm[256];
  __shared__ uint64_t s_prefix;
  __shared__ uint32_t s_count;
  __shared__ unsigned long long s_mass;
  __shared__ int s_found;
  uint64_t prefix = 0;
  uint32_t acc_count = above_count;
  uint64_t acc_mass = above_mass;
  bool found = true;
  for (int shift = 56; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) {
      hc[i] = 0;
      hm[i] = 0;
    }
    __syncthreads();
    const uint64_t high_mask = shift == 56 ? 0 : (~uint64_t{0} << (shift + 8));
    c.ForEach([&](uint64_t key, uint64_t mass) {
      if (key < floor || (key & high_mask) != prefix) return;
      const int digit = static_cast<int>((key >> shift) & 255);
      atomicAdd(&hc[digit], 1u);
      if (mass != 0) atomicAdd(&hm[digit], static_cast<unsigned long long>(mass));
    });
    __syncthreads();
    if (threadIdx.x < 32) {
      // Lane l owns digits 255 - 8l down to 248 - 8l (rank order).
      const int lane = threadIdx.x;
      uint32_t lc = 0;
      uint64_t lm = 0;
      for (int j = 0; j < 8; ++j) {
        lc += hc[255 - 8 * lane - j];
        lm += hm[255 - 8 * lane - j];
      }
      uint32_t ic = lc;
      uint64_t im = lm;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const uint32_t co = __shfl_up_sync(0xffffffffu, ic, o);
        const uint64_t mo = __shfl_up_sync(0xffffffffu, im, o);
        if (lane >= o) {
          ic += co;
          im += mo;
        }
      }
      const uint64_t reach = by_mass ? acc_mass + im : acc_count + ic;
      const unsigned hit = __ballot_sync(0xffffffffu, reach >= target);
      if (hit == 0) {
        if (lane == 0) s_found = 0;
      } else if (lane == __ffs(hit) - 1) {
        uint32_t cc = acc_count + (ic - lc);
        uint64_t cm = acc_mass + (im - lm);
        int digit = 255 - 8 * lane - 7;
        for (int j = 0; j < 8; ++j) {
          const int dg = 255 - 8 * lane - j;
          const uint64_t next = by_mass ? cm + hm[dg] : cc + hc[dg];
          if (next >= target) {
            digit = dg;
            break;
          }
          cc += hc[dg];
          cm += hm[dg];
        }
        s_prefix = prefix | (static_cast<uint64_t>(digit) << shift);
        // At the last digit the bucket is one candidate (keys are unique): include it.
        s_count = cc + (shift == 0 ? hc[digit] : 0);
        s_mass = cm + (shift == 0 ? hm[digit] : 0);
        s_found = 1;
      }
    }
    __syncthreads();
    if (!s_found) {
      found = false;
      break;
    }
    prefix = s_prefix;
    acc_count = s_count;
    acc_mass = s_mass;
    __syncthreads();
  }
  return {prefix, acc_count, acc_mass, found};
}

__global__ void __launch_bounds__(kFinalThreads)
    FinalKernel(const float* logits, int vocab, int splits, const SamplingRow* params,
                void* workspace, int32_t* ids) {
  __shared__ uint64_t keys[kCap];
  __shared__ uint64_t masses[kCap];
  const int row = blockIdx.x;
  const SamplingRow p = params[row];
  const RowSettings s = Settings(p, vocab);
  if (s.greedy) return;
  const RowWorkspace w = RowSpace(workspace, row);
  const float u = SamplingUniform(p.seed);
  const Cut cut = FindCut(w, s, u);
  const ArgMax best = RowMax(w, splits);
  const float* x = logits + static_cast<int64_t>(row) * vocab;
  Candidates c{nullptr, nullptr, 0, x, vocab, best.value, s.inv_t, s.scale, cut.lo, cut.hi};
  if (cut.count <= kCap) {
    const int n = static_cast<int>(min(*w.cand_count, static_cast<uint32_t>(kCap)));
    for (int i = threadIdx.x; i < n; i += kFinalThreads) {
      const int id = w.cand[i];
      const float v = x[id];
      keys[i] = SortKey(v, id);
      masses[i] = FixedMass(Distance(v, best.value, s.inv_t), s.scale);
    }
    __syncthreads();
    c.keys = keys;
    c.masses = masses;
    c.n = n;
  }
  uint64_t floor = 0;
  uint64_t total = cut.total;
  bool ok = true;
  if (s.top_k > 0) {
    const Selection k = Select(c, 0, false, static_cast<uint64_t>(s.top_k), 0, 0);
    floor = k.key;
    total = k.mass_ge;
    ok = ok && k.found;
  }
  if (ok && s.top_p < 1.0f) {
    const Selection q =
        Select(c, floor, true, CeilFraction(s.top_p, total), cut.above_count, cut.above_mass);
    floor = q.key;
    total = q.mass_ge;
    ok = ok && q.found;
  }
  Selection draw{};
  if (ok) {
    draw = Select(c, floor, true, ScaleDraw(u, total) + 1, cut.above_count, cut.above_mass);
  }
  if (threadIdx.x == 0) {
    // Not found only for rows without a finite maximum: fall back to the argmax.
    const int id = ok && draw.found
                       ? static_cast<int>(0xffffffffu - static_cast<uint32_t>(draw.key))
                       : best.index;
    ids[row] = id >= 0 && id < vocab ? id : 0;
  }
}

// One block per row: logprobs[r] = logits[r, ids[r]] - max - log(sum_i exp(logits[r, i] - max)),
// each thread summing its share in fp32 and the block in double (as LogProbOf sums in double).
__global__ void __launch_bounds__(kThreads)
    LogProbKernel(const float* logits, int vocab, const int32_t* ids, float* logprobs) {
  __shared__ float sv[32];
  __shared__ int si[32];
  __shared__ double sd[32];
  const float* row = logits + static_cast<int64_t>(blockIdx.x) * vocab;
  const ArgMax top = BlockArgmax(row, vocab, sv, si);
  const float max = top.value;
  float local = 0.0f;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) local += __expf(row[i] - max);
  double sum = local;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) sd[warp] = sum;
  __syncthreads();
  if (warp == 0) {
    sum = lane < (blockDim.x >> 5) ? sd[lane] : 0.0;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if (lane == 0) {
      const int id = ids[blockIdx.x];
      logprobs[blockIdx.x] =
          id >= 0 && id < vocab ? static_cast<float>(row[id] - max - log(sum)) : -INFINITY;
    }
  }
}

}  // namespace

cudaError_t ArgmaxRows(const float* logits, int rows, int vocab, int32_t* ids,
                       cudaStream_t stream) {
  if (logits == nullptr || ids == nullptr || rows < 0 || vocab <= 0) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  ArgmaxKernel<<<rows, kThreads, 0, stream>>>(logits, vocab, ids);
  return cudaGetLastError();
}

cudaError_t LogProbRows(const float* logits, int rows, int vocab, const int32_t* ids,
                        float* logprobs, cudaStream_t stream) {
  if (logits == nullptr || ids == nullptr || logprobs == nullptr || rows < 0 || vocab <= 0) {
    return cudaErrorInvalidValue;
  }
  if (rows == 0) return cudaSuccess;
  LogProbKernel<<<rows, kThreads, 0, stream>>>(logits, vocab, ids, logprobs);
  return cudaGetLastError();
}

size_t SampleRowsWorkspaceBytes(int rows) {
  return rows <= 0 ? 0 : static_cast<size_t>(rows) * kRowBytes;
}

cudaError_t SampleRows(const float* logits, int rows, int vocab, const SamplingRow* params,
                       int32_t* ids, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  if (logits == nullptr || params == nullptr || ids == nullptr || rows < 0 || vocab <= 0) {
    return cudaErrorInvalidValue;
  }
  if (rows == 0) return cudaSuccess;
  if (workspace == nullptr || workspace_bytes < SampleRowsWorkspaceBytes(rows)) {
    return cudaErrorInvalidValue;
  }
  int device = 0, sms = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e != cudaSuccess) return e;
  e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (e != cudaSuccess) return e;
  // About two blocks per multiprocessor in all, at least one per row.
  int splits = std::max(1, std::min(kMaxSplits, (2 * sms + rows - 1) / rows));
  splits = std::min(splits, (vocab + kSplitThreads - 1) / kSplitThreads);
  const int chunk = (vocab + splits - 1) / splits;
  const dim3 grid(splits, rows);
  PartialMaxKernel<<<grid, kSplitThreads, 0, stream>>>(logits, vocab, splits, chunk, workspace);
  HistogramKernel<<<grid, kSplitThreads, 0, stream>>>(logits, vocab, splits, chunk, params,
                                                      workspace, ids);
  GatherKernel<<<grid, kSplitThreads, 0, stream>>>(logits, vocab, splits, chunk, params, workspace);
  FinalKernel<<<rows, kFinalThreads, 0, stream>>>(logits, vocab, splits, params, workspace, ids);
  return cudaGetLastError();
}

cudaError_t SampleRows(const float* logits, int rows, int vocab, const SamplingRow* params,
                       int32_t* ids, cudaStream_t stream) {
  if (rows <= 0) return SampleRows(logits, rows, vocab, params, ids, nullptr, 0, stream);
  // Stream-ordered, so this works inside graph capture too.
  void* workspace = nullptr;
  const size_t bytes = SampleRowsWorkspaceBytes(rows);
  cudaError_t e = cudaMallocAsync(&workspace, bytes, stream);
  if (e != cudaSuccess) return e;
  e = SampleRows(logits, rows, vocab, params, ids, workspace, bytes, stream);
  const cudaError_t f = cudaFreeAsync(workspace, stream);
  return e != cudaSuccess ? e : f;
}

}  // namespace mpa::cuda
