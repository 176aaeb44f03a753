#include "server/api_keys.h"

#include <cstdio>
#include <fstream>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mpa::server {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kKeyA[] = "alpha-0123456789abcdef";
constexpr char kKeyB[] = "bravo:0123456789:with-colons";  // a colon after a non-name prefix

TEST(ApiKeysTest, ParsesNamesCommentsAndBlankLines) {
  const std::string text = absl::StrCat("# keys for the test\n\n  alice: ", kKeyA,
                                        "  \r\n\t\n# another comment\n", kKeyB, "\n");
  absl::StatusOr<ApiKeys> keys = ApiKeys::Parse(text);
  ASSERT_TRUE(keys.ok()) << keys.status();
  ASSERT_EQ(keys->keys().size(), 2u);
  EXPECT_EQ(keys->keys()[0].name, "alice");
  // "bravo" is a valid name, so the rest of the line is the key.
  EXPECT_EQ(keys->keys()[1].name, "bravo");
  EXPECT_NE(keys->keys()[0].owner, keys->keys()[1].owner);
  EXPECT_EQ(keys->Match(kKeyA), &keys->keys()[0]);
  EXPECT_EQ(keys->Match("0123456789:with-colons"), &keys->keys()[1]);
  EXPECT_EQ(keys->Match(kKeyB), nullptr);
  EXPECT_EQ(keys->Match(""), nullptr);
  EXPECT_EQ(keys->Match("alpha-0123456789abcdeX"), nullptr);
}

TEST(ApiKeysTest, UnnamedKeysAreNamedByLine) {
  absl::StatusOr<ApiKeys> keys = ApiKeys::Parse(absl::StrCat("\n", "a+b/c=0123456789ABCDEF\n"));
  ASSERT_TRUE(keys.ok()) << keys.status();
  ASSERT_EQ(keys->keys().size(), 1u);
  EXPECT_EQ(keys->keys()[0].name, "key2");
  EXPECT_NE(keys->Match("a+b/c=0123456789ABCDEF"), nullptr);
  // Only the digest is kept: the owner string is 64 hex digits, not the key.
  EXPECT_EQ(keys->keys()[0].owner.size(), 64u);
}

TEST(ApiKeysTest, RefusesShortKeysWithoutEchoingThem) {
  absl::StatusOr<ApiKeys> keys = ApiKeys::Parse("ok:0123456789abcdef\nshort:tiny-secret\n");
  ASSERT_FALSE(keys.ok());
  EXPECT_EQ(keys.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(keys.status().message(), HasSubstr("line 2 (short)"));
  EXPECT_THAT(keys.status().message(), HasSubstr("16"));
  EXPECT_THAT(keys.status().message(), Not(HasSubstr("tiny-secret")));
}

TEST(ApiKeysTest, RefusesKeysWithSpaces) {
  absl::StatusOr<ApiKeys> keys = ApiKeys::Parse("0123456789 abcdefgh\n");
  ASSERT_FALSE(keys.ok());
  EXPECT_THAT(keys.status().message(), HasSubstr("line 1"));
  EXPECT_THAT(keys.status().message(), Not(HasSubstr("abcdefgh")));
}

TEST(ApiKeysTest, RefusesFilesWithoutKeys) {
  for (const char* text : {"", "\n\n", "# only a comment\n   \n"}) {
    absl::StatusOr<ApiKeys> keys = ApiKeys::Parse(text);
    ASSERT_FALSE(keys.ok()) << "\"" << text << "\"";
    EXPECT_EQ(keys.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(keys.status().message(), HasSubstr("no key"));
  }
}

TEST(ApiKeysTest, LoadNamesThePath) {
  const std::string missing = ::testing::TempDir() + "/api_keys_test_missing_file";
  absl::StatusOr<ApiKeys> keys = ApiKeys::Load(missing);
  ASSERT_FALSE(keys.ok());
  EXPECT_EQ(keys.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(keys.status().message(), HasSubstr(missing));

  const std::string path = ::testing::TempDir() + "/api_keys_test_keys";
  std::ofstream(path) << "# test\nname1:" << kKeyA << "\n";
  keys = ApiKeys::Load(path);
  ASSERT_TRUE(keys.ok()) << keys.status();
  EXPECT_EQ(keys->keys()[0].name, "name1");
  std::remove(path.c_str());
}

TEST(ApiKeysTest, AuthenticateReadsBearerMetadata) {
  absl::StatusOr<ApiKeys> keys = ApiKeys::Parse(absl::StrCat("alice:", kKeyA, "\n"));
  ASSERT_TRUE(keys.ok());
  const std::string bearer = absl::StrCat("Bearer ", kKeyA);
  absl::StatusOr<const ApiKey*> key = keys->Authenticate(absl::string_view(bearer));
  ASSERT_TRUE(key.ok()) << key.status();
  EXPECT_EQ((*key)->name, "alice");
  const std::string lower = absl::StrCat("bearer ", kKeyA);
  EXPECT_TRUE(keys->Authenticate(absl::string_view(lower)).ok());

  const std::string wrong = "Bearer wrong-key-0123456789abcdef";
  for (std::optional<absl::string_view> value :
       {std::optional<absl::string_view>(), std::optional<absl::string_view>(""),
        std::optional<absl::string_view>(kKeyA), std::optional<absl::string_view>(wrong),
        std::optional<absl::string_view>("Basic dXNlcjpwYXNz")}) {
    absl::StatusOr<const ApiKey*> refused = keys->Authenticate(value);
    ASSERT_FALSE(refused.ok()) << value.value_or("(none)");
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnauthenticated);
    EXPECT_THAT(refused.status().message(), Not(HasSubstr("0123456789abcdef")));
    EXPECT_THAT(refused.status().message(), Not(HasSubstr("dXNlcjpwYXNz")));
  }
}

}  // namespace
}  // namespace mpa::server
