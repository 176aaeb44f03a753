// CUDA runtime errors as absl::Status for the GPU model's state code: an allocation failure is
// ResourceExhausted (the caller may fall back, e.g. a sequence attends exactly until memory frees),
// anything else Internal, both naming what failed. MPA_CUDA returns from the calling function.
#pragma once

#include <cuda_runtime.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "model/runtime/status_macros.h"

namespace mpa {

inline absl::Status CudaStateStatus(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  if (err == cudaErrorMemoryAllocation) {
    return absl::ResourceExhaustedError(
        absl::StrCat(what, ": device memory exhausted (", cudaGetErrorString(err), ")"));
  }
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(err)));
}

}  // namespace mpa

#define MPA_CUDA_STATE(expr) MPA_RETURN_IF_ERROR(::mpa::CudaStateStatus((expr), #expr))
