#include "model/io/weights.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "model/io/progress_bar.h"
#include "model/io/safetensors.h"
#include "model/runtime/status_macros.h"

namespace mpa {

namespace {

// W is Weights (to fill) or const Weights (to check).
template <typename W>
struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  std::conditional_t<std::is_const_v<W>, const std::vector<float>, std::vector<float>>* dest;
};

// The tensors the config calls for, in checkpoint order. w.layers must hold c.num_layers layers.
template <typename W>
std::vector<TensorSpec<W>> ExpectedTensors(const ModelConfig& c, W& w) {
  const int64_t hidden = c.hidden_size;
  const int64_t q_dim = int64_t{c.num_heads} * c.head_dim;
  const int64_t kv_dim = int64_t{c.num_kv_heads} * c.head_dim;
  const int64_t ffn = c.intermediate_size;
  std::vector<TensorSpec<W>> specs;
  specs.push_back({"model.embed_tokens.weight", {c.vocab_size, hidden}, &w.embed_tokens});
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    auto& l = w.layers[i];
    specs.push_back({p + "input_layernorm.weight", {hidden}, &l.input_norm});
    specs.push_back({p + "self_attn.q_proj.weight", {q_dim, hidden}, &l.q_proj});
    specs.push_back({p + "self_attn.k_proj.weight", {kv_dim, hidden}, &l.k_proj});
    specs.push_back({p + "self_attn.v_proj.weight", {kv_dim, hidden}, &l.v_proj});
    if (c.attention_bias) {
      specs.push_back({p + "self_attn.q_proj.bias", {q_dim}, &l.q_bias});
      specs.push_back({p + "self_attn.k_proj.bias", {kv_dim}, &l.k_bias});
      specs.push_back({p + "self_attn.v_proj.bias", {kv_dim}, &l.v_bias});
    }
    if (c.qk_norm) {
      specs.push_back({p + "self_attn.q_norm.weight", {c.head_dim}, &l.q_norm});
      specs.push_back({p + "self_attn.k_norm.weight", {c.head_dim}, &l.k_norm});
    }
    specs.push_back({p + "self_attn.o_proj.weight", {hidden, q_dim}, &l.o_proj});
    specs.push_back({p + "post_attention_layernorm.weight", {hidden}, &l.post_attention_norm});
    specs.push_back({p + "mlp.gate_proj.weight", {ffn, hidden}, &l.gate_proj});
    specs.push_back({p + "mlp.up_proj.weight", {ffn, hidden}, &l.up_proj});
    specs.push_back({p + "mlp.down_proj.weight", {hidden, ffn}, &l.down_proj});
  }
  specs.push_back({"model.norm.weight", {hidden}, &w.final_norm});
  if (!c.tie_word_embeddings)
    specs.push_back({"lm_head.weight", {c.vocab_size, hidden}, &w.lm_head});
  return specs;
}

int64_t NumElements(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

}  // namespace

absl::StatusOr<Weights> LoadWeights(const std::string& dir, const ModelConfig& config) {
  MPA_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(dir));
  Weights w;
  w.layers.resize(config.num_layers);
  std::vector<TensorSpec<Weights>> specs = ExpectedTensors(config, w);
  // Every tensor is checked against the config before anything is allocated: the allocations
  // below are then sized by tensors the checkpoint really holds, never by config.json alone.
  for (const TensorSpec<Weights>& spec : specs) {
    MPA_RETURN_IF_ERROR(checkpoint->CheckF32(spec.name, spec.shape));
  }
  ProgressBar progress("loading " + dir, checkpoint->total_bytes());
  int64_t done = 0;
  for (const TensorSpec<Weights>& spec : specs) {
    spec.dest->resize(NumElements(spec.shape));
    bool finite = true;
    MPA_RETURN_IF_ERROR(checkpoint->ReadF32(spec.name, spec.shape, spec.dest->data(), &finite));
    if (!finite) {
      const auto bad = std::find_if(spec.dest->begin(), spec.dest->end(),
                                    [](float x) { return !std::isfinite(x); });
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", spec.name, "' holds ", std::isnan(*bad) ? "NaN" : "Inf", " at element ",
          bad - spec.dest->begin(), " in checkpoint ", dir, ": the weights are corrupt"));
    }
    if (const TensorInfo* t = checkpoint->Find(spec.name)) done += t->num_bytes;
    progress.Update(done);
  }
  progress.Finish();
  return w;
}

absl::Status CheckWeights(const ModelConfig& config, const Weights& weights) {
  MPA_RETURN_IF_ERROR(config.Validate());
  if (weights.layers.size() != static_cast<size_t>(config.num_layers)) {
    return absl::InvalidArgumentError(absl::StrCat("weights have ", weights.layers.size(),
                                                   " layers, config says ", config.num_layers));
  }
  for (const TensorSpec<const Weights>& spec : ExpectedTensors(config, weights)) {
    if (static_cast<int64_t>(spec.dest->size()) != NumElements(spec.shape)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", spec.name, "' holds ", spec.dest->size(), " values; the config's shape [",
          absl::StrJoin(spec.shape, ", "), "] needs ", NumElements(spec.shape)));
    }
  }
  // Tensors the config does not call for must be absent: the engines would disagree on them
  // (the CPU adds a bias it is given, the GPU follows the config).
  auto absent = [](const std::vector<float>& t, int layer, const char* name, const char* why) {
    return t.empty() ? absl::OkStatus()
                     : absl::InvalidArgumentError(
                           absl::StrCat("layer ", layer, " has a ", name, " tensor but ", why));
  };
  for (int i = 0; i < config.num_layers; ++i) {
    const LayerWeights& l = weights.layers[i];
    if (!config.attention_bias) {
      constexpr char kNoBias[] = "the config has attention_bias false";
      MPA_RETURN_IF_ERROR(absent(l.q_bias, i, "q_proj bias", kNoBias));
      MPA_RETURN_IF_ERROR(absent(l.k_bias, i, "k_proj bias", kNoBias));
      MPA_RETURN_IF_ERROR(absent(l.v_bias, i, "v_proj bias", kNoBias));
    }
    if (!config.qk_norm) {
      constexpr char kNoNorm[] = "the config has no q/k norm";
      MPA_RETURN_IF_ERROR(absent(l.q_norm, i, "q_norm", kNoNorm));
      MPA_RETURN_IF_ERROR(absent(l.k_norm, i, "k_norm", kNoNorm));
    }
  }
  if (config.tie_word_embeddings && !weights.lm_head.empty()) {
    return absl::InvalidArgumentError(
        "weights have an lm_head tensor but the config ties the word embeddings");
  }
  return absl::OkStatus();
}

absl::StatusOr<ConfigAndWeights> LoadConfigAndWeights(const std::string& dir) {
  ConfigAndWeights loaded;
  MPA_ASSIGN_OR_RETURN(loaded.config, LoadModelConfig(dir));
  MPA_ASSIGN_OR_RETURN(loaded.weights, LoadWeights(dir, loaded.config));
  return loaded;
}

Weights RandomWeights(const ModelConfig& config, uint64_t seed) {
  Weights w;
  w.layers.resize(config.num_layers);
  std::vector<TensorSpec<Weights>> specs = ExpectedTensors(config, w);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::uniform_real_distribution<float> near_one(0.9f, 1.1f);
  for (const TensorSpec<Weights>& spec : specs) {
    spec.dest->resize(NumElements(spec.shape));
    const bool is_norm = spec.shape.size() == 1 && spec.name.find("norm") != std::string::npos;
    for (float& x : *spec.dest) x = is_norm ? near_one(rng) : normal(rng);
  }
  return w;
}

}  // namespace mpa
