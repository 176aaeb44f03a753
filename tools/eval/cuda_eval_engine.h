// mpa_eval's GPU engine: the CUDA model (model/cuda/cuda_model.h) behind eval::EvalEngine. Built
// only where the CUDA model is (MPA_WITH_CUDA). Modes the GPU does not run (quest, two levels) are
// reported by Supports() and left out of the table with the reason.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "tools/eval/fidelity.h"

namespace mpa::eval {

// Loads `dir` onto GPU 0 with KV room for one sequence of max_context tokens and its clusters.
absl::StatusOr<std::unique_ptr<EvalEngine>> MakeCudaEngine(const std::string& dir, int max_context);

}  // namespace mpa::eval
