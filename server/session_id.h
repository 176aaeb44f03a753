// Session ids a client chooses, and the routing metadata that carries a session's id.
//
// Several replicas of mpa_server can stand behind a proxy that routes every call of a session
// to the replica holding it by hashing the "x-session-id" metadata (deploy/README.md). For
// that, the id must be known before the session exists: a client either chooses it
// (CreateSessionRequest.session_id) or lets the proxy propose one in the metadata of its
// CreateSession call; a CreateSession with neither gets an id the server draws itself (fine
// for a single server, not routable by a hash of it).
#pragma once

#include <cstddef>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace mpa::server {

// The metadata key (lowercase, as HTTP/2 sends it) carrying the session's id on every call of a
// session, for the proxy in front of the replicas to route by.
inline constexpr char kSessionIdMetadata[] = "x-session-id";

// Limits of an id a client chooses: long enough not to collide by accident, short enough for a
// header, a log line and an error message; characters that need no escaping in any of them
// (RFC 3986's unreserved set).
inline constexpr size_t kMinClientSessionIdBytes = 8;
inline constexpr size_t kMaxClientSessionIdBytes = 128;

// OK if `id` may name a new session: kMinClientSessionIdBytes..kMaxClientSessionIdBytes bytes of
// A-Z a-z 0-9 '-' '.' '_' '~'. InvalidArgument naming `field` and the rule otherwise.
absl::Status ValidateClientSessionId(absl::string_view id, absl::string_view field);

// A client's id as quoted in an error: C escapes (control bytes and non-ASCII as \xNN, so a
// message never carries raw bytes a client chose into logs), at most its first 64 bytes (a
// request may send megabytes, and the status message travels in a trailer that clients cap).
std::string QuoteSessionId(absl::string_view id);

}  // namespace mpa::server
