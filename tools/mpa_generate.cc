// mpa_generate: load a checkpoint, prefill a prompt, and generate tokens on the CPU engine.
//
//   mpa_generate --model DIR (--prompt TEXT | --prompt_ids 1,2,3) [--max_new_tokens N]
//                [--temperature T] [--top_k K] [--top_p P] [--seed S] [--output ids|text]
//                [--attention dense|multipole|exact-only|quest] [--token_budget N] ...
//
// Prints the generated ids on one line (--output ids) or streams the generated text (--output
// text). Any error: a one-line reason on stderr and exit code 1. The multipole knobs
// (--token_budget, --centroid_keys, ...) are defined in model/config/multipole_flags.h.
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "model/config/multipole_flags.h"
#include "model/cpu/model.h"
#include "model/io/error_line.h"
#include "model/runtime/sampler.h"
#include "model/runtime/status_macros.h"
#include "model/text/tokenizer.h"

ABSL_FLAG(std::string, model, "", "Hugging Face model folder (config.json + safetensors)");
ABSL_FLAG(std::string, prompt, "", "prompt text (needs tokenizer.json in the model folder)");
ABSL_FLAG(std::string, prompt_ids, "", "prompt as comma-separated token ids, e.g. 1,2,3");
ABSL_FLAG(int, max_new_tokens, 64, "number of tokens to generate");
ABSL_FLAG(float, temperature, 0.0f, "sampling temperature; 0 = greedy");
ABSL_FLAG(int, top_k, 0, "top-k sampling (0 = off)");
ABSL_FLAG(float, top_p, 1.0f, "top-p (nucleus) sampling (1 = off)");
ABSL_FLAG(uint64_t, seed, 0, "random seed for sampling");
ABSL_FLAG(std::string, output, "text", "ids: one line of generated ids; text: streamed text");
ABSL_FLAG(bool, ignore_eos, false, "keep generating after an end-of-sequence token");
ABSL_FLAG(std::string, attention, "dense", "attention mode: dense, multipole, exact-only, quest");
ABSL_FLAG(int, threads, 0, "BLAS threads (0 = library default)");
ABSL_FLAG(bool, reference, false, "use the plain reference matrix products instead of BLAS");
ABSL_FLAG(bool, stats, false, "print attention statistics to stderr at the end");

namespace mpa {
namespace {

absl::StatusOr<std::vector<int32_t>> ParseIds(const std::string& text) {
  std::vector<int32_t> ids;
  for (absl::string_view piece : absl::StrSplit(text, absl::ByAnyChar(", "), absl::SkipEmpty())) {
    int32_t id;
    if (!absl::SimpleAtoi(piece, &id)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--prompt_ids: '", piece, "' is not an integer"));
    }
    ids.push_back(id);
  }
  if (ids.empty()) return absl::InvalidArgumentError("--prompt_ids: no ids given");
  return ids;
}

absl::StatusOr<AttentionOptions> AttentionFromFlags() {
  AttentionOptions options;
  MPA_ASSIGN_OR_RETURN(options.mode, ParseAttentionMode(absl::GetFlag(FLAGS_attention)));
  MPA_RETURN_IF_ERROR(MultipoleConfigFromFlags(&options.multipole));
  return options;
}

absl::Status Run() {
  const std::string dir = absl::GetFlag(FLAGS_model);
  if (dir.empty()) return absl::InvalidArgumentError("--model is required");
  const std::string output = absl::GetFlag(FLAGS_output);
  if (output != "ids" && output != "text") {
    return absl::InvalidArgumentError(
        absl::StrCat("--output must be ids or text (got '", output, "')"));
  }
  const int max_new = absl::GetFlag(FLAGS_max_new_tokens);
  if (max_new < 0) return absl::InvalidArgumentError("--max_new_tokens must be >= 0");
  SamplingParams sampling;
  sampling.temperature = absl::GetFlag(FLAGS_temperature);
  sampling.top_k = absl::GetFlag(FLAGS_top_k);
  sampling.top_p = absl::GetFlag(FLAGS_top_p);
  sampling.seed = absl::GetFlag(FLAGS_seed);
  MPA_RETURN_IF_ERROR(sampling.Validate());
  MPA_ASSIGN_OR_RETURN(AttentionOptions attention, AttentionFromFlags());

  ModelOptions model_options;
  model_options.threads = absl::GetFlag(FLAGS_threads);
  model_options.use_blas = !absl::GetFlag(FLAGS_reference);
  MPA_ASSIGN_OR_RETURN(std::unique_ptr<Model> model, Model::Load(dir, model_options));

  MPA_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer,
                       Tokenizer::LoadForModel(dir, model->config().vocab_size));

  std::vector<int32_t> prompt;
  const std::string prompt_text = absl::GetFlag(FLAGS_prompt);
  const std::string prompt_ids = absl::GetFlag(FLAGS_prompt_ids);
  if (!prompt_text.empty() && !prompt_ids.empty()) {
    return absl::InvalidArgumentError("give either --prompt or --prompt_ids, not both");
  }
  if (!prompt_ids.empty()) {
    MPA_ASSIGN_OR_RETURN(prompt, ParseIds(prompt_ids));
  } else if (!prompt_text.empty()) {
    if (!tokenizer) {
      return absl::FailedPreconditionError(absl::StrCat(
          "--prompt needs a tokenizer, but ", dir, " has no tokenizer.json; use --prompt_ids"));
    }
    prompt = tokenizer->Encode(prompt_text, /*add_special_tokens=*/true);
    if (prompt.empty()) return absl::InvalidArgumentError("--prompt encodes to no tokens");
  } else {
    if (!model->config().bos_token_id) {
      return absl::InvalidArgumentError(
          "give --prompt or --prompt_ids (the model has no BOS token)");
    }
    prompt = {*model->config().bos_token_id};
  }
  if (output == "text" && !tokenizer) {
    return absl::FailedPreconditionError(
        absl::StrCat("--output text needs a tokenizer, but ", dir, " has no tokenizer.json"));
  }

  // Generating max_new tokens stores prompt + max_new - 1 of them; say so before doing any work.
  const int64_t needed = static_cast<int64_t>(prompt.size()) + std::max(max_new - 1, 0);
  if (needed > model->config().max_position_embeddings) {
    return absl::InvalidArgumentError(
        absl::StrCat("prompt (", prompt.size(), " tokens) + --max_new_tokens (", max_new,
                     ") exceeds the model's context window of ",
                     model->config().max_position_embeddings, " tokens"));
  }

  std::vector<int32_t> eos = model->config().eos_token_ids;
  if (tokenizer) {
    for (int32_t id : tokenizer->eos_ids()) eos.push_back(id);
  }

  std::unique_ptr<SequenceState> seq = model->NewSequence(attention);
  std::vector<float> logits(model->config().vocab_size);
  MPA_RETURN_IF_ERROR(model->Prefill(*seq, prompt, logits.data()));
  Sampler sampler(sampling);
  std::vector<int32_t> generated;
  std::unique_ptr<IncrementalDecoder> decoder;
  if (output == "text") decoder = std::make_unique<IncrementalDecoder>(*tokenizer, true);
  const bool ignore_eos = absl::GetFlag(FLAGS_ignore_eos);
  for (int i = 0; i < max_new; ++i) {
    const int32_t id = sampler.Sample(logits.data(), model->config().vocab_size);
    generated.push_back(id);
    const bool is_eos = std::find(eos.begin(), eos.end(), id) != eos.end();
    if (decoder) {
      std::cout << decoder->Push(id) << std::flush;
    }
    if (is_eos && !ignore_eos) break;
    if (i + 1 == max_new) break;
    SequenceState* batch[] = {seq.get()};
    MPA_RETURN_IF_ERROR(model->Decode(absl::MakeSpan(batch), {id}, logits.data()));
  }
  if (decoder) {
    std::cout << decoder->Flush() << std::endl;
  } else {
    std::cout << absl::StrJoin(generated, " ") << std::endl;
  }
  if (absl::GetFlag(FLAGS_stats)) {
    const AttentionStats& s = seq->stats();
    std::cerr << "attention " << AttentionModeName(attention.mode) << ": exact fraction "
              << s.sparsity() << ", centroids scored " << s.centroids_scored << ", cluster updates "
              << s.cluster_updates << " (" << s.tokens_reclustered << " tokens, "
              << s.cluster_update_seconds << " s), prefill clustering " << s.prefill_cluster_seconds
              << " s\n";
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace mpa

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Generates tokens from a Hugging Face checkpoint on the CPU.\n"
      "  mpa_generate --model DIR --prompt_ids 1 --max_new_tokens 64 --temperature 0 --output ids");
  mpa::ListFlagsInHelp("tools/mpa_generate.cc");
  absl::ParseCommandLine(argc, argv);
  const absl::Status status = mpa::Run();
  if (!status.ok()) {
    std::cerr << "mpa_generate: " << mpa::ErrorLine(status.message()) << std::endl;
    return 1;
  }
  return 0;
}
