// Accuracy of Multipole Attention against dense attention on a real model: top-1 agreement and
// mean KL(dense || mode) of the next-token distribution along the dense greedy trajectory, for
// multipole and exact-only with each kind of centroid keys (post-RoPE, pre-RoPE with rotated
// means, pre-RoPE), and quest, at budgets of 10%, 25% and 50% of the clustered region.
//
//   multipole_accuracy_bench [--model DIR] [--tokens 400] [--commit HASH] [--out FILE]
//
// Knobs are scaled down to the model's 512-token context (interval 16, blocks of 128, ...); the
// shared multipole flags (model/config/multipole_flags.h: --sink_tokens, --cluster_interval,
// --cluster_ratio, --levels, --lookup_position, --block_tokens, --min_clustered_tokens) override
// them. The bench sweeps the centroid keys and the budgets (--budgets) itself, so --centroid_keys
// and --token_budget* have no effect here.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "model/attention/attention_accuracy.h"
#include "model/config/multipole_flags.h"
#include "model/cpu/model.h"

ABSL_FLAG(std::string, model, "../shared/models/stories260K", "model folder (stories260K)");
ABSL_FLAG(int, tokens, 400, "tokens generated greedily along the dense trajectory");
ABSL_FLAG(std::string, prompt_ids, "1,403,407,261,378",
          "prompt token ids (BOS + 'Once upon a time')");
ABSL_FLAG(std::string, budgets, "0.1,0.25,0.5",
          "token budgets as fractions of the clustered region");
ABSL_FLAG(std::string, commit, "unknown", "commit the numbers were measured at");
ABSL_FLAG(std::string, out, "", "also write the table (markdown) to this file");

namespace mpa {
namespace {

// The knobs scaled to a 512-token context (two levels: coarse 16 over fine 4 tokens per
// centroid), then whatever the multipole flags give; validated.
absl::StatusOr<MultipoleConfig> ScaledConfig() {
  MultipoleConfig c;
  c.sink_tokens = 4;
  c.cluster_interval = 16;
  c.tokens_per_centroid = 4;
  c.levels = 1;
  c.fine_tokens_per_centroid = 4;
  c.coarse_tokens_per_centroid = 16;
  c.lookup_position = 64;
  c.block_tokens = 128;
  c.final_window_min = c.block_tokens / 2;
  c.final_window_max = c.final_window_min + c.block_tokens - 1;
  c.min_clustered_tokens = 32;
  if (absl::Status s = MultipoleConfigFromFlags(&c); !s.ok()) return s;
  return c;
}

int Run() {
  std::vector<int32_t> prompt;
  for (absl::string_view id : absl::StrSplit(absl::GetFlag(FLAGS_prompt_ids), ',')) {
    prompt.push_back(std::stoi(std::string(id)));
  }
  std::vector<double> budgets;
  for (absl::string_view b : absl::StrSplit(absl::GetFlag(FLAGS_budgets), ',')) {
    budgets.push_back(std::stod(std::string(b)));
  }
  auto model = Model::Load(absl::GetFlag(FLAGS_model), ModelOptions{});
  if (!model.ok()) {
    std::fprintf(stderr, "%s\n", std::string(model.status().message()).c_str());
    return 1;
  }
  const absl::StatusOr<MultipoleConfig> scaled = ScaledConfig();
  if (!scaled.ok()) {
    std::fprintf(stderr, "%s\n", std::string(scaled.status().message()).c_str());
    return 1;
  }
  const MultipoleConfig& base = *scaled;
  const AttentionMode modes[] = {AttentionMode::kMultipole, AttentionMode::kExactOnly,
                                 AttentionMode::kQuest};
  // Each mode at each budget, with each kind of centroid keys, the design's default first
  // (quest has no centroids: run once, after the default).
  const CentroidKeys centroid_keys[] = {CentroidKeys::kPostRope, CentroidKeys::kPreRopeRotatedMeans,
                                        CentroidKeys::kPreRope};
  std::vector<AttentionOptions> runs;
  for (CentroidKeys keys : centroid_keys) {
    for (AttentionMode mode : modes) {
      if (mode == AttentionMode::kQuest && keys != centroid_keys[0]) continue;
      for (double b : budgets) {
        AttentionOptions o;
        o.mode = mode;
        o.multipole = base;
        o.multipole.centroid_keys = keys;
        o.multipole.token_budget_fraction = static_cast<float>(b);
        runs.push_back(o);
      }
    }
  }
  const int steps = absl::GetFlag(FLAGS_tokens);
  const auto start = std::chrono::steady_clock::now();
  std::vector<int32_t> dense_tokens;
  auto results = MeasureAgainstDense(**model, prompt, steps, runs, &dense_tokens);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!results.ok()) {
    std::fprintf(stderr, "%s\n", std::string(results.status().message()).c_str());
    return 1;
  }

  std::string table = absl::StrFormat(
      "# Multipole Attention accuracy on stories260K\n\n"
      "Commit `%s`, device: CPU (fp32 reference backend). Prompt ids `%s`; %d tokens generated "
      "greedily with dense attention, every mode fed the same tokens (teacher forcing). Metrics "
      "are over the steps in which the clustered region had reached min_clustered_tokens "
      "(earlier steps are dense by design): top-1 agreement with dense, mean and max "
      "KL(dense || mode) of the next-token distribution in nats, and the fraction of the cache "
      "(per layer and KV head) read exactly.\n\n"
      "Settings: sink %d, cluster interval %d, %s, block %d tokens, final "
      "window %d..%d, min clustered %d, k-means iterations %d (prefill) / %d (update), Quest "
      "pages of %d tokens. Budget = ceil(fraction x clustered region).\n\n"
      "Centroids (MultipoleConfig::centroid_keys): *post-RoPE* = k-means on the cached "
      "post-RoPE keys, their means scored with the query at its true position (`post_rope`, the "
      "design's default); *pre-RoPE + rotated means* = k-means on pre-RoPE keys, the means of "
      "their post-RoPE keys scored with the query at its true position "
      "(`pre_rope_rotated_means`); *pre-RoPE* = k-means on pre-RoPE keys, their means scored "
      "with the query rotated at lookup position %d (`pre_rope`, the paper's variant).\n\n"
      "| mode | centroids | budget | steps | top-1 agreement | mean KL | max KL | read exactly |\n"
      "|---|---|---|---|---|---|---|---|\n",
      absl::GetFlag(FLAGS_commit), absl::StrJoin(prompt, ","), steps, base.sink_tokens,
      base.cluster_interval,
      base.levels == 2
          ? absl::StrFormat("two levels (coarse 1/%d over fine 1/%d)",
                            base.coarse_tokens_per_centroid, base.fine_tokens_per_centroid)
          : absl::StrFormat("one centroid per %d tokens", base.tokens_per_centroid),
      base.block_tokens, base.final_window_min, base.final_window_max, base.min_clustered_tokens,
      base.prefill_kmeans_iterations, base.update_kmeans_iterations, base.quest_page_tokens,
      base.lookup_position);
  for (const AccuracyResult& r : *results) {
    const char* centroids = "-";  // quest
    if (r.options.mode != AttentionMode::kQuest) {
      switch (r.options.multipole.centroid_keys) {
        case CentroidKeys::kPostRope:
          centroids = "post-RoPE";
          break;
        case CentroidKeys::kPreRopeRotatedMeans:
          centroids = "pre-RoPE + rotated means";
          break;
        case CentroidKeys::kPreRope:
          centroids = "pre-RoPE";
          break;
      }
    }
    table += absl::StrFormat("| %s | %s | %.0f%% | %d | %.4f | %.5f | %.4f | %.3f |\n",
                             AttentionModeName(r.options.mode), centroids,
                             100.0 * r.options.multipole.token_budget_fraction, r.steps_compared,
                             r.top1_agreement, r.mean_kl, r.max_kl, r.sparsity);
  }
  table += absl::StrFormat("\nMeasured in %.1f s (all modes in one batch).\n", seconds);
  std::printf("%s", table.c_str());
  if (const std::string out = absl::GetFlag(FLAGS_out); !out.empty()) {
    std::ofstream(out) << table;
  }
  return 0;
}

}  // namespace
}  // namespace mpa

int main(int argc, char** argv) {
  mpa::ListFlagsInHelp("bench/multipole_accuracy_bench.cc");
  absl::ParseCommandLine(argc, argv);
  return mpa::Run();
}
