#include <algorithm>
#include <cmath>

#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/mma_util.cuh"
#include "kernels/cuda/prefill_attention.h"

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
using detail::WaitAsync;

constexpr int kRows = 64;      // query rows per block: (kRows / group) positions x group heads
constexpr int kTile = 32;      // keys per shared-memory tile
constexpr int kThreads = 128;  // 16 row groups of 4 rows x 8 column groups
constexpr int kScoreStride = kTile + 4;

struct PrefillArgs {
  const bf16* q;
  const int32_t* q_starts;
  const bf16* k;
  const bf16* v;
  const int32_t* pages;
  const int32_t* seq_lens;
  int max_pages;
  int num_q_heads;
  int num_kv_heads;
  int page_size;
  int page_shift;
  float scale2;
  bf16* out;
  float* out_f32;
};

template <int HD>
constexpr int SharedFloats() {
  return HD * kRows + HD * kTile + kTile * HD + kRows * kScoreStride;
}

// Thread (tr, tc) = (tid / 8, tid % 8) owns score rows 4tr..4tr+3, score columns 4tc..4tc+3 of
// each tile, and output dims tc*HD/8 .. (tc+1)*HD/8 - 1 of its four rows.
template <int HD, int G>
__global__ void __launch_bounds__(kThreads) PrefillKernel(PrefillArgs a) {
  constexpr int kPositions = kRows / G;
  constexpr int kDims = HD / 8;  // output dims per thread
  constexpr int kVec = HD / 8;   // 16-byte vectors per row
  extern __shared__ float smem[];
  float* q_t = smem;              // [HD][kRows] query, pre-scaled, transposed
  float* k_t = q_t + HD * kRows;  // [HD][kTile] keys, transposed
  float* v_s = k_t + HD * kTile;  // [kTile][HD] values
  float* p_s = v_s + kTile * HD;  // [kRows][kScoreStride] probabilities

  const int tile = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z;
  const int row0 = a.q_starts[b];
  const int num_new = a.q_starts[b + 1] - row0;
  const int first_pos = tile * kPositions;  // index among the new tokens
  if (first_pos >= num_new) return;
  const int kv_len = a.seq_lens[b];
  const int pos_base = kv_len - num_new;  // absolute position of new token 0
  const int last_pos = min(num_new, first_pos + kPositions) - 1;
  const int kv_end = pos_base + last_pos + 1;

  const int tid = threadIdx.x;
  for (int idx = tid; idx < kRows * kVec; idx += kThreads) {
    const int r = idx % kRows, c8 = idx / kRows;
    const int qi = first_pos + r / G, g = r % G;
    float f[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    if (qi < num_new) {
      const uint4 raw = *reinterpret_cast<const uint4*>(
          a.q + (static_cast<int64_t>(row0 + qi) * a.num_q_heads + kvh * G + g) * HD + c8 * 8);
      detail::Bf16x8ToFloat(raw, f);
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) q_t[(c8 * 8 + i) * kRows + r] = f[i] * a.scale2;
  }

  const int tr = tid / 8, tc = tid % 8;
  int row_pos[4];  // absolute position of each owned row; -1 for rows past the new tokens
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int qi = first_pos + (tr * 4 + i) / G;
    row_pos[i] = qi < num_new ? pos_base + qi : -1;
  }
  float m[4], l[4], o[4][kDims];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.0f;
#pragma unroll
    for (int d = 0; d < kDims; ++d) o[i][d] = 0.0f;
  }

  const int32_t* table = a.pages + static_cast<int64_t>(b) * a.max_pages;
  const int64_t page_stride = static_cast<int64_t>(a.num_kv_heads) * a.page_size * HD;
  const int64_t head_offset = static_cast<int64_t>(kvh) * a.page_size * HD;
  const int offset_mask = a.page_size - 1;

  for (int ks = 0; ks < kv_end; ks += kTile) {
    __syncthreads();  // the previous tile's readers are done
    for (int idx = tid; idx < kTile * kVec; idx += kThreads) {
      const int c = idx % kTile, c8 = idx / kTile;  // keys: token fastest (transposed store)
      const int t = ks + c;
      float f[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      if (t < kv_end) {
        const int64_t row = table[t >> a.page_shift] * page_stride + head_offset +
                            static_cast<int64_t>(t & offset_mask) * HD + c8 * 8;
        detail::Bf16x8ToFloat(*reinterpret_cast<const uint4*>(a.k + row), f);
      }
#pragma unroll
      for (int i = 0; i < 8; ++i) k_t[(c8 * 8 + i) * kTile + c] = f[i];
    }
    for (int idx = tid; idx < kTile * kVec; idx += kThreads) {
      const int c = idx / kVec, c8 = idx % kVec;  // values: dims fastest
      const int t = ks + c;
      float f[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      if (t < kv_end) {
        const int64_t row = table[t >> a.page_shift] * page_stride + head_offset +
                            static_cast<int64_t>(t & offset_mask) * HD + c8 * 8;
        detail::Bf16x8ToFloat(*reinterpret_cast<const uint4*>(a.v + row), f);
      }
#pragma unroll
      for (int i = 0; i < 8; ++i) v_s[c * HD + c8 * 8 + i] = f[i];
    }
    __syncthreads();

    float s[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) s[i][j] = 0.0f;
#pragma unroll 8
    for (int d = 0; d < HD; ++d) {
      const float4 qv = *reinterpret_cast<const float4*>(q_t + d * kRows + tr * 4);
      const float4 kv = *reinterpret_cast<const float4*>(k_t + d * kTile + tc * 4);
      const float qa[4] = {qv.x, qv.y, qv.z, qv.w};
      const float ka[4] = {kv.x, kv.y, kv.z, kv.w};
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) s[i][j] = fmaf(qa[i], ka[j], s[i][j]);
    }

#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int t = ks + tc * 4 + j;
        if (t > row_pos[i]) s[i][j] = -INFINITY;  // causal (and rows past the end: pos -1)
        mx = fmaxf(mx, s[i][j]);
      }
#pragma unroll
      for (int off = 1; off < 8; off <<= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
      const float m_new = fmaxf(m[i], mx);
      float p[4];
      float alpha = 1.0f;
      if (m_new == -INFINITY) {
#pragma unroll
        for (int j = 0; j < 4; ++j) p[j] = 0.0f;
      } else {
        alpha = exp2f(m[i] - m_new);
#pragma unroll
        for (int j = 0; j < 4; ++j) p[j] = exp2f(s[i][j] - m_new);
      }
      m[i] = m_new;
      l[i] = l[i] * alpha + (p[0] + p[1]) + (p[2] + p[3]);  // this thread's columns only
#pragma unroll
      for (int d = 0; d < kDims; ++d) o[i][d] *= alpha;
      *reinterpret_cast<float4*>(p_s + (tr * 4 + i) * kScoreStride + tc * 4) =
          make_float4(p[0], p[1], p[2], p[3]);
    }
    __syncthreads();

#pragma unroll 2
    for (int c = 0; c < kTile; c += 4) {
      float pr[4][4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float4 pv = *reinterpret_cast<const float4*>(p_s + (tr * 4 + i) * kScoreStride + c);
        pr[i][0] = pv.x;
        pr[i][1] = pv.y;
        pr[i][2] = pv.z;
        pr[i][3] = pv.w;
      }
#pragma unroll
      for (int cc = 0; cc < 4; ++cc) {
        const float* vrow = v_s + (c + cc) * HD + tc * kDims;
#pragma unroll
        for (int d = 0; d < kDims; ++d) {
          const float vd = vrow[d];
#pragma unroll
          for (int i = 0; i < 4; ++i) o[i][d] = fmaf(pr[i][cc], vd, o[i][d]);
        }
      }
    }
  }

#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float total = l[i];
#pragma unroll
    for (int off = 1; off < 8; off <<= 1) total += __shfl_xor_sync(0xffffffffu, total, off);
    if (row_pos[i] < 0) continue;
    const int r = tr * 4 + i;
    const int qi = first_pos + r / G, g = r % G;
    const float inv = total > 0.0f ? 1.0f / total : 0.0f;
    const int64_t base =
        (static_cast<int64_t>(row0 + qi) * a.num_q_heads + kvh * G + g) * HD + tc * kDims;
#pragma unroll
    for (int d = 0; d < kDims; ++d) {
      if (a.out != nullptr) {
        a.out[base + d] = __float2bfloat16_rn(o[i][d] * inv);
      } else {
        a.out_f32[base + d] = o[i][d] * inv;
      }
    }
  }
}

template <int HD, int G>
cudaError_t Launch(const PrefillArgs& a, const PrefillAttentionParams& p, cudaStream_t stream) {
  constexpr size_t bytes = SharedFloats<HD>() * sizeof(float);
  static const cudaError_t attr = cudaFuncSetAttribute(
      PrefillKernel<HD, G>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (attr != cudaSuccess) return attr;
  constexpr int kPositions = kRows / G;
  const dim3 grid((p.max_new_tokens + kPositions - 1) / kPositions, p.kv.num_kv_heads, p.batch);
  PrefillKernel<HD, G><<<grid, kThreads, bytes, stream>>>(a);
  return cudaGetLastError();
}

template <int HD>
cudaError_t LaunchGroup(const PrefillArgs& a, const PrefillAttentionParams& p, int group,
                        cudaStream_t stream) {
  switch (group) {
    case 1:
      return Launch<HD, 1>(a, p, stream);
    case 2:
      return Launch<HD, 2>(a, p, stream);
    case 4:
      return Launch<HD, 4>(a, p, stream);
    case 8:
      return Launch<HD, 8>(a, p, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

// ---------------------------------------------------------------------------------------------
// Tensor-core kernel (head_dim 64 or 128, sm_80+ instructions), FlashAttention-2 style.
//
// A block of 4 warps (8 by default at head_dim 128) owns kBlockM = 64 (128) query rows: kBlockM / G
// positions x the G heads of one KV head (row r = position r / G, head r % G), so each key/value
// tile serves the whole group. Warp w owns rows 16 w .. 16 w + 15. Key/value tiles of kBlockN = 64
// tokens stream through a two-slot cp.async ring (16-byte copies, chunks XOR-swizzled by row so
// ldmatrix hits eight bank groups). Per tile and warp:
//   S [16 x 64]  = Q [16 x HD] . K^T        (Q fragments in registers, K by ldmatrix)
//   O [16 x HD] += P [16 x 64] . V          (P straight from S's accumulators, V by ldmatrix.trans)
// with a base-2 online softmax in fp32. Only tiles that reach past the block's first position
// need the causal mask. With fp32 output, P goes to the tensor cores as two bf16 terms (hi + lo)
// so the output keeps ~16 bits of P, as the CUDA-core kernel does; bf16 output needs one term.
namespace tc {

constexpr int kBlockN = 64;  // keys per tile

template <int HD>
constexpr int SharedBytes() {
  return 2 * 2 * kBlockN * HD * 2;  // two slots of K and V tiles (Q is staged in slot 1 first)
}

// kWarps warps of 16 query rows each: kBlockM = 16 kWarps rows per block (4: 64, the default; 8:
// 128, which halves the tile loads per row and fits one block per multiprocessor).
template <int HD, int G, bool kTwoTerms, int kWarps>
__global__ void __launch_bounds__(kWarps * 32) PrefillTensorCoreKernel(PrefillArgs a) {
  static_assert(HD == 64 || HD == 128, "tensor-core tiles cover head_dim 64 and 128");
  static_assert(kWarps == 4 || kWarps == 8, "Q is staged in slot 1 (at most 2 tiles of rows)");
  constexpr int kThreads = kWarps * 32;
  constexpr int kBlockM = 16 * kWarps;
  constexpr int kPositions = kBlockM / G;
  constexpr int kChunks = HD / 8;  // 16-byte chunks per row
  constexpr int kRowBytes = HD * 2;
  constexpr int kTileBytes = kBlockN * kRowBytes;         // one K (or V) tile, also the Q block
  constexpr int kCopies = kBlockN * kChunks / kThreads;   // per K (or V) tile
  constexpr int kQCopies = kBlockM * kChunks / kThreads;  // the Q block
  constexpr int kSteps = HD / 16;  // k-steps of S, and 16-dim pairs of O's n-tiles
  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t base_addr = SharedAddress(smem);

  // Heaviest (last) position tiles first, over every head and sequence: causal work grows with
  // the tile index, and the light tiles fill the tail of the launch.
  const int tile = gridDim.z - 1 - blockIdx.z, kvh = blockIdx.x, b = blockIdx.y;
  const int row0 = a.q_starts[b];
  const int num_new = a.q_starts[b + 1] - row0;
  const int first_pos = tile * kPositions;
  if (first_pos >= num_new) return;
  const int kv_len = a.seq_lens[b];
  const int pos_base = kv_len - num_new;
  const int last_pos = min(num_new, first_pos + kPositions) - 1;
  const int kv_end = pos_base + last_pos + 1;
  const int num_tiles = (kv_end + kBlockN - 1) / kBlockN;
  // Tiles before this one hold only keys every row may see.
  const int first_masked = (pos_base + first_pos) / kBlockN;

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, t = lane & 3;

  const int32_t* table = a.pages + static_cast<int64_t>(b) * a.max_pages;
  const int64_t page_stride = static_cast<int64_t>(a.num_kv_heads) * a.page_size * HD;
  const int64_t head_offset = static_cast<int64_t>(kvh) * a.page_size * HD;
  const int offset_mask = a.page_size - 1;

  auto issue = [&](int j) {
    if (j < num_tiles) {
      const uint32_t dst = base_addr + (j & 1) * 2 * kTileBytes;
#pragma unroll
      for (int i = 0; i < kCopies; ++i) {
        const int idx = i * kThreads + tid;
        const int r = idx / kChunks, c = idx % kChunks;
        const int tok = j * kBlockN + r;
        const bool valid = tok < kv_end;
        const int64_t off = valid ? table[tok >> a.page_shift] * page_stride + head_offset +
                                        static_cast<int64_t>(tok & offset_mask) * HD + c * 8
                                  : 0;
        const uint32_t to = r * kRowBytes + ((c ^ (r & 7)) << 4);
        CopyAsync16OrZero(dst + to, a.k + off, valid);
        CopyAsync16OrZero(dst + kTileBytes + to, a.v + off, valid);
      }
    }
    CommitAsync();
  };

  // Q block staged in slot 1's K area: row r = position first_pos + r / G, head kvh * G + r % G.
  // Rows past the new tokens read nothing (zeros) and are never written.
  {
    const uint32_t dst = base_addr + 2 * kTileBytes;
#pragma unroll
    for (int i = 0; i < kQCopies; ++i) {
      const int idx = i * kThreads + tid;
      const int r = idx / kChunks, c = idx % kChunks;
      const int qi = first_pos + r / G;
      const bool valid = qi < num_new;
      const int64_t off =
          valid ? (static_cast<int64_t>(row0 + qi) * a.num_q_heads + kvh * G + r % G) * HD + c * 8
                : 0;
      CopyAsync16OrZero(dst + r * kRowBytes + ((c ^ (r & 7)) << 4), a.q + off, valid);
    }
  }
  issue(0);  // Q and tile 0 in one group
  WaitAsync<0>();
  __syncthreads();
  // A fragments of Q, one per 16-dim k-step: matrix lane / 8 holds rows 8 ((lane / 8) & 1) + 0..7
  // and chunk 2 kk + lane / 16.
  uint32_t qf[kSteps][4];
  {
    const int r = warp * 16 + (lane & 7) + (((lane >> 3) & 1) << 3);
    const uint32_t qs = base_addr + 2 * kTileBytes + r * kRowBytes;
#pragma unroll
    for (int kk = 0; kk < kSteps; ++kk) {
      const int c = 2 * kk + (lane >> 4);
      LoadMatrixX4(qs + ((c ^ (r & 7)) << 4), qf[kk]);
    }
  }
  __syncthreads();  // Q is in registers; slot 1 may be overwritten

  // This lane's two rows: 16 warp + g and + 8. Rows past the new tokens take the last valid
  // position, so they compute finite values that are dropped.
  int row_pos[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int qi = min(first_pos + (warp * 16 + g + 8 * h) / G, last_pos);
    row_pos[h] = pos_base + qi;
  }
  float m[2] = {-INFINITY, -INFINITY};
  float l[2] = {0.0f, 0.0f};
  float o[2 * kSteps][4];  // n-tile nt: dims 8 nt + 2t (+1), rows g and g + 8
#pragma unroll
  for (int nt = 0; nt < 2 * kSteps; ++nt) o[nt][0] = o[nt][1] = o[nt][2] = o[nt][3] = 0.0f;

  // ldmatrix rows: K (B of S, non-transposed) matrix q = lane / 8 holds keys 8 (q >> 1) + 0..7,
  // chunk 2 kk + (q & 1); V (B of O, transposed) holds keys 8 (q & 1) + 0..7, chunk 2 p + (q >> 1).
  const int k_row = (lane & 7) + ((lane >> 4) << 3), k_half = (lane >> 3) & 1;
  const int v_row = (lane & 7) + (((lane >> 3) & 1) << 3), v_half = lane >> 4;
  const float scale2 = a.scale2;

  for (int j = 0; j < num_tiles; ++j) {
    issue(j + 1);
    WaitAsync<1>();
    __syncthreads();
    const uint32_t ks = base_addr + (j & 1) * 2 * kTileBytes;
    const uint32_t vs = ks + kTileBytes;

    float s[kBlockN / 8][4];
#pragma unroll
    for (int nt = 0; nt < kBlockN / 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < kSteps; ++kk) {
#pragma unroll
      for (int np = 0; np < kBlockN / 16; ++np) {
        uint32_t bf[4];
        const int r = 16 * np + k_row, c = 2 * kk + k_half;
        LoadMatrixX4(ks + r * kRowBytes + ((c ^ (r & 7)) << 4), bf);
        MmaBf16(s[2 * np], qf[kk], bf[0], bf[1]);
        MmaBf16(s[2 * np + 1], qf[kk], bf[2], bf[3]);
      }
    }
    if (j >= first_masked) {
#pragma unroll
      for (int nt = 0; nt < kBlockN / 8; ++nt) {
        const int key = j * kBlockN + 8 * nt + 2 * t;
        if (key > row_pos[0]) s[nt][0] = -INFINITY;
        if (key + 1 > row_pos[0]) s[nt][1] = -INFINITY;
        if (key > row_pos[1]) s[nt][2] = -INFINITY;
        if (key + 1 > row_pos[1]) s[nt][3] = -INFINITY;
      }
    }
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < kBlockN / 8; ++nt) {
      mx[0] = fmaxf(mx[0], fmaxf(s[nt][0], s[nt][1]));
      mx[1] = fmaxf(mx[1], fmaxf(s[nt][2], s[nt][3]));
    }
    float alpha[2], m_scaled[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
      // Tile 0 always holds key 0, which every row sees, so m is finite from then on.
      const float m_new = fmaxf(m[h], mx[h] * scale2);
      alpha[h] = exp2f(m[h] - m_new);
      m[h] = m_new;
      m_scaled[h] = m_new;
    }
    float sum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int nt = 0; nt < kBlockN / 8; ++nt) {
      s[nt][0] = exp2f(fmaf(s[nt][0], scale2, -m_scaled[0]));
      s[nt][1] = exp2f(fmaf(s[nt][1], scale2, -m_scaled[0]));
      s[nt][2] = exp2f(fmaf(s[nt][2], scale2, -m_scaled[1]));
      s[nt][3] = exp2f(fmaf(s[nt][3], scale2, -m_scaled[1]));
      sum[0] += s[nt][0] + s[nt][1];
      sum[1] += s[nt][2] + s[nt][3];
    }
    l[0] = fmaf(l[0], alpha[0], sum[0]);
    l[1] = fmaf(l[1], alpha[1], sum[1]);
#pragma unroll
    for (int nt = 0; nt < 2 * kSteps; ++nt) {
      o[nt][0] *= alpha[0];
      o[nt][1] *= alpha[0];
      o[nt][2] *= alpha[1];
      o[nt][3] *= alpha[1];
    }
    // P's A fragments come straight from S's accumulators (keys 16 kk .. 16 kk + 15).
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      uint32_t pa[4], pb[4];
      if constexpr (kTwoTerms) {
        PackBf16TwoTerms(s[2 * kk][0], s[2 * kk][1], pa[0], pb[0]);
        PackBf16TwoTerms(s[2 * kk][2], s[2 * kk][3], pa[1], pb[1]);
        PackBf16TwoTerms(s[2 * kk + 1][0], s[2 * kk + 1][1], pa[2], pb[2]);
        PackBf16TwoTerms(s[2 * kk + 1][2], s[2 * kk + 1][3], pa[3], pb[3]);
      } else {
        pa[0] = PackBf16(s[2 * kk][0], s[2 * kk][1]);
        pa[1] = PackBf16(s[2 * kk][2], s[2 * kk][3]);
        pa[2] = PackBf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
        pa[3] = PackBf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
      }
#pragma unroll
      for (int dp = 0; dp < kSteps; ++dp) {
        uint32_t bf[4];
        const int r = 16 * kk + v_row, c = 2 * dp + v_half;
        LoadMatrixX4Transposed(vs + r * kRowBytes + ((c ^ (r & 7)) << 4), bf);
        MmaBf16(o[2 * dp], pa, bf[0], bf[1]);
        MmaBf16(o[2 * dp + 1], pa, bf[2], bf[3]);
        if constexpr (kTwoTerms) {
          MmaBf16(o[2 * dp], pb, bf[0], bf[1]);
          MmaBf16(o[2 * dp + 1], pb, bf[2], bf[3]);
        }
      }
    }
    __syncthreads();  // every warp is done with slot j & 1 before issue(j + 2) refills it
  }
  WaitAsync<0>();

#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float total = l[h];
    total += __shfl_xor_sync(0xffffffffu, total, 1);
    total += __shfl_xor_sync(0xffffffffu, total, 2);
    const int r = warp * 16 + g + 8 * h;
    const int qi = first_pos + r / G;
    if (qi >= num_new) continue;
    const float inv = 1.0f / total;  // total >= 1: the row's maximum contributes exp2(0)
    const int64_t out_row =
        (static_cast<int64_t>(row0 + qi) * a.num_q_heads + kvh * G + r % G) * HD;
#pragma unroll
    for (int nt = 0; nt < 2 * kSteps; ++nt) {
      const int64_t idx = out_row + 8 * nt + 2 * t;
      const float x = o[nt][2 * h] * inv, y = o[nt][2 * h + 1] * inv;
      if (a.out != nullptr) {
        *reinterpret_cast<__nv_bfloat162*>(a.out + idx) = __floats2bfloat162_rn(x, y);
      } else {
        *reinterpret_cast<float2*>(a.out_f32 + idx) = make_float2(x, y);
      }
    }
  }
}

template <int HD, int G, bool kTwoTerms, int kWarps>
cudaError_t Launch(const PrefillArgs& a, const PrefillAttentionParams& p, cudaStream_t stream) {
  constexpr int bytes = SharedBytes<HD>();
  static const cudaError_t attr =
      cudaFuncSetAttribute(PrefillTensorCoreKernel<HD, G, kTwoTerms, kWarps>,
                           cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (attr != cudaSuccess) return attr;
  constexpr int kPositions = 16 * kWarps / G;
  if (p.batch > 65535 || (p.max_new_tokens + kPositions - 1) / kPositions > 65535) {
    return cudaErrorInvalidValue;  // grid y and z limits
  }
  const dim3 grid(p.kv.num_kv_heads, p.batch, (p.max_new_tokens + kPositions - 1) / kPositions);
  PrefillTensorCoreKernel<HD, G, kTwoTerms, kWarps><<<grid, kWarps * 32, bytes, stream>>>(a);
  return cudaGetLastError();
}

template <int HD, bool kTwoTerms, int kWarps>
cudaError_t LaunchGroup(const PrefillArgs& a, const PrefillAttentionParams& p, int group,
                        cudaStream_t stream) {
  switch (group) {
    case 1:
      return Launch<HD, 1, kTwoTerms, kWarps>(a, p, stream);
    case 2:
      return Launch<HD, 2, kTwoTerms, kWarps>(a, p, stream);
    case 4:
      return Launch<HD, 4, kTwoTerms, kWarps>(a, p, stream);
    case 8:
      return Launch<HD, 8, kTwoTerms, kWarps>(a, p, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

template <int HD>
cudaError_t LaunchOutput(const PrefillArgs& a, const PrefillAttentionParams& p, int group,
                         cudaStream_t stream) {
  // Default from the H200 sweep: 8 warps (128 rows) won 4-7% at head_dim 128 from 4K up and lost
  // 8% at head_dim 64 (8K prompt).
  const int warps = p.tensor_core_warps != 0 ? p.tensor_core_warps : (HD == 128 ? 8 : 4);
  if (warps == 8) {
    return a.out_f32 != nullptr ? LaunchGroup<HD, true, 8>(a, p, group, stream)
                                : LaunchGroup<HD, false, 8>(a, p, group, stream);
  }
  return a.out_f32 != nullptr ? LaunchGroup<HD, true, 4>(a, p, group, stream)
                              : LaunchGroup<HD, false, 4>(a, p, group, stream);
}

}  // namespace tc

}  // namespace

cudaError_t PrefillAttention(const PrefillAttentionParams& p, cudaStream_t stream) {
  const int nkv = p.kv.num_kv_heads;
  const int shift = Log2PowerOfTwo(p.kv.page_size);
  if (p.q == nullptr || p.q_starts == nullptr || p.kv.k == nullptr || p.kv.v == nullptr ||
      p.block_table.pages == nullptr || p.seq_lens == nullptr ||
      (p.out == nullptr) == (p.out_f32 == nullptr) || shift < 0 || nkv <= 0 ||
      p.num_q_heads % nkv != 0 || p.batch < 0 || p.max_new_tokens < 0) {
    return cudaErrorInvalidValue;
  }
  if (p.batch == 0 || p.max_new_tokens == 0) return cudaSuccess;
  PrefillArgs a;
  a.q = p.q;
  a.q_starts = p.q_starts;
  a.k = p.kv.k;
  a.v = p.kv.v;
  a.pages = p.block_table.pages;
  a.seq_lens = p.seq_lens;
  a.max_pages = p.block_table.max_pages_per_seq;
  a.num_q_heads = p.num_q_heads;
  a.num_kv_heads = nkv;
  a.page_size = p.kv.page_size;
  a.page_shift = shift;
  a.scale2 = p.scale * kLog2e;
  a.out = p.out;
  a.out_f32 = p.out_f32;
  const int group = p.num_q_heads / nkv;
  const bool tensor_core_shape = p.kv.head_dim == 64 || p.kv.head_dim == 128;
  if (p.kernel == PrefillKernel::kTensorCore && !tensor_core_shape) return cudaErrorInvalidValue;
  if (p.tensor_core_warps != 0 && p.tensor_core_warps != 4 && p.tensor_core_warps != 8) {
    return cudaErrorInvalidValue;
  }
  if (p.kernel != PrefillKernel::kCudaCore && tensor_core_shape) {
    return p.kv.head_dim == 64 ? tc::LaunchOutput<64>(a, p, group, stream)
                               : tc::LaunchOutput<128>(a, p, group, stream);
  }
  switch (p.kv.head_dim) {
    case 8:
      return LaunchGroup<8>(a, p, group, stream);
    case 16:
      return LaunchGroup<16>(a, p, group, stream);
    case 24:
      return LaunchGroup<24>(a, p, group, stream);
    case 32:
      return LaunchGroup<32>(a, p, group, stream);
    case 64:
      return LaunchGroup<64>(a, p, group, stream);
    case 96:
      return LaunchGroup<96>(a, p, group, stream);
    case 128:
      return LaunchGroup<128>(a, p, group, stream);
    case 256:
      return LaunchGroup<256>(a, p, group, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace mpa::cuda
