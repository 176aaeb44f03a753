// The weights of a model in fp32 on the host, in PyTorch's nn.Linear layout ([out, in]).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/config/model_config.h"

namespace mpa {

struct LayerWeights {
  std::vector<float> input_norm;           // [hidden]
  std::vector<float> q_proj;               // [num_heads * head_dim, hidden]
  std::vector<float> k_proj;               // [num_kv_heads * head_dim, hidden]
  std::vector<float> v_proj;               // [num_kv_heads * head_dim, hidden]
  std::vector<float> q_bias;               // [num_heads * head_dim] or empty
  std::vector<float> k_bias;               // [num_kv_heads * head_dim] or empty
  std::vector<float> v_bias;               // [num_kv_heads * head_dim] or empty
  std::vector<float> q_norm;               // [head_dim] (Qwen3) or empty
  std::vector<float> k_norm;               // [head_dim] (Qwen3) or empty
  std::vector<float> o_proj;               // [hidden, num_heads * head_dim]
  std::vector<float> post_attention_norm;  // [hidden]
  std::vector<float> gate_proj;            // [ffn, hidden]
  std::vector<float> up_proj;              // [ffn, hidden]
  std::vector<float> down_proj;            // [hidden, ffn]
};

struct Weights {
  std::vector<float> embed_tokens;  // [vocab, hidden]
  std::vector<LayerWeights> layers;
  std::vector<float> final_norm;  // [hidden]
  std::vector<float> lm_head;     // [vocab, hidden]; empty when tied to embed_tokens

  const std::vector<float>& output_matrix() const {
    return lm_head.empty() ? embed_tokens : lm_head;
  }
};

// Reads every tensor the config calls for from the checkpoint folder (HF names). Every tensor's
// presence, shape and dtype is checked before any memory is allocated for the weights, and every
// value is checked to be finite as it is read (InvalidArgument naming the tensor otherwise);
// shows a progress bar on a terminal (stderr) for checkpoints over 64 MiB.
absl::StatusOr<Weights> LoadWeights(const std::string& dir, const ModelConfig& config);

// config.json and the weights of a checkpoint folder (LoadModelConfig, then LoadWeights): what
// Model::Load and CudaModel::Load both start from.
struct ConfigAndWeights {
  ModelConfig config;
  Weights weights;
};
absl::StatusOr<ConfigAndWeights> LoadConfigAndWeights(const std::string& dir);

// What Model::FromWeights and CudaModel::FromWeights both check before building anything: a valid
// config (ModelConfig::Validate), its number of layers, every tensor it calls for with the
// number of values its shape needs, and none it does not call for. InvalidArgument naming the
// tensor otherwise.
absl::Status CheckWeights(const ModelConfig& config, const Weights& weights);

// Seeded random weights of the config's shape (normal(0, 0.02) matrices, norms near 1).
Weights RandomWeights(const ModelConfig& config, uint64_t seed);

}  // namespace mpa
