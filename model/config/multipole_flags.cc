#include "model/config/multipole_flags.h"

#include "absl/flags/flag.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/strip.h"
#include "model/runtime/status_macros.h"

ABSL_FLAG(int, token_budget, -1,
          "Tokens of the clustered region attended exactly per KV head by the sparse attention "
          "modes (the server's default for requests that set none; -1: the design's 128)");
ABSL_FLAG(float, token_budget_fraction, 0.0f,
          "If > 0, the token budget as a fraction of the clustered region instead");
ABSL_FLAG(int, cluster_ratio, -1, "Tokens per centroid, single level (-1: the design's 16)");
ABSL_FLAG(int, levels, -1, "Cluster hierarchy levels, 1 or 2 (-1: the design's 1)");
ABSL_FLAG(int, cluster_interval, -1,
          "Decoded tokens between online cluster updates (-1: the design's 128)");
ABSL_FLAG(int, sink_tokens, -1, "First tokens always attended exactly (-1: the design's 10)");
ABSL_FLAG(int, min_clustered_tokens, -1,
          "Below this clustered length attention is dense (-1: the design's 256)");
ABSL_FLAG(int, block_tokens, -1,
          "Frozen cluster block size in tokens; the final window then holds 1/2..3/2 blocks (-1: "
          "the design's 8192)");
ABSL_FLAG(std::string, centroid_keys, "post_rope",
          "Keys that k-means clusters and how centroids are scored: post_rope (cached post-RoPE "
          "keys, scored with the query at its own position), pre_rope_rotated_means (pre-RoPE "
          "keys; the means of their post-RoPE keys scored the same way) or pre_rope (pre-RoPE "
          "keys and means, scored with the query rotated at --lookup_position)");
ABSL_FLAG(int, lookup_position, -1,
          "With --centroid_keys=pre_rope: position at which queries are rotated to score the "
          "centroids (-1: the design's 2048)");

namespace mpa {

namespace {

constexpr absl::string_view kThisSource = "model/config/multipole_flags.cc";

// The project root this file was compiled from, from __FILE__ ("" if it was given relative).
absl::string_view SourceRoot() {
  absl::string_view root = __FILE__;
  return absl::ConsumeSuffix(&root, kThisSource) ? root : absl::string_view();
}

}  // namespace

void ListFlagsInHelp(absl::string_view main_source) {
  const std::string main(main_source);
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [main](absl::string_view file) {
    return absl::EndsWith(file, main) || absl::EndsWith(file, kThisSource);
  };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  usage.normalize_filename = [](absl::string_view file) {
    if (!SourceRoot().empty()) absl::ConsumePrefix(&file, SourceRoot());
    while (absl::ConsumePrefix(&file, "./") || absl::ConsumePrefix(&file, "/")) {
    }
    return std::string(file);
  };
  absl::SetFlagsUsageConfig(usage);
}

absl::Status MultipoleConfigFromFlags(MultipoleConfig* config) {
  auto set_if_given = [](int flag, int* field) {
    if (flag != -1) *field = flag;
  };
  set_if_given(absl::GetFlag(FLAGS_token_budget), &config->token_budget);
  set_if_given(absl::GetFlag(FLAGS_cluster_ratio), &config->tokens_per_centroid);
  set_if_given(absl::GetFlag(FLAGS_levels), &config->levels);
  set_if_given(absl::GetFlag(FLAGS_cluster_interval), &config->cluster_interval);
  set_if_given(absl::GetFlag(FLAGS_sink_tokens), &config->sink_tokens);
  set_if_given(absl::GetFlag(FLAGS_min_clustered_tokens), &config->min_clustered_tokens);
  set_if_given(absl::GetFlag(FLAGS_block_tokens), &config->block_tokens);
  set_if_given(absl::GetFlag(FLAGS_lookup_position), &config->lookup_position);
  if (absl::GetFlag(FLAGS_block_tokens) != -1) {
    config->final_window_min = config->block_tokens / 2;
    config->final_window_max = config->block_tokens * 3 / 2;
  }
  if (const float fraction = absl::GetFlag(FLAGS_token_budget_fraction); fraction != 0.0f) {
    config->token_budget_fraction = fraction;
  }
  MPA_ASSIGN_OR_RETURN(config->centroid_keys,
                       ParseCentroidKeys(absl::GetFlag(FLAGS_centroid_keys)));
  return config->Validate();
}

}  // namespace mpa
