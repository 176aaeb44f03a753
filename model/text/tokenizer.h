// Hugging Face tokenizer.json BPE tokenizers: byte-level (GPT-2 style, as Qwen2/Qwen3 and Llama 3
// use, with the pre-tokenizer's split pattern) and byte-fallback with the U+2581 space convention
// (Llama 2 style, SentencePiece-converted).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace mpa {

class Tokenizer {
 public:
  // Reads dir/tokenizer.json and, where present, dir/tokenizer_config.json and
  // dir/generation_config.json (BOS/EOS handling). NotFound if there is no tokenizer.json;
  // InvalidArgument naming the file and the problem if it is malformed or of an unsupported type.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> LoadFromDir(const std::string& dir);
  // The tokenizer of a model folder whose model has `model_vocab_size` token ids: null when
  // the folder has no tokenizer.json (such a model is driven by token ids); LoadFromDir's errors
  // otherwise, and InvalidArgument when the tokenizer has ids the model does not (tokenizer and
  // weights that do not belong together, whose ids would fail the first request that used them).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> LoadForModel(const std::string& dir,
                                                                 int model_vocab_size);
  // Same from the files' contents (tokenizer_config_json and generation_config_json may be "").
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(
      std::string_view tokenizer_json, std::string_view tokenizer_config_json,
      std::string_view generation_config_json);
  virtual ~Tokenizer() = default;

  // add_special_tokens: prepend BOS where the tokenizer's config asks for it (as HF's
  // tokenizer(text) does). Special/added tokens written in the text are recognised. Invalid
  // UTF-8 in text is first replaced by U+FFFD (HF only ever sees valid strings). Thread-safe.
  virtual std::vector<int32_t> Encode(std::string_view text, bool add_special_tokens) const = 0;
  // What add_special_tokens adds: Encode(text, true) is prefix + Encode(text, false) + suffix,
  // so a caller that needs both forms tokenizes once.
  struct SpecialIds {
    std::vector<int32_t> prefix;
    std::vector<int32_t> suffix;
  };
  virtual SpecialIds special_ids() const = 0;
  // The text of the ids, as HF's decode(ids, skip_special_tokens) gives it.
  virtual std::string Decode(absl::Span<const int32_t> ids, bool skip_special_tokens) const = 0;

  virtual int vocab_size() const = 0;  // largest id + 1, added tokens included
  virtual std::optional<int32_t> bos_id() const = 0;
  virtual std::vector<int32_t> eos_ids() const = 0;  // from generation_config.json / config
  virtual bool IsSpecial(int32_t id) const = 0;
  // The raw bytes this token stands for when decoded on its own in a stream (may be part of a
  // UTF-8 character), used by IncrementalDecoder.
  virtual std::string TokenBytes(int32_t id) const = 0;

  // The streaming form of Decode: text comes out as ids go in, each piece whole UTF-8 characters,
  // and the pieces of Push()es and the final Flush() concatenate to Decode(all ids). Use it
  // through IncrementalDecoder.
  class DecodeState {
   public:
    virtual ~DecodeState() = default;
    virtual std::string Push(int32_t id) = 0;
    virtual std::string Flush() = 0;
  };

 protected:
  // The default concatenates TokenBytes() (skipping special ids when asked) and holds back an
  // incomplete UTF-8 tail; tokenizers whose Decode does more (byte-fallback groups, stripping the
  // leading space) override it, and their Decode runs through the same state so the two agree.
  virtual std::unique_ptr<DecodeState> NewDecodeState(bool skip_special_tokens) const;

 private:
  friend class IncrementalDecoder;
};

// Turns a stream of ids into text pieces that are always whole UTF-8 characters: bytes of a
// character split across tokens are held back until it is complete. Concatenating every Push()
// and the final Flush() equals Decode(all ids, skip_special_tokens).
class IncrementalDecoder {
 public:
  IncrementalDecoder(const Tokenizer& tokenizer, bool skip_special_tokens);
  std::string Push(int32_t id);
  std::string Flush();  // whatever is held back (invalid UTF-8 tails become U+FFFD)

 private:
  std::unique_ptr<Tokenizer::DecodeState> state_;
};

}  // namespace mpa
