#include "model/config/multipole_flags.h"

#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/reflection.h"
#include "gtest/gtest.h"

namespace mpa {
namespace {

// Flags left at their defaults give the design's defaults (a token budget of 128 and post-RoPE
// centroid keys included).
TEST(MultipoleConfigFromFlagsTest, DefaultsGiveTheDesignDefaults) {
  absl::FlagSaver saver;
  MultipoleConfig config;
  ASSERT_TRUE(MultipoleConfigFromFlags(&config).ok());
  const MultipoleConfig design;
  EXPECT_EQ(config.token_budget, 128);
  EXPECT_EQ(config.token_budget_fraction, design.token_budget_fraction);
  EXPECT_EQ(config.tokens_per_centroid, design.tokens_per_centroid);
  EXPECT_EQ(config.levels, design.levels);
  EXPECT_EQ(config.cluster_interval, design.cluster_interval);
  EXPECT_EQ(config.sink_tokens, design.sink_tokens);
  EXPECT_EQ(config.min_clustered_tokens, design.min_clustered_tokens);
  EXPECT_EQ(config.block_tokens, design.block_tokens);
  EXPECT_EQ(config.final_window_min, design.final_window_min);
  EXPECT_EQ(config.final_window_max, design.final_window_max);
  EXPECT_EQ(config.centroid_keys, CentroidKeys::kPostRope);
  EXPECT_EQ(config.lookup_position, design.lookup_position);
}

TEST(MultipoleConfigFromFlagsTest, GivenFlagsSetTheirFields) {
  absl::FlagSaver saver;
  absl::SetFlag(&FLAGS_token_budget, 64);
  absl::SetFlag(&FLAGS_token_budget_fraction, 0.25f);
  absl::SetFlag(&FLAGS_cluster_ratio, 4);
  absl::SetFlag(&FLAGS_levels, 2);
  absl::SetFlag(&FLAGS_cluster_interval, 16);
  absl::SetFlag(&FLAGS_sink_tokens, 4);
  absl::SetFlag(&FLAGS_min_clustered_tokens, 32);
  absl::SetFlag(&FLAGS_block_tokens, 128);
  absl::SetFlag(&FLAGS_centroid_keys, std::string("pre_rope"));
  absl::SetFlag(&FLAGS_lookup_position, 64);
  MultipoleConfig config;
  const absl::Status s = MultipoleConfigFromFlags(&config);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(config.token_budget, 64);
  EXPECT_EQ(config.token_budget_fraction, 0.25f);
  EXPECT_EQ(config.tokens_per_centroid, 4);
  EXPECT_EQ(config.levels, 2);
  EXPECT_EQ(config.cluster_interval, 16);
  EXPECT_EQ(config.sink_tokens, 4);
  EXPECT_EQ(config.min_clustered_tokens, 32);
  EXPECT_EQ(config.block_tokens, 128);
  EXPECT_EQ(config.final_window_min, 64);  // 1/2 and 3/2 of the block
  EXPECT_EQ(config.final_window_max, 192);
  EXPECT_EQ(config.centroid_keys, CentroidKeys::kPreRope);
  EXPECT_EQ(config.lookup_position, 64);

  absl::SetFlag(&FLAGS_centroid_keys, std::string("pre_rope_rotated_means"));
  ASSERT_TRUE(MultipoleConfigFromFlags(&config).ok());
  EXPECT_EQ(config.centroid_keys, CentroidKeys::kPreRopeRotatedMeans);
}

// A bad value is InvalidArgument naming the field: an unknown --centroid_keys, or any knob that
// MultipoleConfig::Validate rejects.
TEST(MultipoleConfigFromFlagsTest, BadValuesNameTheField) {
  const struct {
    void (*set)();
    const char* field;
  } cases[] = {
      {[] { absl::SetFlag(&FLAGS_centroid_keys, std::string("rotated")); }, "centroid_keys"},
      {[] { absl::SetFlag(&FLAGS_token_budget, -5); }, "token_budget"},
      {[] { absl::SetFlag(&FLAGS_token_budget_fraction, 1.5f); }, "token_budget_fraction"},
      {[] { absl::SetFlag(&FLAGS_cluster_ratio, 0); }, "tokens_per_centroid"},
      {[] { absl::SetFlag(&FLAGS_levels, 3); }, "levels"},
      {[] { absl::SetFlag(&FLAGS_lookup_position, -2); }, "lookup_position"},
  };
  for (const auto& c : cases) {
    absl::FlagSaver saver;
    c.set();
    MultipoleConfig config;
    const absl::Status s = MultipoleConfigFromFlags(&config);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_NE(s.message().find(c.field), std::string::npos)
        << "message '" << s.message() << "' should name " << c.field;
  }
}

}  // namespace
}  // namespace mpa
