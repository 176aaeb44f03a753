#include "model/io/json_excerpt.h"

#include <string>

#include "gtest/gtest.h"

namespace mpa {
namespace {

using json = nlohmann::json;

TEST(JsonExcerptTest, ScalarsAndSmallValuesAsJson) {
  EXPECT_EQ(JsonExcerpt(json(-3)), "-3");
  EXPECT_EQ(JsonExcerpt(json("a\nb")), "\"a\\nb\"");
  EXPECT_EQ(JsonExcerpt(json::parse("[1, 2.5, null]")), "[1,2.5,null]");
  EXPECT_EQ(JsonExcerpt(json::parse(R"({"id": 3, "content": "x"})")), R"({"content":"x","id":3})");
}

TEST(JsonExcerptTest, LargeValuesAreCut) {
  EXPECT_EQ(JsonExcerpt(json::parse("[1, 2, 3, 4, 5, 6]")), "[1,2,3,4,...]");
  EXPECT_EQ(JsonExcerpt(json::parse("[[[[[1]]]]]")), "[[[[...]]]]");
  EXPECT_LE(JsonExcerpt(json(std::string(1000, 'x'))).size(), 100u);
  // Nested far deeper than a recursive dump survives.
  const int depth = 1000000;
  const json deep = json::parse(std::string(depth, '[') + std::string(depth, ']'));
  EXPECT_EQ(JsonExcerpt(deep), "[[[[...]]]]");
}

}  // namespace
}  // namespace mpa
