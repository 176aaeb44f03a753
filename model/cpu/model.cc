#include "model/cpu/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/attention_blas.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/ops.h"
#include "model/attention/cpu_attention_backend.h"
#include "model/runtime/kv_blocks.h"
#include "model/runtime/status_macros.h"
#include "model/runtime/step_checks.h"

namespace mpa {

Model::Model(const ModelConfig& config, Weights weights, const ModelOptions& options)
    : config_(config),
      weights_(std::move(weights)),
      options_(options),
      rope_(config_),
      pool_(std::make_unique<KvBlockPool>(
          KvBlocksFor(options.max_kv_tokens, options.kv_block_tokens), options.kv_block_tokens)),
      backend_(std::make_unique<CpuAttentionBackend>(config_, rope_, options.use_blas)) {
  cpu::SetBlasThreads(options.threads);
}

Model::~Model() = default;

absl::StatusOr<std::unique_ptr<Model>> Model::Load(const std::string& dir,
                                                   const ModelOptions& options) {
  MPA_ASSIGN_OR_RETURN(ConfigAndWeights loaded, LoadConfigAndWeights(dir));
  return FromWeights(loaded.config, std::move(loaded.weights), options);
}

absl::StatusOr<std::unique_ptr<Model>> Model::FromWeights(const ModelConfig& config,
                                                          Weights weights,
                                                          const ModelOptions& options) {
  MPA_RETURN_IF_ERROR(CheckWeights(config, weights));
  if (options.kv_block_tokens <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv_block_tokens must be > 0 (got ", options.kv_block_tokens, ")"));
  }
  if (options.max_kv_tokens <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_kv_tokens must be > 0 (got ", options.max_kv_tokens, ")"));
  }
  return std::unique_ptr<Model>(new Model(config, std::move(weights), options));
}

std::unique_ptr<SequenceState> Model::NewSequence(const AttentionOptions& options) {
  return std::make_unique<SequenceState>(pool_.get(), config_.num_layers, config_.num_kv_heads,
                                         config_.head_dim, options);
}

void Model::Linear(const float* x, const std::vector<float>& w, const std::vector<float>& bias,
                   int64_t rows, int64_t in, int64_t out, float* y) const {
  cpu::LinearParams p;
  p.x = x;
  p.w = w.data();
  p.bias = bias.empty() ? nullptr : bias.data();
  p.rows = rows;
  p.in_features = in;
  p.out_features = out;
  p.y = y;
  if (options_.use_blas) {
    cpu::LinearBlas(p);
  } else {
    cpu::LinearReference(p);
  }
}

void Model::ForwardRows(absl::Span<SequenceState* const> seqs, const int* rows_per_seq, float* x,
                        int64_t rows, bool prefill) {
  const ModelConfig& c = config_;
  const int64_t hidden = c.hidden_size;
  const int hd = c.head_dim;
  const int64_t q_dim = int64_t{c.num_heads} * hd;
  const int64_t kv_dim = int64_t{c.num_kv_heads} * hd;
  const int64_t ffn = c.intermediate_size;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));

  std::vector<float> h(rows * hidden);     // [rows, hidden] normalised input
  std::vector<float> q(rows * q_dim);      // [rows, num_heads, head_dim]
  std::vector<float> q_raw(rows * q_dim);  // same, before RoPE
  std::vector<float> k(rows * kv_dim);     // [rows, num_kv_heads, head_dim]
  std::vector<float> v(rows * kv_dim);
  std::vector<float> attn(rows * q_dim);  // [rows, num_heads, head_dim]
  std::vector<float> proj(rows * hidden);
  std::vector<float> gate(rows * ffn), up(rows * ffn);

  // Row r belongs to sequence row_seq[r] at position row_pos[r].
  std::vector<int> row_seq(rows), row_pos(rows), first_new(seqs.size());
  {
    int64_t r = 0;
    for (size_t s = 0; s < seqs.size(); ++s) {
      first_new[s] = seqs[s]->num_tokens() - rows_per_seq[s];
      for (int i = 0; i < rows_per_seq[s]; ++i, ++r) {
        row_seq[r] = static_cast<int>(s);
        row_pos[r] = first_new[s] + i;
      }
    }
  }

  for (int layer = 0; layer < c.num_layers; ++layer) {
    const LayerWeights& lw = weights_.layers[layer];
    for (int64_t r = 0; r < rows; ++r) {
      cpu::RmsNorm(x + r * hidden, lw.input_norm.data(), hidden, c.rms_norm_eps, &h[r * hidden]);
    }
    Linear(h.data(), lw.q_proj, lw.q_bias, rows, hidden, q_dim, q.data());
    Linear(h.data(), lw.k_proj, lw.k_bias, rows, hidden, kv_dim, k.data());
    Linear(h.data(), lw.v_proj, lw.v_bias, rows, hidden, kv_dim, v.data());
    if (c.qk_norm) {
      cpu::RmsNormRows(q.data(), lw.q_norm.data(), rows * c.num_heads, hd, c.rms_norm_eps,
                       q.data());
      cpu::RmsNormRows(k.data(), lw.k_norm.data(), rows * c.num_kv_heads, hd, c.rms_norm_eps,
                       k.data());
    }
    q_raw = q;
    // Write this layer's keys (raw and rotated) and values into each sequence's cache.
    for (int64_t r = 0; r < rows; ++r) {
      LayerKv& kv = seqs[row_seq[r]]->layer(layer);
      const int pos = row_pos[r];
      float* kr = &k[r * kv_dim];
      for (int kvh = 0; kvh < c.num_kv_heads; ++kvh) {
        std::memcpy(kv.RawKeyRow(kvh, pos), kr + kvh * hd, sizeof(float) * hd);
      }
      rope_.Apply(kr, c.num_kv_heads, pos);
      rope_.Apply(&q[r * q_dim], c.num_heads, pos);
      for (int kvh = 0; kvh < c.num_kv_heads; ++kvh) {
        std::memcpy(kv.KeyRow(kvh, pos), kr + kvh * hd, sizeof(float) * hd);
        std::memcpy(kv.ValueRow(kvh, pos), &v[r * kv_dim + kvh * hd], sizeof(float) * hd);
      }
    }
    if (prefill) {
      // Dense causal attention: row r sees tokens [0, pos]. Clustering happens in OnAppend.
      if (options_.use_blas) {
        int64_t r0 = 0;
        for (size_t s = 0; s < seqs.size(); ++s) {
          cpu::CausalPrefillParams p;
          p.q = &q[r0 * q_dim];
          p.kv = seqs[s]->View(layer);
          p.num_rows = rows_per_seq[s];
          p.first_position = first_new[s];
          p.num_q_heads = c.num_heads;
          p.num_kv_heads = c.num_kv_heads;
          p.head_dim = hd;
          p.scale = scale;
          p.out = &attn[r0 * q_dim];
          cpu::CausalPrefillAttentionBlas(p);
          r0 += rows_per_seq[s];
        }
      } else {
        for (int64_t r = 0; r < rows; ++r) {
          SequenceState& seq = *seqs[row_seq[r]];
          cpu::DenseDecodeParams p;
          p.q = &q[r * q_dim];
          p.kv = seq.View(layer);
          p.kv.num_tokens = row_pos[r] + 1;
          p.num_q_heads = c.num_heads;
          p.num_kv_heads = c.num_kv_heads;
          p.head_dim = hd;
          p.scale = scale;
          p.out = &attn[r * q_dim];
          cpu::DenseDecodeAttention(p);
        }
      }
      for (size_t s = 0; s < seqs.size(); ++s) backend_->OnAppend(layer, *seqs[s], first_new[s]);
    } else {
      for (int64_t r = 0; r < rows; ++r) {
        SequenceState& seq = *seqs[row_seq[r]];
        backend_->OnAppend(layer, seq, row_pos[r]);
        backend_->Decode(layer, seq, &q[r * q_dim], &q_raw[r * q_dim], &attn[r * q_dim]);
      }
    }
    Linear(attn.data(), lw.o_proj, {}, rows, q_dim, hidden, proj.data());
    cpu::AddInPlace(x, proj.data(), rows * hidden);

    for (int64_t r = 0; r < rows; ++r) {
      cpu::RmsNorm(x + r * hidden, lw.post_attention_norm.data(), hidden, c.rms_norm_eps,
                   &h[r * hidden]);
    }
    Linear(h.data(), lw.gate_proj, {}, rows, hidden, ffn, gate.data());
    Linear(h.data(), lw.up_proj, {}, rows, hidden, ffn, up.data());
    cpu::SiluMul(gate.data(), up.data(), rows * ffn, gate.data());
    Linear(gate.data(), lw.down_proj, {}, rows, ffn, hidden, proj.data());
    cpu::AddInPlace(x, proj.data(), rows * hidden);
  }
}

void Model::Logits(const float* x, int64_t rows, float* logits) const {
  const int64_t hidden = config_.hidden_size;
  std::vector<float> h(rows * hidden);
  for (int64_t r = 0; r < rows; ++r) {
    cpu::RmsNorm(x + r * hidden, weights_.final_norm.data(), hidden, config_.rms_norm_eps,
                 &h[r * hidden]);
  }
  Linear(h.data(), weights_.output_matrix(), {}, rows, hidden, config_.vocab_size, logits);
}

absl::Status Model::Prefill(SequenceState& seq, absl::Span<const int32_t> tokens, float* logits) {
  if (tokens.empty()) return absl::InvalidArgumentError("prefill needs at least one token");
  MPA_RETURN_IF_ERROR(CheckNewTokens(config_, seq.num_tokens(), tokens));
  const int n = static_cast<int>(tokens.size());
  MPA_RETURN_IF_ERROR(seq.Reserve(n));
  seq.CommitTokens(tokens.data(), n);
  const int64_t hidden = config_.hidden_size;
  std::vector<float> x(n * hidden);
  for (int i = 0; i < n; ++i) {
    std::memcpy(&x[i * hidden], &weights_.embed_tokens[int64_t{tokens[i]} * hidden],
                sizeof(float) * hidden);
  }
  SequenceState* seqs[] = {&seq};
  ForwardRows(absl::MakeSpan(seqs), &n, x.data(), n, /*prefill=*/true);
  Logits(&x[(n - 1) * hidden], 1, logits);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<SequenceState>> Model::CloneSequence(
    const SequenceState& source, const AttentionOptions& options) {
  MPA_RETURN_IF_ERROR(options.multipole.Validate());
  std::unique_ptr<SequenceState> seq = NewSequence(options);
  const int n = source.num_tokens();
  if (n == 0) return seq;
  MPA_RETURN_IF_ERROR(seq->Reserve(n));
  seq->CommitTokens(source.tokens().data(), n);
  const size_t row_floats = static_cast<size_t>(n) * config_.head_dim;
  for (int layer = 0; layer < config_.num_layers; ++layer) {
    const LayerKv& from = source.layer(layer);
    LayerKv& to = seq->layer(layer);
    for (int h = 0; h < config_.num_kv_heads; ++h) {
      const int64_t src = h * from.head_stride();
      const int64_t dst = h * to.head_stride();
      std::memcpy(&to.k[dst], &from.k[src], sizeof(float) * row_floats);
      std::memcpy(&to.k_raw[dst], &from.k_raw[src], sizeof(float) * row_floats);
      std::memcpy(&to.v[dst], &from.v[src], sizeof(float) * row_floats);
    }
    // As after a one-chunk prefill: every row of the layer written, then its maintenance.
    backend_->OnAppend(layer, *seq, 0);
  }
  return seq;
}

absl::Status Model::Decode(absl::Span<SequenceState* const> seqs, absl::Span<const int32_t> tokens,
                           float* logits) {
  MPA_RETURN_IF_ERROR(CheckDecodeBatch(config_, seqs, tokens));
  if (seqs.empty()) return absl::OkStatus();
  // Reserve for everyone first so a full pool fails the step before any state changes.
  for (SequenceState* seq : seqs) MPA_RETURN_IF_ERROR(seq->Reserve(1));
  const int64_t hidden = config_.hidden_size;
  const int64_t rows = static_cast<int64_t>(seqs.size());
  std::vector<float> x(rows * hidden);
  std::vector<int> ones(rows, 1);
  for (int64_t r = 0; r < rows; ++r) {
    seqs[r]->CommitTokens(&tokens[r], 1);
    std::memcpy(&x[r * hidden], &weights_.embed_tokens[int64_t{tokens[r]} * hidden],
                sizeof(float) * hidden);
  }
  ForwardRows(seqs, ones.data(), x.data(), rows, /*prefill=*/false);
  Logits(x.data(), rows, logits);
  return absl::OkStatus();
}

}  // namespace mpa
