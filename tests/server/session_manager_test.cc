#include "server/session_manager.h"

#include <string>

#include "absl/container/flat_hash_set.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mpa::server {
namespace {

using ::testing::HasSubstr;
using ::testing::MatchesRegex;

// The manager never touches a session's sequence, so these sessions have none.
absl::StatusOr<Session*> CreateFor(SessionManager& sessions, absl::string_view owner) {
  return sessions.Create(nullptr, AttentionOptions(), /*ephemeral=*/false, absl::Now(), owner);
}

TEST(SessionManagerTest, IdsAre128RandomBitsInHex) {
  SessionManager sessions(1000, absl::ZeroDuration());
  absl::flat_hash_set<std::string> ids;
  for (int i = 0; i < 200; ++i) {
    absl::StatusOr<Session*> s = CreateFor(sessions, "");
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_THAT((*s)->id, MatchesRegex("ses-[0-9a-f]{32}"));
    ids.insert((*s)->id);
  }
  EXPECT_EQ(ids.size(), 200u);
}

TEST(SessionManagerTest, AnotherOwnersSessionIsNotFoundLikeAnUnknownOne) {
  SessionManager sessions(8, absl::ZeroDuration());
  absl::StatusOr<Session*> a = CreateFor(sessions, "owner-a");
  ASSERT_TRUE(a.ok());
  const std::string id = (*a)->id;
  EXPECT_TRUE(sessions.FindOwned(id, "owner-a").ok());
  absl::StatusOr<Session*> by_b = sessions.FindOwned(id, "owner-b");
  ASSERT_FALSE(by_b.ok());
  EXPECT_EQ(by_b.status().code(), absl::StatusCode::kNotFound);
  // The same message as for an id that was never created (the id is the client's own).
  sessions.Remove(id);
  EXPECT_EQ(sessions.FindOwned(id, "owner-a").status(), by_b.status());
}

TEST(SessionManagerTest, UnknownIdsAreQuotedEscaped) {
  SessionManager sessions(8, absl::ZeroDuration());
  const std::string id("a\x00\x01\x7f\n", 5);
  absl::StatusOr<Session*> s = sessions.Find(id);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.status().message(), HasSubstr(R"("a\x00\x01\x7f\n")"));
  for (char c : s.status().message()) EXPECT_TRUE(c >= 0x20 && c < 0x7f) << int(c);
}

TEST(SessionManagerTest, PerOwnerLimit) {
  SessionManager sessions(8, absl::ZeroDuration(), /*max_sessions_per_owner=*/2);
  absl::StatusOr<Session*> first = CreateFor(sessions, "a");
  ASSERT_TRUE(first.ok());
  ASSERT_TRUE(CreateFor(sessions, "a").ok());
  absl::StatusOr<Session*> third = CreateFor(sessions, "a");
  ASSERT_FALSE(third.ok());
  EXPECT_EQ(third.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(third.status().message(), HasSubstr("--max_sessions_per_key is 2"));
  EXPECT_TRUE(CreateFor(sessions, "b").ok());  // another owner is not held back
  // Ephemeral sessions do not count.
  EXPECT_TRUE(
      sessions.Create(nullptr, AttentionOptions(), /*ephemeral=*/true, absl::Now(), "a").ok());
  sessions.Remove((*first)->id);
  EXPECT_TRUE(CreateFor(sessions, "a").ok());
  EXPECT_EQ(sessions.explicit_sessions(), 3);
}

}  // namespace
}  // namespace mpa::server
