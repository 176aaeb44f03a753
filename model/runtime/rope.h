// Rotary position embedding tables with the scaling variants of transformers (default, linear,
// llama3, yarn), computed as transformers computes them (fp32 inverse frequencies).
#pragma once

#include <vector>

#include "model/config/model_config.h"

namespace mpa {

class Rope {
 public:
  explicit Rope(const ModelConfig& config);

  int head_dim() const { return head_dim_; }
  const std::vector<float>& inv_freq() const { return inv_freq_; }  // [head_dim/2]
  float attention_scaling() const { return attention_scaling_; }    // yarn's mscale, else 1

  // cos/sin [head_dim/2] of the angles at `position`, times attention_scaling.
  void CosSin(int position, float* cos, float* sin) const;
  // Rotates num_heads heads of x [num_heads, head_dim] in place to `position`.
  void Apply(float* x, int num_heads, int position) const;

 private:
  int head_dim_;
  std::vector<float> inv_freq_;
  float attention_scaling_ = 1.0f;
};

}  // namespace mpa
