// mpa_eval: how closely each sparse attention mode follows dense attention on real documents.
//
//   mpa_eval --model DIR (--ids_file FILE | --docs A.txt,B.txt) [--contexts 8192,16384,32768]
//            [--docs_per_context 4] [--score_tokens 256] [--modes multipole,multipole2,...]
//            [--budgets 64,128,512,5%,10%] [--recall_distance 2048] [--engine cpu|cuda]
//            [--out_md FILE] [--out_csv FILE] [multipole knobs: --sink_tokens N ...]
//
// For each context length L, each of the first --docs_per_context documents with at least L + 1
// tokens is cut to L + 1 tokens; every mode prefills its first L - S tokens and decodes the next
// S = --score_tokens of them teacher-forced (tools/eval/fidelity.h). Against dense attention on
// the same positions it reports mean and max KL(dense || mode), top-1 agreement, perplexity of
// the document's tokens and its ratio to dense's, long-range recall (accuracy where the next token
// completes an identifier last seen more than --recall_distance tokens earlier), the fraction of
// the cache read exactly, and decode time per scored token. --contexts 0 scores whole documents
// (their last S tokens). Modes: multipole (one level), multipole2 (two levels), exact-only,
// quest, dense (a second dense run: its KL must be 0). Budgets: a token count, or N% of the
// clustered region. Knobs not given keep the design's defaults (model/config/multipole_config.h).
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "model/config/multipole_flags.h"
#include "model/cpu/model.h"
#include "model/io/error_line.h"
#include "model/runtime/status_macros.h"
#include "model/text/tokenizer.h"
#include "tools/eval/fidelity.h"

#ifdef MPA_EVAL_WITH_CUDA
#include "tools/eval/cuda_eval_engine.h"
#endif

ABSL_FLAG(std::string, model, "models/linux-c-16k",
          "Hugging Face model folder (default: the project's long-context code model)");
ABSL_FLAG(std::string, ids_file, "",
          "documents as uint16 little-endian token ids, separated by --separator_id");
ABSL_FLAG(int, separator_id, -1, "id that ends each document in --ids_file (-1: the model's EOS)");
ABSL_FLAG(std::string, docs, "", "documents as text files, comma-separated (one per file)");
ABSL_FLAG(bool, add_special_tokens, true,
          "text documents: tokenize with BOS where the "
          "tokenizer adds one");
ABSL_FLAG(std::string, contexts, "8192,16384,32768",
          "context lengths L, comma-separated (0: whole documents)");
ABSL_FLAG(int, docs_per_context, 4, "documents scored at each context length");
ABSL_FLAG(int, score_tokens, 256, "teacher-forced decode steps scored per document");
ABSL_FLAG(std::string, modes, "multipole,multipole2,exact-only,quest",
          "modes: multipole, multipole2 (two levels), exact-only, quest, dense");
ABSL_FLAG(std::string, budgets, "64,128,512,5%,10%",
          "token budgets: a token count or a percentage of the clustered region");
ABSL_FLAG(int, recall_distance, 2048,
          "long-range recall: identifiers last seen more than this many tokens earlier");
ABSL_FLAG(std::string, engine, "cpu", "cpu, or cuda (where built with CUDA)");
ABSL_FLAG(int, threads, 0, "BLAS threads of the CPU engine (0 = library default)");
ABSL_FLAG(std::string, title, "", "heading of the markdown report");
ABSL_FLAG(std::string, commit, "unknown", "commit the numbers were measured at");
ABSL_FLAG(std::string, out_md, "", "also write the markdown report to this file");
ABSL_FLAG(std::string, out_csv, "", "also write the CSV rows to this file");

namespace mpa {
namespace {

using eval::ModeSpec;

absl::StatusOr<std::vector<int>> ParseInts(const std::string& flag, const std::string& text) {
  std::vector<int> out;
  for (absl::string_view piece : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    int v;
    if (!absl::SimpleAtoi(piece, &v) || v < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", flag, ": '", piece, "' is not a non-negative integer"));
    }
    out.push_back(v);
  }
  if (out.empty()) return absl::InvalidArgumentError(absl::StrCat("--", flag, " is empty"));
  return out;
}

absl::StatusOr<std::vector<ModeSpec>> ParseModes(const MultipoleConfig& base) {
  std::vector<ModeSpec> modes;
  std::vector<std::pair<std::string, MultipoleConfig>> budgets;
  for (absl::string_view b : absl::StrSplit(absl::GetFlag(FLAGS_budgets), ',', absl::SkipEmpty())) {
    MultipoleConfig c = base;
    double value;
    if (absl::EndsWith(b, "%")) {
      if (!absl::SimpleAtod(b.substr(0, b.size() - 1), &value) || !(value > 0) || value > 100) {
        return absl::InvalidArgumentError(
            absl::StrCat("--budgets: '", b, "' is not a percentage in (0, 100]"));
      }
      c.token_budget_fraction = static_cast<float>(value / 100.0);
    } else {
      int tokens;
      if (!absl::SimpleAtoi(b, &tokens) || tokens < 1) {
        return absl::InvalidArgumentError(
            absl::StrCat("--budgets: '", b, "' is neither a token count >= 1 nor N%"));
      }
      c.token_budget = tokens;
      c.token_budget_fraction = 0.0f;
    }
    budgets.emplace_back(std::string(b), c);
  }
  if (budgets.empty()) return absl::InvalidArgumentError("--budgets is empty");
  for (absl::string_view name :
       absl::StrSplit(absl::GetFlag(FLAGS_modes), ',', absl::SkipEmpty())) {
    if (name == "dense") {
      ModeSpec spec{"dense (second run)", "-", AttentionOptions{}};
      modes.push_back(spec);
      continue;
    }
    AttentionMode mode;
    std::string display;
    int levels = 1;
    if (name == "multipole") {
      mode = AttentionMode::kMultipole;
      display = "multipole (1 level)";
    } else if (name == "multipole2") {
      mode = AttentionMode::kMultipole;
      display = "multipole (2 levels)";
      levels = 2;
    } else if (name == "exact-only") {
      mode = AttentionMode::kExactOnly;
      display = "exact-only";
    } else if (name == "quest") {
      mode = AttentionMode::kQuest;
      display = "quest";
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "--modes: unknown mode '", name, "' (multipole, multipole2, exact-only, quest, dense)"));
    }
    for (const auto& [label, config] : budgets) {
      ModeSpec spec;
      spec.name = display;
      spec.budget = label;
      spec.options.mode = mode;
      spec.options.multipole = config;
      spec.options.multipole.levels = levels;
      MPA_RETURN_IF_ERROR(spec.options.multipole.Validate());
      modes.push_back(spec);
    }
  }
  if (modes.empty()) return absl::InvalidArgumentError("--modes is empty");
  return modes;
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

absl::StatusOr<std::vector<std::vector<int32_t>>> LoadDocuments(const ModelConfig& config,
                                                                const Tokenizer* tokenizer) {
  std::vector<std::vector<int32_t>> docs;
  const std::string ids_file = absl::GetFlag(FLAGS_ids_file);
  const std::string text_files = absl::GetFlag(FLAGS_docs);
  if (ids_file.empty() == text_files.empty()) {
    return absl::InvalidArgumentError("give exactly one of --ids_file and --docs");
  }
  if (!ids_file.empty()) {
    MPA_ASSIGN_OR_RETURN(std::string bytes, ReadFile(ids_file));
    if (bytes.size() % 2 != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(ids_file, " has an odd number of bytes (not uint16 ids)"));
    }
    int separator = absl::GetFlag(FLAGS_separator_id);
    if (separator < 0) {
      if (config.eos_token_ids.empty()) {
        return absl::InvalidArgumentError("--separator_id is needed (the model has no EOS id)");
      }
      separator = config.eos_token_ids[0];
    }
    std::vector<int32_t> doc;
    for (size_t i = 0; i < bytes.size(); i += 2) {
      const int32_t id =
          static_cast<unsigned char>(bytes[i]) | (static_cast<unsigned char>(bytes[i + 1]) << 8);
      if (id >= config.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat(ids_file, ": id ", id, " at token ", i / 2,
                                                       " is past the vocabulary (",
                                                       config.vocab_size, ")"));
      }
      if (id == separator) {
        if (!doc.empty()) docs.push_back(std::move(doc));
        doc.clear();
      } else {
        doc.push_back(id);
      }
    }
    if (!doc.empty()) docs.push_back(std::move(doc));
    return docs;
  }
  if (tokenizer == nullptr) {
    return absl::FailedPreconditionError("--docs needs the model's tokenizer.json");
  }
  for (absl::string_view path : absl::StrSplit(text_files, ',', absl::SkipEmpty())) {
    MPA_ASSIGN_OR_RETURN(std::string text, ReadFile(std::string(path)));
    docs.push_back(tokenizer->Encode(text, absl::GetFlag(FLAGS_add_special_tokens)));
  }
  return docs;
}

absl::StatusOr<std::unique_ptr<eval::EvalEngine>> MakeEngine(const std::string& dir,
                                                             std::unique_ptr<Model>* cpu_model,
                                                             int max_context) {
  const std::string engine = absl::GetFlag(FLAGS_engine);
  if (engine == "cpu") {
    ModelOptions options;
    options.threads = absl::GetFlag(FLAGS_threads);
    // A document's prefilled prefix and one mode's copy of it at a time.
    options.max_kv_tokens = std::max<int64_t>(2 * (int64_t{max_context} + 64), 4096);
    MPA_ASSIGN_OR_RETURN(*cpu_model, Model::Load(dir, options));
    return eval::MakeCpuEngine(cpu_model->get());
  }
  if (engine == "cuda") {
#ifdef MPA_EVAL_WITH_CUDA
    return eval::MakeCudaEngine(dir, max_context);
#else
    return absl::FailedPreconditionError("--engine cuda: this build has no CUDA engine");
#endif
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--engine must be cpu or cuda (got '", engine, "')"));
}

std::string KnobsLine(const MultipoleConfig& c) {
  return absl::StrFormat(
      "sink %d, cluster interval %d, one centroid per %d tokens (two levels: coarse 1/%d over "
      "fine 1/%d, expansion %.0fx), blocks of %d tokens, final window %d..%d, min clustered %d, "
      "k-means iterations %d (prefill) / %d (update), centroids %s, Quest pages of %d tokens",
      c.sink_tokens, c.cluster_interval, c.tokens_per_centroid, c.coarse_tokens_per_centroid,
      c.fine_tokens_per_centroid, c.coarse_expansion, c.block_tokens, c.final_window_min,
      c.final_window_max, c.min_clustered_tokens, c.prefill_kmeans_iterations,
      c.update_kmeans_iterations, CentroidKeysName(c.centroid_keys), c.quest_page_tokens);
}

absl::Status Run() {
  const std::string dir = absl::GetFlag(FLAGS_model);
  if (dir.empty()) return absl::InvalidArgumentError("--model is required");
  MultipoleConfig base;
  MPA_RETURN_IF_ERROR(MultipoleConfigFromFlags(&base));
  MPA_ASSIGN_OR_RETURN(std::vector<ModeSpec> modes, ParseModes(base));
  MPA_ASSIGN_OR_RETURN(std::vector<int> contexts,
                       ParseInts("contexts", absl::GetFlag(FLAGS_contexts)));
  const int score_tokens = absl::GetFlag(FLAGS_score_tokens);
  const int docs_per_context = absl::GetFlag(FLAGS_docs_per_context);
  const int recall_distance = absl::GetFlag(FLAGS_recall_distance);
  if (score_tokens < 1) return absl::InvalidArgumentError("--score_tokens must be >= 1");
  if (docs_per_context < 1) return absl::InvalidArgumentError("--docs_per_context must be >= 1");

  MPA_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(dir));
  MPA_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer,
                       Tokenizer::LoadForModel(dir, config.vocab_size));
  MPA_ASSIGN_OR_RETURN(std::vector<std::vector<int32_t>> docs,
                       LoadDocuments(config, tokenizer.get()));
  int max_context = 0;
  for (int c : contexts) max_context = std::max(max_context, c);
  for (const auto& d : docs) {
    if (contexts.size() == 1 && contexts[0] == 0) {
      max_context = std::max(max_context, static_cast<int>(d.size()));
    }
  }
  std::unique_ptr<Model> cpu_model;
  MPA_ASSIGN_OR_RETURN(std::unique_ptr<eval::EvalEngine> engine,
                       MakeEngine(dir, &cpu_model, max_context));

  std::string md = absl::GetFlag(FLAGS_title).empty()
                       ? std::string("# Attention fidelity\n\n")
                       : absl::StrCat("# ", absl::GetFlag(FLAGS_title), "\n\n");
  md += absl::StrFormat(
      "Commit `%s`, engine %s, model `%s` (%d layers, %d query / %d KV heads, head_dim %d, "
      "vocab %d). Teacher-forced: each mode prefills the first L - %d tokens of a document "
      "(dense) and decodes its next %d tokens; metrics compare each step's next-token "
      "distribution with dense attention's on the same tokens. Long-range recall: top-1 "
      "accuracy where the next token completes an identifier last seen more than %d tokens "
      "earlier. Read exactly: fraction of (layer, KV head, cached token) reads done exactly "
      "during decode. Time: wall-clock per decode step (batch of one).\n\n"
      "Knobs (the design's defaults unless given on the command line): %s.\n\n",
      absl::GetFlag(FLAGS_commit), engine->name(), dir, config.num_layers, config.num_heads,
      config.num_kv_heads, config.head_dim, config.vocab_size, score_tokens, score_tokens,
      recall_distance, KnobsLine(base));
  std::string csv = eval::CsvHeader();
  for (int context : contexts) {
    eval::ContextReport report;
    report.context = context;
    report.scored_steps_per_document = score_tokens;
    report.modes = modes;
    report.results.resize(modes.size());
    int used = 0;
    for (const auto& doc : docs) {
      if (used == docs_per_context) break;
      // Whole documents are cut to the context window; a longer context than the window is
      // reported as having no document.
      const int length =
          context == 0 ? std::min(static_cast<int>(doc.size()) - 1, config.max_position_embeddings)
                       : context;
      if (length > config.max_position_embeddings) break;
      const int prefix = length - score_tokens;
      if (prefix < 1 || static_cast<int>(doc.size()) < length + 1) continue;
      std::vector<bool> long_range(length + 1, false);
      if (tokenizer) {
        std::vector<std::string> bytes;
        for (int t = 0; t <= length; ++t) bytes.push_back(tokenizer->TokenBytes(doc[t]));
        long_range = eval::LongRangeCompletions(bytes, recall_distance);
      }
      MPA_ASSIGN_OR_RETURN(
          std::vector<eval::ModeTally> tallies,
          eval::ScoreDocument(*engine, absl::MakeConstSpan(doc).subspan(0, length + 1), prefix,
                              score_tokens, long_range, modes));
      report.dense.Add(tallies[0]);
      for (size_t m = 0; m < modes.size(); ++m) report.results[m].Add(tallies[m + 1]);
      ++used;
      std::cerr << absl::StrFormat(
          "context %d: document %d scored (dense ppl %.3f, %.2f ms/token)\n", context, used,
          tallies[0].perplexity(), tallies[0].ms_per_token());
    }
    if (used == 0) {
      if (context == 0) {
        md += absl::StrFormat("## Whole documents\n\nNo document has more than %d tokens.\n\n",
                              score_tokens + 1);
      } else if (context > config.max_position_embeddings) {
        md += absl::StrFormat("## Context %d tokens\n\nPast the model's context window (%d).\n\n",
                              context, config.max_position_embeddings);
      } else {
        md += absl::StrFormat("## Context %d tokens\n\nNo document has %d tokens.\n\n", context,
                              context + 1);
      }
      continue;
    }
    md += context == 0
              ? absl::StrFormat("## Whole documents (last %d tokens scored)\n\n", score_tokens)
              : absl::StrFormat("## Context %d tokens\n\n", context);
    md += eval::MarkdownTable(report) + "\n";
    csv += eval::CsvRows(report);
  }
  std::cout << md;
  if (const std::string out = absl::GetFlag(FLAGS_out_md); !out.empty()) {
    std::ofstream f(out);
    f << md;
    if (!f) return absl::InternalError(absl::StrCat("cannot write ", out));
  }
  if (const std::string out = absl::GetFlag(FLAGS_out_csv); !out.empty()) {
    std::ofstream f(out);
    f << csv;
    if (!f) return absl::InternalError(absl::StrCat("cannot write ", out));
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace mpa

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Scores every attention mode against dense attention, teacher-forced on documents.\n"
      "  mpa_eval --model DIR --ids_file heldout.bin --contexts 8192,16384 --out_md r.md");
  mpa::ListFlagsInHelp("tools/mpa_eval.cc");
  absl::ParseCommandLine(argc, argv);
  const absl::Status status = mpa::Run();
  if (!status.ok()) {
    std::cerr << "mpa_eval: " << mpa::ErrorLine(status.message()) << std::endl;
    return 1;
  }
  return 0;
}
