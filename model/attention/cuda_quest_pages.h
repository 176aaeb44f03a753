// The Quest baseline's state of one sequence on the GPU (DESIGN.md section 5; the CPU reference is
// model/attention/quest_attention.cc): for every layer and KV head, the per-channel minimum and
// maximum of the post-RoPE keys of each page of quest_page_tokens consecutive positions of the
// region [sink end, clustered end) that Multipole would cluster, and each page's first slot. The
// region stays in position order in the sequence's own pages (slot s is position region_begin + s),
// so the decode step treats pages as clusters that are never approximated (MultipoleDecode with
// `quest`). Memory outside the KV pool: 2 bf16 rows per page, 1/8 of the region's keys at 16
// tokens per page.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "kernels/cuda/common.h"
#include "model/attention/cuda_clusters.h"

namespace mpa {

class CudaQuestPages {
 public:
  // `budget` (may be null: not counted) is charged for the page bounds before they grow.
  CudaQuestPages(int page_tokens, int num_layers, int num_kv_heads, int head_dim,
                 DeviceMemoryBudget* budget = nullptr);
  ~CudaQuestPages();
  CudaQuestPages(const CudaQuestPages&) = delete;
  CudaQuestPages& operator=(const CudaQuestPages&) = delete;

  int region_begin() const { return region_begin_; }
  int region_end() const { return region_end_; }
  int num_pages() const { return num_pages_; }
  int64_t device_bytes() const { return charge_.bytes(); }   // the page bounds' arrays
  const cuda::bf16* page_min(int layer, int head) const;     // [num_pages, head_dim]
  const cuda::bf16* page_max(int layer, int head) const;     // [num_pages, head_dim]
  const int32_t* page_begin() const { return page_begin_; }  // [num_pages + 1], every head

  // Brings the pages up to the region [begin, end) (begin fixed after the first call): pages from
  // the one that held the old end (it may have been partial) are computed anew. Reads the pools
  // and the sequence's pages of `ctx` (as the cluster maintenance), enqueued on its stream.
  absl::Status Update(const CudaClusterState::Context& ctx, int begin, int end);

 private:
  int page_tokens_, num_layers_, num_kv_heads_, head_dim_;
  int region_begin_ = 0, region_end_ = 0, num_pages_ = 0;
  int capacity_ = 0;                // pages per (layer, head) the arrays hold
  cuda::bf16* page_min_ = nullptr;  // [layers, heads, capacity, head_dim]
  cuda::bf16* page_max_ = nullptr;
  int32_t* page_begin_ = nullptr;    // [capacity + 1]
  int32_t* device_pages_ = nullptr;  // the sequence's page list, for the bounds kernel
  int device_pages_capacity_ = 0;
  DeviceMemoryCharge charge_;
};

}  // namespace mpa
