#include "model/config/multipole_config.h"

#include <functional>
#include <string>

#include "gtest/gtest.h"

namespace mpa {
namespace {

TEST(MultipoleConfigTest, DefaultsAreValid) {
  EXPECT_TRUE(MultipoleConfig().Validate().ok());
  MultipoleConfig two;
  two.levels = 2;
  EXPECT_TRUE(two.Validate().ok());
}

TEST(MultipoleConfigTest, BadKnobsAreInvalidArgumentNamingTheField) {
  const struct {
    std::string field;
    std::function<void(MultipoleConfig&)> spoil;
  } cases[] = {
      {"tokens_per_centroid", [](MultipoleConfig& c) { c.tokens_per_centroid = 0; }},
      {"tokens_per_centroid", [](MultipoleConfig& c) { c.tokens_per_centroid = -3; }},
      {"fine_tokens_per_centroid", [](MultipoleConfig& c) { c.fine_tokens_per_centroid = 0; }},
      {"coarse_tokens_per_centroid", [](MultipoleConfig& c) { c.coarse_tokens_per_centroid = -1; }},
      {"token_budget", [](MultipoleConfig& c) { c.token_budget = -1; }},
      {"token_budget_fraction", [](MultipoleConfig& c) { c.token_budget_fraction = -0.1f; }},
      {"token_budget_fraction", [](MultipoleConfig& c) { c.token_budget_fraction = 1.5f; }},
      {"cluster_interval", [](MultipoleConfig& c) { c.cluster_interval = 0; }},
      {"levels", [](MultipoleConfig& c) { c.levels = 3; }},
      {"levels", [](MultipoleConfig& c) { c.levels = 0; }},
      {"sink_tokens", [](MultipoleConfig& c) { c.sink_tokens = -1; }},
      {"lookup_position", [](MultipoleConfig& c) { c.lookup_position = -5; }},
      {"prefill_kmeans_iterations", [](MultipoleConfig& c) { c.prefill_kmeans_iterations = 0; }},
      {"update_kmeans_iterations", [](MultipoleConfig& c) { c.update_kmeans_iterations = -1; }},
      {"block_tokens", [](MultipoleConfig& c) { c.block_tokens = 0; }},
      {"final_window_max", [](MultipoleConfig& c) { c.final_window_max = 5000; }},
      {"min_clustered_tokens", [](MultipoleConfig& c) { c.min_clustered_tokens = -1; }},
      {"quest_page_tokens", [](MultipoleConfig& c) { c.quest_page_tokens = 0; }},
      {"coarse_expansion", [](MultipoleConfig& c) { c.coarse_expansion = 0.5f; }},
      {"coarse_tokens_per_centroid",
       [](MultipoleConfig& c) {
         c.levels = 2;
         c.coarse_tokens_per_centroid = 4;
       }},
  };
  for (const auto& test : cases) {
    MultipoleConfig config;
    test.spoil(config);
    const absl::Status s = config.Validate();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << test.field;
    EXPECT_NE(s.message().find(test.field), std::string::npos)
        << "message '" << s.message() << "' should name " << test.field;
  }
}

TEST(MultipoleConfigTest, ScaledDownKnobsAreValid) {
  MultipoleConfig c;
  c.sink_tokens = 4;
  c.cluster_interval = 16;
  c.tokens_per_centroid = 4;
  c.block_tokens = 128;
  c.final_window_min = 64;
  c.final_window_max = 192;
  c.min_clustered_tokens = 32;
  EXPECT_TRUE(c.Validate().ok()) << c.Validate();
}

// The design's default clusters the cached post-RoPE keys.
TEST(CentroidKeysTest, DefaultIsPostRope) {
  EXPECT_EQ(MultipoleConfig().centroid_keys, CentroidKeys::kPostRope);
}

TEST(CentroidKeysTest, NamesRoundTrip) {
  for (CentroidKeys keys :
       {CentroidKeys::kPostRope, CentroidKeys::kPreRopeRotatedMeans, CentroidKeys::kPreRope}) {
    const absl::StatusOr<CentroidKeys> parsed = ParseCentroidKeys(CentroidKeysName(keys));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, keys);
  }
  EXPECT_STREQ(CentroidKeysName(CentroidKeys::kPostRope), "post_rope");
  EXPECT_STREQ(CentroidKeysName(CentroidKeys::kPreRopeRotatedMeans), "pre_rope_rotated_means");
  EXPECT_STREQ(CentroidKeysName(CentroidKeys::kPreRope), "pre_rope");
}

// Anything else is InvalidArgument naming the field and every allowed value.
TEST(CentroidKeysTest, RejectsJunk) {
  for (const char* junk : {"", "junk", "POST_ROPE", "post-rope", "post_rope ", "pre_rope_rotated",
                           "rotated_centroids", "true"}) {
    const absl::StatusOr<CentroidKeys> parsed = ParseCentroidKeys(junk);
    ASSERT_FALSE(parsed.ok()) << "'" << junk << "'";
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    for (const char* part : {"centroid_keys", "post_rope", "pre_rope_rotated_means", "pre_rope"}) {
      EXPECT_NE(parsed.status().message().find(part), std::string::npos)
          << "message '" << parsed.status().message() << "' should name " << part;
    }
  }
}

}  // namespace
}  // namespace mpa
