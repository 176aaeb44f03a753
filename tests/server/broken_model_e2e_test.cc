// Broken model folders, made by the test from the real stories260K and the golden fixtures
// (truncated and malformed safetensors, wrong dtypes and shapes, missing tensors, NaN and Inf
// weights, absurd or malformed config.json values, missing or corrupt config and tokenizer
// files, bad shard indexes): for each, both programs that load a model, mpa_generate and
// mpa_server, run as child processes must refuse it the same way: exit status 1, nothing on
// stdout, exactly one line on stderr that names the problem, no crash and no hang.
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/model/io/safetensors_writer.h"
#include "tests/server/server_process.h"

namespace mpa::server {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;
using testing::ProcessResult;
using testing::RunProcess;
using testutil::SafetensorsEntry;

const std::string kStories = MPA_SOURCE_DIR "/../shared/models/stories260K";
const std::string kFixtures = MPA_SOURCE_DIR "/tests/fixtures";

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void WriteFile(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A copy of a model folder to break.
class Folder {
 public:
  explicit Folder(fs::path dir) : dir_(std::move(dir)) {}
  const fs::path& dir() const { return dir_; }
  fs::path operator/(const std::string& name) const { return dir_ / name; }

  std::string Read(const std::string& name) const { return ReadFile(dir_ / name); }
  void Write(const std::string& name, const std::string& bytes) const {
    WriteFile(dir_ / name, bytes);
  }
  void Remove(const std::string& name) const { fs::remove_all(dir_ / name); }

  void EditConfig(const std::function<void(json&)>& edit) const {
    json config = json::parse(Read("config.json"));
    edit(config);
    Write("config.json", config.dump(2));
  }

  // The tensors of model.safetensors in file order, and writing them back (offsets recomputed).
  std::vector<SafetensorsEntry> Tensors() const {
    const std::string file = Read("model.safetensors");
    uint64_t header_size = 0;
    std::memcpy(&header_size, file.data(), 8);
    const json header = json::parse(file.substr(8, header_size));
    const size_t data = 8 + header_size;
    std::vector<std::pair<uint64_t, SafetensorsEntry>> tensors;
    for (const auto& [name, entry] : header.items()) {
      if (name == "__metadata__") continue;
      const uint64_t begin = entry["data_offsets"][0], end = entry["data_offsets"][1];
      tensors.push_back(
          {begin,
           {name, entry["dtype"], entry["shape"].get<std::vector<int64_t>>(),
            std::vector<uint8_t>(file.begin() + data + begin, file.begin() + data + end)}});
    }
    std::sort(tensors.begin(), tensors.end(),
              [](const auto& a, const auto& b) { return a.first < b.first; });
    std::vector<SafetensorsEntry> out;
    for (auto& t : tensors) out.push_back(std::move(t.second));
    return out;
  }
  void EditTensors(const std::function<void(std::vector<SafetensorsEntry>&)>& edit) const {
    std::vector<SafetensorsEntry> tensors = Tensors();
    edit(tensors);
    EXPECT_TRUE(testutil::WriteSafetensors((dir_ / "model.safetensors").string(), tensors));
  }
  // model.safetensors with its JSON header replaced (the data left as it is).
  void SetHeader(const std::string& header) const {
    const std::string file = Read("model.safetensors");
    uint64_t header_size = 0;
    std::memcpy(&header_size, file.data(), 8);
    const std::string data = file.substr(8 + header_size);
    EXPECT_TRUE(testutil::WriteRawSafetensors((dir_ / "model.safetensors").string(), header,
                                              std::vector<uint8_t>(data.begin(), data.end())));
  }
  void EditHeader(const std::function<void(json&)>& edit) const {
    const std::string file = Read("model.safetensors");
    uint64_t header_size = 0;
    std::memcpy(&header_size, file.data(), 8);
    json header = json::parse(file.substr(8, header_size));
    edit(header);
    SetHeader(header.dump());
  }
  // JSON file `name` (an object) with "key": raw_value added last, where a repeated key wins
  // (written as text: the test must not dump values nested too deep for a recursive dump).
  void AddRaw(const std::string& name, const std::string& key, const std::string& raw) const {
    std::string text = Read(name);
    const size_t end = text.rfind('}');
    ASSERT_NE(end, std::string::npos) << name;
    text.insert(end, absl::StrCat(", \"", key, "\": ", raw));
    Write(name, text);
  }
  // The tokenizer's JSON, edited.
  void EditTokenizer(const std::function<void(json&)>& edit) const {
    json tokenizer = json::parse(Read("tokenizer.json"));
    edit(tokenizer);
    Write("tokenizer.json", tokenizer.dump(1));
  }

 private:
  fs::path dir_;
};

SafetensorsEntry& Find(std::vector<SafetensorsEntry>& tensors, const std::string& name) {
  for (SafetensorsEntry& t : tensors) {
    if (t.name == name) return t;
  }
  ADD_FAILURE() << "no tensor " << name;
  return tensors.front();
}

void Drop(std::vector<SafetensorsEntry>& tensors, const std::string& name) {
  const size_t before = tensors.size();
  std::erase_if(tensors, [&](const SafetensorsEntry& t) { return t.name == name; });
  EXPECT_EQ(tensors.size() + 1, before) << name;
}

void SetF32(SafetensorsEntry& t, size_t index, float value) {
  ASSERT_EQ(t.dtype, "F32");
  std::memcpy(t.bytes.data() + 4 * index, &value, 4);
}

// `depth` nested JSON arrays.
std::string Nested(int depth) { return std::string(depth, '[') + std::string(depth, ']'); }

struct BrokenCase {
  std::string name;  // what is broken (the test's name)
  std::string base;  // the folder copied: "stories260K" or a fixture under tests/fixtures
  std::function<void(const Folder&)> make;
  // Texts the error line must hold, each (what names the problem).
  std::vector<std::string> expect;
};

std::ostream& operator<<(std::ostream& os, const BrokenCase& c) { return os << c.name; }

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();
const char kEmbed[] = "model.embed_tokens.weight";

std::vector<BrokenCase> Cases() {
  const std::string s = "stories260K";
  auto config = [](std::function<void(json&)> edit) {
    return [edit](const Folder& f) { f.EditConfig(edit); };
  };
  auto set = [&](const std::string& field, json value) {
    return config([field, value](json& c) { c[field] = value; });
  };
  auto tensors = [](std::function<void(std::vector<SafetensorsEntry>&)> edit) {
    return [edit](const Folder& f) { f.EditTensors(edit); };
  };
  auto header = [](std::function<void(json&)> edit) {
    return [edit](const Folder& f) { f.EditHeader(edit); };
  };
  auto write = [](const std::string& name, const std::string& bytes) {
    return [name, bytes](const Folder& f) { f.Write(name, bytes); };
  };
  auto remove = [](const std::string& name) { return [name](const Folder& f) { f.Remove(name); }; };
  auto truncate = [](const std::string& name, double fraction) {
    return [name, fraction](const Folder& f) {
      const std::string bytes = f.Read(name);
      f.Write(name, bytes.substr(0, static_cast<size_t>(bytes.size() * fraction)));
    };
  };
  auto index = [](const std::string& text) {
    return [text](const Folder& f) {
      f.Remove("model.safetensors");
      f.Write("model.safetensors.index.json", text);
    };
  };
  auto tokenizer = [](std::function<void(json&)> edit) {
    return [edit](const Folder& f) { f.EditTokenizer(edit); };
  };
  // File `name` replaced by a named pipe no one writes to.
  auto fifo = [](const std::string& name) {
    return [name](const Folder& f) {
      f.Remove(name);
      ASSERT_EQ(::mkfifo((f / name).c_str(), 0600), 0);
    };
  };
  // A value nested 100000 arrays deep in a JSON file's field.
  auto deep = [](const std::string& file, const std::string& key) {
    return [file, key](const Folder& f) { f.AddRaw(file, key, Nested(100000)); };
  };
  const std::string q2 = "qwen2_tiny", q3 = "qwen3_tiny", bf16 = "qwen3_tiny_bf16",
                    l3 = "llama3_tiny";

  return {
      // config.json: missing, not JSON, not the right JSON.
      {"ConfigMissing", s, remove("config.json"), {"config.json", "no such file"}},
      {"ConfigEmpty", s, write("config.json", ""), {"config.json", "not valid JSON"}},
      {"ConfigNotJson", s, write("config.json", "vocab_size = 512\n"), {"config.json", "JSON"}},
      {"ConfigTruncated", s, truncate("config.json", 0.5), {"config.json", "not valid JSON"}},
      {"ConfigBinary",
       s,
       write("config.json", std::string("\x00\xff\x7f{\x01", 5)),
       {"config.json", "JSON"}},
      {"ConfigTopLevelArray", s, write("config.json", "[1, 2]"), {"config.json", "object"}},
      {"ConfigIsADirectory",
       s,
       [](const Folder& f) {
         f.Remove("config.json");
         fs::create_directory(f / "config.json");
       },
       {"config.json", "not a regular file"}},
      {"ConfigNestedTooDeep", s, write("config.json", Nested(200000)), {"config.json"}},
      {"ConfigArchitecturesNestedTooDeep",
       s,
       deep("config.json", "architectures"),
       {"architectures"}},
      {"ConfigRopeScalingNestedTooDeep", s, deep("config.json", "rope_scaling"), {"rope_scaling"}},
      {"ConfigTextConfigNestedTooDeep", s, deep("config.json", "text_config"), {"config.json"}},
      {"ConfigEosNestedTooDeep", s, deep("config.json", "eos_token_id"), {"eos_token_id"}},
      {"ConfigIsAPipe", s, fifo("config.json"), {"config.json", "not a regular file"}},
      {"FolderEmpty",
       s,
       [](const Folder& f) {
         for (const fs::directory_entry& e : fs::directory_iterator(f.dir())) fs::remove(e.path());
       },
       {"config.json", "no such file"}},
      {"ConfigNoArchitectures",
       s,
       config([](json& c) { c.erase("architectures"); }),
       {"architectures"}},
      {"ConfigUnknownArchitecture",
       s,
       set("architectures", {"GPT2LMHeadModel"}),
       {"GPT2LMHeadModel", "not supported"}},
      {"ConfigArchitectureWithNewline",
       s,
       set("architectures", {"Llama\nForCausalLM"}),
       {"architecture", "not supported"}},
      // Absurd sizes.
      {"VocabSizeHuge", s, set("vocab_size", 2147483647), {"vocab_size"}},
      {"VocabSizeTooLargeForInt", s, set("vocab_size", 1e30), {"vocab_size"}},
      {"VocabSizeZero", s, set("vocab_size", 0), {"vocab_size"}},
      {"VocabSizeNegative", s, set("vocab_size", -512), {"vocab_size"}},
      {"VocabSizeString", s, set("vocab_size", "512"), {"vocab_size"}},
      {"VocabSizeFraction", s, set("vocab_size", 512.5), {"vocab_size"}},
      {"VocabSizeSmallerThanWeights", s, set("vocab_size", 256), {kEmbed, "shape"}},
      {"VocabSizeLargerThanWeights", s, set("vocab_size", 4096), {kEmbed, "shape"}},
      {"HiddenSizeHuge", s, set("hidden_size", 1 << 30), {"hidden_size"}},
      {"HiddenSizeLargerThanWeights", s, set("hidden_size", 65536), {"shape"}},
      {"HiddenSizeZero", s, set("hidden_size", 0), {"hidden_size"}},
      {"IntermediateSizeWrong", s, set("intermediate_size", 173), {"mlp", "shape"}},
      {"LayersZero", s, set("num_hidden_layers", 0), {"num_hidden_layers"}},
      {"LayersNegative", s, set("num_hidden_layers", -5), {"num_hidden_layers"}},
      {"LayersHuge", s, set("num_hidden_layers", 1 << 20), {"num_hidden_layers"}},
      {"LayersMoreThanWeights", s, set("num_hidden_layers", 6), {"model.layers.5."}},
      {"HeadsZero", s, set("num_attention_heads", 0), {"num_attention_heads"}},
      {"KvHeadsNotDividingHeads", s, set("num_key_value_heads", 3), {"num_key_value_heads"}},
      {"KvHeadsZero", s, set("num_key_value_heads", 0), {"num_key_value_heads"}},
      {"HeadDimOdd", s, set("head_dim", 7), {"head_dim"}},
      {"ContextZero", s, set("max_position_embeddings", 0), {"max_position_embeddings"}},
      {"ContextHuge", s, set("max_position_embeddings", 2147483647), {"max_position_embeddings"}},
      {"RmsNormEpsNegative", s, set("rms_norm_eps", -1e-5), {"rms_norm_eps"}},
      {"RmsNormEpsZero", s, set("rms_norm_eps", 0), {"rms_norm_eps"}},
      {"RopeThetaZero", s, set("rope_theta", 0.0), {"rope_theta"}},
      {"RopeThetaOverflows",
       s,
       [](const Folder& f) {
         std::string text = f.Read("config.json");
         const std::string from = "\"rope_theta\": 10000.0";
         ASSERT_NE(text.find(from), std::string::npos);
         text.replace(text.find(from), from.size(), "\"rope_theta\": 1e999");
         f.Write("config.json", text);
       },
       {"config.json"}},
      {"RopeScalingUnknownType",
       s,
       set("rope_scaling", {{"rope_type", "dynamic"}, {"factor", 2}}),
       {"rope_scaling", "dynamic"}},
      {"RopeScalingNotAnObject", s, set("rope_scaling", "linear"), {"rope_scaling"}},
      {"RopeScalingFactorZero",
       s,
       set("rope_scaling", {{"rope_type", "linear"}, {"factor", 0}}),
       {"factor"}},
      {"Llama3RopeEqualFrequencyFactors",
       l3,
       config([](json& c) { c["rope_scaling"]["low_freq_factor"] = 4.0; }),
       {"high_freq_factor"}},
      {"Llama3RopeOriginalContextZero",
       l3,
       config([](json& c) { c["rope_scaling"]["original_max_position_embeddings"] = 0; }),
       {"original_max_position_embeddings"}},
      {"YarnFactorNegative",
       q3,
       config([](json& c) { c["rope_parameters"]["factor"] = -4.0; }),
       {"factor"}},
      {"BosOutsideVocab", s, set("bos_token_id", 100000), {"bos_token_id"}},
      {"EosNegative", s, set("eos_token_id", {2, -5}), {"eos_token_id"}},
      {"EosNotANumber", s, set("eos_token_id", "two"), {"eos_token_id"}},
      {"HiddenActGelu", s, set("hidden_act", "gelu"), {"hidden_act", "gelu"}},
      {"UntiedWithoutLmHead", s, set("tie_word_embeddings", false), {"lm_head.weight"}},
      {"AttentionBiasWithoutBiases", s, set("attention_bias", true), {"q_proj.bias"}},
      // model.safetensors: missing, cut short, corrupt header.
      {"WeightsMissing", s, remove("model.safetensors"), {"model.safetensors"}},
      {"WeightsEmpty", s, write("model.safetensors", ""), {"model.safetensors", "empty"}},
      {"WeightsShorterThanLength",
       s,
       write("model.safetensors", "\x10\x00\x00"),
       {"model.safetensors", "8-byte"}},
      {"WeightsTruncatedInData",
       s,
       truncate("model.safetensors", 0.6),
       {"model.safetensors", "truncated"}},
      {"WeightsTruncatedInHeader",
       s,
       truncate("model.safetensors", 0.001),
       {"model.safetensors", "header length"}},
      {"WeightsHeaderLengthHuge",
       s,
       [](const Folder& f) {
         std::string bytes = f.Read("model.safetensors");
         std::memset(bytes.data(), 0xff, 8);
         f.Write("model.safetensors", bytes);
       },
       {"model.safetensors", "header length"}},
      {"WeightsHeaderNotJson",
       s,
       [](const Folder& f) { f.SetHeader("{\"a\": nope}"); },
       {"model.safetensors", "JSON"}},
      {"WeightsHeaderArray",
       s,
       [](const Folder& f) { f.SetHeader("[]"); },
       {"model.safetensors", "object"}},
      {"WeightsHeaderNestedTooDeep",
       s,
       [](const Folder& f) { f.SetHeader(Nested(200000)); },
       {"model.safetensors"}},
      {"WeightsShapeNestedTooDeep",
       s,
       header([](json& h) { h[kEmbed]["shape"] = json::parse(Nested(100)); }),
       {kEmbed, "shape"}},
      {"WeightsShapeDeeplyNestedText",
       s,
       [](const Folder& f) {
         f.SetHeader(absl::StrCat(R"({"x":{"dtype":"F32","data_offsets":[0,4],"shape":)",
                                  Nested(100000), "}}"));
       },
       {"model.safetensors"}},
      {"WeightsMetadataNestedTooDeep",
       s,
       [](const Folder& f) {
         f.SetHeader(absl::StrCat(R"({"__metadata__":)", Nested(100000), "}"));
       },
       {"__metadata__"}},
      {"WeightsNegativeDimension",
       s,
       header([](json& h) {
         h[kEmbed]["shape"] = {-512, 64};
       }),
       {kEmbed, "negative"}},
      {"WeightsOffsetsReversed",
       s,
       header([](json& h) {
         h[kEmbed]["data_offsets"] = {131072, 0};
       }),
       {kEmbed, "before"}},
      {"WeightsOffsetsPastTheEnd",
       s,
       header([](json& h) {
         h[kEmbed]["data_offsets"] = {0, 1ull << 40};
       }),
       {kEmbed, "beyond"}},
      {"WeightsOverlappingTensors",
       s,
       header([](json& h) {
         h["model.norm.weight"]["data_offsets"] = {0, 256};
       }),
       {"overlap"}},
      {"WeightsTensorNamedTwice",
       s,
       [](const Folder& f) {
         const std::string entry = R"("t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]})";
         f.SetHeader(absl::StrCat("{", entry, ",", entry, "}"));
       },
       {"more than once"}},
      {"WeightsTensorNameWithNewline",
       s,
       header([](json& h) {
         h["bad\nname"] = {{"dtype", 5}};
       }),
       {"dtype"}},
      {"WeightsIsADirectory",
       s,
       [](const Folder& f) {
         f.Remove("model.safetensors");
         fs::create_directory(f / "model.safetensors");
       },
       {"model.safetensors", "not a regular file"}},
      // Tensors: dtypes, shapes, missing ones, values.
      {"WeightsIsAPipe", s, fifo("model.safetensors"), {"model.safetensors", "not a regular file"}},
      {"WeightsDtypeI64",
       s,
       tensors([](auto& t) {
         SafetensorsEntry& e = Find(t, kEmbed);
         e.dtype = "I64";
         e.bytes.resize(e.bytes.size() * 2);
       }),
       {kEmbed, "I64"}},
      {"WeightsDtypeF64",
       s,
       tensors([](auto& t) {
         SafetensorsEntry& e = Find(t, "model.norm.weight");
         e.dtype = "F64";
         e.bytes.resize(e.bytes.size() * 2);
       }),
       {"model.norm.weight", "F64"}},
      {"WeightsDtypeF8",
       s,
       tensors([](auto& t) {
         SafetensorsEntry& e = Find(t, "model.layers.0.self_attn.q_proj.weight");
         e.dtype = "F8_E4M3";
         e.bytes.resize(e.bytes.size() / 4);
       }),
       {"q_proj", "F8_E4M3"}},
      {"WeightsDtypeUnknown",
       s,
       tensors([](auto& t) { Find(t, kEmbed).dtype = "F4"; }),
       {kEmbed, "F4"}},
      {"WeightsShapeTransposed",
       s,
       tensors([](auto& t) {
         Find(t, "model.layers.2.self_attn.k_proj.weight").shape = {64, 32};
       }),
       {"model.layers.2.self_attn.k_proj.weight", "shape"}},
      {"WeightsShapeExtraDimension",
       s,
       tensors([](auto& t) {
         Find(t, "model.norm.weight").shape = {1, 64};
       }),
       {"model.norm.weight", "shape"}},
      {"WeightsBytesDisagreeWithShape",
       s,
       tensors([](auto& t) { Find(t, "model.norm.weight").bytes.resize(100); }),
       {"model.norm.weight", "bytes"}},
      {"WeightsMissingFinalNorm",
       s,
       tensors([](auto& t) { Drop(t, "model.norm.weight"); }),
       {"missing", "model.norm.weight"}},
      {"WeightsMissingLayerTensor",
       s,
       tensors([](auto& t) { Drop(t, "model.layers.3.mlp.up_proj.weight"); }),
       {"missing", "model.layers.3.mlp.up_proj.weight"}},
      {"WeightsNaN",
       s,
       tensors([](auto& t) { SetF32(Find(t, kEmbed), 1000, kNaN); }),
       {kEmbed, "NaN"}},
      {"WeightsInf",
       s,
       tensors([](auto& t) { SetF32(Find(t, "model.layers.4.mlp.down_proj.weight"), 7, -kInf); }),
       {"model.layers.4.mlp.down_proj.weight", "Inf"}},
      {"WeightsNaNInNorm",
       s,
       tensors([](auto& t) { SetF32(Find(t, "model.layers.1.input_layernorm.weight"), 63, kNaN); }),
       {"input_layernorm", "NaN"}},
      {"Bf16WeightsNaN",
       bf16,
       tensors([](auto& t) {
         SafetensorsEntry& e = Find(t, "model.layers.1.mlp.gate_proj.weight");
         e.bytes[11] = 0x7f;
         e.bytes[10] = 0xc1;
       }),
       {"gate_proj", "NaN"}},
      {"Bf16WeightsInf",
       bf16,
       tensors([](auto& t) {
         SafetensorsEntry& e = Find(t, "lm_head.weight");
         e.bytes[0] = 0x80;
         e.bytes[1] = 0x7f;
       }),
       {"lm_head.weight", "Inf"}},
      {"Qwen2MissingBias",
       q2,
       tensors([](auto& t) { Drop(t, "model.layers.0.self_attn.v_proj.bias"); }),
       {"v_proj.bias"}},
      {"Qwen3MissingQkNorm",
       q3,
       tensors([](auto& t) { Drop(t, "model.layers.1.self_attn.k_norm.weight"); }),
       {"k_norm"}},
      {"Qwen3HeadDimDisagrees", q3, set("head_dim", 16), {"shape"}},
      // A sharded checkpoint's index.
      {"IndexNotJson", s, index("{\"weight_map\": "), {"model.safetensors.index.json", "JSON"}},
      {"IndexWithoutWeightMap", s, index("{\"metadata\": {}}"), {"weight_map"}},
      {"IndexEntryNestedTooDeep",
       s,
       index(absl::StrCat("{\"weight_map\": {\"", kEmbed, "\": ", Nested(100000), "}}")),
       {"weight_map", kEmbed}},
      {"IndexIsAPipe",
       s,
       [](const Folder& f) {
         f.Remove("model.safetensors");
         ASSERT_EQ(::mkfifo((f / "model.safetensors.index.json").c_str(), 0600), 0);
       },
       {"model.safetensors.index.json", "not a regular file"}},
      {"IndexShardMissing",
       s,
       index(absl::StrCat("{\"weight_map\": {\"", kEmbed, "\": \"model-00001.safetensors\"}}")),
       {"model-00001.safetensors"}},
      {"IndexShardAbsolutePath",
       s,
       index(absl::StrCat("{\"weight_map\": {\"", kEmbed, "\": \"/etc/passwd\"}}")),
       {"/etc/passwd", "relative"}},
      {"IndexShardOutsideFolder",
       s,
       index(absl::StrCat("{\"weight_map\": {\"", kEmbed, "\": \"../stories260K.safetensors\"}}")),
       {"relative"}},
      {"IndexTensorAbsentFromShard",
       s,
       [](const Folder& f) {
         fs::rename(f / "model.safetensors", f / "shard.safetensors");
         f.Write("model.safetensors.index.json",
                 R"({"weight_map": {"model.embed_tokens.weight": "shard.safetensors",
                                   "no.such.tensor": "shard.safetensors"}})");
       },
       {"no.such.tensor", "absent"}},
      {"IndexMissesTensors",
       s,
       [](const Folder& f) {
         fs::rename(f / "model.safetensors", f / "shard.safetensors");
         f.Write("model.safetensors.index.json",
                 R"({"weight_map": {"model.embed_tokens.weight": "shard.safetensors"}})");
       },
       {"missing", "model.layers.0."}},
      // tokenizer.json present but corrupt, or disagreeing with the model.
      {"TokenizerEmpty", s, write("tokenizer.json", ""), {"tokenizer.json"}},
      {"TokenizerNotJson",
       s,
       write("tokenizer.json", "<html>not found</html>"),
       {"tokenizer.json"}},
      {"TokenizerTruncated", s, truncate("tokenizer.json", 0.5), {"tokenizer.json"}},
      {"TokenizerNestedTooDeep", s, write("tokenizer.json", Nested(200000)), {"tokenizer.json"}},
      {"TokenizerAddedTokenNestedTooDeep",
       s,
       [](const Folder& f) {
         f.AddRaw("tokenizer.json", "added_tokens", "[" + Nested(100000) + "]");
       },
       {"tokenizer.json", "added_tokens"}},
      {"TokenizerModelNestedTooDeep", s, deep("tokenizer.json", "model"), {"tokenizer.json"}},
      {"TokenizerNormalizerNestedTooDeep",
       s,
       deep("tokenizer.json", "normalizer"),
       {"tokenizer.json"}},
      {"TokenizerPreTokenizerNestedTooDeep",
       s,
       deep("tokenizer.json", "pre_tokenizer"),
       {"tokenizer.json"}},
      {"TokenizerPostProcessorNestedTooDeep",
       s,
       deep("tokenizer.json", "post_processor"),
       {"tokenizer.json"}},
      {"TokenizerDecoderNestedTooDeep", s, deep("tokenizer.json", "decoder"), {"tokenizer.json"}},
      {"TokenizerIsADirectory",
       s,
       [](const Folder& f) {
         f.Remove("tokenizer.json");
         fs::create_directory(f / "tokenizer.json");
       },
       {"tokenizer.json", "not a regular file"}},
      {"TokenizerIsAPipe", s, fifo("tokenizer.json"), {"tokenizer.json", "not a regular file"}},
      {"TokenizerUnknownModelType",
       s,
       tokenizer([](json& t) { t["model"]["type"] = "WordPiece"; }),
       {"tokenizer.json"}},
      {"TokenizerWithoutVocab",
       s,
       tokenizer([](json& t) { t["model"].erase("vocab"); }),
       {"tokenizer.json"}},
      {"TokenizerIdsBeyondModelVocab",
       s,
       tokenizer([](json& t) {
         t["added_tokens"].push_back({{"id", 100000},
                                      {"content", "<extra>"},
                                      {"single_word", false},
                                      {"lstrip", false},
                                      {"rstrip", false},
                                      {"normalized", false},
                                      {"special", true}});
       }),
       {"tokenizer.json", "vocab"}},
      {"TokenizerConfigNotJson",
       s,
       write("tokenizer_config.json", "{bos_token: <s>"),
       {"tokenizer_config.json"}},
      {"GenerationConfigNotJson",
       s,
       write("generation_config.json", "eos_token_id=2"),
       {"generation_config.json"}},
  };
}

class BrokenModelE2eTest : public ::testing::TestWithParam<BrokenCase> {
 protected:
  void SetUp() override {
    const BrokenCase& c = GetParam();
    const fs::path base =
        c.base == "stories260K" ? fs::path(kStories) : fs::path(kFixtures) / c.base;
    if (!fs::exists(base / "config.json")) GTEST_SKIP() << base << " not found";
    dir_ = fs::path(::testing::TempDir()) / absl::StrCat("broken_model_", getpid(), "_", c.name);
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    for (const fs::directory_entry& e : fs::directory_iterator(base)) {
      if (e.path().filename() == "golden.json") continue;
      fs::copy_file(e.path(), dir_ / e.path().filename());
      fs::permissions(dir_ / e.path().filename(), fs::perms::owner_read | fs::perms::owner_write);
    }
  }
  void TearDown() override {
    if (!dir_.empty()) fs::remove_all(dir_);
  }
  fs::path dir_;
};

// Runs both programs on `dir`: mpa_generate with a text prompt when the folder has a tokenizer
// (so the tokenizer is loaded and used), else with ids; mpa_server on a free port.
std::vector<std::pair<std::string, ProcessResult>> RunBoth(const fs::path& dir) {
  const bool text = fs::exists(dir / "tokenizer.json");
  std::vector<std::string> generate = {MPA_GENERATE_BINARY, "--model=" + dir.string(),
                                       "--max_new_tokens=4"};
  if (text) {
    generate.insert(generate.end(), {"--prompt=Once upon a time", "--output=text"});
  } else {
    generate.insert(generate.end(), {"--prompt_ids=1,5,9", "--output=ids"});
  }
  const std::vector<std::string> server = {MPA_SERVER_BINARY, "--model=" + dir.string(),
                                           "--address=127.0.0.1:0", "--metrics_address="};
  return {{"mpa_generate", RunProcess(generate, absl::Seconds(60))},
          {"mpa_server", RunProcess(server, absl::Seconds(60), "listening on")}};
}

TEST_P(BrokenModelE2eTest, BothProgramsRefuseItInOneLine) {
  const BrokenCase& c = GetParam();
  c.make(Folder(dir_));
  ASSERT_FALSE(HasFatalFailure());
  for (const auto& [program, r] : RunBoth(dir_)) {
    SCOPED_TRACE(program);
    const std::string what = absl::StrCat("\nstdout: ", r.out, "\nstderr: ", r.err);
    ASSERT_FALSE(r.timed_out) << "no answer within 60 s" << what;
    ASSERT_FALSE(r.stopped_early) << "accepted the broken folder" << what;
    ASSERT_EQ(r.signal, 0) << "killed by signal " << r.signal << what;
    EXPECT_EQ(r.exit_code, 1) << what;
    EXPECT_EQ(r.out, "");
    // One line: text, then its newline, and nothing else.
    ASSERT_FALSE(r.err.empty());
    EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << what;
    EXPECT_TRUE(absl::StartsWith(r.err, program + ": ")) << what;
    for (const std::string& text : c.expect) {
      EXPECT_TRUE(absl::StrContains(r.err, text))
          << "the line does not say '" << text << "'" << what;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Folders, BrokenModelE2eTest, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<BrokenCase>& info) {
                           return info.param.name;
                         });

// The folders the cases start from load in both programs, so each case fails for its one
// break. (stories260K's run is checked by the README's ids elsewhere; here only that it loads.)
TEST(BrokenModelBaseE2eTest, TheUnbrokenFoldersLoad) {
  for (const std::string& base : {kStories, kFixtures + "/qwen2_tiny", kFixtures + "/qwen3_tiny",
                                  kFixtures + "/qwen3_tiny_bf16", kFixtures + "/llama3_tiny"}) {
    SCOPED_TRACE(base);
    if (!fs::exists(base + "/config.json")) continue;
    for (const auto& [program, r] : RunBoth(base)) {
      SCOPED_TRACE(program);
      if (program == "mpa_server") {
        EXPECT_TRUE(r.stopped_early) << r.out << r.err;
      } else {
        EXPECT_EQ(r.exit_code, 0) << r.err;
      }
    }
  }
}

// A folder without tokenizer.json is a model served by token ids (README): mpa_server starts
// and says so, and only mpa_generate's text prompt is refused, in one line naming the file.
TEST(BrokenModelBaseE2eTest, WithoutATokenizerOnlyTextIsRefused) {
  if (!fs::exists(kStories + "/config.json")) GTEST_SKIP() << "stories260K not found";
  const fs::path dir =
      fs::path(::testing::TempDir()) / absl::StrCat("broken_model_", getpid(), "_no_tokenizer");
  fs::remove_all(dir);
  fs::create_directories(dir);
  for (const char* name : {"config.json", "model.safetensors"}) {
    fs::copy_file(fs::path(kStories) / name, dir / name);
  }
  const ProcessResult text = RunProcess({MPA_GENERATE_BINARY, "--model=" + dir.string(),
                                         "--prompt=Once upon a time", "--max_new_tokens=4"},
                                        absl::Seconds(60));
  EXPECT_EQ(text.exit_code, 1);
  EXPECT_EQ(text.err.find('\n'), text.err.size() - 1) << text.err;
  EXPECT_TRUE(absl::StrContains(text.err, "tokenizer.json")) << text.err;
  const ProcessResult ids = RunProcess({MPA_GENERATE_BINARY, "--model=" + dir.string(),
                                        "--prompt_ids=1", "--max_new_tokens=4", "--output=ids"},
                                       absl::Seconds(60));
  EXPECT_EQ(ids.exit_code, 0) << ids.err;
  const ProcessResult server = RunProcess(
      {MPA_SERVER_BINARY, "--model=" + dir.string(), "--address=127.0.0.1:0", "--metrics_address="},
      absl::Seconds(60), "listening on");
  EXPECT_TRUE(server.stopped_early) << server.out << server.err;
  EXPECT_TRUE(absl::StrContains(server.out, "tokenizer no")) << server.out;
  fs::remove_all(dir);
}

}  // namespace
}  // namespace mpa::server
