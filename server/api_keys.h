// API keys (mpa_server --api_keys_file): who may call the DecodeService, and which key owns
// which session. Only a SHA-256 digest of each key is kept; a presented key is hashed and
// compared with every stored digest in constant time, so neither the comparison nor the loop
// tells by its timing how much of a key matched or which key it was.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace mpa::server {

// Keys shorter than this are refused at start-up: a short key can be guessed.
inline constexpr size_t kMinApiKeyChars = 16;

struct ApiKey {
  // For logs and messages about the key's owner; never the key itself. From the file's
  // `name:` prefix, else "key<line number>".
  std::string name;
  std::array<uint8_t, 32> digest;  // SHA-256 of the key
  // Stands for the key's owner wherever sessions are bound to it (the digest in hex): equal
  // keys are one owner.
  std::string owner;
};

class ApiKeys {
 public:
  // Parses a keys file's text: one key a line, optionally `name:key` (a name of letters,
  // digits, '-', '_' and '.'), blank lines and lines starting with '#' ignored, spaces around
  // a line trimmed. InvalidArgument naming the line (never its key) for a key shorter than
  // kMinApiKeyChars, a key with spaces inside, or a file with no key.
  static absl::StatusOr<ApiKeys> Parse(absl::string_view text);
  // Reads and parses the file at `path`; NotFound / PermissionDenied / InvalidArgument naming
  // the path.
  static absl::StatusOr<ApiKeys> Load(const std::string& path);

  // The key that `presented` is, or nullptr. Hashes `presented` and compares the digest with
  // every stored digest in constant time.
  const ApiKey* Match(absl::string_view presented) const;

  // The key an `authorization` metadata value (nullopt: none sent) carries ("Bearer <key>"):
  // Unauthenticated, without echoing anything the client sent, when the value is missing,
  // malformed, or carries no known key.
  absl::StatusOr<const ApiKey*> Authenticate(std::optional<absl::string_view> authorization) const;

  const std::vector<ApiKey>& keys() const { return keys_; }

 private:
  std::vector<ApiKey> keys_;
};

}  // namespace mpa::server
