#include <algorithm>
#include <cmath>

#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/device_util.cuh"

namespace mpa::cuda {
namespace {

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
  int chunk;  // tokens per split
  int num_splits;
  float scale2;  // scale * log2(e)
  bf16* out;
  float* out_f32;
  float* partial_o;    // [batch, num_splits, num_q_heads, head_dim]
  float* partial_lse;  // [batch, num_splits, num_q_heads] base 2
};

// cp.async (sm_80+); older targets copy synchronously (correct, only slower).
__device__ __forceinline__ void CopyAsync16(void* smem, const void* gmem) {
#if __CUDA_ARCH__ >= 800
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem));
#else
  *static_cast<uint4*>(smem) = *static_cast<const uint4*>(gmem);
#endif
}
__device__ __forceinline__ void CommitAsync() {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int N>
__device__ __forceinline__ void WaitAsync() {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
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
  const int len = a.seq_lens[b];
  const int begin = split * a.chunk;
  const int end = min(len, begin + a.chunk);
  const int slot = threadIdx.x / kLanes, lane = threadIdx.x % kLanes;
  const bool lane_active = lane < kVecs;  // head_dim not a power of two: spare lanes idle

  const int32_t* table = a.pages + static_cast<int64_t>(b) * a.max_pages;
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
          const int64_t row = table[t >> a.page_shift] * page_stride + head_offset +
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
      if (a.num_splits == 1) {
        const int64_t idx = (static_cast<int64_t>(b) * a.num_q_heads + qh) * HD + d;
        if (a.out != nullptr) {
          a.out[idx] = __float2bfloat16_rn(value);
        } else {
          a.out_f32[idx] = value;
        }
      } else {
        const int64_t row = (static_cast<int64_t>(b) * a.num_splits + split) * a.num_q_heads + qh;
        a.partial_o[row * HD + d] = value;
        if (d == 0) a.partial_lse[row] = total_l > 0.0f ? mx + log2f(total_l) : -INFINITY;
      }
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
  const int64_t first = static_cast<int64_t>(b) * a.num_splits * a.num_q_heads + qh;
  float mx = -INFINITY;
  for (int s = 0; s < a.num_splits; ++s) mx = fmaxf(mx, a.partial_lse[first + s * a.num_q_heads]);
  float acc = 0.0f, total = 0.0f;
  if (mx != -INFINITY) {
    for (int s = 0; s < a.num_splits; ++s) {
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

template <int HD, int G, int U, int S>
cudaError_t LaunchWith(const DecodeArgs& a, int batch, cudaStream_t stream) {
  constexpr int bytes = PipelineBytes<U, S>();
  static const cudaError_t attr = cudaFuncSetAttribute(
      DecodeSplitKernel<HD, G, U, S>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (attr != cudaSuccess) return attr;
  const dim3 grid(a.num_splits, a.num_kv_heads, batch);
  DecodeSplitKernel<HD, G, U, S><<<grid, kThreads, bytes, stream>>>(a);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess || a.num_splits == 1) return err;
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

}  // namespace

size_t DecodeAttentionWorkspaceBytes(int batch, int num_q_heads, int head_dim, int num_splits) {
  if (num_splits <= 1) return 0;
  const size_t rows = static_cast<size_t>(batch) * num_splits * num_q_heads;
  return rows * (static_cast<size_t>(head_dim) + 1) * sizeof(float);
}

int ChooseDecodeSplits(int batch, int num_kv_heads, int max_seq_len, int page_size) {
  // Two resident blocks per multiprocessor (the launch bounds ask for that): fill them once, so
  // every block of the single wave reads the same number of bytes; never split below ~256 tokens.
  const int slots = 2 * MultiprocessorCount();
  const int pairs = std::max(batch * num_kv_heads, 1);
  int splits = std::max(slots / pairs, 1);
  const int max_useful = std::max((max_seq_len + 255) / 256, 1);
  return std::min(splits, max_useful);
}

cudaError_t DecodeAttention(const DecodeAttentionParams& p, cudaStream_t stream) {
  const int hd = p.kv.head_dim;
  const int nkv = p.kv.num_kv_heads;
  const int shift = Log2PowerOfTwo(p.kv.page_size);
  if (p.q == nullptr || p.kv.k == nullptr || p.kv.v == nullptr || p.block_table.pages == nullptr ||
      p.seq_lens == nullptr || (p.out == nullptr) == (p.out_f32 == nullptr) || shift < 0 ||
      nkv <= 0 || p.num_q_heads % nkv != 0 || p.batch < 0 || p.max_seq_len < 0) {
    return cudaErrorInvalidValue;
  }
  if (p.batch == 0) return cudaSuccess;
  const int group = p.num_q_heads / nkv;
  int splits = p.num_splits > 0 ? p.num_splits
                                : ChooseDecodeSplits(p.batch, nkv, p.max_seq_len, p.kv.page_size);
  const int align = ChunkAlignment(p.kv.page_size);
  const int len = std::max(p.max_seq_len, 1);
  int chunk = (len + splits - 1) / splits;
  chunk = (chunk + align - 1) / align * align;
  splits = (len + chunk - 1) / chunk;
  while (splits > 1 &&
         DecodeAttentionWorkspaceBytes(p.batch, p.num_q_heads, hd, splits) > p.workspace_bytes) {
    chunk *= 2;
    splits = (len + chunk - 1) / chunk;
  }
  if (splits == 1) chunk = std::max(chunk, len);

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
  a.scale2 = p.scale * kLog2e;
  a.out = p.out;
  a.out_f32 = p.out_f32;
  a.partial_o = static_cast<float*>(p.workspace);
  a.partial_lse = splits > 1
                      ? a.partial_o + static_cast<size_t>(p.batch) * splits * p.num_q_heads * hd
                      : nullptr;
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
