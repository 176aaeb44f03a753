#include "model/runtime/rope.h"

#include <algorithm>
#include <cmath>

#include "kernels/cpu/ops.h"

namespace mpa {

namespace {

constexpr double kPi = 3.14159265358979323846;

// YaRN: the dimension index at which a frequency completes `rotations` turns over `context`.
double YarnCorrectionDim(double rotations, int dim, double base, int context) {
  return dim * std::log(context / (rotations * 2.0 * kPi)) / (2.0 * std::log(base));
}

double YarnMscale(double scale, double mscale) {
  return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}

}  // namespace

Rope::Rope(const ModelConfig& config) : head_dim_(config.head_dim) {
  const int dim = config.head_dim;
  const int half = dim / 2;
  const double base = config.rope_theta;
  const RopeScaling& s = config.rope_scaling;
  // Unscaled frequencies, rounded to fp32 as transformers holds them.
  std::vector<float> plain(half);
  for (int i = 0; i < half; ++i) {
    plain[i] = static_cast<float>(1.0 / std::pow(base, static_cast<double>(2 * i) / dim));
  }
  inv_freq_ = plain;
  switch (s.type) {
    case RopeScaling::Type::kDefault:
      break;
    case RopeScaling::Type::kLinear:
      for (int i = 0; i < half; ++i) inv_freq_[i] = static_cast<float>(plain[i] / s.factor);
      break;
    case RopeScaling::Type::kLlama3: {
      // Long wavelengths are interpolated by `factor`, short ones kept, the band between blended.
      const double old_context = s.original_max_position_embeddings;
      const double low_freq_wavelen = old_context / s.low_freq_factor;
      const double high_freq_wavelen = old_context / s.high_freq_factor;
      for (int i = 0; i < half; ++i) {
        const double f = plain[i];
        const double wavelen = 2.0 * kPi / f;
        double out = wavelen > low_freq_wavelen ? f / s.factor : f;
        if (!(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen)) {
          const double smooth = (old_context / wavelen - s.low_freq_factor) /
                                (s.high_freq_factor - s.low_freq_factor);
          out = (1.0 - smooth) * out / s.factor + smooth * out;
        }
        inv_freq_[i] = static_cast<float>(out);
      }
      break;
    }
    case RopeScaling::Type::kYarn: {
      double attention = 0.0;
      if (s.attention_factor) {
        attention = *s.attention_factor;
      } else if (s.mscale.value_or(0.0) != 0.0 && s.mscale_all_dim.value_or(0.0) != 0.0) {
        // Truthiness, as transformers tests them: a zero mscale_all_dim means "not set".
        attention = YarnMscale(s.factor, *s.mscale) / YarnMscale(s.factor, *s.mscale_all_dim);
      } else {
        attention = YarnMscale(s.factor, 1.0);
      }
      attention_scaling_ = static_cast<float>(attention);
      double low = YarnCorrectionDim(s.beta_fast, dim, base, s.original_max_position_embeddings);
      double high = YarnCorrectionDim(s.beta_slow, dim, base, s.original_max_position_embeddings);
      if (s.truncate) {
        low = std::floor(low);
        high = std::ceil(high);
      }
      low = std::max(low, 0.0);
      high = std::min(high, static_cast<double>(dim - 1));
      if (low == high) high += 0.001;
      for (int i = 0; i < half; ++i) {
        const double pos_freq = std::pow(base, static_cast<double>(2 * i) / dim);
        const double extrapolation = 1.0 / pos_freq;
        const double interpolation = 1.0 / (s.factor * pos_freq);
        const double ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);
        const double extrapolation_weight = 1.0 - ramp;
        inv_freq_[i] = static_cast<float>(interpolation * (1.0 - extrapolation_weight) +
                                          extrapolation * extrapolation_weight);
      }
      break;
    }
  }
}

void Rope::CosSin(int position, float* cos, float* sin) const {
  const int half = head_dim_ / 2;
  const float pos = static_cast<float>(position);
  for (int i = 0; i < half; ++i) {
    const float angle = pos * inv_freq_[i];  // fp32 product, as transformers forms it
    cos[i] = static_cast<float>(std::cos(static_cast<double>(angle))) * attention_scaling_;
    sin[i] = static_cast<float>(std::sin(static_cast<double>(angle))) * attention_scaling_;
  }
}

void Rope::Apply(float* x, int num_heads, int position) const {
  const int half = head_dim_ / 2;
  float cos[512], sin[512];
  std::vector<float> cos_heap, sin_heap;
  float* c = cos;
  float* s = sin;
  if (half > 512) {
    cos_heap.resize(half);
    sin_heap.resize(half);
    c = cos_heap.data();
    s = sin_heap.data();
  }
  CosSin(position, c, s);
  cpu::ApplyRope(x, num_heads, head_dim_, c, s);
}

}  // namespace mpa
