#include <algorithm>
#include <cmath>

#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/prefill_attention.h"

namespace mpa::cuda {
namespace {

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
