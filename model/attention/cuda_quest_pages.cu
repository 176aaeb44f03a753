#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/multipole/multipole_decode.h"
#include "model/attention/cuda_quest_pages.h"
#include "model/cuda/cuda_status.h"
#include "model/runtime/status_macros.h"

namespace mpa {

CudaQuestPages::CudaQuestPages(int page_tokens, int num_layers, int num_kv_heads, int head_dim,
                               DeviceMemoryBudget* budget)
    : page_tokens_(page_tokens),
      num_layers_(num_layers),
      num_kv_heads_(num_kv_heads),
      head_dim_(head_dim),
      charge_(budget) {}

CudaQuestPages::~CudaQuestPages() {
  cudaFree(page_min_);
  cudaFree(page_max_);
  cudaFree(page_begin_);
  cudaFree(device_pages_);
}

const cuda::bf16* CudaQuestPages::page_min(int layer, int head) const {
  return page_min_ + (static_cast<int64_t>(layer) * num_kv_heads_ + head) * capacity_ * head_dim_;
}
const cuda::bf16* CudaQuestPages::page_max(int layer, int head) const {
  return page_max_ + (static_cast<int64_t>(layer) * num_kv_heads_ + head) * capacity_ * head_dim_;
}

absl::Status CudaQuestPages::Update(const CudaClusterState::Context& ctx, int begin, int end) {
  const std::vector<int32_t>& pages = *ctx.pages;
  const cudaStream_t stream = ctx.stream;
  if (num_pages_ > 0 && begin != region_begin_) {
    return absl::InternalError("Quest pages: the region's start moved");
  }
  if (end <= region_end_ || end <= begin) return absl::OkStatus();
  const int P = page_tokens_;
  const int pages_needed = (end - begin + P - 1) / P;
  int first_page = num_pages_ > 0 ? (region_end_ - begin) / P : 0;
  if (pages_needed > capacity_) {
    // Doubling; the old bounds are recomputed rather than copied (amortised over the growth).
    int capacity = std::max(64, capacity_);
    while (capacity < pages_needed) capacity *= 2;
    const int64_t rows = int64_t{num_layers_} * num_kv_heads_ * capacity * head_dim_;
    MPA_RETURN_IF_ERROR(charge_.Resize(
        2 * rows * static_cast<int64_t>(sizeof(cuda::bf16)) + (int64_t{capacity} + 1) * 4,
        "a sequence's Quest page bounds"));  // (its copy of the page table, 4 bytes a page, not)
    cuda::bf16* mn = nullptr;
    cuda::bf16* mx = nullptr;
    int32_t* pb = nullptr;
    MPA_CUDA_STATE(cudaMallocAsync(&mn, rows * sizeof(cuda::bf16), stream));
    const cudaError_t e1 = cudaMallocAsync(&mx, rows * sizeof(cuda::bf16), stream);
    const cudaError_t e2 =
        e1 == cudaSuccess ? cudaMallocAsync(&pb, (capacity + 1) * sizeof(int32_t), stream) : e1;
    if (e2 != cudaSuccess) {
      cudaFreeAsync(mn, stream);
      if (mx != nullptr) cudaFreeAsync(mx, stream);
      return CudaStateStatus(e2, "Quest page bounds");
    }
    if (page_min_ != nullptr) {
      cudaFreeAsync(page_min_, stream);
      cudaFreeAsync(page_max_, stream);
      cudaFreeAsync(page_begin_, stream);
    }
    page_min_ = mn;
    page_max_ = mx;
    page_begin_ = pb;
    capacity_ = capacity;
    first_page = 0;
  }
  if (static_cast<int>(pages.size()) > device_pages_capacity_) {
    int capacity = std::max<int>(64, device_pages_capacity_);
    while (capacity < static_cast<int>(pages.size())) capacity *= 2;
    int32_t* fresh = nullptr;
    MPA_CUDA_STATE(cudaMallocAsync(&fresh, capacity * sizeof(int32_t), stream));
    if (device_pages_ != nullptr) cudaFreeAsync(device_pages_, stream);
    device_pages_ = fresh;
    device_pages_capacity_ = capacity;
  }
  // Pageable source: returns once the host vector has been read.
  MPA_CUDA_STATE(cudaMemcpyAsync(device_pages_, pages.data(), pages.size() * sizeof(int32_t),
                                 cudaMemcpyHostToDevice, stream));
  for (int l = 0; l < num_layers_; ++l) {
    cuda::QuestPageBoundsParams p;
    p.kv = ctx.layers[l];
    p.pages = device_pages_;
    p.region_begin = begin;
    p.region_end = end;
    p.page_tokens = P;
    p.first_page = first_page;
    p.end_page = pages_needed;
    p.page_min = page_min_ + int64_t{l} * num_kv_heads_ * capacity_ * head_dim_;
    p.page_max = page_max_ + int64_t{l} * num_kv_heads_ * capacity_ * head_dim_;
    p.head_stride = int64_t{capacity_} * head_dim_;
    p.page_begin = l == 0 ? page_begin_ : nullptr;
    MPA_CUDA_STATE(cuda::QuestPageBounds(p, stream));
  }
  region_begin_ = begin;
  region_end_ = end;
  num_pages_ = pages_needed;
  return absl::OkStatus();
}

}  // namespace mpa
