// The architecture of a checkpoint, parsed from its config.json.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace mpa {

enum class Architecture { kLlama, kQwen2, kQwen3 };

// RoPE frequency scaling, as transformers' rope_type.
struct RopeScaling {
  enum class Type { kDefault, kLinear, kLlama3, kYarn };
  Type type = Type::kDefault;
  double factor = 1.0;
  // llama3
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  // llama3 and yarn: the context length the model was pretrained with
  int original_max_position_embeddings = 0;
  // yarn
  std::optional<double> attention_factor;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  std::optional<double> mscale;
  std::optional<double> mscale_all_dim;
  bool truncate = true;
};

struct ModelConfig {
  Architecture architecture = Architecture::kLlama;
  std::string architecture_name;  // as in config.json, e.g. "Qwen3ForCausalLM"
  int vocab_size = 0;
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int max_position_embeddings = 0;
  float rms_norm_eps = 1e-6f;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v biases (Qwen2 always; Llama when attention_bias)
  bool qk_norm = false;         // per-head RMSNorm of q and k before RoPE (Qwen3)
  std::optional<int> bos_token_id;
  std::vector<int> eos_token_ids;

  // Upper bounds Validate() enforces: far above any real model, low enough that no product of
  // them overflows and a config alone cannot ask for an absurd allocation.
  static constexpr int kMaxVocabSize = 1 << 22;
  static constexpr int kMaxHiddenSize = 1 << 16;
  static constexpr int kMaxIntermediateSize = 1 << 19;
  static constexpr int kMaxLayers = 1024;
  static constexpr int kMaxHeads = 1024;
  static constexpr int kMaxHeadDim = 1024;
  static constexpr int kMaxPositionEmbeddings = 1 << 24;

  int group_size() const { return num_heads / num_kv_heads; }
  // InvalidArgument naming the field for a value out of its range (every size > 0 and at most
  // its kMax*; token ids inside the vocabulary; eps and theta finite and > 0).
  absl::Status Validate() const;
};

// Parses config.json text. Accepts the classic form (rope_theta, rope_scaling at top level) and
// the newer rope_parameters form. InvalidArgument naming the field on anything malformed;
// Unimplemented naming the architecture if it is not one we run.
absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text);
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& dir);

// A named shape with no checkpoint ("qwen3-0.6b", "qwen3-8b"), for random-weight benchmarks.
absl::StatusOr<ModelConfig> NamedModelShape(const std::string& name);

}  // namespace mpa
