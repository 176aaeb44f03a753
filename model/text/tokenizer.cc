// Hugging Face tokenizer.json BPE: loading, encoding (added tokens, normalizers, pre-tokenizers,
// BPE merges, post-processor template), decoding as a stream, and IncrementalDecoder.
#include "model/text/tokenizer.h"

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <queue>
#include <sstream>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "model/io/json_excerpt.h"
#include "model/runtime/status_macros.h"
#include "model/text/tokenizer_internal.h"
#include "nlohmann/json.hpp"
#include "re2/re2.h"

namespace mpa {
namespace {

namespace ti = tokenizer_internal;
using json = nlohmann::json;

constexpr std::string_view kTokenizerFile = "tokenizer.json";
constexpr std::string_view kConfigFile = "tokenizer_config.json";
constexpr std::string_view kGenerationFile = "generation_config.json";
constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

absl::Status Invalid(std::string_view file, std::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(ti::Sv(file), ": ", ti::Sv(what)));
}

// Optional JSON fields: absent and null both mean "use the default".
bool GetBool(const json& object, const char* key, bool fallback) {
  auto it = object.find(key);
  return it != object.end() && it->is_boolean() ? it->get<bool>() : fallback;
}

std::string GetString(const json& object, const char* key, std::string fallback = "") {
  auto it = object.find(key);
  return it != object.end() && it->is_string() ? it->get<std::string>() : fallback;
}

// The member `key` of `object` (null when absent, or when `object` is not an object), by
// reference. Copying a JSON value recurses once per level of nesting, so copying a deeply nested
// member of a crafted file would exhaust the stack (a 2 MB tokenizer.json nests a million deep).
const json& Member(const json& object, const char* key) {
  static const json kNull;
  if (!object.is_object()) return kNull;
  auto it = object.find(key);
  return it == object.end() ? kNull : *it;
}

// How deep a Sequence (of normalizers, pre-tokenizers, decoders or post-processors) may hold
// Sequences. Hugging Face files nest them a level or two; deeper is refused, not recursed into.
constexpr int kMaxSequenceDepth = 8;

// The first code point of a UTF-8 string (HF stores `char` fields as one-character strings).
char32_t FirstChar(std::string_view s) {
  if (s.empty()) return 0;
  size_t len;
  char32_t cp = 0;
  ti::ScanUtf8(s, &len, &cp);
  return cp;
}

// Byte value of a byte-fallback token "<0xNN>", or -1.
int ByteTokenValue(std::string_view token) {
  if (token.size() != 6 || token.substr(0, 3) != "<0x" || token[5] != '>') return -1;
  int value = 0;
  for (int k = 3; k < 5; ++k) {
    const char c = token[k];
    int digit;
    if (c >= '0' && c <= '9') {
      digit = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      digit = c - 'a' + 10;
    } else if (c >= 'A' && c <= 'F') {
      digit = c - 'A' + 10;
    } else {
      return -1;
    }
    value = value * 16 + digit;
  }
  return value;
}

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
  bool normalized = false;
};

// A piece of text between added tokens, or one added token (id >= 0).
struct Segment {
  size_t begin = 0;
  size_t end = 0;
  int32_t id = -1;
};

// Finds added tokens in text the way HF's AddedVocabulary does: leftmost-longest,
// non-overlapping, honouring single_word / lstrip / rstrip.
class AddedTokenMatcher {
 public:
  void Add(std::string pattern, const AddedToken* token) {
    if (pattern.empty()) return;
    auto& bucket = by_first_byte_[static_cast<unsigned char>(pattern[0])];
    bucket.emplace_back(std::move(pattern), token);
    std::stable_sort(bucket.begin(), bucket.end(),
                     [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
    empty_ = false;
  }
  bool empty() const { return empty_; }

  std::vector<Segment> Split(std::string_view text) const {
    std::vector<Segment> segments;
    size_t start_offset = 0;
    size_t pos = 0;
    while (!empty_ && pos < text.size()) {
      const AddedToken* token = nullptr;
      size_t length = 0;
      for (const auto& [pattern, candidate] :
           by_first_byte_[static_cast<unsigned char>(text[pos])]) {
        if (text.substr(pos, pattern.size()) == pattern) {
          token = candidate;
          length = pattern.size();
          break;  // longest first
        }
      }
      if (token == nullptr) {
        ++pos;
        continue;
      }
      size_t start = pos;
      size_t stop = pos + length;
      pos = stop;
      if (token->single_word) {
        const bool space_before = start == 0 || !EndsWithWordChar(text.substr(0, start));
        const bool space_after = stop == text.size() || !StartsWithWordChar(text.substr(stop));
        if (!space_before || !space_after) continue;
      }
      if (token->lstrip) start = std::max(LeadingSpaceOfTail(text.substr(0, start)), start_offset);
      if (token->rstrip) stop += SpaceAtStart(text.substr(stop));
      if (start_offset < start) segments.push_back({start_offset, start, -1});
      segments.push_back({start, stop, token->id});
      start_offset = stop;
      pos = std::max(pos, stop);
    }
    if (start_offset < text.size()) segments.push_back({start_offset, text.size(), -1});
    return segments;
  }

 private:
  static char32_t LastChar(std::string_view s) {
    size_t i = s.size() - 1;
    while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
    return FirstChar(s.substr(i));
  }
  static bool EndsWithWordChar(std::string_view s) {
    return !s.empty() && ti::IsWordChar(LastChar(s));
  }
  static bool StartsWithWordChar(std::string_view s) {
    return !s.empty() && ti::IsWordChar(FirstChar(s));
  }
  // Offset where the trailing whitespace of s begins.
  static size_t LeadingSpaceOfTail(std::string_view s) {
    size_t i = s.size();
    while (i > 0) {
      size_t j = i - 1;
      while (j > 0 && (static_cast<unsigned char>(s[j]) & 0xC0) == 0x80) --j;
      if (!ti::IsUnicodeWhitespace(FirstChar(s.substr(j)))) break;
      i = j;
    }
    return i;
  }
  static size_t SpaceAtStart(std::string_view s) {
    size_t i = 0;
    while (i < s.size() && ti::IsUnicodeWhitespace(FirstChar(s.substr(i)))) {
      i += ti::Utf8CharLength(s, i);
    }
    return i;
  }

  std::array<std::vector<std::pair<std::string, const AddedToken*>>, 256> by_first_byte_;
  bool empty_ = true;
};

// The BPE model: vocabulary, merge ranks, byte fallback, unknown-token handling.
class BpeModel {
 public:
  absl::flat_hash_map<std::string, int32_t> vocab;
  // (left id << 32 | right id) -> (rank, merged id)
  absl::flat_hash_map<uint64_t, std::pair<int32_t, int32_t>> merges;
  std::array<int32_t, 256> byte_ids;  // ids of "<0xNN>" tokens, -1 where absent
  std::optional<int32_t> unk_id;
  bool byte_fallback = false;
  bool fuse_unk = false;
  bool ignore_merges = false;
  std::string continuing_subword_prefix;
  std::string end_of_word_suffix;

  static uint64_t PairKey(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  void Tokenize(std::string_view word, std::vector<int32_t>* out) const {
    if (word.empty()) return;
    if (ignore_merges) {
      auto it = vocab.find(ti::Sv(word));
      if (it != vocab.end()) {
        out->push_back(it->second);
        return;
      }
    }
    const bool cacheable = word.size() < kMaxCachedWordBytes;
    if (cacheable) {
      std::lock_guard<std::mutex> lock(cache_mutex_);
      auto it = cache_.find(ti::Sv(word));
      if (it != cache_.end()) {
        out->insert(out->end(), it->second.begin(), it->second.end());
        return;
      }
    }
    std::vector<int32_t> ids = MergeWord(word);
    out->insert(out->end(), ids.begin(), ids.end());
    if (cacheable) {
      std::lock_guard<std::mutex> lock(cache_mutex_);
      if (cache_.size() >= kMaxCachedWords) cache_.clear();
      cache_.emplace(std::string(word), std::move(ids));
    }
  }

 private:
  static constexpr size_t kMaxCachedWordBytes = 256;
  static constexpr size_t kMaxCachedWords = 1 << 18;

  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
    bool alive;
  };
  struct Candidate {
    int32_t rank;
    int32_t left;  // symbol index; merged symbols keep the left index, so it orders by position
    int32_t right;
    int32_t left_id;
    int32_t right_id;
    int32_t merged_id;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : left > o.left;
    }
  };

  std::vector<int32_t> MergeWord(std::string_view word) const {
    std::vector<Symbol> symbols;
    symbols.reserve(word.size());
    auto add = [&symbols](int32_t id) {
      const int32_t index = static_cast<int32_t>(symbols.size());
      symbols.push_back({id, index - 1, -1, true});
      if (index > 0) symbols[index - 1].next = index;
    };
    int32_t pending_unk = -1;  // unknown-token id waiting to be added, or -1
    size_t i = 0;
    while (i < word.size()) {
      const size_t length = ti::Utf8CharLength(word, i);
      const bool first = i == 0;
      const bool last = i + length == word.size();
      std::string piece(word.substr(i, length));
      i += length;
      if (!first && !continuing_subword_prefix.empty()) piece = continuing_subword_prefix + piece;
      if (last && !end_of_word_suffix.empty()) piece += end_of_word_suffix;
      auto it = vocab.find(piece);
      if (it != vocab.end()) {
        if (pending_unk >= 0) add(pending_unk);
        pending_unk = -1;
        add(it->second);
        continue;
      }
      if (byte_fallback) {
        bool all_bytes = true;
        for (char c : piece) all_bytes &= byte_ids[static_cast<unsigned char>(c)] >= 0;
        if (all_bytes) {
          for (char c : piece) add(byte_ids[static_cast<unsigned char>(c)]);
          continue;
        }
      }
      if (unk_id) {
        if (pending_unk >= 0 && !fuse_unk) add(pending_unk);
        pending_unk = *unk_id;
      }
    }
    if (pending_unk >= 0) add(pending_unk);

    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
    auto consider = [&](int32_t left) {
      const int32_t right = symbols[left].next;
      if (right < 0) return;
      auto it = merges.find(PairKey(symbols[left].id, symbols[right].id));
      if (it == merges.end()) return;
      queue.push(
          {it->second.first, left, right, symbols[left].id, symbols[right].id, it->second.second});
    };
    for (int32_t s = 0; s + 1 < static_cast<int32_t>(symbols.size()); ++s) consider(s);
    while (!queue.empty()) {
      const Candidate top = queue.top();
      queue.pop();
      Symbol& left = symbols[top.left];
      if (!left.alive || left.next != top.right || left.id != top.left_id ||
          symbols[top.right].id != top.right_id) {
        continue;  // stale: one side has merged since
      }
      Symbol& right = symbols[top.right];
      left.id = top.merged_id;
      left.next = right.next;
      if (right.next >= 0) symbols[right.next].prev = top.left;
      right.alive = false;
      if (left.prev >= 0) consider(left.prev);
      consider(top.left);
    }
    std::vector<int32_t> ids;
    for (int32_t s = symbols.empty() ? -1 : 0; s >= 0; s = symbols[s].next) {
      ids.push_back(symbols[s].id);
    }
    return ids;
  }

  mutable std::mutex cache_mutex_;
  mutable absl::flat_hash_map<std::string, std::vector<int32_t>> cache_;
};

struct NormalizerStep {
  enum class Kind { kForm, kPrepend, kReplace, kLowercase, kStrip };
  Kind kind;
  ti::NormalForm form = ti::NormalForm::kNfc;
  std::string text;                 // prepend text / replace pattern (String)
  std::string content;              // replacement
  std::shared_ptr<re2::RE2> regex;  // replace pattern (Regex)
  bool strip_left = false;
  bool strip_right = false;
};

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

struct PreTokenizerStep {
  enum class Kind { kSplit, kByteLevel, kMetaspace };
  Kind kind;
  std::shared_ptr<ti::SplitPattern> pattern;  // kSplit, kByteLevel with use_regex
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
  bool add_prefix_space = false;  // kByteLevel
  std::string replacement;        // kMetaspace
  enum class Prepend { kAlways, kFirst, kNever } prepend = Prepend::kAlways;
  bool split = true;  // kMetaspace
};

struct DecoderStep {
  enum class Kind { kReplace, kByteFallback, kFuse, kStrip, kByteLevel, kMetaspace };
  Kind kind;
  std::string pattern;  // kReplace
  std::string content;  // kReplace
  char32_t strip_char = ' ';
  int strip_start = 0;
  int strip_stop = 0;
  char32_t replacement = 0;  // kMetaspace
  bool prepend = true;       // kMetaspace: drop the replacement in the first token
};

// A text piece flowing through the decoder steps; new_token marks the start of a token as the
// step sees tokens (after Fuse or ByteLevel, all text is one token that arrives in chunks).
struct Piece {
  std::string text;
  bool new_token;
};

class BpeTokenizer final : public Tokenizer {
 public:
  static absl::StatusOr<std::unique_ptr<BpeTokenizer>> Create(std::string_view tokenizer_json,
                                                              std::string_view config_json,
                                                              std::string_view generation_json);

  std::vector<int32_t> Encode(std::string_view text, bool add_special_tokens) const override;
  SpecialIds special_ids() const override { return {prefix_ids_, suffix_ids_}; }
  std::string Decode(absl::Span<const int32_t> ids, bool skip_special_tokens) const override;
  int vocab_size() const override { return static_cast<int>(tokens_.size()); }
  std::optional<int32_t> bos_id() const override { return bos_; }
  std::vector<int32_t> eos_ids() const override { return eos_; }
  bool IsSpecial(int32_t id) const override {
    return id >= 0 && id < vocab_size() && (flags_[id] & kSpecial);
  }
  std::string TokenBytes(int32_t id) const override;

 protected:
  std::unique_ptr<DecodeState> NewDecodeState(bool skip_special_tokens) const override;

 private:
  friend class BpeDecodeState;
  static constexpr uint8_t kPresent = 1;
  static constexpr uint8_t kSpecial = 2;

  absl::Status ParseModel(const json& model);
  absl::Status ParseAddedTokens(const json& added);
  absl::Status ParseNormalizer(const json& node, int depth = 0);
  absl::Status ParsePreTokenizer(const json& node, int depth = 0);
  absl::Status ParseDecoder(const json& node, int depth = 0);
  absl::Status ParsePostProcessor(const json& node, int depth = 0);
  absl::Status ParseConfigs(std::string_view config_json, std::string_view generation_json);
  std::optional<int32_t> TokenId(const std::string& content) const;

  std::string ApplyNormalizers(std::string text) const;
  void EncodeText(std::string text, bool at_start, std::vector<int32_t>* ids) const;

  BpeModel model_;
  std::vector<std::string> tokens_;  // [vocab_size] token string of each id
  std::vector<uint8_t> flags_;       // [vocab_size] kPresent | kSpecial
  std::vector<std::unique_ptr<AddedToken>> added_;
  absl::flat_hash_map<std::string, int32_t> added_ids_;
  AddedTokenMatcher raw_matcher_;         // added tokens with normalized=false
  AddedTokenMatcher normalized_matcher_;  // added tokens with normalized=true
  std::vector<NormalizerStep> normalizers_;
  std::vector<PreTokenizerStep> pre_tokenizers_;
  std::vector<DecoderStep> decoders_;
  bool has_decoder_ = false;
  std::vector<int32_t> prefix_ids_;  // added by add_special_tokens
  std::vector<int32_t> suffix_ids_;
  std::optional<int32_t> bos_;
  std::vector<int32_t> eos_;
};

// ---- Loading ----

absl::Status BpeTokenizer::ParseModel(const json& model) {
  const std::string type = GetString(model, "type", "BPE");
  if (type != "BPE") {
    return Invalid(kTokenizerFile,
                   absl::StrCat("model type \"", type, "\" is not supported (only BPE)"));
  }
  auto vocab_it = model.find("vocab");
  if (vocab_it == model.end() || !vocab_it->is_object()) {
    return Invalid(kTokenizerFile, "model.vocab is missing or not an object");
  }
  int32_t max_id = -1;
  for (auto it = vocab_it->begin(); it != vocab_it->end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 ||
        it.value().get<int64_t>() > (int64_t{1} << 30)) {
      return Invalid(kTokenizerFile,
                     absl::StrCat("model.vocab[\"", it.key(), "\"] is not an id in [0, 2^30]"));
    }
    const int32_t id = it.value().get<int32_t>();
    model_.vocab[it.key()] = id;
    max_id = std::max(max_id, id);
  }
  tokens_.assign(max_id + 1, "");
  flags_.assign(max_id + 1, 0);
  for (const auto& [token, id] : model_.vocab) {
    tokens_[id] = token;
    flags_[id] |= kPresent;
  }

  model_.continuing_subword_prefix = GetString(model, "continuing_subword_prefix");
  model_.end_of_word_suffix = GetString(model, "end_of_word_suffix");
  model_.byte_fallback = GetBool(model, "byte_fallback", false);
  model_.fuse_unk = GetBool(model, "fuse_unk", false);
  model_.ignore_merges = GetBool(model, "ignore_merges", false);
  const std::string unk = GetString(model, "unk_token");
  if (!unk.empty()) {
    auto it = model_.vocab.find(unk);
    if (it != model_.vocab.end()) model_.unk_id = it->second;
  }
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    auto it = model_.vocab.find(name);
    model_.byte_ids[b] = it == model_.vocab.end() ? -1 : it->second;
  }

  auto merges_it = model.find("merges");
  if (merges_it == model.end() || merges_it->is_null()) return absl::OkStatus();
  if (!merges_it->is_array()) return Invalid(kTokenizerFile, "model.merges is not an array");
  const size_t prefix_length = model_.continuing_subword_prefix.size();
  int32_t rank = 0;
  for (const json& merge : *merges_it) {
    std::string left, right;
    if (merge.is_string()) {
      const std::string line = merge.get<std::string>();
      const size_t space = line.find(' ');
      if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos) {
        return Invalid(kTokenizerFile, absl::StrCat("merge #", rank, " \"", line,
                                                    "\" is not two tokens separated by a space"));
      }
      left = line.substr(0, space);
      right = line.substr(space + 1);
    } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() &&
               merge[1].is_string()) {
      left = merge[0].get<std::string>();
      right = merge[1].get<std::string>();
    } else {
      return Invalid(kTokenizerFile,
                     absl::StrCat("merge #", rank, " is neither \"a b\" nor [\"a\", \"b\"]"));
    }
    auto left_it = model_.vocab.find(left);
    auto right_it = model_.vocab.find(right);
    if (left_it == model_.vocab.end() || right_it == model_.vocab.end()) {
      return Invalid(kTokenizerFile,
                     absl::StrCat("merge #", rank, " (\"", left, "\", \"", right,
                                  "\") uses a token that is not in the vocabulary"));
    }
    const std::string merged =
        left + (right.size() >= prefix_length ? right.substr(prefix_length) : right);
    auto merged_it = model_.vocab.find(merged);
    if (merged_it == model_.vocab.end()) {
      return Invalid(kTokenizerFile, absl::StrCat("merge #", rank, " makes \"", merged,
                                                  "\", which is not in the vocabulary"));
    }
    model_.merges[BpeModel::PairKey(left_it->second, right_it->second)] = {rank, merged_it->second};
    ++rank;
  }
  return absl::OkStatus();
}

absl::Status BpeTokenizer::ParseAddedTokens(const json& added) {
  if (added.is_null()) return absl::OkStatus();
  if (!added.is_array()) return Invalid(kTokenizerFile, "added_tokens is not an array");
  for (const json& entry : added) {
    if (!entry.is_object() || !entry.contains("id") || !entry["id"].is_number_integer() ||
        entry["id"].get<int64_t>() < 0 || entry["id"].get<int64_t>() > (int64_t{1} << 30) ||
        !entry.contains("content") || !entry["content"].is_string()) {
      return Invalid(kTokenizerFile, absl::StrCat("added_tokens entry ", JsonExcerpt(entry),
                                                  " needs an id in [0, 2^30] and a content"));
    }
    auto token = std::make_unique<AddedToken>();
    token->id = entry["id"].get<int32_t>();
    token->content = entry["content"].get<std::string>();
    if (token->content.empty()) continue;
    token->special = GetBool(entry, "special", false);
    token->lstrip = GetBool(entry, "lstrip", false);
    token->rstrip = GetBool(entry, "rstrip", false);
    token->single_word = GetBool(entry, "single_word", false);
    token->normalized = GetBool(entry, "normalized", !token->special);
    if (token->id >= static_cast<int32_t>(tokens_.size())) {
      tokens_.resize(token->id + 1);
      flags_.resize(token->id + 1, 0);
    }
    tokens_[token->id] = token->content;
    flags_[token->id] |= kPresent | (token->special ? kSpecial : 0);
    added_ids_[token->content] = token->id;
    added_.push_back(std::move(token));
  }
  return absl::OkStatus();
}

absl::Status BpeTokenizer::ParseNormalizer(const json& node, int depth) {
  if (node.is_null()) return absl::OkStatus();
  const std::string type = GetString(node, "type");
  if (type == "Sequence") {
    auto it = node.find("normalizers");
    if (it == node.end() || !it->is_array()) {
      return Invalid(kTokenizerFile, "normalizer Sequence has no normalizers array");
    }
    if (depth >= kMaxSequenceDepth) {
      return Invalid(kTokenizerFile, absl::StrCat("normalizer Sequences nested more than ",
                                                  kMaxSequenceDepth, " deep"));
    }
    for (const json& child : *it) MPA_RETURN_IF_ERROR(ParseNormalizer(child, depth + 1));
    return absl::OkStatus();
  }
  NormalizerStep step{};
  if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
    step.kind = NormalizerStep::Kind::kForm;
    step.form = type == "NFC"    ? ti::NormalForm::kNfc
                : type == "NFD"  ? ti::NormalForm::kNfd
                : type == "NFKC" ? ti::NormalForm::kNfkc
                                 : ti::NormalForm::kNfkd;
  } else if (type == "Prepend") {
    step.kind = NormalizerStep::Kind::kPrepend;
    step.text = GetString(node, "prepend");
  } else if (type == "Replace") {
    step.kind = NormalizerStep::Kind::kReplace;
    step.content = GetString(node, "content");
    const json& pattern = Member(node, "pattern");
    if (pattern.contains("String") && pattern["String"].is_string()) {
      step.text = pattern["String"].get<std::string>();
    } else if (pattern.contains("Regex") && pattern["Regex"].is_string()) {
      auto translated = ti::TranslatePatternForRe2(pattern["Regex"].get<std::string>());
      if (!translated.ok()) return translated.status();
      step.regex = std::make_shared<re2::RE2>(*translated);
      if (!step.regex->ok()) {
        return Invalid(kTokenizerFile, absl::StrCat("Replace normalizer pattern does not compile: ",
                                                    step.regex->error()));
      }
      step.content = absl::StrReplaceAll(step.content, {{"\\", "\\\\"}});
    } else {
      return Invalid(kTokenizerFile, "Replace normalizer has no String or Regex pattern");
    }
  } else if (type == "Lowercase") {
    step.kind = NormalizerStep::Kind::kLowercase;
  } else if (type == "Strip") {
    step.kind = NormalizerStep::Kind::kStrip;
    step.strip_left = GetBool(node, "strip_left", false);
    step.strip_right = GetBool(node, "strip_right", false);
  } else {
    return Invalid(kTokenizerFile, absl::StrCat("normalizer type \"", type, "\" is not supported"));
  }
  normalizers_.push_back(std::move(step));
  return absl::OkStatus();
}

absl::Status BpeTokenizer::ParsePreTokenizer(const json& node, int depth) {
  if (node.is_null()) return absl::OkStatus();
  const std::string type = GetString(node, "type");
  if (type == "Sequence") {
    auto it = node.find("pretokenizers");
    if (it == node.end() || !it->is_array()) {
      return Invalid(kTokenizerFile, "pre_tokenizer Sequence has no pretokenizers array");
    }
    if (depth >= kMaxSequenceDepth) {
      return Invalid(kTokenizerFile, absl::StrCat("pre_tokenizer Sequences nested more than ",
                                                  kMaxSequenceDepth, " deep"));
    }
    for (const json& child : *it) MPA_RETURN_IF_ERROR(ParsePreTokenizer(child, depth + 1));
    return absl::OkStatus();
  }
  PreTokenizerStep step{};
  if (type == "Split") {
    step.kind = PreTokenizerStep::Kind::kSplit;
    const json& pattern = Member(node, "pattern");
    absl::StatusOr<std::unique_ptr<ti::SplitPattern>> compiled;
    if (pattern.contains("Regex") && pattern["Regex"].is_string()) {
      compiled = ti::SplitPattern::FromRegex(pattern["Regex"].get<std::string>());
    } else if (pattern.contains("String") && pattern["String"].is_string()) {
      compiled = ti::SplitPattern::FromLiteral(pattern["String"].get<std::string>());
    } else {
      return Invalid(kTokenizerFile, "Split pre_tokenizer has no String or Regex pattern");
    }
    if (!compiled.ok()) return compiled.status();
    step.pattern = std::move(compiled).value();
    const std::string behavior = GetString(node, "behavior", "Isolated");
    if (behavior == "Isolated") {
      step.behavior = SplitBehavior::kIsolated;
    } else if (behavior == "Removed") {
      step.behavior = SplitBehavior::kRemoved;
    } else if (behavior == "MergedWithPrevious") {
      step.behavior = SplitBehavior::kMergedWithPrevious;
    } else if (behavior == "MergedWithNext") {
      step.behavior = SplitBehavior::kMergedWithNext;
    } else if (behavior == "Contiguous") {
      step.behavior = SplitBehavior::kContiguous;
    } else {
      return Invalid(kTokenizerFile,
                     absl::StrCat("Split behavior \"", behavior, "\" is not supported"));
    }
    step.invert = GetBool(node, "invert", false);
  } else if (type == "ByteLevel") {
    step.kind = PreTokenizerStep::Kind::kByteLevel;
    step.add_prefix_space = GetBool(node, "add_prefix_space", true);
    if (GetBool(node, "use_regex", true)) {
      // GPT-2's pattern, which ByteLevel applies itself when use_regex is set.
      auto compiled = ti::SplitPattern::FromRegex(
          "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+");
      if (!compiled.ok()) return compiled.status();
      step.pattern = std::move(compiled).value();
    }
  } else if (type == "Metaspace") {
    step.kind = PreTokenizerStep::Kind::kMetaspace;
    step.replacement = GetString(node, "replacement", "\xE2\x96\x81");
    const std::string scheme = GetString(node, "prepend_scheme", "");
    if (scheme == "first") {
      step.prepend = PreTokenizerStep::Prepend::kFirst;
    } else if (scheme == "never") {
      step.prepend = PreTokenizerStep::Prepend::kNever;
    } else if (scheme == "always") {
      step.prepend = PreTokenizerStep::Prepend::kAlways;
    } else {
      step.prepend = GetBool(node, "add_prefix_space", true) ? PreTokenizerStep::Prepend::kAlways
                                                             : PreTokenizerStep::Prepend::kNever;
    }
    step.split = GetBool(node, "split", true);
  } else {
    return Invalid(kTokenizerFile,
                   absl::StrCat("pre_tokenizer type \"", type, "\" is not supported"));
  }
  pre_tokenizers_.push_back(std::move(step));
  return absl::OkStatus();
}

absl::Status BpeTokenizer::ParseDecoder(const json& node, int depth) {
  if (node.is_null()) return absl::OkStatus();
  has_decoder_ = true;
  const std::string type = GetString(node, "type");
  if (type == "Sequence") {
    auto it = node.find("decoders");
    if (it == node.end() || !it->is_array()) {
      return Invalid(kTokenizerFile, "decoder Sequence has no decoders array");
    }
    if (depth >= kMaxSequenceDepth) {
      return Invalid(kTokenizerFile, absl::StrCat("decoder Sequences nested more than ",
                                                  kMaxSequenceDepth, " deep"));
    }
    for (const json& child : *it) MPA_RETURN_IF_ERROR(ParseDecoder(child, depth + 1));
    return absl::OkStatus();
  }
  DecoderStep step{};
  if (type == "ByteLevel") {
    step.kind = DecoderStep::Kind::kByteLevel;
  } else if (type == "ByteFallback") {
    step.kind = DecoderStep::Kind::kByteFallback;
  } else if (type == "Fuse") {
    step.kind = DecoderStep::Kind::kFuse;
  } else if (type == "Replace") {
    step.kind = DecoderStep::Kind::kReplace;
    const json& pattern = Member(node, "pattern");
    if (!pattern.contains("String") || !pattern["String"].is_string()) {
      return Invalid(kTokenizerFile, "Replace decoder: only String patterns are supported");
    }
    step.pattern = pattern["String"].get<std::string>();
    step.content = GetString(node, "content");
    if (step.pattern.empty())
      return Invalid(kTokenizerFile, "Replace decoder has an empty pattern");
  } else if (type == "Strip") {
    step.kind = DecoderStep::Kind::kStrip;
    step.strip_char = FirstChar(GetString(node, "content", " "));
    // Counts of characters (absent: 0); anything else is refused, never thrown on.
    for (auto [key, out] : {std::pair{"start", &step.strip_start}, {"stop", &step.strip_stop}}) {
      const json& count = Member(node, key);
      if (count.is_null()) continue;
      if (!count.is_number_integer() || count.get<int64_t>() < 0 ||
          count.get<int64_t>() > (1 << 20)) {
        return Invalid(kTokenizerFile,
                       absl::StrCat("Strip decoder: '", key,
                                    "' must be a count of characters, not ", JsonExcerpt(count)));
      }
      *out = count.get<int>();
    }
  } else if (type == "Metaspace") {
    step.kind = DecoderStep::Kind::kMetaspace;
    step.replacement = FirstChar(GetString(node, "replacement", "\xE2\x96\x81"));
    const std::string scheme = GetString(node, "prepend_scheme", "");
    step.prepend = scheme.empty() ? GetBool(node, "add_prefix_space", true) : scheme != "never";
  } else {
    return Invalid(kTokenizerFile, absl::StrCat("decoder type \"", type, "\" is not supported"));
  }
  decoders_.push_back(std::move(step));
  return absl::OkStatus();
}

absl::Status BpeTokenizer::ParsePostProcessor(const json& node, int depth) {
  if (node.is_null()) return absl::OkStatus();
  const std::string type = GetString(node, "type");
  if (type == "Sequence") {
    auto it = node.find("processors");
    if (it == node.end() || !it->is_array()) {
      return Invalid(kTokenizerFile, "post_processor Sequence has no processors array");
    }
    if (depth >= kMaxSequenceDepth) {
      return Invalid(kTokenizerFile, absl::StrCat("post_processor Sequences nested more than ",
                                                  kMaxSequenceDepth, " deep"));
    }
    for (const json& child : *it) MPA_RETURN_IF_ERROR(ParsePostProcessor(child, depth + 1));
    return absl::OkStatus();
  }
  if (type == "ByteLevel") return absl::OkStatus();  // offsets only
  if (type == "TemplateProcessing") {
    auto single = node.find("single");
    auto specials = node.find("special_tokens");
    if (single == node.end() || !single->is_array()) {
      return Invalid(kTokenizerFile, "post_processor TemplateProcessing has no single template");
    }
    prefix_ids_.clear();
    suffix_ids_.clear();
    bool after_sequence = false;
    for (const json& item : *single) {
      if (item.contains("Sequence")) {
        after_sequence = true;
        continue;
      }
      const std::string name = item.contains("SpecialToken") && item["SpecialToken"].is_object()
                                   ? GetString(item["SpecialToken"], "id")
                                   : "";
      if (name.empty() || specials == node.end() || !specials->contains(name) ||
          !(*specials)[name].contains("ids") || !(*specials)[name]["ids"].is_array()) {
        return Invalid(kTokenizerFile,
                       absl::StrCat("post_processor template item ", JsonExcerpt(item),
                                    " names no special token with ids"));
      }
      for (const json& id : (*specials)[name]["ids"]) {
        if (!id.is_number_integer()) {
          return Invalid(kTokenizerFile, "post_processor special token ids must be integers");
        }
        (after_sequence ? suffix_ids_ : prefix_ids_).push_back(id.get<int32_t>());
      }
    }
    return absl::OkStatus();
  }
  if (type == "RobertaProcessing" || type == "BertProcessing") {
    auto cls = node.find("cls");
    auto sep = node.find("sep");
    if (cls == node.end() || sep == node.end() || !cls->is_array() || cls->size() != 2 ||
        !sep->is_array() || sep->size() != 2 || !(*cls)[1].is_number_integer() ||
        !(*sep)[1].is_number_integer()) {
      return Invalid(kTokenizerFile, absl::StrCat("post_processor ", type, " needs cls and sep"));
    }
    prefix_ids_ = {(*cls)[1].get<int32_t>()};
    suffix_ids_ = {(*sep)[1].get<int32_t>()};
    return absl::OkStatus();
  }
  return Invalid(kTokenizerFile,
                 absl::StrCat("post_processor type \"", type, "\" is not supported"));
}

std::optional<int32_t> BpeTokenizer::TokenId(const std::string& content) const {
  auto added = added_ids_.find(content);
  if (added != added_ids_.end()) return added->second;
  auto it = model_.vocab.find(content);
  if (it != model_.vocab.end()) return it->second;
  return std::nullopt;
}

absl::Status BpeTokenizer::ParseConfigs(std::string_view config_json,
                                        std::string_view generation_json) {
  json config = json::object();
  if (!config_json.empty()) {
    config = json::parse(config_json, nullptr, /*allow_exceptions=*/false);
    if (config.is_discarded() || !config.is_object()) {
      return Invalid(kConfigFile, "is not a JSON object");
    }
  }
  json generation = json::object();
  if (!generation_json.empty()) {
    generation = json::parse(generation_json, nullptr, /*allow_exceptions=*/false);
    if (generation.is_discarded() || !generation.is_object()) {
      return Invalid(kGenerationFile, "is not a JSON object");
    }
  }
  // bos_token / eos_token are "text" or {"content": "text", ...}.
  auto resolve = [&](const char* key) -> std::optional<int32_t> {
    auto it = config.find(key);
    if (it == config.end()) return std::nullopt;
    std::string content;
    if (it->is_string()) {
      content = it->get<std::string>();
    } else if (it->is_object()) {
      content = GetString(*it, "content");
    }
    return content.empty() ? std::nullopt : TokenId(content);
  };
  bos_ = resolve("bos_token");
  const std::optional<int32_t> config_eos = resolve("eos_token");
  if (config_eos) eos_.push_back(*config_eos);
  if (!bos_) {
    auto it = generation.find("bos_token_id");
    if (it != generation.end() && it->is_number_integer() && it->get<int64_t>() >= 0) {
      bos_ = it->get<int32_t>();
    }
  }
  auto add_eos = [this](const json& value) {
    if (!value.is_number_integer() || value.get<int64_t>() < 0) return;
    const int32_t id = value.get<int32_t>();
    if (std::find(eos_.begin(), eos_.end(), id) == eos_.end()) eos_.push_back(id);
  };
  auto eos_it = generation.find("eos_token_id");
  if (eos_it != generation.end()) {
    if (eos_it->is_array()) {
      for (const json& id : *eos_it) add_eos(id);
    } else {
      add_eos(*eos_it);
    }
  }
  // transformers' Llama-style tokenizers rebuild the template from these flags.
  auto add_bos_it = config.find("add_bos_token");
  if (add_bos_it != config.end() && add_bos_it->is_boolean()) {
    prefix_ids_.clear();
    if (add_bos_it->get<bool>() && bos_) prefix_ids_.push_back(*bos_);
  }
  auto add_eos_it = config.find("add_eos_token");
  if (add_eos_it != config.end() && add_eos_it->is_boolean()) {
    suffix_ids_.clear();
    if (add_eos_it->get<bool>() && config_eos) suffix_ids_.push_back(*config_eos);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<BpeTokenizer>> BpeTokenizer::Create(
    std::string_view tokenizer_json, std::string_view config_json,
    std::string_view generation_json) {
  const json root = json::parse(tokenizer_json, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return Invalid(kTokenizerFile, "is not valid JSON");
  if (!root.is_object()) return Invalid(kTokenizerFile, "is not a JSON object");
  auto model = root.find("model");
  if (model == root.end() || !model->is_object()) {
    return Invalid(kTokenizerFile, "has no \"model\" object");
  }
  std::unique_ptr<BpeTokenizer> tokenizer(new BpeTokenizer());
  MPA_RETURN_IF_ERROR(tokenizer->ParseModel(*model));
  MPA_RETURN_IF_ERROR(tokenizer->ParseAddedTokens(Member(root, "added_tokens")));
  MPA_RETURN_IF_ERROR(tokenizer->ParseNormalizer(Member(root, "normalizer")));
  MPA_RETURN_IF_ERROR(tokenizer->ParsePreTokenizer(Member(root, "pre_tokenizer")));
  MPA_RETURN_IF_ERROR(tokenizer->ParseDecoder(Member(root, "decoder")));
  MPA_RETURN_IF_ERROR(tokenizer->ParsePostProcessor(Member(root, "post_processor")));
  MPA_RETURN_IF_ERROR(tokenizer->ParseConfigs(config_json, generation_json));
  for (const auto& token : tokenizer->added_) {
    if (token->normalized) {
      tokenizer->normalized_matcher_.Add(tokenizer->ApplyNormalizers(token->content), token.get());
    } else {
      tokenizer->raw_matcher_.Add(token->content, token.get());
    }
  }
  for (int32_t id : tokenizer->prefix_ids_) {
    if (id < 0 || id >= tokenizer->vocab_size()) {
      return Invalid(kTokenizerFile,
                     absl::StrCat("post_processor adds id ", id, ", outside the vocabulary"));
    }
  }
  return tokenizer;
}

// ---- Encoding ----

std::string BpeTokenizer::ApplyNormalizers(std::string text) const {
  for (const NormalizerStep& step : normalizers_) {
    switch (step.kind) {
      case NormalizerStep::Kind::kForm:
        text = ti::Normalize(text, step.form);
        break;
      case NormalizerStep::Kind::kPrepend:
        if (!text.empty()) text = step.text + text;
        break;
      case NormalizerStep::Kind::kReplace:
        if (step.regex) {
          re2::RE2::GlobalReplace(&text, *step.regex, step.content);
        } else if (!step.text.empty()) {
          text = absl::StrReplaceAll(text, {{step.text, step.content}});
        }
        break;
      case NormalizerStep::Kind::kLowercase:
        text = ti::Lowercase(text);
        break;
      case NormalizerStep::Kind::kStrip: {
        size_t begin = 0;
        size_t end = text.size();
        while (step.strip_left && begin < end &&
               ti::IsUnicodeWhitespace(FirstChar(std::string_view(text).substr(begin)))) {
          begin += ti::Utf8CharLength(text, begin);
        }
        while (step.strip_right && end > begin) {
          size_t last = end - 1;
          while (last > begin && (static_cast<unsigned char>(text[last]) & 0xC0) == 0x80) --last;
          if (!ti::IsUnicodeWhitespace(FirstChar(std::string_view(text).substr(last)))) break;
          end = last;
        }
        text = text.substr(begin, end - begin);
        break;
      }
    }
  }
  return text;
}

namespace {

struct PreToken {
  std::string text;
  bool at_start;  // begins at the start of the input (Metaspace prepend_scheme "first")
};

// Cuts `text` at `matches` as HF's SplitDelimiterBehavior does.
void SplitByMatches(const PreToken& piece, std::vector<std::pair<size_t, size_t>> matches,
                    bool invert, SplitBehavior behavior, std::vector<PreToken>* out) {
  const std::string& text = piece.text;
  // Every range with whether it is a delimiter; gaps and matches in order.
  std::vector<std::pair<std::pair<size_t, size_t>, bool>> parts;
  size_t last = 0;
  for (const auto& m : matches) {
    if (m.first > last) parts.push_back({{last, m.first}, invert});
    parts.push_back({m, !invert});
    last = m.second;
  }
  if (last < text.size()) parts.push_back({{last, text.size()}, invert});
  std::vector<std::pair<size_t, size_t>> ranges;
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (const auto& p : parts) ranges.push_back(p.first);
      break;
    case SplitBehavior::kRemoved:
      for (const auto& p : parts) {
        if (!p.second) ranges.push_back(p.first);
      }
      break;
    case SplitBehavior::kContiguous:
      for (size_t i = 0; i < parts.size(); ++i) {
        if (parts[i].second && i > 0 && parts[i - 1].second) {
          ranges.back().second = parts[i].first.second;
        } else {
          ranges.push_back(parts[i].first);
        }
      }
      break;
    case SplitBehavior::kMergedWithPrevious:
      for (size_t i = 0; i < parts.size(); ++i) {
        if (parts[i].second && !ranges.empty() && !(i > 0 && parts[i - 1].second)) {
          ranges.back().second = parts[i].first.second;
        } else {
          ranges.push_back(parts[i].first);
        }
      }
      break;
    case SplitBehavior::kMergedWithNext: {
      bool previous_delimiter = false;
      for (size_t i = 0; i < parts.size(); ++i) {
        if (!parts[i].second && previous_delimiter) {
          ranges.back().second = parts[i].first.second;
        } else {
          ranges.push_back(parts[i].first);
        }
        previous_delimiter = parts[i].second;
      }
      break;
    }
  }
  for (const auto& r : ranges) {
    if (r.second > r.first) {
      out->push_back({text.substr(r.first, r.second - r.first), piece.at_start && r.first == 0});
    }
  }
}

}  // namespace

void BpeTokenizer::EncodeText(std::string text, bool at_start, std::vector<int32_t>* ids) const {
  std::vector<PreToken> pieces;
  pieces.push_back({std::move(text), at_start});
  std::vector<PreToken> next;
  for (const PreTokenizerStep& step : pre_tokenizers_) {
    next.clear();
    for (PreToken& piece : pieces) {
      switch (step.kind) {
        case PreTokenizerStep::Kind::kSplit:
          SplitByMatches(piece, step.pattern->FindAll(piece.text), step.invert, step.behavior,
                         &next);
          break;
        case PreTokenizerStep::Kind::kByteLevel: {
          if (step.add_prefix_space && !absl::StartsWith(piece.text, " ")) {
            piece.text = " " + piece.text;
          }
          const size_t first = next.size();
          if (step.pattern) {
            SplitByMatches(piece, step.pattern->FindAll(piece.text), false,
                           SplitBehavior::kIsolated, &next);
          } else {
            next.push_back(std::move(piece));
          }
          for (size_t k = first; k < next.size(); ++k) {
            std::string mapped;
            mapped.reserve(next[k].text.size() * 2);
            for (char c : next[k].text) mapped += ti::ByteToUnicode(static_cast<uint8_t>(c));
            next[k].text = std::move(mapped);
          }
          break;
        }
        case PreTokenizerStep::Kind::kMetaspace: {
          piece.text = absl::StrReplaceAll(piece.text, {{" ", step.replacement}});
          const bool prepend =
              step.prepend == PreTokenizerStep::Prepend::kAlways ||
              (step.prepend == PreTokenizerStep::Prepend::kFirst && piece.at_start);
          if (prepend && !absl::StartsWith(piece.text, step.replacement)) {
            piece.text = step.replacement + piece.text;
          }
          if (step.split) {
            std::vector<std::pair<size_t, size_t>> matches;
            for (size_t at = piece.text.find(step.replacement); at != std::string::npos;
                 at = piece.text.find(step.replacement, at + step.replacement.size())) {
              matches.emplace_back(at, at + step.replacement.size());
            }
            SplitByMatches(piece, std::move(matches), false, SplitBehavior::kMergedWithNext, &next);
          } else {
            next.push_back(std::move(piece));
          }
          break;
        }
      }
    }
    pieces.swap(next);
  }
  for (const PreToken& piece : pieces) model_.Tokenize(piece.text, ids);
}

std::vector<int32_t> BpeTokenizer::Encode(std::string_view text, bool add_special_tokens) const {
  // Text from a client may carry broken UTF-8; HF only ever sees valid strings.
  const std::string input = ti::IsValidUtf8(text) ? std::string(text) : ti::Utf8Lossy(text);
  std::vector<int32_t> ids;
  if (add_special_tokens) ids = prefix_ids_;
  for (const Segment& raw : raw_matcher_.Split(input)) {
    if (raw.id >= 0) {
      ids.push_back(raw.id);
      continue;
    }
    const std::string normalized = ApplyNormalizers(input.substr(raw.begin, raw.end - raw.begin));
    for (const Segment& part : normalized_matcher_.Split(normalized)) {
      if (part.id >= 0) {
        ids.push_back(part.id);
      } else {
        EncodeText(normalized.substr(part.begin, part.end - part.begin),
                   raw.begin == 0 && part.begin == 0, &ids);
      }
    }
  }
  if (add_special_tokens) ids.insert(ids.end(), suffix_ids_.begin(), suffix_ids_.end());
  return ids;
}

// ---- Decoding ----

// Runs the decoder steps over a stream of tokens. Each step mirrors what HF's decoder of that
// name does to its list of tokens, holding back only what later tokens could still change: an
// unfinished byte-fallback group, an incomplete UTF-8 tail, trailing characters a Strip may cut.
class BpeDecodeState final : public Tokenizer::DecodeState {
 public:
  BpeDecodeState(const BpeTokenizer& tokenizer, bool skip_special)
      : tokenizer_(tokenizer), skip_special_(skip_special), states_(tokenizer.decoders_.size()) {}

  std::string Push(int32_t id) override {
    if (id < 0 || id >= tokenizer_.vocab_size() ||
        !(tokenizer_.flags_[id] & BpeTokenizer::kPresent)) {
      return "";  // HF skips ids it has no token for
    }
    if (skip_special_ && (tokenizer_.flags_[id] & BpeTokenizer::kSpecial)) return "";
    std::string out;
    if (!tokenizer_.has_decoder_) {  // HF joins the tokens with spaces
      if (any_token_) out.push_back(' ');
      out += tokenizer_.tokens_[id];
    } else {
      Feed(0, Piece{tokenizer_.tokens_[id], true}, &out);
    }
    any_token_ = true;
    return out;
  }

  std::string Flush() override {
    std::string out;
    for (size_t step = 0; step < states_.size(); ++step) FlushStep(step, &out);
    return out;
  }

 private:
  struct StepState {
    std::string bytes;      // ByteFallback group / ByteLevel incomplete tail
    bool started = false;   // Fuse / ByteLevel: first chunk sent
    int token_index = -1;   // Metaspace
    bool in_token = false;  // Strip
    int strip_left = 0;     // Strip: leading characters it may still cut
    std::string held;       // Strip: trailing strip characters held back
    int held_count = 0;
  };

  void Forward(size_t step, Piece piece, std::string* out) {
    Feed(step + 1, std::move(piece), out);
  }

  void Feed(size_t step, Piece piece, std::string* out) {
    if (step == states_.size()) {
      out->append(piece.text);
      return;
    }
    const DecoderStep& d = tokenizer_.decoders_[step];
    StepState& s = states_[step];
    switch (d.kind) {
      case DecoderStep::Kind::kReplace:
        piece.text = absl::StrReplaceAll(piece.text, {{d.pattern, d.content}});
        Forward(step, std::move(piece), out);
        return;
      case DecoderStep::Kind::kByteFallback: {
        const int byte = piece.new_token ? ByteTokenValue(piece.text) : -1;
        if (byte >= 0) {
          s.bytes.push_back(static_cast<char>(byte));
          return;
        }
        FlushByteGroup(step, out);
        Forward(step, std::move(piece), out);
        return;
      }
      case DecoderStep::Kind::kFuse:
        piece.new_token = !s.started;
        s.started = true;
        Forward(step, std::move(piece), out);
        return;
      case DecoderStep::Kind::kByteLevel: {
        bool mapped = true;
        std::string bytes;
        for (size_t i = 0; i < piece.text.size() && mapped;) {
          size_t len;
          char32_t cp = 0;
          ti::ScanUtf8(std::string_view(piece.text).substr(i), &len, &cp);
          const int b = ti::UnicodeToByte(cp);
          mapped = b >= 0;
          bytes.push_back(static_cast<char>(b));
          i += len;
        }
        s.bytes += mapped ? bytes : piece.text;  // HF keeps a token's own bytes if unmappable
        const size_t tail = ti::IncompleteUtf8Tail(s.bytes);
        std::string text =
            ti::Utf8Lossy(std::string_view(s.bytes).substr(0, s.bytes.size() - tail));
        s.bytes.erase(0, s.bytes.size() - tail);
        if (!text.empty() || !s.started) {
          Forward(step, Piece{std::move(text), !s.started}, out);
          s.started = true;
        }
        return;
      }
      case DecoderStep::Kind::kMetaspace: {
        if (piece.new_token) ++s.token_index;
        std::string text;
        for (size_t i = 0; i < piece.text.size();) {
          const size_t len = ti::Utf8CharLength(piece.text, i);
          if (FirstChar(std::string_view(piece.text).substr(i)) == d.replacement) {
            if (!(s.token_index == 0 && d.prepend)) text.push_back(' ');
          } else {
            text.append(piece.text, i, len);
          }
          i += len;
        }
        piece.text = std::move(text);
        Forward(step, std::move(piece), out);
        return;
      }
      case DecoderStep::Kind::kStrip: {
        if (piece.new_token) {
          EndStripToken(step, out);
          s.in_token = true;
          s.strip_left = d.strip_start;
        }
        std::string text;
        for (size_t i = 0; i < piece.text.size();) {
          const size_t len = ti::Utf8CharLength(piece.text, i);
          const bool is_strip = FirstChar(std::string_view(piece.text).substr(i)) == d.strip_char;
          if (s.strip_left > 0) {
            if (is_strip) {
              --s.strip_left;
              i += len;
              continue;
            }
            s.strip_left = 0;
          }
          if (d.strip_stop > 0 && is_strip) {
            s.held.append(piece.text, i, len);
            ++s.held_count;
          } else {
            text += s.held;
            s.held.clear();
            s.held_count = 0;
            text.append(piece.text, i, len);
          }
          i += len;
        }
        if (piece.new_token || !text.empty()) {
          Forward(step, Piece{std::move(text), piece.new_token}, out);
        }
        return;
      }
    }
  }

  void FlushByteGroup(size_t step, std::string* out) {
    StepState& s = states_[step];
    if (s.bytes.empty()) return;
    std::string bytes;
    bytes.swap(s.bytes);
    if (ti::IsValidUtf8(bytes)) {
      Forward(step, Piece{std::move(bytes), true}, out);
    } else {
      // HF: a group that is not valid UTF-8 becomes one U+FFFD per byte.
      for (size_t k = 0; k < bytes.size(); ++k) {
        Forward(step, Piece{std::string(kReplacementChar), true}, out);
      }
    }
  }

  void EndStripToken(size_t step, std::string* out) {
    StepState& s = states_[step];
    if (!s.in_token) return;
    s.in_token = false;
    const int keep = std::max(0, s.held_count - tokenizer_.decoders_[step].strip_stop);
    if (keep > 0) {
      const size_t char_bytes = s.held.size() / s.held_count;
      Forward(step, Piece{s.held.substr(0, keep * char_bytes), false}, out);
    }
    s.held.clear();
    s.held_count = 0;
  }

  void FlushStep(size_t step, std::string* out) {
    StepState& s = states_[step];
    switch (tokenizer_.decoders_[step].kind) {
      case DecoderStep::Kind::kByteFallback:
        FlushByteGroup(step, out);
        break;
      case DecoderStep::Kind::kByteLevel:
        if (!s.bytes.empty()) {
          Forward(step, Piece{ti::Utf8Lossy(s.bytes), !s.started}, out);
          s.started = true;
          s.bytes.clear();
        }
        break;
      case DecoderStep::Kind::kStrip:
        EndStripToken(step, out);
        break;
      default:
        break;
    }
  }

  const BpeTokenizer& tokenizer_;
  const bool skip_special_;
  std::vector<StepState> states_;  // [number of decoder steps]
  bool any_token_ = false;
};

std::unique_ptr<Tokenizer::DecodeState> BpeTokenizer::NewDecodeState(
    bool skip_special_tokens) const {
  return std::make_unique<BpeDecodeState>(*this, skip_special_tokens);
}

std::string BpeTokenizer::Decode(absl::Span<const int32_t> ids, bool skip_special_tokens) const {
  BpeDecodeState state(*this, skip_special_tokens);
  std::string out;
  for (int32_t id : ids) out += state.Push(id);
  out += state.Flush();
  return out;
}

std::string BpeTokenizer::TokenBytes(int32_t id) const {
  if (id < 0 || id >= vocab_size() || !(flags_[id] & kPresent)) return "";
  std::string text = tokens_[id];
  for (const DecoderStep& d : decoders_) {
    switch (d.kind) {
      case DecoderStep::Kind::kReplace:
        text = absl::StrReplaceAll(text, {{d.pattern, d.content}});
        break;
      case DecoderStep::Kind::kByteFallback: {
        const int byte = ByteTokenValue(text);
        if (byte >= 0) text = std::string(1, static_cast<char>(byte));
        break;
      }
      case DecoderStep::Kind::kByteLevel: {
        std::string bytes;
        for (size_t i = 0; i < text.size();) {
          size_t len;
          char32_t cp = 0;
          ti::ScanUtf8(std::string_view(text).substr(i), &len, &cp);
          const int b = ti::UnicodeToByte(cp);
          if (b < 0) return text;  // not byte-level text: the token stands for itself
          bytes.push_back(static_cast<char>(b));
          i += len;
        }
        text = std::move(bytes);
        break;
      }
      case DecoderStep::Kind::kMetaspace: {
        std::string replacement;
        ti::AppendUtf8(d.replacement, &replacement);
        text = absl::StrReplaceAll(text, {{replacement, " "}});
        break;
      }
      default:
        break;
    }
  }
  return text;
}

// What a Tokenizer without its own decode state streams: token bytes, whole characters only.
class ByteConcatDecodeState final : public Tokenizer::DecodeState {
 public:
  ByteConcatDecodeState(const Tokenizer& tokenizer, bool skip_special)
      : tokenizer_(tokenizer), skip_special_(skip_special) {}
  std::string Push(int32_t id) override {
    if (skip_special_ && tokenizer_.IsSpecial(id)) return "";
    pending_ += tokenizer_.TokenBytes(id);
    const size_t tail = ti::IncompleteUtf8Tail(pending_);
    std::string text = ti::Utf8Lossy(std::string_view(pending_).substr(0, pending_.size() - tail));
    pending_.erase(0, pending_.size() - tail);
    return text;
  }
  std::string Flush() override {
    std::string text = ti::Utf8Lossy(pending_);
    pending_.clear();
    return text;
  }

 private:
  const Tokenizer& tokenizer_;
  const bool skip_special_;
  std::string pending_;  // bytes of a character still waiting for its continuation bytes
};

absl::StatusOr<std::string> ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::UnavailableError(absl::StrCat("cannot open ", path.string()));
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

}  // namespace

std::unique_ptr<Tokenizer::DecodeState> Tokenizer::NewDecodeState(bool skip_special_tokens) const {
  return std::make_unique<ByteConcatDecodeState>(*this, skip_special_tokens);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(
    std::string_view tokenizer_json, std::string_view tokenizer_config_json,
    std::string_view generation_config_json) {
  auto tokenizer =
      BpeTokenizer::Create(tokenizer_json, tokenizer_config_json, generation_config_json);
  if (!tokenizer.ok()) return tokenizer.status();
  return std::unique_ptr<Tokenizer>(std::move(tokenizer).value());
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::LoadFromDir(const std::string& dir) {
  const std::filesystem::path root(dir);
  const std::filesystem::path tokenizer_path = root / kTokenizerFile;
  std::error_code error;
  const std::filesystem::file_status status = std::filesystem::status(tokenizer_path, error);
  if (!std::filesystem::exists(status)) {
    return absl::NotFoundError(absl::StrCat(tokenizer_path.string(), " does not exist"));
  }
  // A folder or a pipe in its place is a broken model folder, not one without a tokenizer (and
  // reading a pipe would wait for a writer).
  if (!std::filesystem::is_regular_file(status)) {
    return absl::InvalidArgumentError(
        absl::StrCat(tokenizer_path.string(), " is not a regular file"));
  }
  auto tokenizer_json = ReadFile(tokenizer_path);
  if (!tokenizer_json.ok()) return tokenizer_json.status();
  std::string optional_files[2];
  const std::string_view optional_names[2] = {kConfigFile, kGenerationFile};
  for (int k = 0; k < 2; ++k) {
    const std::filesystem::path path = root / optional_names[k];
    if (!std::filesystem::is_regular_file(path, error)) continue;
    auto contents = ReadFile(path);
    if (!contents.ok()) return contents.status();
    optional_files[k] = std::move(contents).value();
  }
  auto tokenizer = FromJson(*tokenizer_json, optional_files[0], optional_files[1]);
  if (!tokenizer.ok()) {
    // Messages begin with the file's name; give the full path.
    return absl::Status(tokenizer.status().code(),
                        absl::StrCat((root / "").string(), tokenizer.status().message()));
  }
  return tokenizer;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::LoadForModel(const std::string& dir,
                                                                   int model_vocab_size) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = LoadFromDir(dir);
  if (absl::IsNotFound(tokenizer.status())) return std::unique_ptr<Tokenizer>();
  if (!tokenizer.ok()) return tokenizer.status();
  if ((*tokenizer)->vocab_size() > model_vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        (std::filesystem::path(dir) / kTokenizerFile).string(), ": token id ",
        (*tokenizer)->vocab_size() - 1, " is outside the model's vocabulary of ", model_vocab_size,
        " ids (config.json vocab_size): the tokenizer does not belong to these weights"));
  }
  return tokenizer;
}

IncrementalDecoder::IncrementalDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
    : state_(tokenizer.NewDecodeState(skip_special_tokens)) {}

std::string IncrementalDecoder::Push(int32_t id) { return state_->Push(id); }

std::string IncrementalDecoder::Flush() { return state_->Flush(); }

}  // namespace mpa
