// The shapes the multipole kernels are instantiated for, dispatched from runtime values in one
// place: launch(std::integral_constant<int, HD>, std::integral_constant<int, G>) (or with G
// alone) is called for a supported head_dim HD and GQA group G; cudaErrorInvalidValue otherwise.
#pragma once

#include <cuda_runtime.h>

#include <type_traits>

namespace mpa::cuda::multipole {

template <typename Launch>
cudaError_t DispatchGroup(int group, Launch&& launch) {
  switch (group) {
    case 1:
      return launch(std::integral_constant<int, 1>{});
    case 2:
      return launch(std::integral_constant<int, 2>{});
    case 4:
      return launch(std::integral_constant<int, 4>{});
    case 8:
      return launch(std::integral_constant<int, 8>{});
    default:
      return cudaErrorInvalidValue;
  }
}

template <typename Launch>
cudaError_t DispatchHeadDimAndGroup(int head_dim, int group, Launch&& launch) {
  auto with = [&](auto hd) { return DispatchGroup(group, [&](auto g) { return launch(hd, g); }); };
  switch (head_dim) {
    case 8:
      return with(std::integral_constant<int, 8>{});
    case 16:
      return with(std::integral_constant<int, 16>{});
    case 24:
      return with(std::integral_constant<int, 24>{});
    case 32:
      return with(std::integral_constant<int, 32>{});
    case 64:
      return with(std::integral_constant<int, 64>{});
    case 96:
      return with(std::integral_constant<int, 96>{});
    case 128:
      return with(std::integral_constant<int, 128>{});
    case 256:
      return with(std::integral_constant<int, 256>{});
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace mpa::cuda::multipole
