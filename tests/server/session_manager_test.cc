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
absl::StatusOr<Session*> CreateFor(SessionManager& sessions, absl::string_view owner,
                                   absl::string_view id = "") {
  return sessions.Create(nullptr, AttentionOptions(), /*ephemeral=*/false, absl::Now(), owner, id);
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
  sessions.Remove(*a);
  EXPECT_EQ(sessions.FindOwned(id, "owner-a").status(), by_b.status());
}

TEST(SessionManagerTest, UnknownIdsAreQuotedEscaped) {
  SessionManager sessions(8, absl::ZeroDuration());
  const std::string id("a\x00\x01\x7f\n", 5);
  absl::StatusOr<Session*> s = sessions.FindOwned(id, "");
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
  sessions.Remove(*first);
  EXPECT_TRUE(CreateFor(sessions, "a").ok());
  EXPECT_EQ(sessions.explicit_sessions(), 3);
}

TEST(SessionManagerTest, ChosenIdsAreUniquePerOwner) {
  SessionManager sessions(8, absl::ZeroDuration());
  absl::StatusOr<Session*> a = CreateFor(sessions, "owner-a", "chat-0001");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ((*a)->id, "chat-0001");
  absl::StatusOr<Session*> again = CreateFor(sessions, "owner-a", "chat-0001");
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(again.status().message(), HasSubstr(R"("chat-0001")"));
  EXPECT_EQ(sessions.explicit_sessions(), 1);
  // Another owner may hold the same id: nothing tells it that owner-a has one, and each finds
  // only its own.
  absl::StatusOr<Session*> b = CreateFor(sessions, "owner-b", "chat-0001");
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_NE(*a, *b);
  EXPECT_EQ(*sessions.FindOwned("chat-0001", "owner-a"), *a);
  EXPECT_EQ(*sessions.FindOwned("chat-0001", "owner-b"), *b);
  // Freed, the id can be opened again.
  sessions.Remove(*a);
  EXPECT_FALSE(sessions.FindOwned("chat-0001", "owner-a").ok());
  EXPECT_TRUE(sessions.FindOwned("chat-0001", "owner-b").ok());
  EXPECT_TRUE(CreateFor(sessions, "owner-a", "chat-0001").ok());
  EXPECT_EQ(sessions.explicit_sessions(), 2);
}

TEST(SessionManagerTest, AnExistingIdIsReportedBeforeTheLimits) {
  // A client retrying a CreateSession whose answer it lost learns that its session is there,
  // even when the server is full.
  SessionManager sessions(1, absl::ZeroDuration());
  ASSERT_TRUE(CreateFor(sessions, "", "retried-id").ok());
  EXPECT_EQ(CreateFor(sessions, "", "retried-id").status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(CreateFor(sessions, "", "another-id").status().code(),
            absl::StatusCode::kResourceExhausted);
}

TEST(SessionManagerTest, ExpiredSessionsAreListedAndRemoved) {
  SessionManager sessions(8, absl::Seconds(10));
  const absl::Time t0 = absl::Now();
  absl::StatusOr<Session*> old =
      sessions.Create(nullptr, AttentionOptions(), /*ephemeral=*/false, t0, "a", "old-session");
  absl::StatusOr<Session*> fresh = sessions.Create(nullptr, AttentionOptions(), /*ephemeral=*/false,
                                                   t0 + absl::Seconds(8), "a", "new-session");
  ASSERT_TRUE(old.ok() && fresh.ok());
  std::vector<Session*> expired = sessions.Expired(t0 + absl::Seconds(12));
  ASSERT_EQ(expired.size(), 1u);
  EXPECT_EQ(expired[0], *old);
  for (Session* s : expired) sessions.Remove(s);
  EXPECT_FALSE(sessions.FindOwned("old-session", "a").ok());
  EXPECT_TRUE(sessions.FindOwned("new-session", "a").ok());
  EXPECT_EQ(sessions.explicit_sessions(), 1);
}

}  // namespace
}  // namespace mpa::server
