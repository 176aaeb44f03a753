#include "server/session_manager.h"

#include <openssl/rand.h>

#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "server/session_id.h"

namespace mpa::server {

absl::StatusOr<std::string> SessionManager::NewId(bool ephemeral, absl::string_view owner) {
  // 128 bits from the operating system's cryptographic generator: ids can be neither guessed
  // nor predicted from earlier ids (a seeded PRNG's output can be).
  for (;;) {
    unsigned char bytes[16];
    if (RAND_bytes(bytes, sizeof(bytes)) != 1) {
      return absl::InternalError("session ids: the system's random source failed");
    }
    std::string id = absl::StrCat(ephemeral ? "gen-" : "ses-",
                                  absl::BytesToHexString(absl::string_view(
                                      reinterpret_cast<const char*>(bytes), sizeof(bytes))));
    if (!sessions_.contains(Key(owner, id))) return id;
  }
}

absl::StatusOr<Session*> SessionManager::Create(std::unique_ptr<EngineSequence> sequence,
                                                const AttentionOptions& attention, bool ephemeral,
                                                absl::Time now, absl::string_view owner,
                                                absl::string_view requested_id) {
  // Before the limits: a retried CreateSession learns that its session exists.
  if (!requested_id.empty() && sessions_.contains(Key(owner, requested_id))) {
    return absl::AlreadyExistsError(absl::StrCat(
        "session_id: a session ", QuoteSessionId(requested_id), " is already open",
        owner.empty() ? "" : " for this API key", "; continue it, or choose another id"));
  }
  if (!ephemeral && explicit_count_ >= max_sessions_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("sessions: all ", max_sessions_,
                     " sessions are open (--max_sessions); close one or retry later"));
  }
  if (!ephemeral && max_sessions_per_owner_ > 0) {
    auto it = explicit_per_owner_.find(owner);
    if (it != explicit_per_owner_.end() && it->second >= max_sessions_per_owner_) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "sessions: this API key has ", it->second, " sessions open, the limit per key (",
          "--max_sessions_per_key is ", max_sessions_per_owner_, "); close one first"));
    }
  }
  std::string id(requested_id);
  if (id.empty()) {
    absl::StatusOr<std::string> drawn = NewId(ephemeral, owner);
    if (!drawn.ok()) return drawn.status();
    id = *std::move(drawn);
  }
  auto session = std::make_unique<Session>();
  session->id = std::move(id);
  session->owner = std::string(owner);
  session->ephemeral = ephemeral;
  session->sequence = std::move(sequence);
  session->attention = attention;
  session->last_used = now;
  Session* raw = session.get();
  sessions_.emplace(Key(raw->owner, raw->id), std::move(session));
  if (!ephemeral) {
    ++explicit_count_;
    ++explicit_per_owner_[raw->owner];
  }
  return raw;
}

namespace {

absl::Status NoSuchSession(absl::string_view id) {
  // Behind a proxy the last case is the common one: a replica that stopped took its sessions.
  return absl::NotFoundError(absl::StrCat("session_id: no session ", QuoteSessionId(id),
                                          " (never created, closed, expired, or lost with a "
                                          "server that stopped); open a new one"));
}

}  // namespace

absl::StatusOr<Session*> SessionManager::FindOwned(absl::string_view id, absl::string_view owner) {
  auto it = sessions_.find(Key(owner, id));
  // Another owner's session answers exactly as a missing one.
  if (it == sessions_.end()) return NoSuchSession(id);
  return it->second.get();
}

void SessionManager::Remove(Session* session) {
  auto it = sessions_.find(Key(session->owner, session->id));
  if (it == sessions_.end()) return;
  if (!session->ephemeral) {
    --explicit_count_;
    auto owned = explicit_per_owner_.find(session->owner);
    if (owned != explicit_per_owner_.end() && --owned->second <= 0) {
      explicit_per_owner_.erase(owned);
    }
  }
  sessions_.erase(it);
}

std::vector<Session*> SessionManager::Expired(absl::Time now) const {
  std::vector<Session*> expired;
  if (!has_ttl()) return expired;
  for (const auto& [key, s] : sessions_) {
    if (!s->ephemeral && s->active == nullptr && s->open_streams == 0 &&
        now - s->last_used > ttl_) {
      expired.push_back(s.get());
    }
  }
  return expired;
}

absl::Time SessionManager::NextExpiry() const {
  absl::Time next = absl::InfiniteFuture();
  if (!has_ttl()) return next;
  for (const auto& [key, s] : sessions_) {
    if (!s->ephemeral && s->active == nullptr && s->open_streams == 0) {
      next = std::min(next, s->last_used + ttl_);
    }
  }
  return next;
}

}  // namespace mpa::server
