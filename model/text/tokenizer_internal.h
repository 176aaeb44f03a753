// Text machinery behind model/text/tokenizer.cc: UTF-8 handling, the GPT-2 byte-to-unicode table,
// Unicode normalization forms, and pre-tokenizer split patterns translated for RE2.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace re2 {
class RE2;
}

namespace mpa::tokenizer_internal {

// This Abseil's string_view is its own type; StrCat and hash-map lookups want it.
inline absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// ---- UTF-8 ----

enum class Utf8Scan { kValid, kInvalid, kTruncated };
// Looks at the sequence starting at bytes[0]. kValid: *length bytes make code point *cp.
// kInvalid: the maximal ill-formed subpart is *length bytes (>= 1), as the Unicode standard and
// Rust's from_utf8_lossy count them. kTruncated: all bytes form a proper prefix of a sequence.
Utf8Scan ScanUtf8(std::string_view bytes, size_t* length, char32_t* cp);
void AppendUtf8(char32_t cp, std::string* out);
// Invalid sequences become U+FFFD, one per maximal subpart (HF's byte-level decoder does so).
std::string Utf8Lossy(std::string_view bytes);
bool IsValidUtf8(std::string_view bytes);
// Bytes at the end of `bytes` that begin a UTF-8 sequence still waiting for its continuation
// bytes (0..3): the part a stream must hold back.
size_t IncompleteUtf8Tail(std::string_view bytes);
// Unicode White_Space (Rust's char::is_whitespace, Oniguruma's \s).
bool IsUnicodeWhitespace(char32_t cp);
// Letters, digits and '_' (what single_word added tokens treat as word characters).
bool IsWordChar(char32_t cp);
// Byte length of the UTF-8 character starting at s[i] (1 for a stray byte).
size_t Utf8CharLength(std::string_view s, size_t i);

// ---- Byte-level (GPT-2) alphabet ----

// The UTF-8 text of the character byte b maps to.
const std::string& ByteToUnicode(uint8_t b);
// The byte a character stands for, or -1 if it is not in the byte-level alphabet.
int UnicodeToByte(char32_t cp);

// ---- Normalization ----

enum class NormalForm { kNfc, kNfd, kNfkc, kNfkd };
// Input must be valid UTF-8.
std::string Normalize(std::string_view text, NormalForm form);
std::string Lowercase(std::string_view text);

// ---- Split patterns ----

// A pre-tokenizer pattern written for Oniguruma (what HF tokenizers runs) executed with RE2.
// Unicode-aware \s \S \d \w are spelled out as classes (RE2's are ASCII only), and the one
// lookahead such patterns use, `\s+(?!\S)` (a whitespace run that leaves its last character to
// the word after it), is matched as `\s+` and trimmed by hand. Other lookarounds are refused.
class SplitPattern {
 public:
  static absl::StatusOr<std::unique_ptr<SplitPattern>> FromRegex(std::string_view pattern);
  static absl::StatusOr<std::unique_ptr<SplitPattern>> FromLiteral(std::string_view literal);
  ~SplitPattern();

  // Non-overlapping non-empty matches, left to right, as [begin, end) byte ranges of `text`.
  std::vector<std::pair<size_t, size_t>> FindAll(std::string_view text) const;

 private:
  SplitPattern() = default;
  std::unique_ptr<re2::RE2> re_;
  bool whitespace_lookahead_ = false;    // capture group 1 is the `\s+(?!\S)` branch
  bool lookahead_has_fallback_ = false;  // the branch is followed by `|\s+`
};

// Rewrites an Oniguruma pattern into RE2 syntax (see SplitPattern); exposed for tests.
absl::StatusOr<std::string> TranslatePatternForRe2(std::string_view pattern);

}  // namespace mpa::tokenizer_internal
