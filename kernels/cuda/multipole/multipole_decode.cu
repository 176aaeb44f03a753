// MultipoleDecode: validation, workspace layout and the four launches (multipole_decode.h).
#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>

#include "kernels/cuda/multipole/multipole_decode.h"
#include "kernels/cuda/multipole/multipole_kernels.h"

namespace mpa::cuda {
namespace {

constexpr size_t kAlign = 256;

size_t AlignUp(size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

int MultiprocessorCount() {
  static const int count = [] {
    int device = 0, sms = 0;
    if (cudaGetDevice(&device) != cudaSuccess) return 132;
    if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
      return 132;
    }
    return std::max(sms, 1);
  }();
  return count;
}

bool SupportedHeadDim(int d) {
  return d == 8 || d == 16 || d == 24 || d == 32 || d == 64 || d == 96 || d == 128 || d == 256;
}

struct Sizes {
  size_t logits2, norms, approx_o, selected_o, scores, selected, rows, counts, partials;
  // Two levels (0 otherwise).
  size_t coarse_logits2 = 0, coarse_norms = 0, coarse_approx_o = 0, coarse_scores = 0,
         coarse_selected = 0, fine_ids = 0, list_begin = 0;
  size_t total() const {
    return logits2 + norms + approx_o + selected_o + scores + selected + rows + 2 * counts +
           partials + coarse_logits2 + coarse_norms + coarse_approx_o + coarse_scores +
           coarse_selected + fine_ids + list_begin + (fine_ids > 0 ? 2 * counts : 0);
  }
};

// Approximation partials after the exact part's: one per level.
int ApproximationSlots(const MultipoleShape& s) { return s.max_coarse_clusters > 0 ? 2 : 1; }

Sizes SizesOf(const MultipoleShape& s) {
  const size_t heads = static_cast<size_t>(s.batch) * s.num_kv_heads;
  const int group = s.num_kv_heads > 0 ? s.num_q_heads / s.num_kv_heads : 0;
  Sizes z;
  z.logits2 = AlignUp(heads * group * s.max_clusters * sizeof(float));
  z.norms = AlignUp(heads * group * multipole::LookupBlocks(s.max_clusters) * 2 * sizeof(float));
  z.approx_o =
      AlignUp(heads * group * multipole::LookupBlocks(s.max_clusters) * s.head_dim * sizeof(float));
  z.selected_o = AlignUp(heads * multipole::kSelectionWarps * group * s.head_dim * sizeof(float));
  z.scores = AlignUp(heads * s.max_clusters * sizeof(float));
  z.selected = AlignUp(heads * s.max_clusters);
  z.rows = AlignUp(heads * std::max(s.max_seq_len, 1) * sizeof(int32_t));
  z.counts = AlignUp(heads * sizeof(int32_t));
  // Two halves each take their own partials (the second at an aligned offset).
  z.partials = AlignUp(DecodeAttentionWorkspaceBytes(s.batch, s.num_q_heads, s.head_dim,
                                                     s.exact_splits + ApproximationSlots(s)) +
                       kAlign);
  if (s.max_coarse_clusters > 0) {
    const size_t nc = s.max_coarse_clusters;
    const size_t blocks = multipole::LookupBlocks(s.max_coarse_clusters);
    z.coarse_logits2 = AlignUp(heads * group * nc * sizeof(float));
    z.coarse_norms = AlignUp(heads * group * blocks * 2 * sizeof(float));
    z.coarse_approx_o = AlignUp(heads * group * blocks * s.head_dim * sizeof(float));
    z.coarse_scores = AlignUp(heads * nc * sizeof(float));
    z.coarse_selected = AlignUp(heads * nc);
    z.fine_ids = AlignUp(heads * s.max_clusters * sizeof(int32_t));
    z.list_begin = AlignUp(heads * (s.max_clusters + 1) * sizeof(int32_t));
  }
  return z;
}

// The second stream of a pipelined call and its fork/join events, one set per device (created on
// first use; relaxed stream capture allows that during a capture).
struct SideStream {
  cudaStream_t stream = nullptr;
  cudaEvent_t fork = nullptr;
  cudaEvent_t join = nullptr;
};

cudaError_t GetSideStream(SideStream* out) {
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  static std::mutex mu;
  static std::map<int, SideStream> sides;
  std::lock_guard<std::mutex> lock(mu);
  SideStream& side = sides[device];
  if (side.stream == nullptr) {
    if ((err = cudaStreamCreateWithFlags(&side.stream, cudaStreamNonBlocking)) != cudaSuccess ||
        (err = cudaEventCreateWithFlags(&side.fork, cudaEventDisableTiming)) != cudaSuccess ||
        (err = cudaEventCreateWithFlags(&side.join, cudaEventDisableTiming)) != cudaSuccess) {
      return err;
    }
  }
  *out = side;
  return cudaSuccess;
}

// Sequences [b0, b0 + nb) of a call: every per-sequence pointer moved to b0; the exact part's
// partials (and the approximation's slot in them) at `partials`, laid out for nb sequences.
multipole::StepArgs SliceArgs(multipole::StepArgs a, int b0, int nb, float* partials) {
  const int64_t nkv = a.num_kv_heads, group = a.num_q_heads / a.num_kv_heads;
  const int64_t heads = int64_t{b0} * nkv;
  a.q += int64_t{b0} * a.num_q_heads * a.head_dim;
  a.key_centroids += heads;
  a.value_centroids += heads;
  a.cluster_begin += heads;
  a.num_clusters += heads;
  if (a.fine_of_coarse != nullptr) {  // the coarse pass of two levels
    a.fine_of_coarse += heads;
    a.fine_slot_begin += heads;
    a.list_ids += heads * a.max_fine;
    a.list_begin += heads * (a.max_fine + 1);
    a.list_count += heads;
  }
  if (a.fine_ids != nullptr) {  // the fine pass
    a.fine_ids += heads * a.max_clusters;
    a.fine_list_begin += heads * (a.max_clusters + 1);
  }
  a.pages += int64_t{b0} * a.max_pages;
  a.clustered_pages += int64_t{b0} * a.max_clustered_pages;
  a.seq_lens += b0;
  a.sink_end += b0;
  a.clustered_end += b0;
  a.token_budget += b0;
  a.approximate += b0;
  if (a.quest != nullptr) a.quest += b0;
  if (a.two_level != nullptr) a.two_level += b0;
  if (a.coarse_budget != nullptr) a.coarse_budget += b0;
  if (a.fine_num_clusters != nullptr) a.fine_num_clusters += heads;
  a.batch = nb;
  a.logits2 += heads * group * a.max_clusters;
  a.norms += heads * group * a.lookup_blocks * 2;
  a.approx_o += heads * group * a.lookup_blocks * a.head_dim;
  a.selected_o += heads * multipole::kSelectionWarps * group * a.head_dim;
  a.scores += heads * a.max_clusters;
  a.selected += heads * a.max_clusters;
  a.rows += heads * a.max_seq_len;
  a.row_counts += heads;
  a.selected_tokens += heads;
  if (a.exact_tokens != nullptr) a.exact_tokens += b0;
  a.partial_o = partials;
  a.partial_lse = partials + int64_t{nb} * a.partial_slots * a.num_q_heads * a.head_dim;
  if (b0 != 0) a.trace = nullptr;
  return a;
}

}  // namespace

MultipoleShape ChooseMultipoleSplits(MultipoleShape shape) {
  const int heads = std::max(shape.batch * shape.num_kv_heads, 1);
  const int sms = MultiprocessorCount();
  if (shape.exact_splits <= 0) {
    // One wave of the tensor-core decode kernel (one block per multiprocessor).
    shape.exact_splits = std::clamp(sms / heads, 1, 32);
  }
  return shape;
}

size_t MultipoleDecodeWorkspaceBytes(const MultipoleShape& shape) {
  return SizesOf(ChooseMultipoleSplits(shape)).total();
}

MultipoleWorkspace MultipoleWorkspaceLayout(void* workspace, const MultipoleShape& shape) {
  const MultipoleShape s = ChooseMultipoleSplits(shape);
  const Sizes z = SizesOf(s);
  unsigned char* p = static_cast<unsigned char*>(workspace);
  MultipoleWorkspace w;
  w.logits2 = reinterpret_cast<float*>(p);
  p += z.logits2;
  w.norms = reinterpret_cast<float*>(p);
  p += z.norms;
  w.approx_o = reinterpret_cast<float*>(p);
  p += z.approx_o;
  w.selected_o = reinterpret_cast<float*>(p);
  p += z.selected_o;
  w.scores = reinterpret_cast<float*>(p);
  p += z.scores;
  w.selected = p;
  p += z.selected;
  w.rows = reinterpret_cast<int32_t*>(p);
  p += z.rows;
  w.row_counts = reinterpret_cast<int32_t*>(p);
  p += z.counts;
  w.selected_tokens = reinterpret_cast<int32_t*>(p);
  p += z.counts;
  w.partials = p;
  w.partials_bytes = z.partials;
  p += z.partials;
  if (s.max_coarse_clusters > 0) {
    w.coarse_logits2 = reinterpret_cast<float*>(p);
    p += z.coarse_logits2;
    w.coarse_norms = reinterpret_cast<float*>(p);
    p += z.coarse_norms;
    w.coarse_approx_o = reinterpret_cast<float*>(p);
    p += z.coarse_approx_o;
    w.coarse_scores = reinterpret_cast<float*>(p);
    p += z.coarse_scores;
    w.coarse_expanded = p;
    p += z.coarse_selected;
    w.fine_ids = reinterpret_cast<int32_t*>(p);
    p += z.fine_ids;
    w.list_begin = reinterpret_cast<int32_t*>(p);
    p += z.list_begin;
    w.fine_count = reinterpret_cast<int32_t*>(p);
    p += z.counts;
    w.expanded_tokens = reinterpret_cast<int32_t*>(p);
  }
  return w;
}

cudaError_t MultipoleDecode(const MultipoleDecodeParams& p, cudaStream_t stream) {
  const int hd = p.kv.head_dim;
  const int nkv = p.kv.num_kv_heads;
  const int shift = Log2PowerOfTwo(p.kv.page_size);
  const ClusteredRegion& c = p.clusters;
  if (p.q == nullptr || p.kv.k == nullptr || p.kv.v == nullptr || p.block_table.pages == nullptr ||
      p.seq_lens == nullptr || p.sink_end == nullptr || p.clustered_end == nullptr ||
      p.token_budget == nullptr || p.approximate == nullptr || c.pages.pages == nullptr ||
      c.key_centroids == nullptr || c.value_centroids == nullptr || c.cluster_begin == nullptr ||
      c.num_clusters == nullptr || (p.out == nullptr) == (p.out_f32 == nullptr) ||
      p.workspace == nullptr || shift < 0 || nkv <= 0 || p.num_q_heads % nkv != 0 || p.batch < 0 ||
      p.max_seq_len < 0 || !SupportedHeadDim(hd) || c.max_clusters < 1 ||
      c.max_clusters > kMaxClustersPerHead) {
    return cudaErrorInvalidValue;
  }
  const int group = p.num_q_heads / nkv;
  if (group != 1 && group != 2 && group != 4 && group != 8) return cudaErrorInvalidValue;
  const CoarseLevel& coarse = c.coarse;
  const bool two_levels = coarse.key_centroids != nullptr;
  if (two_levels && (coarse.value_centroids == nullptr || coarse.cluster_begin == nullptr ||
                     coarse.fine_begin == nullptr || coarse.num_clusters == nullptr ||
                     coarse.max_clusters < 1 || coarse.max_clusters > kMaxClustersPerHead ||
                     !(coarse.expansion > 0.0f) || !std::isfinite(coarse.expansion))) {
    return cudaErrorInvalidValue;
  }
  // Rows are int32 pool row indices.
  if (p.pool_pages <= 0 || p.pool_pages * nkv * p.kv.page_size > INT32_MAX) {
    return cudaErrorInvalidValue;
  }
  if (p.batch == 0) return cudaSuccess;

  MultipoleShape shape;
  shape.batch = p.batch;
  shape.num_q_heads = p.num_q_heads;
  shape.num_kv_heads = nkv;
  shape.head_dim = hd;
  shape.max_clusters = c.max_clusters;
  shape.max_seq_len = p.max_seq_len;
  shape.exact_splits = p.exact_splits;
  shape.max_coarse_clusters = two_levels ? coarse.max_clusters : 0;
  shape = ChooseMultipoleSplits(shape);
  if (p.workspace_bytes < MultipoleDecodeWorkspaceBytes(shape)) return cudaErrorInvalidValue;
  const MultipoleWorkspace w = MultipoleWorkspaceLayout(p.workspace, shape);

  multipole::StepArgs a;
  a.q = p.q;
  a.key_centroids = c.key_centroids;
  a.value_centroids = c.value_centroids;
  a.cluster_begin = c.cluster_begin;
  a.num_clusters = c.num_clusters;
  a.pages = p.block_table.pages;
  a.max_pages = p.block_table.max_pages_per_seq;
  a.clustered_pages = c.pages.pages;
  a.max_clustered_pages = c.pages.max_pages_per_seq;
  a.slots_after_sink = c.slots_after_sink ? 1 : 0;
  a.seq_lens = p.seq_lens;
  a.sink_end = p.sink_end;
  a.clustered_end = p.clustered_end;
  a.token_budget = p.token_budget;
  a.approximate = p.approximate;
  a.quest = p.quest;
  a.batch = p.batch;
  a.num_q_heads = p.num_q_heads;
  a.num_kv_heads = nkv;
  a.head_dim = hd;
  a.page_size = p.kv.page_size;
  a.page_shift = shift;
  a.max_clusters = c.max_clusters;
  a.max_seq_len = std::max(p.max_seq_len, 1);
  a.scale2 = p.scale * kLog2e;
  a.logits2 = w.logits2;
  a.norms = w.norms;
  a.approx_o = w.approx_o;
  a.selected_o = w.selected_o;
  a.lookup_blocks = multipole::LookupBlocks(c.max_clusters);
  a.scores = w.scores;
  a.selected = w.selected;
  a.rows = w.rows;
  a.row_counts = w.row_counts;
  a.selected_tokens = w.selected_tokens;
  a.exact_tokens = p.exact_tokens;
  const int slots = shape.exact_splits + ApproximationSlots(shape);
  a.partial_o = static_cast<float*>(w.partials);
  a.partial_lse = a.partial_o + static_cast<size_t>(p.batch) * slots * p.num_q_heads * hd;
  a.exact_splits = shape.exact_splits;
  a.partial_slots = slots;
  a.approx_slot = shape.exact_splits;
  a.trace = p.trace;
  a.cuda_core_lookup = p.kernel == DecodeKernel::kCudaCore;
  a.programmatic_launch = p.programmatic_launch;
  a.expansion = 0.0f;
  a.fine_of_coarse = nullptr;
  a.fine_slot_begin = nullptr;
  a.list_ids = nullptr;
  a.list_begin = nullptr;
  a.list_count = nullptr;
  a.max_fine = 0;
  a.fine_ids = nullptr;
  a.fine_list_begin = nullptr;
  a.two_level = coarse.two_level;
  a.fine_num_clusters = nullptr;
  a.coarse_budget = nullptr;

  // Two levels: the coarse pass ranks and expands the coarse clusters into the list of fine
  // clusters the fine pass (`a`) then treats as its clusters; its approximation takes the second
  // approximation slot.
  multipole::StepArgs ca = a;
  if (two_levels) {
    ca.key_centroids = coarse.key_centroids;
    ca.value_centroids = coarse.value_centroids;
    ca.cluster_begin = coarse.cluster_begin;
    ca.num_clusters = coarse.num_clusters;
    ca.max_clusters = coarse.max_clusters;
    ca.logits2 = w.coarse_logits2;
    ca.norms = w.coarse_norms;
    ca.approx_o = w.coarse_approx_o;
    ca.lookup_blocks = multipole::LookupBlocks(coarse.max_clusters);
    ca.scores = w.coarse_scores;
    ca.selected = w.coarse_expanded;
    ca.selected_tokens = w.expanded_tokens;
    ca.exact_tokens = nullptr;
    ca.approx_slot = shape.exact_splits + 1;
    ca.trace = nullptr;
    ca.expansion = coarse.expansion;
    ca.fine_of_coarse = coarse.fine_begin;
    ca.fine_slot_begin = c.cluster_begin;
    ca.list_ids = w.fine_ids;
    ca.list_begin = w.list_begin;
    ca.list_count = w.fine_count;
    ca.max_fine = c.max_clusters;
    ca.fine_num_clusters = c.num_clusters;
    ca.coarse_budget = coarse.token_budget;
    a.num_clusters = w.fine_count;
    a.fine_ids = w.fine_ids;
    a.fine_list_begin = w.list_begin;
  }

  DecodeAttentionParams d;
  d.q = p.q;
  d.kv = p.kv;
  d.block_table = p.block_table;
  d.batch = p.batch;
  d.num_q_heads = p.num_q_heads;
  d.max_seq_len = a.max_seq_len;
  d.scale = p.scale;
  d.num_splits = shape.exact_splits;
  d.rows.rows = w.rows;
  d.rows.counts = w.row_counts;
  d.rows.capacity = a.max_seq_len;
  d.extra_partials = ApproximationSlots(shape);
  d.out = p.out;
  d.out_f32 = p.out_f32;
  d.workspace = w.partials;
  d.workspace_bytes = w.partials_bytes;
  d.kernel = p.kernel;

  // One part: lookup, selection and the exact part of sequences [b0, b0 + nb) on `s`.
  // `looked_up`: recorded once this part's lookup is enqueued (the other part starts then).
  auto run = [&](int b0, int nb, void* partials, cudaStream_t s,
                 cudaEvent_t looked_up) -> cudaError_t {
    const multipole::StepArgs sa =
        nb == p.batch ? a : SliceArgs(a, b0, nb, static_cast<float*>(partials));
    cudaError_t err = cudaSuccess;
    if (two_levels) {
      // Benchmarks: stop_after 1 is the coarse lookup, 2 everything before the exact part.
      const multipole::StepArgs sca =
          nb == p.batch ? ca : SliceArgs(ca, b0, nb, static_cast<float*>(partials));
      err = multipole::LaunchCentroidLookup(sca, s);
      if (err == cudaSuccess && looked_up != nullptr) err = cudaEventRecord(looked_up, s);
      if (err != cudaSuccess || p.stop_after == 1) return err;
      if ((err = multipole::LaunchClusterSelection(sca, s)) != cudaSuccess) return err;
      err = multipole::LaunchCentroidLookup(sa, s);
      if (err == cudaSuccess && p.quest != nullptr) err = multipole::LaunchQuestScores(sa, s);
    } else {
      err = multipole::LaunchCentroidLookup(sa, s);
      if (err == cudaSuccess && p.quest != nullptr) err = multipole::LaunchQuestScores(sa, s);
      if (err == cudaSuccess && looked_up != nullptr) err = cudaEventRecord(looked_up, s);
      if (err != cudaSuccess || p.stop_after == 1) return err;
    }
    if (err != cudaSuccess) return err;
    if ((err = multipole::LaunchClusterSelection(sa, s)) != cudaSuccess) return err;
    if (p.stop_after == 2) return cudaSuccess;
    DecodeAttentionParams dd = d;
    if (nb != p.batch) {
      const int64_t nkv64 = nkv;
      dd.q += int64_t{b0} * p.num_q_heads * hd;
      dd.block_table.pages += int64_t{b0} * p.block_table.max_pages_per_seq;
      dd.batch = nb;
      dd.rows.rows += int64_t{b0} * nkv64 * a.max_seq_len;
      dd.rows.counts += int64_t{b0} * nkv64;
      if (dd.out != nullptr) dd.out += int64_t{b0} * p.num_q_heads * hd;
      if (dd.out_f32 != nullptr) dd.out_f32 += int64_t{b0} * p.num_q_heads * hd;
      dd.workspace = partials;
      dd.workspace_bytes = DecodeAttentionWorkspaceBytes(nb, p.num_q_heads, hd, slots);
    }
    return DecodeAttention(dd, s);
  };
  const bool pipelined = p.batch >= 2 && p.stop_after == 0 &&
                         (p.pipeline_parts == 2 || (p.pipeline_parts == 0 && p.batch * nkv >= 64));
  if (!pipelined) return run(0, p.batch, w.partials, stream, nullptr);

  SideStream side;
  cudaError_t err = GetSideStream(&side);
  if (err != cudaSuccess) return err;
  const int first = p.batch / 2;
  unsigned char* second_partials =
      static_cast<unsigned char*>(w.partials) +
      AlignUp(DecodeAttentionWorkspaceBytes(first, p.num_q_heads, hd, slots));
  // The second half starts once the first half's lookup is done: its lookup (memory-bound)
  // then runs beside the first half's selection (latency-bound), and its selection beside the
  // first half's exact part.
  err = run(0, first, w.partials, stream, side.fork);
  if (err == cudaSuccess) err = cudaStreamWaitEvent(side.stream, side.fork, 0);
  if (err != cudaSuccess) return err;
  const cudaError_t err2 = run(first, p.batch - first, second_partials, side.stream, nullptr);
  // Join even after a failed launch, so a capture is never left with an unjoined stream.
  const cudaError_t err3 = cudaEventRecord(side.join, side.stream);
  const cudaError_t err4 = cudaStreamWaitEvent(stream, side.join, 0);
  for (cudaError_t e : {err, err2, err3, err4}) {
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

}  // namespace mpa::cuda
