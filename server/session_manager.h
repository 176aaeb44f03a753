// Sessions: ids, the session limit, idle time to live. Owned and used by the scheduler's engine
// thread only (DESIGN.md section 2: one thread owns all session state), so it has no locks.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "model/attention/attention_backend.h"
#include "server/engine.h"

namespace mpa::server {

struct Generation;  // defined by the scheduler

struct Session {
  std::string id;
  // Who created it (an API key's owner string; empty on a server without keys). Requests from
  // anyone else find no such session.
  std::string owner;
  // One-shot generations run on a private session: it does not count toward the session
  // limit, never expires, and is dropped when its generation ends.
  bool ephemeral = false;
  std::unique_ptr<EngineSequence> sequence;
  // Conversation tokens not yet in the KV cache: the last token a generation sampled (it is
  // fed at the start of the next turn).
  std::vector<int32_t> pending;
  AttentionOptions attention;
  absl::Time last_used;
  Generation* active = nullptr;  // the running generation, if any
  // Streams of this session's generations still being delivered to their clients (see
  // GenerationSink::reports_close): a session does not expire while one is open.
  int open_streams = 0;

  int64_t context_tokens() const {
    return sequence->num_tokens() + static_cast<int64_t>(pending.size());
  }
};

class SessionManager {
 public:
  // max_sessions: explicit sessions at once; max_sessions_per_owner: explicit sessions one
  // owner may hold at once (0: no limit of its own); ttl: idle time after which a session is
  // evicted (zero or infinite: never).
  SessionManager(int max_sessions, absl::Duration ttl, int max_sessions_per_owner = 0)
      : max_sessions_(max_sessions), max_sessions_per_owner_(max_sessions_per_owner), ttl_(ttl) {}

  // Ids are per owner: two owners may each hold a session "x", and nothing one owner does
  // tells it whether another owner's id exists (no error depends on it).
  //
  // `requested_id`: the id a client chose (already validated, see session_id.h); empty: a fresh
  // one drawn here ("ses-" or, ephemeral, "gen-" and 32 hex digits). AlreadyExists when the
  // owner holds a session of that id (a client that retries a CreateSession whose answer it
  // lost learns so). ResourceExhausted at the session limit or the owner's limit (ephemeral
  // sessions are not limited here). Internal if the system's random source fails.
  absl::StatusOr<Session*> Create(std::unique_ptr<EngineSequence> sequence,
                                  const AttentionOptions& attention, bool ephemeral, absl::Time now,
                                  absl::string_view owner = "",
                                  absl::string_view requested_id = "");
  // A client's request for session `id`: NotFound naming the id when `owner` has none of that
  // id (whether or not another owner has one: the same message either way).
  absl::StatusOr<Session*> FindOwned(absl::string_view id, absl::string_view owner);
  // Frees the session (`session` is invalid afterwards).
  void Remove(Session* session);
  // Explicit sessions idle (no generation running, no stream open) for longer than the TTL.
  std::vector<Session*> Expired(absl::Time now) const;
  // The earliest time a session can expire (InfiniteFuture if none).
  absl::Time NextExpiry() const;

  int explicit_sessions() const { return explicit_count_; }
  int max_sessions() const { return max_sessions_; }
  int max_sessions_per_owner() const { return max_sessions_per_owner_; }
  absl::Duration ttl() const { return ttl_; }
  bool has_ttl() const { return ttl_ > absl::ZeroDuration() && ttl_ != absl::InfiniteDuration(); }

 private:
  // (owner, id): ids are unique per owner.
  using Key = std::pair<std::string, std::string>;

  absl::StatusOr<std::string> NewId(bool ephemeral, absl::string_view owner);

  int max_sessions_;
  int max_sessions_per_owner_;
  absl::Duration ttl_;
  int explicit_count_ = 0;
  absl::flat_hash_map<std::string, int> explicit_per_owner_;  // owners with at least one
  absl::flat_hash_map<Key, std::unique_ptr<Session>> sessions_;
};

}  // namespace mpa::server
