#include "server/session_id.h"

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace mpa::server {

absl::Status ValidateClientSessionId(absl::string_view id, absl::string_view field) {
  if (id.size() < kMinClientSessionIdBytes || id.size() > kMaxClientSessionIdBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": ", QuoteSessionId(id), " is ", id.size(), " bytes; a session id ",
                     "has ", kMinClientSessionIdBytes, " to ", kMaxClientSessionIdBytes));
  }
  for (size_t i = 0; i < id.size(); ++i) {
    const char c = id[i];
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '.' && c != '_' &&
        c != '~') {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": ", QuoteSessionId(id), " has ", QuoteSessionId(id.substr(i, 1)),
                       " at byte ", i, "; a session id has only A-Z a-z 0-9 and - . _ ~"));
    }
  }
  return absl::OkStatus();
}

std::string QuoteSessionId(absl::string_view id) {
  constexpr size_t kMaxQuoted = 64;
  if (id.size() <= kMaxQuoted) return absl::StrCat("\"", absl::CHexEscape(id), "\"");
  size_t cut = kMaxQuoted;
  while (cut > 0 && (static_cast<unsigned char>(id[cut]) & 0xC0) == 0x80) --cut;
  return absl::StrCat("\"", absl::CHexEscape(id.substr(0, cut)), "...\" (", id.size(), " bytes)");
}

}  // namespace mpa::server
