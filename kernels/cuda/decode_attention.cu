#include <algorithm>
#include <cmath>

#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/mma_util.cuh"

namespace mpa::cuda {
namespace {

using detail::CommitAsync;
using detail::CopyAsync16OrZero;
using detail::LoadMatrixX4;
using detail::LoadMatrixX4Transposed;
using detail::MmaBf16;
using detail::PackBf16;
using detail::PackBf16TwoTerms;
using detail::SharedAddress;
using detail::Transpose8x8;
using detail::WaitAsync;

constexpr int kThreads = 256;

struct DecodeArgs {
  const bf16* q;
  const bf16* k;
  const bf16* v;
  const int32_t* pages;
  const int32_t* seq_lens;
  int max_pages;
  int num_q_heads;
  int num_kv_heads;
  int page_size;
  int page_shift;
  int chunk;  // tokens per split (paged mode)
  int num_splits;
  // Row-list mode (rows != null): per (sequence, KV head) row_counts[b * H + h] rows at
  // rows[(b * H + h) * row_capacity ...], spread evenly over the splits.
  const int32_t* rows;
  const int32_t* row_counts;
  int row_capacity;
  int split_stride;  // partial slots per sequence: num_splits + extra partials
  bool partials;     // write partials (and merge) even with one split
  float scale2;      // scale * log2(e)
  bf16* out;
  float* out_f32;
  float* partial_o;    // [batch, num_splits, num_q_heads, head_dim]
  float* partial_lse;  // [batch, num_splits, num_q_heads] base 2
};

// Tokens of this block's (sequence, KV head) and its split's range [begin, end).
struct SplitRange {
  int begin, end;
};
__device__ __forceinline__ int TokensOf(const DecodeArgs& a, int b, int kvh) {
  return a.rows != nullptr ? a.row_counts[b * a.num_kv_heads + kvh] : a.seq_lens[b];
}
__device__ __forceinline__ SplitRange RangeOf(const DecodeArgs& a, int len, int split) {
  int chunk = a.chunk;
  if (a.rows != nullptr) {  // each head spreads its own rows; multiples of 16 for the tiles
    chunk = (len + a.num_splits - 1) / a.num_splits;
    chunk = max(16, (chunk + 15) / 16 * 16);
  }
  const int begin = split * chunk;
  return {begin, min(len, begin + chunk)};
}
// Where a split's result goes: the output itself, or its partial slot for the merge.
__device__ __forceinline__ void WriteResult(const DecodeArgs& a, int b, int split, int qh, int hd,
                                            int d, float value, float total_l, float mx) {
  if (!a.partials) {
    const int64_t idx = (static_cast<int64_t>(b) * a.num_q_heads + qh) * hd + d;
    if (a.out != nullptr) {
      a.out[idx] = __float2bfloat16_rn(value);
    } else {
      a.out_f32[idx] = value;
    }
  } else {
    const int64_t row = (static_cast<int64_t>(b) * a.split_stride + split) * a.num_q_heads + qh;
    a.partial_o[row * hd + d] = value;
    if (d == 0) a.partial_lse[row] = total_l > 0.0f ? mx + log2f(total_l) : -INFINITY;
  }
}

// cp.async (sm_80+); older targets copy synchronously (correct, only slower).
__device__ __forceinline__ void CopyAsync16(void* smem, const void* gmem) {
#if __CUDA_ARCH__ >= 800
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem));
#else
  *static_cast<uint4*>(smem) = *static_cast<const uint4*>(gmem);
#endif
}

template <int kUnroll, int kStages>
constexpr int PipelineBytes() {
  return kStages * kUnroll * kThreads * 2 * 16;
}

// Thread layout: kLanes = HD / 8 consecutive threads share one token (16 bytes of its key and of
// its value each); kSlots = kThreads / kLanes tokens are read side by side, kUnroll of them per
// thread per step. Each thread streams exactly the bytes it will itself consume through a
// kStages-deep cp.async pipeline in shared memory, so many loads stay in flight without holding
// registers and without any barrier in the loop.
template <int HD, int G, int kUnroll, int kStages>
__global__ void __launch_bounds__(kThreads, G <= 4 ? 2 : 1) DecodeSplitKernel(DecodeArgs a) {
  constexpr int kVecs = HD / 8;  // 16-byte vectors per row
  constexpr int kLanes = kVecs <= 1    ? 1
                         : kVecs <= 2  ? 2
                         : kVecs <= 4  ? 4
                         : kVecs <= 8  ? 8
                         : kVecs <= 16 ? 16
                                       : 32;
  constexpr int kSlots = kThreads / kLanes;
  constexpr int kStep = kSlots * kUnroll;  // tokens per pipeline stage
  extern __shared__ uint4 pipe[];          // [kStages][kUnroll][2 (k, v)][kThreads]
  __shared__ float sm_o[kSlots * HD];
  __shared__ float sm_m[kSlots];
  __shared__ float sm_l[kSlots];

  const int split = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z;
  const int len = TokensOf(a, b, kvh);
  const SplitRange range = RangeOf(a, len, split);
  const int begin = range.begin, end = range.end;
  const int slot = threadIdx.x / kLanes, lane = threadIdx.x % kLanes;
  const bool lane_active = lane < kVecs;  // head_dim not a power of two: spare lanes idle

  const int32_t* table = a.pages + static_cast<int64_t>(b) * a.max_pages;
  const int32_t* rows =
      a.rows + (static_cast<int64_t>(b) * a.num_kv_heads + kvh) * a.row_capacity;  // row mode
  const int64_t page_stride = static_cast<int64_t>(a.num_kv_heads) * a.page_size * HD;
  const int64_t head_offset = static_cast<int64_t>(kvh) * a.page_size * HD + lane * 8;
  const int offset_mask = a.page_size - 1;
  const int num_steps = end > begin ? (end - begin + kStep - 1) / kStep : 0;

  // Issues the copies of step `step` (nothing past the end; empty groups keep the count).
  auto issue = [&](int step) {
    if (step < num_steps) {
      uint4* buf = pipe + (step % kStages) * kUnroll * 2 * kThreads + threadIdx.x;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int t = begin + step * kStep + u * kSlots + slot;
        if (t < end && lane_active) {
          const int64_t row = a.rows != nullptr
                                  ? static_cast<int64_t>(rows[t]) * HD + lane * 8
                                  : table[t >> a.page_shift] * page_stride + head_offset +
                                        static_cast<int64_t>(t & offset_mask) * HD;
          CopyAsync16(buf + (2 * u) * kThreads, a.k + row);
          CopyAsync16(buf + (2 * u + 1) * kThreads, a.v + row);
        }
      }
    }
    CommitAsync();
  };
#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) issue(st);

  float q[G][8];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    const uint4 raw =
        lane_active
            ? *reinterpret_cast<const uint4*>(
                  a.q + (static_cast<int64_t>(b) * a.num_q_heads + kvh * G + g) * HD + lane * 8)
            : make_uint4(0, 0, 0, 0);
    detail::Bf16x8ToFloat(raw, q[g]);
#pragma unroll
    for (int i = 0; i < 8; ++i) q[g][i] *= a.scale2;
  }
  float m[G], l[G], o[G][8];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; ++i) o[g][i] = 0.0f;
  }

  for (int step = 0; step < num_steps; ++step) {
    issue(step + kStages - 1);
    WaitAsync<kStages - 1>();  // this thread's copies of `step` have landed
    const uint4* buf = pipe + (step % kStages) * kUnroll * 2 * kThreads + threadIdx.x;
    const int base = begin + step * kStep;
    bool valid[kUnroll];
    float s[kUnroll][G];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      valid[u] = base + u * kSlots + slot < end;
      float kf[8];
      detail::Bf16x8ToFloat(lane_active ? buf[(2 * u) * kThreads] : make_uint4(0, 0, 0, 0), kf);
#pragma unroll
      for (int g = 0; g < G; ++g) {
        float dot = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; ++i) dot = fmaf(q[g][i], kf[i], dot);
#pragma unroll
        for (int off = kLanes / 2; off > 0; off >>= 1)
          dot += __shfl_xor_sync(0xffffffffu, dot, off);
        s[u][g] = valid[u] ? dot : -INFINITY;
      }
    }
    float vf[kUnroll][8];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (valid[u] && lane_active) {
        detail::Bf16x8ToFloat(buf[(2 * u + 1) * kThreads], vf[u]);
      } else {
#pragma unroll
        for (int i = 0; i < 8; ++i) vf[u][i] = 0.0f;  // stale bytes must not meet p = 0 as NaN
      }
    }
#pragma unroll
    for (int g = 0; g < G; ++g) {
      float mx = m[g];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) mx = fmaxf(mx, s[u][g]);
      if (mx == -INFINITY) continue;  // nothing valid for this slot yet
      const float alpha = exp2f(m[g] - mx);
      float p[kUnroll];
      float psum = 0.0f;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        p[u] = exp2f(s[u][g] - mx);
        psum += p[u];
      }
      l[g] = l[g] * alpha + psum;
      m[g] = mx;
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        float acc = o[g][i] * alpha;
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) acc = fmaf(p[u], vf[u][i], acc);
        o[g][i] = acc;
      }
    }
  }
  WaitAsync<0>();

  // Merge the kSlots partials of each query head (same rule as MergePartial), then write the
  // normalised output, or the split's (o / l, m + log2 l) for the merge kernel.
#pragma unroll
  for (int g = 0; g < G; ++g) {
    if (lane == 0) {
      sm_m[slot] = m[g];
      sm_l[slot] = l[g];
    }
    if (lane_active) {
#pragma unroll
      for (int i = 0; i < 8; ++i) sm_o[slot * HD + lane * 8 + i] = o[g][i];
    }
    __syncthreads();
    const int qh = kvh * G + g;
    for (int d = threadIdx.x; d < HD; d += kThreads) {
      float mx = -INFINITY;
      for (int s = 0; s < kSlots; ++s) mx = fmaxf(mx, sm_m[s]);
      float total_l = 0.0f, total_o = 0.0f;
      if (mx != -INFINITY) {
        for (int s = 0; s < kSlots; ++s) {
          const float w = exp2f(sm_m[s] - mx);  // exp2(-inf) = 0 for empty slots
          total_l = fmaf(sm_l[s], w, total_l);
          total_o = fmaf(sm_o[s * HD + d], w, total_o);
        }
      }
      const float value = total_l > 0.0f ? total_o / total_l : 0.0f;
      WriteResult(a, b, split, qh, HD, d, value, total_l, mx);
    }
    __syncthreads();
  }
}

// One block per (query head, sequence): out = sum_s w_s o_s / sum_s w_s, w_s = l_s 2^(m_s - M).
template <int HD>
__global__ void MergeSplitsKernel(DecodeArgs a) {
  const int qh = blockIdx.x, b = blockIdx.y;
  const int d = threadIdx.x;
  if (d >= HD) return;
  const int64_t first = static_cast<int64_t>(b) * a.split_stride * a.num_q_heads + qh;
  float mx = -INFINITY;
  for (int s = 0; s < a.split_stride; ++s) {
    mx = fmaxf(mx, a.partial_lse[first + s * a.num_q_heads]);
  }
  float acc = 0.0f, total = 0.0f;
  if (mx != -INFINITY) {
    for (int s = 0; s < a.split_stride; ++s) {
      const int64_t row = first + s * a.num_q_heads;
      const float w = exp2f(a.partial_lse[row] - mx);
      acc = fmaf(w, a.partial_o[row * HD + d], acc);
      total += w;
    }
  }
  const float value = total > 0.0f ? acc / total : 0.0f;
  const int64_t idx = (static_cast<int64_t>(b) * a.num_q_heads + qh) * HD + d;
  if (a.out != nullptr) {
    a.out[idx] = __float2bfloat16_rn(value);
  } else {
    a.out_f32[idx] = value;
  }
}

// ---------------------------------------------------------------------------------------------
// Tensor-core kernel (head_dim 64 or 128, pages of >= 16 tokens, sm_80+ instructions).
//
// Each warp owns a ring of kStages slots of one 16-token tile (K and V, 2 x 16 x HD bf16) and
// streams its tiles (warp w takes tiles w, w + W, ... of the split) with 16-byte cp.async, so the
// loop has no block barrier. Per tile, with the group's (up to 8) query heads on the n = 8 side:
//   S^T [16 tokens x 8 heads] = K [16 x HD] . Q^T [HD x 8]    (HD / 16 mma, K by ldmatrix)
//   O^T [HD x 8 heads]       += V^T [HD x 16] . P^T [16 x 8]   (HD / 16 mma per bf16 term of P)
// The C fragment of S^T becomes the B fragment of P^T by one movmatrix transpose per 8x8 half.
// P is split into two bf16 terms (hi + lo) so that O carries ~16 bits of P, like the fp32 CUDA-core
// kernel; the tensor cores are far from busy, so the second term is free. Rows are stored with
// their 16-byte chunks XOR-swizzled by (row & 7), so ldmatrix's eight rows hit eight different bank
// groups.
namespace tc {

constexpr int kTile = 16;  // tokens per tile; a tile never crosses a page (pages >= 16, aligned)

template <int HD, int kWarps, int kStages>
__host__ __device__ constexpr int RingBytes() {
  return kWarps * kStages * 2 * kTile * HD * 2;
}

template <int HD, int G, int kWarps, int kStages>
__global__ void __launch_bounds__(kWarps * 32) DecodeTensorCoreKernel(DecodeArgs a) {
  static_assert(HD == 64 || HD == 128, "tensor-core tiles cover head_dim 64 and 128");
  static_assert(G >= 1 && G <= 8, "the group's heads sit on the 8-wide side of the mma");
  constexpr int kChunks = HD / 8;                // 16-byte chunks per row
  constexpr int kRowBytes = HD * 2;              // one token's key (or value) row
  constexpr int kTileBytes = kTile * kRowBytes;  // one tile of K (or of V)
  constexpr int kCopies = kTileBytes / 16 / 32;  // 16-byte copies per lane per tile, K (or V)
  constexpr int kRowsPerCopy = 32 / kChunks;     // rows one warp-wide copy covers
  constexpr int kSteps = HD / 16;                // mma k-steps of S^T, m-tiles of O^T
  static_assert(RingBytes<HD, kWarps, kStages>() >= kWarps * (8 * HD + 16) * 4,
                "the merge scratch reuses the ring");
  extern __shared__ __align__(128) unsigned char smem[];

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;  // fragment row group and column pair
  const int split = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z;
  const int len = TokensOf(a, b, kvh);
  const SplitRange range = RangeOf(a, len, split);  // begin: a multiple of 16
  const int begin = range.begin, end = range.end;
  const int num_tiles = end > begin ? (end - begin + kTile - 1) / kTile : 0;
  const int my_tiles = num_tiles > warp ? (num_tiles - warp + kWarps - 1) / kWarps : 0;

  const int32_t* table = a.pages + static_cast<int64_t>(b) * a.max_pages;
  const int64_t page_stride = static_cast<int64_t>(a.num_kv_heads) * a.page_size * HD;
  const int64_t head_offset = static_cast<int64_t>(kvh) * a.page_size * HD;
  const int offset_mask = a.page_size - 1;
  const uint32_t ring = SharedAddress(smem) + warp * kStages * 2 * kTileBytes;

  // Page numbers of this warp's tiles, 32 at a time: lane i holds tile 32 n + i's. The next batch
  // is read when the current one starts being used, so the table read never stalls a copy.
  auto load_pages = [&](int batch) -> int32_t {
    const int j = batch * 32 + lane;
    return j < my_tiles ? table[(begin + (warp + j * kWarps) * kTile) >> a.page_shift] : 0;
  };
  // Row mode: the row of tile row lane % 16 of this warp's tiles 2n + lane / 16, two tiles per
  // register, the next pair read while the current one is used.
  const int32_t* rows = a.rows + (static_cast<int64_t>(b) * a.num_kv_heads + kvh) * a.row_capacity;
  auto load_rows = [&](int pair) -> int32_t {
    const int j = 2 * pair + (lane >> 4);
    const int token = begin + (warp + j * kWarps) * kTile + (lane & 15);
    return j < my_tiles && token < end ? rows[token] : 0;
  };
  const bool row_mode = a.rows != nullptr;
  int32_t pages_now = row_mode ? load_rows(0) : load_pages(0);
  int32_t pages_next = row_mode ? load_rows(1) : load_pages(1);

  // Issues tile j's copies into its slot (nothing past this warp's tiles; the group is committed
  // either way so the wait count stays fixed). Called with j = 0, 1, 2, ... by the whole warp.
  auto issue_rows = [&](int j) {
    if (j > 0 && (j & 1) == 0) {
      pages_now = pages_next;
      pages_next = load_rows((j >> 1) + 1);
    }
    if (j < my_tiles) {
      const int base = begin + (warp + j * kWarps) * kTile;
      const uint32_t dst = ring + (j % kStages) * 2 * kTileBytes;
#pragma unroll
      for (int i = 0; i < kCopies; ++i) {
        const int r = i * kRowsPerCopy + lane / kChunks, c = lane % kChunks;
        const int32_t row = __shfl_sync(0xffffffffu, pages_now, ((j & 1) << 4) + r);
        const bool valid = base + r < end;
        const int64_t from = static_cast<int64_t>(row) * HD + c * 8;
        const uint32_t to = r * kRowBytes + ((c ^ (r & 7)) << 4);
        CopyAsync16OrZero(dst + to, a.k + from, valid);
        CopyAsync16OrZero(dst + kTileBytes + to, a.v + from, valid);
      }
    }
    CommitAsync();
  };
  auto issue = [&](int j) {
    if (row_mode) {
      issue_rows(j);
      return;
    }
    if (j > 0 && (j & 31) == 0) {
      pages_now = pages_next;
      pages_next = load_pages((j >> 5) + 1);
    }
    const int32_t page = __shfl_sync(0xffffffffu, pages_now, j & 31);
    if (j < my_tiles) {
      const int base = begin + (warp + j * kWarps) * kTile;
      const int64_t tile =
          page * page_stride + head_offset + static_cast<int64_t>(base & offset_mask) * HD;
      const bf16* kg = a.k + tile;
      const bf16* vg = a.v + tile;
      const uint32_t dst = ring + (j % kStages) * 2 * kTileBytes;
#pragma unroll
      for (int i = 0; i < kCopies; ++i) {
        const int r = i * kRowsPerCopy + lane / kChunks, c = lane % kChunks;
        const bool valid = base + r < end;
        const int from = r * HD + c * 8;
        const uint32_t to = r * kRowBytes + ((c ^ (r & 7)) << 4);
        CopyAsync16OrZero(dst + to, kg + from, valid);
        CopyAsync16OrZero(dst + kTileBytes + to, vg + from, valid);
      }
    }
    CommitAsync();
  };
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) issue(s);

  // B fragments of Q^T (k = dims, n = heads): lane holds head g, dims 16 kk + 2t (+1) and + 8.
  // Heads past the group are zero columns. Q stays unscaled bf16 (exact); the scale is applied to
  // the fp32 scores.
  uint32_t qf[kSteps][2];
  {
    const bf16* qrow = a.q + (static_cast<int64_t>(b) * a.num_q_heads + kvh * G + g) * HD + 2 * t;
#pragma unroll
    for (int kk = 0; kk < kSteps; ++kk) {
      qf[kk][0] = g < G ? *reinterpret_cast<const uint32_t*>(qrow + 16 * kk) : 0u;
      qf[kk][1] = g < G ? *reinterpret_cast<const uint32_t*>(qrow + 16 * kk + 8) : 0u;
    }
  }

  // Softmax state of heads 2t and 2t + 1 (base 2, scaled units). m is the same in every lane of a
  // column; l is this lane's share (tokens g and g + 8 of each tile), summed over lanes at the end.
  float m[2] = {-INFINITY, -INFINITY};
  float l[2] = {0.0f, 0.0f};
  // O^T accumulators: o[mt] = rows (dims) 16 mt + g and + 8, columns (heads) 2t and 2t + 1.
  float o[kSteps][4];
#pragma unroll
  for (int mt = 0; mt < kSteps; ++mt) o[mt][0] = o[mt][1] = o[mt][2] = o[mt][3] = 0.0f;

  // ldmatrix row addresses inside a slot. For K (A of S^T): matrix q = lane / 8 holds tokens
  // 8 (q & 1) + 0..7 and chunk 2 kk + (q >> 1). For V (A of O^T, transposed): tokens
  // 8 (q >> 1) + 0..7 and chunk 2 mt + (q & 1).
  const int quad = lane >> 3;
  const int k_row = (lane & 7) + ((quad & 1) << 3), k_half = quad >> 1;
  const int v_row = (lane & 7) + ((quad >> 1) << 3), v_half = quad & 1;
  const float scale2 = a.scale2;

  for (int j = 0; j < my_tiles; ++j) {
    __syncwarp();  // every lane is done reading the slot the next copies overwrite
    issue(j + kStages - 1);
    WaitAsync<kStages - 1>();  // this lane's copies of tile j have landed
    __syncwarp();              // ... and every other lane's
    const uint32_t ks = ring + (j % kStages) * 2 * kTileBytes;
    const uint32_t vs = ks + kTileBytes;

    // S^T: two accumulator chains halve the dependent mma latency.
    float acc[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll
    for (int kk = 0; kk < kSteps; ++kk) {
      uint32_t af[4];
      const int c = 2 * kk + k_half;
      LoadMatrixX4(ks + k_row * kRowBytes + ((c ^ (k_row & 7)) << 4), af);
      MmaBf16(acc[kk & 1], af, qf[kk][0], qf[kk][1]);
    }
    // s[0], s[1]: token g, heads 2t, 2t + 1; s[2], s[3]: token g + 8.
    const int base = begin + (warp + j * kWarps) * kTile;
    float s[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) s[i] = acc[0][i] + acc[1][i];
    if (base + g >= end) s[0] = s[1] = -INFINITY;
    if (base + g + 8 >= end) s[2] = s[3] = -INFINITY;

    float mx[2] = {fmaxf(s[0], s[2]), fmaxf(s[1], s[3])};
#pragma unroll
    for (int h = 0; h < 2; ++h) {
#pragma unroll
      for (int off = 4; off < 32; off <<= 1)
        mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], off));
    }
    // Every tile holds at least one valid token, so the new maximum is finite.
    float alpha[2], p[4];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float m_new = fmaxf(m[h], mx[h] * scale2);
      alpha[h] = exp2f(m[h] - m_new);  // 0 on the first tile (m = -inf)
      p[h] = exp2f(fmaf(s[h], scale2, -m_new));
      p[h + 2] = exp2f(fmaf(s[h + 2], scale2, -m_new));
      l[h] = fmaf(l[h], alpha[h], p[h] + p[h + 2]);
      m[h] = m_new;
    }
#pragma unroll
    for (int mt = 0; mt < kSteps; ++mt) {
      o[mt][0] *= alpha[0];
      o[mt][1] *= alpha[1];
      o[mt][2] *= alpha[0];
      o[mt][3] *= alpha[1];
    }
    // P^T as B fragments (k = tokens, n = heads), big and small bf16 terms.
    uint32_t big0, small0, big1, small1;
    PackBf16TwoTerms(p[0], p[1], big0, small0);  // tokens 0..7
    PackBf16TwoTerms(p[2], p[3], big1, small1);  // tokens 8..15
    big0 = Transpose8x8(big0);
    small0 = Transpose8x8(small0);
    big1 = Transpose8x8(big1);
    small1 = Transpose8x8(small1);
#pragma unroll
    for (int mt = 0; mt < kSteps; ++mt) {
      uint32_t af[4];
      const int c = 2 * mt + v_half;
      LoadMatrixX4Transposed(vs + v_row * kRowBytes + ((c ^ (v_row & 7)) << 4), af);
      MmaBf16(o[mt], af, big0, big1);
      MmaBf16(o[mt], af, small0, small1);
    }
  }
  WaitAsync<0>();

#pragma unroll
  for (int h = 0; h < 2; ++h) {
#pragma unroll
    for (int off = 4; off < 32; off <<= 1) l[h] += __shfl_xor_sync(0xffffffffu, l[h], off);
  }

  // Merge the warps' partials (same rule as MergePartial) through shared memory, reusing the ring:
  // sm_o [warps][8 heads][HD], sm_m and sm_l [warps][8 heads].
  __syncthreads();
  float* sm_o = reinterpret_cast<float*>(smem);
  float* sm_m = sm_o + kWarps * 8 * HD;
  float* sm_l = sm_m + kWarps * 8;
  {
    float* mine = sm_o + warp * 8 * HD;
#pragma unroll
    for (int mt = 0; mt < kSteps; ++mt) {
      mine[(2 * t) * HD + 16 * mt + g] = o[mt][0];
      mine[(2 * t + 1) * HD + 16 * mt + g] = o[mt][1];
      mine[(2 * t) * HD + 16 * mt + g + 8] = o[mt][2];
      mine[(2 * t + 1) * HD + 16 * mt + g + 8] = o[mt][3];
    }
    if (g == 0) {
      sm_m[warp * 8 + 2 * t] = m[0];
      sm_m[warp * 8 + 2 * t + 1] = m[1];
      sm_l[warp * 8 + 2 * t] = l[0];
      sm_l[warp * 8 + 2 * t + 1] = l[1];
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < G * HD; idx += kWarps * 32) {
    const int h = idx / HD, d = idx % HD;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, sm_m[w * 8 + h]);
    float total_l = 0.0f, total_o = 0.0f;
    if (mx != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float wt = exp2f(sm_m[w * 8 + h] - mx);  // 0 for a warp without tiles
        total_l = fmaf(sm_l[w * 8 + h], wt, total_l);
        total_o = fmaf(sm_o[(w * 8 + h) * HD + d], wt, total_o);
      }
    }
    const float value = total_l > 0.0f ? total_o / total_l : 0.0f;
    WriteResult(a, b, split, kvh * G + h, HD, d, value, total_l, mx);
  }
}

}  // namespace tc

template <int HD, int G, int U, int S>
cudaError_t LaunchWith(const DecodeArgs& a, int batch, cudaStream_t stream) {
  constexpr int bytes = PipelineBytes<U, S>();
  static const cudaError_t attr = cudaFuncSetAttribute(
      DecodeSplitKernel<HD, G, U, S>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (attr != cudaSuccess) return attr;
  const dim3 grid(a.num_splits, a.num_kv_heads, batch);
  DecodeSplitKernel<HD, G, U, S><<<grid, kThreads, bytes, stream>>>(a);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess || !a.partials) return err;
  MergeSplitsKernel<HD><<<dim3(a.num_q_heads, batch), std::max(HD, 32), 0, stream>>>(a);
  return cudaGetLastError();
}

// Tuning variants (tokens per thread per stage, stages) exist for the benchmark's shape only.
// Default: 4 tokens per thread per stage, 3 stages (96 KiB of copies in flight per block).
template <int HD, int G>
cudaError_t LaunchVariant(const DecodeArgs& a, int batch, int unroll, int stages,
                          cudaStream_t stream) {
  if constexpr (HD == 128 && G == 4) {
    if (unroll == 2 && stages == 4) return LaunchWith<HD, G, 2, 4>(a, batch, stream);
    if (unroll == 2 && stages == 6) return LaunchWith<HD, G, 2, 6>(a, batch, stream);
    if (unroll == 4 && stages == 2) return LaunchWith<HD, G, 4, 2>(a, batch, stream);
  }
  return LaunchWith<HD, G, 4, 3>(a, batch, stream);
}

template <int HD>
cudaError_t LaunchGroup(const DecodeArgs& a, int batch, int group, int unroll, int stages,
                        cudaStream_t stream) {
  switch (group) {
    case 1:
      return LaunchVariant<HD, 1>(a, batch, unroll, stages, stream);
    case 2:
      return LaunchVariant<HD, 2>(a, batch, unroll, stages, stream);
    case 4:
      return LaunchVariant<HD, 4>(a, batch, unroll, stages, stream);
    case 8:
      return LaunchVariant<HD, 8>(a, batch, unroll, stages, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

template <int HD, int G, int W, int S>
cudaError_t LaunchTensorCoreWith(const DecodeArgs& a, int batch, cudaStream_t stream) {
  constexpr int bytes = tc::RingBytes<HD, W, S>();
  static const cudaError_t attr = cudaFuncSetAttribute(
      tc::DecodeTensorCoreKernel<HD, G, W, S>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (attr != cudaSuccess) return attr;
  const dim3 grid(a.num_splits, a.num_kv_heads, batch);
  tc::DecodeTensorCoreKernel<HD, G, W, S><<<grid, W * 32, bytes, stream>>>(a);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess || !a.partials) return err;
  MergeSplitsKernel<HD><<<dim3(a.num_q_heads, batch), std::max(HD, 32), 0, stream>>>(a);
  return cudaGetLastError();
}

// Default: 4 warps, 3 slots of 16 tokens each (96 KiB per block for head_dim 128, two blocks per
// multiprocessor, 128 KiB of copies in flight per multiprocessor).
template <int HD, int G>
cudaError_t LaunchTensorCoreVariant(const DecodeArgs& a, int batch, int warps, int stages,
                                    cudaStream_t stream) {
  if constexpr (HD == 128 && G == 4) {
    if (warps == 4 && stages == 2) return LaunchTensorCoreWith<HD, G, 4, 2>(a, batch, stream);
    if (warps == 4 && stages == 4) return LaunchTensorCoreWith<HD, G, 4, 4>(a, batch, stream);
    if (warps == 8 && stages == 3) return LaunchTensorCoreWith<HD, G, 8, 3>(a, batch, stream);
  }
  return LaunchTensorCoreWith<HD, G, 4, 3>(a, batch, stream);
}

template <int HD>
cudaError_t LaunchTensorCoreGroup(const DecodeArgs& a, int batch, int group, int warps, int stages,
                                  cudaStream_t stream) {
  switch (group) {
    case 1:
      return LaunchTensorCoreVariant<HD, 1>(a, batch, warps, stages, stream);
    case 2:
      return LaunchTensorCoreVariant<HD, 2>(a, batch, warps, stages, stream);
    case 4:
      return LaunchTensorCoreVariant<HD, 4>(a, batch, warps, stages, stream);
    case 8:
      return LaunchTensorCoreVariant<HD, 8>(a, batch, warps, stages, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

int MultiprocessorCount() {
  static const int count = [] {
    int device = 0, sms = 0;
    if (cudaGetDevice(&device) != cudaSuccess) return 1;
    if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
      return 1;
    }
    return std::max(sms, 1);
  }();
  return count;
}

int ChunkAlignment(int page_size) { return std::max(page_size, 64); }

// Fills `blocks_per_sm` blocks per multiprocessor once, so every block of the single wave reads the
// same number of bytes; never splits below ~256 tokens.
int SplitsForOneWave(int batch, int num_kv_heads, int max_seq_len, int blocks_per_sm) {
  const int slots = blocks_per_sm * MultiprocessorCount();
  const int pairs = std::max(batch * num_kv_heads, 1);
  int splits = std::max(slots / pairs, 1);
  const int max_useful = std::max((max_seq_len + 255) / 256, 1);
  return std::min(splits, max_useful);
}

bool TensorCoresApply(int head_dim, int page_size) {
  return (head_dim == 64 || head_dim == 128) && page_size >= tc::kTile;
}

}  // namespace

size_t DecodeAttentionWorkspaceBytes(int batch, int num_q_heads, int head_dim, int num_splits) {
  if (num_splits <= 1) return 0;
  const size_t rows = static_cast<size_t>(batch) * num_splits * num_q_heads;
  return rows * (static_cast<size_t>(head_dim) + 1) * sizeof(float);
}

int ChooseDecodeSplits(int batch, int num_kv_heads, int max_seq_len, int page_size) {
  // Two resident blocks per multiprocessor, as the launch bounds ask.
  return SplitsForOneWave(batch, num_kv_heads, max_seq_len, 2);
}

int ChooseDecodeSplits(int batch, int num_kv_heads, int max_seq_len, int page_size, int head_dim,
                       DecodeKernel kernel) {
  // The tensor-core kernel could keep two 96 KiB blocks per multiprocessor, but one wave of one
  // block per multiprocessor measured 8-12% faster at batch 1 and equal at large batch x context
  // (bench/NOTES.md, v4 sweep): fewer, longer streams per split.
  if (kernel != DecodeKernel::kCudaCore && TensorCoresApply(head_dim, page_size)) {
    return SplitsForOneWave(batch, num_kv_heads, max_seq_len, 1);
  }
  return ChooseDecodeSplits(batch, num_kv_heads, max_seq_len, page_size);
}

cudaError_t DecodeAttention(const DecodeAttentionParams& p, cudaStream_t stream) {
  const int hd = p.kv.head_dim;
  const int nkv = p.kv.num_kv_heads;
  const int shift = Log2PowerOfTwo(p.kv.page_size);
  const bool row_mode = p.rows.rows != nullptr;
  if (p.q == nullptr || p.kv.k == nullptr || p.kv.v == nullptr ||
      (p.out == nullptr) == (p.out_f32 == nullptr) || shift < 0 || nkv <= 0 ||
      p.num_q_heads % nkv != 0 || p.batch < 0 || p.max_seq_len < 0 || p.extra_partials < 0) {
    return cudaErrorInvalidValue;
  }
  if (row_mode ? (p.rows.counts == nullptr || p.rows.capacity < 0 || p.num_splits <= 0)
               : (p.block_table.pages == nullptr || p.seq_lens == nullptr)) {
    return cudaErrorInvalidValue;
  }
  if (p.batch == 0) return cudaSuccess;
  const int group = p.num_q_heads / nkv;
  int splits = p.num_splits > 0
                   ? p.num_splits
                   : ChooseDecodeSplits(p.batch, nkv, p.max_seq_len, p.kv.page_size, hd, p.kernel);
  const int align = ChunkAlignment(p.kv.page_size);
  const int len = std::max(p.max_seq_len, 1);
  int chunk = (len + splits - 1) / splits;
  if (!row_mode) {
    chunk = (chunk + align - 1) / align * align;
    splits = (len + chunk - 1) / chunk;
    while (splits > 1 &&
           DecodeAttentionWorkspaceBytes(p.batch, p.num_q_heads, hd, splits + p.extra_partials) >
               p.workspace_bytes) {
      chunk *= 2;
      splits = (len + chunk - 1) / chunk;
    }
    if (splits == 1) chunk = std::max(chunk, len);
  }
  const int slots = splits + p.extra_partials;
  const bool partials = slots > 1;
  if (partials &&
      DecodeAttentionWorkspaceBytes(p.batch, p.num_q_heads, hd, slots) > p.workspace_bytes) {
    return cudaErrorInvalidValue;  // row mode keeps its splits; extra partials need their slots
  }

  DecodeArgs a;
  a.q = p.q;
  a.k = p.kv.k;
  a.v = p.kv.v;
  a.pages = p.block_table.pages;
  a.seq_lens = p.seq_lens;
  a.max_pages = p.block_table.max_pages_per_seq;
  a.num_q_heads = p.num_q_heads;
  a.num_kv_heads = nkv;
  a.page_size = p.kv.page_size;
  a.page_shift = shift;
  a.chunk = chunk;
  a.num_splits = splits;
  a.rows = p.rows.rows;
  a.row_counts = p.rows.counts;
  a.row_capacity = p.rows.capacity;
  a.split_stride = slots;
  a.partials = partials;
  a.scale2 = p.scale * kLog2e;
  a.out = p.out;
  a.out_f32 = p.out_f32;
  a.partial_o = static_cast<float*>(p.workspace);
  a.partial_lse =
      partials ? a.partial_o + static_cast<size_t>(p.batch) * slots * p.num_q_heads * hd : nullptr;
  const bool tensor_cores_apply = TensorCoresApply(hd, p.kv.page_size);
  if (p.kernel == DecodeKernel::kTensorCore && !tensor_cores_apply) return cudaErrorInvalidValue;
  if (p.kernel != DecodeKernel::kCudaCore && tensor_cores_apply) {
    return hd == 64 ? LaunchTensorCoreGroup<64>(a, p.batch, group, p.warps_per_block,
                                                p.pipeline_stages, stream)
                    : LaunchTensorCoreGroup<128>(a, p.batch, group, p.warps_per_block,
                                                 p.pipeline_stages, stream);
  }
  const int unroll = p.tokens_per_thread;
  const int stages = p.pipeline_stages;
  switch (hd) {
    case 8:
      return LaunchGroup<8>(a, p.batch, group, unroll, stages, stream);
    case 16:
      return LaunchGroup<16>(a, p.batch, group, unroll, stages, stream);
    case 24:
      return LaunchGroup<24>(a, p.batch, group, unroll, stages, stream);
    case 32:
      return LaunchGroup<32>(a, p.batch, group, unroll, stages, stream);
    case 64:
      return LaunchGroup<64>(a, p.batch, group, unroll, stages, stream);
    case 96:
      return LaunchGroup<96>(a, p.batch, group, unroll, stages, stream);
    case 128:
      return LaunchGroup<128>(a, p.batch, group, unroll, stages, stream);
    case 256:
      return LaunchGroup<256>(a, p.batch, group, unroll, stages, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace mpa::cuda
