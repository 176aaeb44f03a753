#include "model/config/model_config.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "model/runtime/status_macros.h"
#include "nlohmann/json.hpp"

namespace mpa {

namespace {

using json = nlohmann::json;

absl::Status FieldError(absl::string_view field, absl::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat("config.json: field '", field, "' ", problem));
}

// Reads an integer field; `required` fields must be present.
absl::Status GetInt(const json& j, const char* field, bool required, int* out) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) {
    return required ? FieldError(field, "is missing") : absl::OkStatus();
  }
  if (!it->is_number_integer()) return FieldError(field, "must be an integer");
  const int64_t v = it->get<int64_t>();
  if (v < 0 || v > (int64_t{1} << 31) - 1) return FieldError(field, "is out of range");
  *out = static_cast<int>(v);
  return absl::OkStatus();
}

absl::Status GetDouble(const json& j, const char* field, double* out) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_number()) return FieldError(field, "must be a number");
  *out = it->get<double>();
  return absl::OkStatus();
}

absl::Status GetOptionalDouble(const json& j, const char* field, std::optional<double>* out) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_number()) return FieldError(field, "must be a number");
  *out = it->get<double>();
  return absl::OkStatus();
}

absl::Status GetBool(const json& j, const char* field, bool* out) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_boolean()) return FieldError(field, "must be true or false");
  *out = it->get<bool>();
  return absl::OkStatus();
}

// rope_scaling (classic form) or rope_parameters (newer form): both carry the rope type and its
// parameters; the newer one also carries rope_theta.
absl::Status ParseRopeParameters(const json& r, absl::string_view where, ModelConfig& c) {
  if (!r.is_object()) return FieldError(where, "must be an object");
  std::string type = "default";
  for (const char* key : {"rope_type", "type"}) {
    auto it = r.find(key);
    if (it != r.end() && !it->is_null()) {
      if (!it->is_string()) return FieldError(absl::StrCat(where, ".", key), "must be a string");
      type = it->get<std::string>();
      break;
    }
  }
  RopeScaling& s = c.rope_scaling;
  if (type == "default") {
    s.type = RopeScaling::Type::kDefault;
  } else if (type == "linear") {
    s.type = RopeScaling::Type::kLinear;
  } else if (type == "llama3") {
    s.type = RopeScaling::Type::kLlama3;
  } else if (type == "yarn") {
    s.type = RopeScaling::Type::kYarn;
  } else {
    return absl::UnimplementedError(
        absl::StrCat("config.json: ", where, ".rope_type '", type,
                     "' is not supported (default, linear, llama3, yarn are)"));
  }
  MPA_RETURN_IF_ERROR(GetDouble(r, "rope_theta", &c.rope_theta));
  MPA_RETURN_IF_ERROR(GetDouble(r, "factor", &s.factor));
  MPA_RETURN_IF_ERROR(GetDouble(r, "low_freq_factor", &s.low_freq_factor));
  MPA_RETURN_IF_ERROR(GetDouble(r, "high_freq_factor", &s.high_freq_factor));
  MPA_RETURN_IF_ERROR(
      GetInt(r, "original_max_position_embeddings", false, &s.original_max_position_embeddings));
  MPA_RETURN_IF_ERROR(GetOptionalDouble(r, "attention_factor", &s.attention_factor));
  MPA_RETURN_IF_ERROR(GetDouble(r, "beta_fast", &s.beta_fast));
  MPA_RETURN_IF_ERROR(GetDouble(r, "beta_slow", &s.beta_slow));
  MPA_RETURN_IF_ERROR(GetOptionalDouble(r, "mscale", &s.mscale));
  MPA_RETURN_IF_ERROR(GetOptionalDouble(r, "mscale_all_dim", &s.mscale_all_dim));
  MPA_RETURN_IF_ERROR(GetBool(r, "truncate", &s.truncate));
  // Values the frequencies are computed from: out of range, they give NaN or meaningless
  // frequencies (the model would load and generate noise), so they are refused here.
  auto positive = [&](const char* key, double v) -> absl::Status {
    if (v > 0 && std::isfinite(v)) return absl::OkStatus();
    return FieldError(absl::StrCat(where, ".", key),
                      absl::StrCat("must be finite and > 0 (got ", v, ")"));
  };
  if (s.type != RopeScaling::Type::kDefault) MPA_RETURN_IF_ERROR(positive("factor", s.factor));
  if (auto it = r.find("original_max_position_embeddings");
      it != r.end() && !it->is_null() && s.original_max_position_embeddings == 0) {
    return FieldError(absl::StrCat(where, ".original_max_position_embeddings"), "must be > 0");
  }
  if (s.type == RopeScaling::Type::kLlama3) {
    MPA_RETURN_IF_ERROR(positive("low_freq_factor", s.low_freq_factor));
    MPA_RETURN_IF_ERROR(positive("high_freq_factor", s.high_freq_factor));
    if (!(s.high_freq_factor > s.low_freq_factor)) {
      // The band between the two wavelengths is blended by 1 / (high - low).
      return FieldError(
          absl::StrCat(where, ".high_freq_factor"),
          absl::StrCat("(", s.high_freq_factor, ") must be greater than low_freq_factor (",
                       s.low_freq_factor, ")"));
    }
  }
  if (s.type == RopeScaling::Type::kYarn) {
    // Both enter a logarithm.
    MPA_RETURN_IF_ERROR(positive("beta_fast", s.beta_fast));
    MPA_RETURN_IF_ERROR(positive("beta_slow", s.beta_slow));
    if (s.attention_factor) MPA_RETURN_IF_ERROR(positive("attention_factor", *s.attention_factor));
  }
  return absl::OkStatus();
}

absl::Status ParseTokenIds(const json& j, const char* field, std::vector<int>* out) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (it->is_number_integer()) {
    out->push_back(it->get<int>());
  } else if (it->is_array()) {
    for (const auto& e : *it) {
      if (!e.is_number_integer()) return FieldError(field, "must hold integers");
      out->push_back(e.get<int>());
    }
  } else {
    return FieldError(field, "must be an integer or a list of integers");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text) {
  json j = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError("config.json: not valid JSON");
  if (!j.is_object()) return absl::InvalidArgumentError("config.json: top level must be an object");

  ModelConfig c;
  auto arch = j.find("architectures");
  if (arch == j.end() || !arch->is_array() || arch->empty() || !(*arch)[0].is_string()) {
    return FieldError("architectures", "must be a non-empty list of names");
  }
  c.architecture_name = (*arch)[0].get<std::string>();
  if (c.architecture_name == "LlamaForCausalLM") {
    c.architecture = Architecture::kLlama;
  } else if (c.architecture_name == "Qwen2ForCausalLM") {
    c.architecture = Architecture::kQwen2;
    c.attention_bias = true;
  } else if (c.architecture_name == "Qwen3ForCausalLM") {
    c.architecture = Architecture::kQwen3;
    c.qk_norm = true;
  } else {
    return absl::UnimplementedError(
        absl::StrCat("config.json: architecture '", c.architecture_name,
                     "' is not supported (LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM "
                     "are)"));
  }

  // Some newer configs nest the text model's fields under text_config.
  auto text_config = j.find("text_config");
  const bool nested = text_config != j.end() && !text_config->is_null();
  if (nested && !text_config->is_object()) return FieldError("text_config", "must be an object");
  const json& t = nested ? *text_config : j;
  MPA_RETURN_IF_ERROR(GetInt(t, "vocab_size", true, &c.vocab_size));
  MPA_RETURN_IF_ERROR(GetInt(t, "hidden_size", true, &c.hidden_size));
  MPA_RETURN_IF_ERROR(GetInt(t, "intermediate_size", true, &c.intermediate_size));
  MPA_RETURN_IF_ERROR(GetInt(t, "num_hidden_layers", true, &c.num_layers));
  MPA_RETURN_IF_ERROR(GetInt(t, "num_attention_heads", true, &c.num_heads));
  c.num_kv_heads = c.num_heads;
  MPA_RETURN_IF_ERROR(GetInt(t, "num_key_value_heads", false, &c.num_kv_heads));
  if (c.num_heads > 0) c.head_dim = c.hidden_size / c.num_heads;
  MPA_RETURN_IF_ERROR(GetInt(t, "head_dim", false, &c.head_dim));
  MPA_RETURN_IF_ERROR(GetInt(t, "max_position_embeddings", true, &c.max_position_embeddings));
  double eps = c.rms_norm_eps;
  MPA_RETURN_IF_ERROR(GetDouble(t, "rms_norm_eps", &eps));
  c.rms_norm_eps = static_cast<float>(eps);
  MPA_RETURN_IF_ERROR(GetBool(t, "tie_word_embeddings", &c.tie_word_embeddings));
  if (c.architecture != Architecture::kQwen2) {  // Qwen2 always has q/k/v biases
    MPA_RETURN_IF_ERROR(GetBool(t, "attention_bias", &c.attention_bias));
  }
  MPA_RETURN_IF_ERROR(GetDouble(t, "rope_theta", &c.rope_theta));
  if (t.contains("rope_scaling") && !t["rope_scaling"].is_null()) {
    MPA_RETURN_IF_ERROR(ParseRopeParameters(t["rope_scaling"], "rope_scaling", c));
  }
  if (t.contains("rope_parameters") && !t["rope_parameters"].is_null()) {
    MPA_RETURN_IF_ERROR(ParseRopeParameters(t["rope_parameters"], "rope_parameters", c));
  }
  if (c.rope_scaling.original_max_position_embeddings == 0) {
    c.rope_scaling.original_max_position_embeddings = c.max_position_embeddings;
  }
  auto act = t.find("hidden_act");
  if (act != t.end() && act->is_string() && act->get<std::string>() != "silu") {
    return absl::UnimplementedError(absl::StrCat(
        "config.json: hidden_act '", act->get<std::string>(), "' is not supported (silu is)"));
  }
  int bos = -1;
  MPA_RETURN_IF_ERROR(GetInt(t, "bos_token_id", false, &bos));
  if (bos >= 0) c.bos_token_id = bos;
  MPA_RETURN_IF_ERROR(ParseTokenIds(t, "eos_token_id", &c.eos_token_ids));
  MPA_RETURN_IF_ERROR(c.Validate());
  return c;
}

absl::Status ModelConfig::Validate() const {
  auto in_range = [](absl::string_view field, int v, int max) -> absl::Status {
    if (v <= 0) return FieldError(field, absl::StrCat("must be > 0 (got ", v, ")"));
    if (v > max) return FieldError(field, absl::StrCat("must be at most ", max, " (got ", v, ")"));
    return absl::OkStatus();
  };
  MPA_RETURN_IF_ERROR(in_range("vocab_size", vocab_size, kMaxVocabSize));
  MPA_RETURN_IF_ERROR(in_range("hidden_size", hidden_size, kMaxHiddenSize));
  MPA_RETURN_IF_ERROR(in_range("intermediate_size", intermediate_size, kMaxIntermediateSize));
  MPA_RETURN_IF_ERROR(in_range("num_hidden_layers", num_layers, kMaxLayers));
  MPA_RETURN_IF_ERROR(in_range("num_attention_heads", num_heads, kMaxHeads));
  MPA_RETURN_IF_ERROR(in_range("num_key_value_heads", num_kv_heads, kMaxHeads));
  MPA_RETURN_IF_ERROR(in_range("head_dim", head_dim, kMaxHeadDim));
  MPA_RETURN_IF_ERROR(
      in_range("max_position_embeddings", max_position_embeddings, kMaxPositionEmbeddings));
  if (num_heads % num_kv_heads != 0) {
    return FieldError(
        "num_key_value_heads",
        absl::StrCat("(", num_kv_heads, ") must divide num_attention_heads (", num_heads, ")"));
  }
  if (head_dim % 2 != 0) return FieldError("head_dim", "must be even for RoPE");
  if (!(rms_norm_eps > 0) || !std::isfinite(rms_norm_eps)) {
    return FieldError("rms_norm_eps", "must be finite and > 0");
  }
  if (!(rope_theta > 0) || !std::isfinite(rope_theta)) {
    return FieldError("rope_theta", "must be finite and > 0");
  }
  if (bos_token_id.has_value() && (*bos_token_id < 0 || *bos_token_id >= vocab_size)) {
    return FieldError(
        "bos_token_id",
        absl::StrCat("(", *bos_token_id, ") is outside the vocabulary [0, ", vocab_size, ")"));
  }
  for (int id : eos_token_ids) {
    if (id < 0 || id >= vocab_size) {
      return FieldError("eos_token_id",
                        absl::StrCat("(", id, ") is outside the vocabulary [0, ", vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& dir) {
  const std::string path = dir + "/config.json";
  std::error_code error;
  const std::filesystem::file_status status = std::filesystem::status(path, error);
  if (!std::filesystem::exists(status)) {
    return absl::NotFoundError(absl::StrCat("cannot open ", path, ": no such file"));
  }
  // A folder or a device opens as a stream and would read as invalid (or endless) JSON.
  if (!std::filesystem::is_regular_file(status)) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is not a regular file"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::PermissionDeniedError(absl::StrCat("cannot open ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  auto config = ParseModelConfig(ss.str());
  if (!config.ok()) {
    return absl::Status(config.status().code(), absl::StrCat(dir, "/", config.status().message()));
  }
  return config;
}

absl::StatusOr<ModelConfig> NamedModelShape(const std::string& name) {
  ModelConfig c;
  c.architecture = Architecture::kQwen3;
  c.architecture_name = "Qwen3ForCausalLM";
  c.qk_norm = true;
  c.head_dim = 128;
  c.vocab_size = 151936;
  c.max_position_embeddings = 131072;
  c.rope_theta = 1000000.0;
  c.rms_norm_eps = 1e-6f;
  c.rope_scaling.original_max_position_embeddings = c.max_position_embeddings;
  if (name == "qwen3-0.6b") {
    c.num_layers = 28;
    c.hidden_size = 1024;
    c.num_heads = 16;
    c.num_kv_heads = 8;
    c.intermediate_size = 3072;
    c.tie_word_embeddings = true;
  } else if (name == "qwen3-8b") {
    c.num_layers = 36;
    c.hidden_size = 4096;
    c.num_heads = 32;
    c.num_kv_heads = 8;
    c.intermediate_size = 12288;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown model shape '", name, "' (qwen3-0.6b, qwen3-8b are known)"));
  }
  return c;
}

}  // namespace mpa
