#include "model/runtime/rope.h"

#include <cmath>

#include "gtest/gtest.h"
#include "model/config/model_config.h"

namespace mpa {
namespace {

ModelConfig YarnConfig() {
  ModelConfig c;
  c.head_dim = 64;
  c.rope_theta = 10000.0;
  c.max_position_embeddings = 16384;
  c.rope_scaling.type = RopeScaling::Type::kYarn;
  c.rope_scaling.factor = 4.0;
  c.rope_scaling.original_max_position_embeddings = 4096;
  return c;
}

// transformers tests `if mscale and mscale_all_dim` by truthiness: a zero mscale_all_dim (a
// DeepSeek-lineage default) falls back to get_mscale(factor) = 0.1 ln(factor) + 1.
TEST(RopeTest, YarnZeroMscaleAllDimFallsBackToPlainMscale) {
  ModelConfig c = YarnConfig();
  c.rope_scaling.mscale = 0.707;
  c.rope_scaling.mscale_all_dim = 0.0;
  const Rope rope(c);
  EXPECT_NEAR(rope.attention_scaling(), 0.1 * std::log(4.0) + 1.0, 1e-6);
}

TEST(RopeTest, YarnBothMscalesSetUseTheirRatio) {
  ModelConfig c = YarnConfig();
  c.rope_scaling.mscale = 0.707;
  c.rope_scaling.mscale_all_dim = 0.5;
  const Rope rope(c);
  const double want = (0.1 * 0.707 * std::log(4.0) + 1.0) / (0.1 * 0.5 * std::log(4.0) + 1.0);
  EXPECT_NEAR(rope.attention_scaling(), want, 1e-6);
}

}  // namespace
}  // namespace mpa
