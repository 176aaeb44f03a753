// CPU decode throughput: tokens/s of one sequence at a given context, and the fraction of the
// machine's measured GEMV memory bandwidth that a decode step reaches (decode streams every
// weight and every cached key/value once per token, so that bandwidth is its ceiling).
//
//   cpu_decode_bench [--stories DIR] [--context 1024] [--steps 16] [--out FILE]
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_format.h"
#include "kernels/cpu/matmul.h"
#include "model/cpu/model.h"

ABSL_FLAG(std::string, stories, "../shared/models/stories260K", "stories260K folder");
ABSL_FLAG(int, context, 1024, "tokens in the cache when decode is timed");
ABSL_FLAG(int, steps, 16, "decode steps timed");
ABSL_FLAG(int, threads, 0, "BLAS threads (0 = default)");
ABSL_FLAG(std::string, out, "", "also write the table (markdown) to this file");

namespace mpa {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Bandwidth of sgemv over a matrix far larger than the caches: the decode step's ceiling.
double MeasureGemvBandwidth() {
  const int64_t rows = 8192, cols = 8192;  // 256 MiB of fp32
  std::vector<float> w(rows * cols), x(cols), y(rows);
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1, 1);
  for (float& v : w) v = u(rng);
  for (float& v : x) v = u(rng);
  cpu::LinearParams p{x.data(), w.data(), nullptr, 1, cols, rows, y.data()};
  cpu::LinearBlas(p);  // warm up
  double best = 0;
  for (int i = 0; i < 5; ++i) {
    auto t0 = Clock::now();
    cpu::LinearBlas(p);
    best = std::max(best, rows * cols * 4.0 / Seconds(t0, Clock::now()));
  }
  return best;
}

int64_t WeightBytes(const ModelConfig& c) {
  const int64_t h = c.hidden_size, hd = c.head_dim, q = int64_t{c.num_heads} * hd,
                kv = int64_t{c.num_kv_heads} * hd, f = c.intermediate_size;
  const int64_t per_layer = h * q * 2 + h * kv * 2 + 3 * h * f;
  // The embedding row read per token is negligible; the output matrix is read whole.
  return 4 * (c.num_layers * per_layer + int64_t{c.vocab_size} * h);
}

struct Row {
  std::string model;
  int context;
  double prefill_tok_s;
  double decode_tok_s;
  double bytes_per_step;
  double bandwidth;
};

Row Measure(const std::string& name, Model& model, int context, int steps) {
  const ModelConfig& c = model.config();
  std::mt19937 rng(7);
  std::vector<int32_t> prompt(context);
  for (int32_t& t : prompt) t = rng() % c.vocab_size;
  auto seq = model.NewSequence({});
  std::vector<float> logits(c.vocab_size);
  auto t0 = Clock::now();
  absl::Status s = model.Prefill(*seq, prompt, logits.data());
  const double prefill = Seconds(t0, Clock::now());
  if (!s.ok()) {
    std::fprintf(stderr, "prefill failed: %s\n", std::string(s.message()).c_str());
    std::exit(1);
  }
  SequenceState* batch[] = {seq.get()};
  int32_t next = 1;
  // One untimed step, then the timed ones.
  (void)model.Decode(absl::MakeSpan(batch), {next}, logits.data());
  t0 = Clock::now();
  for (int i = 0; i < steps; ++i) {
    next = static_cast<int32_t>(rng() % c.vocab_size);
    s = model.Decode(absl::MakeSpan(batch), {next}, logits.data());
    if (!s.ok()) std::exit(1);
  }
  const double per_step = Seconds(t0, Clock::now()) / steps;
  const double kv_bytes = 2.0 * 4 * c.num_layers * c.num_kv_heads * c.head_dim * (context + 1);
  const double bytes = WeightBytes(c) + kv_bytes;
  return {name, context, context / prefill, 1.0 / per_step, bytes, bytes / per_step};
}

}  // namespace
}  // namespace mpa

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  using namespace mpa;
  const int context = absl::GetFlag(FLAGS_context);
  const int steps = absl::GetFlag(FLAGS_steps);
  ModelOptions options;
  options.threads = absl::GetFlag(FLAGS_threads);
  const double gemv_bw = MeasureGemvBandwidth();
  std::vector<Row> rows;
  const std::string stories = absl::GetFlag(FLAGS_stories);
  if (std::filesystem::exists(stories + "/model.safetensors")) {
    auto model = Model::Load(stories, options);
    if (!model.ok()) {
      std::fprintf(stderr, "%s\n", std::string(model.status().message()).c_str());
      return 1;
    }
    // stories260K's context window is 512 tokens.
    const int ctx = std::min(context, (*model)->config().max_position_embeddings - steps - 2);
    rows.push_back(Measure("stories260K", **model, ctx, steps));
  } else {
    std::fprintf(stderr, "stories260K not found at %s; skipping it\n", stories.c_str());
  }
  {
    ModelConfig shape = NamedModelShape("qwen3-0.6b").value();
    auto model = Model::FromWeights(shape, RandomWeights(shape, 1), options);
    rows.push_back(Measure("qwen3-0.6b shape (random fp32)", **model, context, steps));
  }
  std::string table = absl::StrFormat(
      "GEMV (sgemv, 256 MiB fp32 matrix) bandwidth: %.2f GB/s\n\n"
      "| model | context | prefill tok/s | decode tok/s | bytes/step (MB) | achieved GB/s | "
      "fraction of GEMV bandwidth |\n|---|---|---|---|---|---|---|\n",
      gemv_bw / 1e9);
  for (const Row& r : rows) {
    table += absl::StrFormat("| %s | %d | %.1f | %.2f | %.1f | %.2f | %.2f |\n", r.model, r.context,
                             r.prefill_tok_s, r.decode_tok_s, r.bytes_per_step / 1e6,
                             r.bandwidth / 1e9, r.bandwidth / gemv_bw);
  }
  std::printf("%s", table.c_str());
  if (const std::string out = absl::GetFlag(FLAGS_out); !out.empty()) {
    std::ofstream(out) << table;
  }
  return 0;
}
