#include "server/api_keys.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace mpa::server {
namespace {

std::array<uint8_t, 32> Sha256(absl::string_view data) {
  std::array<uint8_t, 32> digest;
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), digest.data());
  return digest;
}

bool IsNameChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
}

}  // namespace

absl::StatusOr<ApiKeys> ApiKeys::Parse(absl::string_view text) {
  ApiKeys keys;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line.front() == '#') continue;
    ApiKey key;
    absl::string_view secret = line;
    // A name is a prefix before the first ':' made only of name characters; any other ':' is
    // part of the key.
    if (size_t colon = line.find(':'); colon != absl::string_view::npos && colon > 0) {
      absl::string_view name = line.substr(0, colon);
      bool is_name = true;
      for (char c : name) is_name = is_name && IsNameChar(c);
      if (is_name) {
        key.name = std::string(name);
        secret = absl::StripAsciiWhitespace(line.substr(colon + 1));
      }
    }
    if (key.name.empty()) key.name = absl::StrCat("key", line_number);
    const std::string where = absl::StrCat("line ", line_number, " (", key.name, ")");
    if (secret.size() < kMinApiKeyChars) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": the key has ", secret.size(),
                                                     " characters; at least ", kMinApiKeyChars,
                                                     " are needed"));
    }
    for (char c : secret) {
      const auto u = static_cast<unsigned char>(c);
      if (u <= 0x20 || u == 0x7f) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": the key holds a space or control character"));
      }
    }
    key.digest = Sha256(secret);
    key.owner = absl::BytesToHexString(
        absl::string_view(reinterpret_cast<const char*>(key.digest.data()), key.digest.size()));
    keys.keys_.push_back(std::move(key));
  }
  if (keys.keys_.empty()) {
    return absl::InvalidArgumentError("no key (only blank lines and # comments)");
  }
  return keys;
}

absl::StatusOr<ApiKeys> ApiKeys::Load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int err = errno;
    const std::string message = absl::StrCat(path, ": cannot read: ", std::strerror(err));
    if (err == ENOENT) return absl::NotFoundError(message);
    if (err == EACCES) return absl::PermissionDeniedError(message);
    return absl::InvalidArgumentError(message);
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::InvalidArgumentError(absl::StrCat(path, ": cannot read"));
  absl::StatusOr<ApiKeys> keys = Parse(text.str());
  if (!keys.ok()) {
    return absl::Status(keys.status().code(), absl::StrCat(path, ": ", keys.status().message()));
  }
  return keys;
}

const ApiKey* ApiKeys::Match(absl::string_view presented) const {
  const std::array<uint8_t, 32> digest = Sha256(presented);
  const ApiKey* match = nullptr;
  // Every digest is compared (no early exit), each in constant time.
  for (const ApiKey& key : keys_) {
    const bool equal = CRYPTO_memcmp(digest.data(), key.digest.data(), digest.size()) == 0;
    if (equal && match == nullptr) match = &key;
  }
  return match;
}

absl::StatusOr<const ApiKey*> ApiKeys::Authenticate(
    std::optional<absl::string_view> authorization) const {
  constexpr absl::string_view kHint =
      "; send metadata \"authorization: Bearer <API key>\" with a key this server accepts";
  if (!authorization.has_value()) {
    return absl::UnauthenticatedError(absl::StrCat("no API key", kHint));
  }
  absl::string_view value = absl::StripAsciiWhitespace(*authorization);
  constexpr absl::string_view kScheme = "bearer ";
  if (value.size() < kScheme.size() || !absl::StartsWithIgnoreCase(value, kScheme)) {
    return absl::UnauthenticatedError(
        absl::StrCat("the authorization metadata is not a Bearer token", kHint));
  }
  const ApiKey* key = Match(absl::StripLeadingAsciiWhitespace(value.substr(kScheme.size())));
  if (key == nullptr) return absl::UnauthenticatedError(absl::StrCat("unknown API key", kHint));
  return key;
}

}  // namespace mpa::server
