// The command-line flags of Multipole Attention's knobs, defined once for every program that
// takes them (mpa_generate, mpa_server, mpa_eval, multipole_accuracy_bench), and the one place
// that maps them to a MultipoleConfig:
//
//   --token_budget N  --token_budget_fraction F  --cluster_ratio N  --levels 1|2
//   --cluster_interval N  --sink_tokens N  --min_clustered_tokens N  --block_tokens N
//   --centroid_keys post_rope|pre_rope_rotated_means|pre_rope  --lookup_position N
//
// An integer flag left at -1 (and --token_budget_fraction left at 0) keeps the config's value,
// the design's default for a default-constructed MultipoleConfig.
#pragma once

#include <string>

#include "absl/flags/declare.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "model/config/multipole_config.h"

ABSL_DECLARE_FLAG(int, token_budget);
ABSL_DECLARE_FLAG(float, token_budget_fraction);
ABSL_DECLARE_FLAG(int, cluster_ratio);
ABSL_DECLARE_FLAG(int, levels);
ABSL_DECLARE_FLAG(int, cluster_interval);
ABSL_DECLARE_FLAG(int, sink_tokens);
ABSL_DECLARE_FLAG(int, min_clustered_tokens);
ABSL_DECLARE_FLAG(int, block_tokens);
ABSL_DECLARE_FLAG(std::string, centroid_keys);
ABSL_DECLARE_FLAG(int, lookup_position);

namespace mpa {

// Sets the knobs of *config that the flags give, then validates it. --block_tokens, when
// given, also sets the final window's bounds to 1/2 and 3/2 blocks (the design's proportions).
// InvalidArgument naming the field for an unknown --centroid_keys or a config that fails
// MultipoleConfig::Validate.
absl::Status MultipoleConfigFromFlags(MultipoleConfig* config);

// Makes --help list the flags of the program's own source file (`main_source`, its path from
// the project root, e.g. "server/server_main.cc") and the multipole flags, with paths shown from
// the project root. Call before absl::ParseCommandLine. (By default --help lists only the flags
// of a file named after the program.)
void ListFlagsInHelp(absl::string_view main_source);

}  // namespace mpa
