#include "model/io/weights.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "absl/strings/str_cat.h"
#include "model/io/progress_bar.h"
#include "model/io/safetensors.h"
#include "model/runtime/status_macros.h"

namespace mpa {

namespace {

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float>* dest;
};

std::vector<TensorSpec> ExpectedTensors(const ModelConfig& c, Weights& w) {
  const int64_t hidden = c.hidden_size;
  const int64_t q_dim = int64_t{c.num_heads} * c.head_dim;
  const int64_t kv_dim = int64_t{c.num_kv_heads} * c.head_dim;
  const int64_t ffn = c.intermediate_size;
  std::vector<TensorSpec> specs;
  specs.push_back({"model.embed_tokens.weight", {c.vocab_size, hidden}, &w.embed_tokens});
  w.layers.resize(c.num_layers);
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    LayerWeights& l = w.layers[i];
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
  std::vector<TensorSpec> specs = ExpectedTensors(config, w);
  // Every tensor is checked against the config before anything is allocated: the allocations
  // below are then sized by tensors the checkpoint really holds, never by config.json alone.
  for (const TensorSpec& spec : specs) {
    MPA_RETURN_IF_ERROR(checkpoint->CheckF32(spec.name, spec.shape));
  }
  ProgressBar progress("loading " + dir, checkpoint->total_bytes());
  int64_t done = 0;
  for (const TensorSpec& spec : specs) {
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

Weights RandomWeights(const ModelConfig& config, uint64_t seed) {
  Weights w;
  std::vector<TensorSpec> specs = ExpectedTensors(config, w);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::uniform_real_distribution<float> near_one(0.9f, 1.1f);
  for (const TensorSpec& spec : specs) {
    spec.dest->resize(NumElements(spec.shape));
    const bool is_norm = spec.shape.size() == 1 && spec.name.find("norm") != std::string::npos;
    for (float& x : *spec.dest) x = is_norm ? near_one(rng) : normal(rng);
  }
  return w;
}

}  // namespace mpa
