#include "server/session_manager.h"

#include <openssl/rand.h>

#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace mpa::server {

absl::StatusOr<std::string> SessionManager::NewId(bool ephemeral) {
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
    if (!sessions_.contains(id)) return id;
  }
}

absl::StatusOr<Session*> SessionManager::Create(std::unique_ptr<EngineSequence> sequence,
                                                const AttentionOptions& attention, bool ephemeral,
                                                absl::Time now, absl::string_view owner) {
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
  absl::StatusOr<std::string> id = NewId(ephemeral);
  if (!id.ok()) return id.status();
  auto session = std::make_unique<Session>();
  session->id = *std::move(id);
  session->owner = std::string(owner);
  session->ephemeral = ephemeral;
  session->sequence = std::move(sequence);
  session->attention = attention;
  session->last_used = now;
  Session* raw = session.get();
  sessions_.emplace(raw->id, std::move(session));
  if (!ephemeral) {
    ++explicit_count_;
    ++explicit_per_owner_[raw->owner];
  }
  return raw;
}

namespace {

// A client's id as quoted in an error: ids are at most a few dozen bytes, but a request may send
// megabytes, and the status message travels in a trailer that clients cap (8 KiB by default in
// gRPC), so a long id is cut, at a UTF-8 character boundary.
// The client's id as C escapes (control bytes and non-ASCII as \xNN, so a message never carries
// raw bytes a client chose into logs), at most its first 64 bytes.
std::string QuoteId(absl::string_view id) {
  constexpr size_t kMaxQuoted = 64;
  if (id.size() <= kMaxQuoted) return absl::StrCat("\"", absl::CHexEscape(id), "\"");
  size_t cut = kMaxQuoted;
  while (cut > 0 && (static_cast<unsigned char>(id[cut]) & 0xC0) == 0x80) --cut;
  return absl::StrCat("\"", absl::CHexEscape(id.substr(0, cut)), "...\" (", id.size(), " bytes)");
}

absl::Status NoSuchSession(absl::string_view id) {
  return absl::NotFoundError(
      absl::StrCat("session_id: no session ", QuoteId(id), " (never created, closed, or expired)"));
}

}  // namespace

absl::StatusOr<Session*> SessionManager::Find(absl::string_view id) {
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return NoSuchSession(id);
  return it->second.get();
}

absl::StatusOr<Session*> SessionManager::FindOwned(absl::string_view id, absl::string_view owner) {
  auto it = sessions_.find(id);
  // Another owner's session answers exactly as a missing one.
  if (it == sessions_.end() || it->second->owner != owner) return NoSuchSession(id);
  return it->second.get();
}

void SessionManager::Remove(absl::string_view id) {
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return;
  if (!it->second->ephemeral) {
    --explicit_count_;
    auto owned = explicit_per_owner_.find(it->second->owner);
    if (owned != explicit_per_owner_.end() && --owned->second <= 0) {
      explicit_per_owner_.erase(owned);
    }
  }
  sessions_.erase(it);
}

std::vector<std::string> SessionManager::Expired(absl::Time now) const {
  std::vector<std::string> ids;
  if (!has_ttl()) return ids;
  for (const auto& [id, s] : sessions_) {
    if (!s->ephemeral && s->active == nullptr && s->open_streams == 0 &&
        now - s->last_used > ttl_) {
      ids.push_back(id);
    }
  }
  return ids;
}

absl::Time SessionManager::NextExpiry() const {
  absl::Time next = absl::InfiniteFuture();
  if (!has_ttl()) return next;
  for (const auto& [id, s] : sessions_) {
    if (!s->ephemeral && s->active == nullptr && s->open_streams == 0) {
      next = std::min(next, s->last_used + ttl_);
    }
  }
  return next;
}

}  // namespace mpa::server
