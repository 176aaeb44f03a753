// How mpa_server reaches the GPU engine: CudaModelEngine is built into a module
// (libmpa_server_cuda_engine.so, next to the binary) that mpa_server loads only for --device=cuda.
//
// Why not link it in: cuBLAS (libcublasLt) carries about 92 KiB of static thread-local storage,
// and glibc places a program's static TLS inside every thread's stack. The metrics endpoint's
// HTTP library starts its threads with a fixed 100 KiB stack, which then no longer fits, so
// linking cuBLAS into mpa_server broke --metrics_address even on the CPU. A library opened with
// dlopen gets dynamic TLS instead, and the CPU path does not load CUDA at all.
#pragma once

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "model/cuda/cuda_model.h"
#include "server/engine.h"

namespace mpa::server {

inline constexpr char kCudaEngineModule[] = "libmpa_server_cuda_engine.so";
inline constexpr char kCudaEngineFactory[] = "MpaServerCreateCudaEngine";

// The module's factory (found with dlsym under kCudaEngineFactory): CudaModelEngine::Load; on
// success *engine holds the engine (the module must stay loaded while it lives).
using CudaEngineFactory = absl::Status (*)(const std::string& dir, const CudaModelOptions& options,
                                           std::unique_ptr<Engine>* engine);

}  // namespace mpa::server
