// UTF-8, byte-level alphabet, normalization and split patterns for the tokenizer.
#include <array>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "model/text/tokenizer_internal.h"
#include "re2/re2.h"
#include "unicode/normalizer2.h"
#include "unicode/uchar.h"
#include "unicode/unistr.h"

namespace mpa::tokenizer_internal {
namespace {

bool InRange(uint8_t b, uint8_t lo, uint8_t hi) { return b >= lo && b <= hi; }

}  // namespace

Utf8Scan ScanUtf8(std::string_view bytes, size_t* length, char32_t* cp) {
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  const size_t n = bytes.size();
  const uint8_t b0 = p[0];
  if (b0 < 0x80) {
    *length = 1;
    *cp = b0;
    return Utf8Scan::kValid;
  }
  size_t need;
  uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  char32_t value;
  if (InRange(b0, 0xC2, 0xDF)) {
    need = 2;
    value = b0 & 0x1F;
  } else if (InRange(b0, 0xE0, 0xEF)) {
    need = 3;
    value = b0 & 0x0F;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;  // no surrogates
  } else if (InRange(b0, 0xF0, 0xF4)) {
    need = 4;
    value = b0 & 0x07;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    *length = 1;
    return Utf8Scan::kInvalid;
  }
  for (size_t k = 1; k < need; ++k) {
    if (k >= n) {
      *length = k;
      return Utf8Scan::kTruncated;
    }
    const uint8_t b = p[k];
    const bool ok = k == 1 ? InRange(b, lo, hi) : InRange(b, 0x80, 0xBF);
    if (!ok) {
      *length = k;
      return Utf8Scan::kInvalid;
    }
    value = (value << 6) | (b & 0x3F);
  }
  *length = need;
  *cp = value;
  return Utf8Scan::kValid;
}

void AppendUtf8(char32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string Utf8Lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t i = 0;
  while (i < bytes.size()) {
    size_t len;
    char32_t cp;
    const Utf8Scan scan = ScanUtf8(bytes.substr(i), &len, &cp);
    if (scan == Utf8Scan::kValid) {
      out.append(bytes.substr(i, len));
    } else {
      out.append("\xEF\xBF\xBD");
    }
    i += len;
  }
  return out;
}

bool IsValidUtf8(std::string_view bytes) {
  size_t i = 0;
  while (i < bytes.size()) {
    size_t len;
    char32_t cp;
    if (ScanUtf8(bytes.substr(i), &len, &cp) != Utf8Scan::kValid) return false;
    i += len;
  }
  return true;
}

size_t IncompleteUtf8Tail(std::string_view bytes) {
  for (size_t n = 1; n <= 3 && n <= bytes.size(); ++n) {
    size_t len;
    char32_t cp;
    const Utf8Scan scan = ScanUtf8(bytes.substr(bytes.size() - n), &len, &cp);
    if (scan == Utf8Scan::kTruncated) return n;
    if (scan == Utf8Scan::kValid) return 0;  // the last character is complete
  }
  return 0;
}

size_t Utf8CharLength(std::string_view s, size_t i) {
  size_t len;
  char32_t cp;
  ScanUtf8(s.substr(i), &len, &cp);
  return len;
}

bool IsUnicodeWhitespace(char32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000;
}

bool IsWordChar(char32_t cp) { return cp == '_' || u_isalnum(static_cast<UChar32>(cp)); }

namespace {

// GPT-2's table: printable Latin-1 bytes stand for themselves, the other 68 bytes take the code
// points from U+0100 on, in byte order.
struct ByteLevelTables {
  std::array<std::string, 256> byte_to_text;
  std::array<int, 512> code_to_byte;
  ByteLevelTables() {
    code_to_byte.fill(-1);
    int next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
      const int cp = printable ? b : next++;
      AppendUtf8(static_cast<char32_t>(cp), &byte_to_text[b]);
      code_to_byte[cp] = b;
    }
  }
};

const ByteLevelTables& Tables() {
  static const ByteLevelTables* tables = new ByteLevelTables();
  return *tables;
}

}  // namespace

const std::string& ByteToUnicode(uint8_t b) { return Tables().byte_to_text[b]; }

int UnicodeToByte(char32_t cp) { return cp < 512 ? Tables().code_to_byte[cp] : -1; }

std::string Normalize(std::string_view text, NormalForm form) {
  bool ascii = true;
  for (char c : text) ascii &= static_cast<unsigned char>(c) < 0x80;
  if (ascii) return std::string(text);  // every form leaves ASCII as it is
  UErrorCode error = U_ZERO_ERROR;
  const icu::Normalizer2* normalizer = nullptr;
  switch (form) {
    case NormalForm::kNfc:
      normalizer = icu::Normalizer2::getNFCInstance(error);
      break;
    case NormalForm::kNfd:
      normalizer = icu::Normalizer2::getNFDInstance(error);
      break;
    case NormalForm::kNfkc:
      normalizer = icu::Normalizer2::getNFKCInstance(error);
      break;
    case NormalForm::kNfkd:
      normalizer = icu::Normalizer2::getNFKDInstance(error);
      break;
  }
  if (U_FAILURE(error) || normalizer == nullptr) return std::string(text);
  const icu::UnicodeString source = icu::UnicodeString::fromUTF8(
      icu::StringPiece(text.data(), static_cast<int32_t>(text.size())));
  const icu::UnicodeString result = normalizer->normalize(source, error);
  if (U_FAILURE(error)) return std::string(text);
  std::string out;
  result.toUTF8String(out);
  return out;
}

std::string Lowercase(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    size_t len;
    char32_t cp;
    if (ScanUtf8(text.substr(i), &len, &cp) == Utf8Scan::kValid) {
      AppendUtf8(static_cast<char32_t>(u_tolower(static_cast<UChar32>(cp))), &out);
    } else {
      out.append(text.substr(i, len));
    }
    i += len;
  }
  return out;
}

// ---- Split patterns ----

namespace {

// Unicode White_Space and its complement, as the inside of a character class.
constexpr std::string_view kSpaceRanges =
    "\\x{9}-\\x{D}\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}"
    "\\x{205F}\\x{3000}";
constexpr std::string_view kNonSpaceRanges =
    "\\x{0}-\\x{8}\\x{E}-\\x{1F}\\x{21}-\\x{84}\\x{86}-\\x{9F}\\x{A1}-\\x{167F}\\x{1681}-\\x{1FFF}"
    "\\x{200B}-\\x{2027}\\x{202A}-\\x{202E}\\x{2030}-\\x{205E}\\x{2060}-\\x{2FFF}"
    "\\x{3001}-\\x{10FFFF}";
// Oniguruma's Unicode \w: letters, marks, decimal digits, connector punctuation.
constexpr std::string_view kWordRanges = "\\p{L}\\p{M}\\p{Nd}\\p{Pc}";

constexpr std::string_view kWhitespaceLookahead = "\\s+(?!\\S)";
constexpr std::string_view kWhitespaceFallback = "|\\s+";

absl::Status Unsupported(std::string_view pattern, std::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: split pattern \"", Sv(pattern),
                                                 "\" uses ", Sv(what), ", which is not supported"));
}

// Translates a fragment that begins and ends outside any character class.
absl::StatusOr<std::string> TranslateFragment(std::string_view p, std::string_view whole) {
  std::string out;
  bool in_class = false;
  size_t class_start = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\') {
      if (i + 1 >= p.size()) return Unsupported(whole, "a trailing backslash");
      const char d = p[i + 1];
      ++i;
      switch (d) {
        case 's':
          out += in_class ? std::string(kSpaceRanges) : absl::StrCat("[", Sv(kSpaceRanges), "]");
          break;
        case 'S':
          out +=
              in_class ? std::string(kNonSpaceRanges) : absl::StrCat("[", Sv(kNonSpaceRanges), "]");
          break;
        case 'd':
          out += "\\p{Nd}";
          break;
        case 'D':
          out += "\\P{Nd}";
          break;
        case 'w':
          out += in_class ? std::string(kWordRanges) : absl::StrCat("[", Sv(kWordRanges), "]");
          break;
        case 'W':
          if (in_class) return Unsupported(whole, "\\W inside a character class");
          out += absl::StrCat("[^", Sv(kWordRanges), "]");
          break;
        case 'h':
        case 'H':
        case 'R':
        case 'X':
        case 'K':
        case 'G':
          return Unsupported(whole, absl::StrCat("\\", std::string(1, d)));
        default:
          out.push_back('\\');
          out.push_back(d);
      }
      continue;
    }
    if (in_class) {
      if (c == ']' && i > class_start) {
        in_class = false;
      } else if (c == '[') {
        if (i + 1 < p.size() && p[i + 1] == ':') {  // POSIX class [:alpha:], RE2 has them
          const size_t end = p.find(":]", i + 2);
          if (end == std::string_view::npos) return Unsupported(whole, "an unclosed [: class");
          out.append(p.substr(i, end + 2 - i));
          i = end + 1;
          continue;
        }
        return Unsupported(whole, "a nested character class");
      }
      out.push_back(c);
      continue;
    }
    if (c == '[') {
      in_class = true;
      out.push_back(c);
      class_start = i + 1;
      if (class_start < p.size() && p[class_start] == '^') {
        out.push_back('^');
        ++i;
        ++class_start;
      }
      continue;  // a ']' right after '[' or '[^' is a literal (class_start guards it)
    }
    if (c == '(') {
      if (i + 1 < p.size() && p[i + 1] == '?') {
        if (i + 2 < p.size()) {
          const char e = p[i + 2];
          if (e == '=' || e == '!' ||
              (e == '<' && i + 3 < p.size() && (p[i + 3] == '=' || p[i + 3] == '!'))) {
            return Unsupported(whole, "a lookaround assertion");
          }
          if (e == '<' || e == '>' || e == '\'') {
            return Unsupported(whole, "a named or atomic group");
          }
        }
        out.push_back('(');
      } else {
        out += "(?:";  // capture groups are ours: group 1 marks the whitespace branch
      }
      continue;
    }
    out.push_back(c);
  }
  if (in_class) return Unsupported(whole, "an unclosed character class");
  return out;
}

// Parenthesis depth at the end of a fragment (outside classes and escapes).
int GroupDepth(std::string_view p) {
  int depth = 0;
  bool in_class = false;
  size_t class_start = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\') {
      ++i;
    } else if (in_class) {
      if (c == ']' && i > class_start) in_class = false;
    } else if (c == '[') {
      in_class = true;
      class_start = i + 1;
      if (class_start < p.size() && p[class_start] == '^') ++class_start;
    } else if (c == '(') {
      ++depth;
    } else if (c == ')') {
      --depth;
    }
  }
  return depth;
}

}  // namespace

absl::StatusOr<std::string> TranslatePatternForRe2(std::string_view pattern) {
  const size_t at = pattern.find(kWhitespaceLookahead);
  if (at == std::string_view::npos) return TranslateFragment(pattern, pattern);
  // The branch must be a whole top-level alternative.
  const std::string_view before = pattern.substr(0, at);
  std::string_view after = pattern.substr(at + kWhitespaceLookahead.size());
  if (!(before.empty() || (before.back() == '|' && GroupDepth(before) == 0))) {
    return Unsupported(pattern, "\\s+(?!\\S) other than as a top-level alternative");
  }
  if (after.substr(0, kWhitespaceFallback.size()) == kWhitespaceFallback &&
      (after.size() == kWhitespaceFallback.size() || after[kWhitespaceFallback.size()] == '|')) {
    after.remove_prefix(kWhitespaceFallback.size());  // the trimmed branch covers `|\s+` too
  } else if (!after.empty()) {
    return Unsupported(pattern, "\\s+(?!\\S) neither last nor followed by |\\s+");
  }
  auto head = TranslateFragment(before, pattern);
  if (!head.ok()) return head.status();
  auto tail = TranslateFragment(after, pattern);
  if (!tail.ok()) return tail.status();
  return absl::StrCat(*head, "([", Sv(kSpaceRanges), "]+)", *tail);
}

SplitPattern::~SplitPattern() = default;

absl::StatusOr<std::unique_ptr<SplitPattern>> SplitPattern::FromRegex(std::string_view pattern) {
  auto translated = TranslatePatternForRe2(pattern);
  if (!translated.ok()) return translated.status();
  std::unique_ptr<SplitPattern> split(new SplitPattern());
  const size_t at = pattern.find(kWhitespaceLookahead);
  split->whitespace_lookahead_ = at != std::string_view::npos;
  split->lookahead_has_fallback_ =
      split->whitespace_lookahead_ &&
      pattern.substr(at + kWhitespaceLookahead.size(), kWhitespaceFallback.size()) ==
          kWhitespaceFallback;
  re2::RE2::Options options;
  options.set_log_errors(false);
  options.set_max_mem(int64_t{64} << 20);  // Unicode classes make big programs
  split->re_ = std::make_unique<re2::RE2>(*translated, options);
  if (!split->re_->ok()) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: split pattern \"", Sv(pattern),
                                                   "\" does not compile: ", split->re_->error()));
  }
  return split;
}

absl::StatusOr<std::unique_ptr<SplitPattern>> SplitPattern::FromLiteral(std::string_view literal) {
  std::unique_ptr<SplitPattern> split(new SplitPattern());
  re2::RE2::Options options;
  options.set_log_errors(false);
  split->re_ = std::make_unique<re2::RE2>(
      re2::RE2::QuoteMeta(re2::StringPiece(literal.data(), literal.size())), options);
  if (!split->re_->ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer.json: split string \"", Sv(literal), "\" is not usable"));
  }
  return split;
}

std::vector<std::pair<size_t, size_t>> SplitPattern::FindAll(std::string_view text) const {
  std::vector<std::pair<size_t, size_t>> matches;
  re2::StringPiece groups[2];
  const int num_groups = whitespace_lookahead_ ? 2 : 1;
  const re2::StringPiece input(text.data(), text.size());
  size_t pos = 0;
  while (pos < text.size()) {
    if (!re_->Match(input, pos, text.size(), re2::RE2::UNANCHORED, groups, num_groups)) break;
    const size_t begin = static_cast<size_t>(groups[0].data() - text.data());
    size_t end = begin + groups[0].size();
    if (whitespace_lookahead_ && groups[1].data() != nullptr && end < text.size()) {
      // `\s+(?!\S)` before a non-space: Oniguruma backtracks one character, so the last
      // whitespace character goes to the next piece. A single one fails the branch and falls
      // to `\s+` (whole run) when the pattern has it, else there is no match here.
      size_t last = end - 1;
      while (last > begin && (static_cast<unsigned char>(text[last]) & 0xC0) == 0x80) --last;
      if (last > begin) {
        end = last;
      } else if (!lookahead_has_fallback_) {
        pos = end;
        continue;
      }
    }
    if (end == begin) {  // an empty match splits nothing; step over one character
      pos = begin + Utf8CharLength(text, begin);
      continue;
    }
    matches.emplace_back(begin, end);
    pos = end;
  }
  return matches;
}

}  // namespace mpa::tokenizer_internal
