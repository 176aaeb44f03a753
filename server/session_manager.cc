#include "server/session_manager.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace mpa::server {

std::string SessionManager::NewId(bool ephemeral) {
  // 128 random bits: ids are unguessable, so one client cannot address another's session.
  for (;;) {
    std::string id =
        absl::StrFormat("%s-%016x%016x", ephemeral ? "gen" : "ses",
                        absl::Uniform<uint64_t>(bitgen_), absl::Uniform<uint64_t>(bitgen_));
    if (!sessions_.contains(id)) return id;
  }
}

absl::StatusOr<Session*> SessionManager::Create(std::unique_ptr<EngineSequence> sequence,
                                                const AttentionOptions& attention, bool ephemeral,
                                                absl::Time now) {
  if (!ephemeral && explicit_count_ >= max_sessions_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("sessions: all ", max_sessions_,
                     " sessions are open (--max_sessions); close one or retry later"));
  }
  auto session = std::make_unique<Session>();
  session->id = NewId(ephemeral);
  session->ephemeral = ephemeral;
  session->sequence = std::move(sequence);
  session->attention = attention;
  session->last_used = now;
  Session* raw = session.get();
  sessions_.emplace(raw->id, std::move(session));
  if (!ephemeral) ++explicit_count_;
  return raw;
}

namespace {

// A client's id as quoted in an error: ids are at most a few dozen bytes, but a request may send
// megabytes, and the status message travels in a trailer that clients cap (8 KiB by default in
// gRPC), so a long id is cut, at a UTF-8 character boundary.
std::string QuoteId(absl::string_view id) {
  constexpr size_t kMaxQuoted = 64;
  if (id.size() <= kMaxQuoted) return absl::StrCat("\"", id, "\"");
  size_t cut = kMaxQuoted;
  while (cut > 0 && (static_cast<unsigned char>(id[cut]) & 0xC0) == 0x80) --cut;
  return absl::StrCat("\"", id.substr(0, cut), "...\" (", id.size(), " bytes)");
}

}  // namespace

absl::StatusOr<Session*> SessionManager::Find(absl::string_view id) {
  auto it = sessions_.find(id);
  if (it == sessions_.end()) {
    return absl::NotFoundError(absl::StrCat("session_id: no session ", QuoteId(id),
                                            " (never created, closed, or expired)"));
  }
  return it->second.get();
}

void SessionManager::Remove(absl::string_view id) {
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return;
  if (!it->second->ephemeral) --explicit_count_;
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
