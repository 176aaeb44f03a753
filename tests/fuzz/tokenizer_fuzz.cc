// libFuzzer target: any text as tokenizer.json (with the input also used as text to encode) must
// give a tokenizer or an error Status, never crash or throw; a tokenizer that loads must encode
// and decode arbitrary bytes.
#include <cstdint>
#include <string>
#include <string_view>

#include "model/text/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  auto tokenizer = mpa::Tokenizer::FromJson(input, "", "");
  if (!tokenizer.ok()) return 0;
  const std::string_view text = input.substr(0, 256);
  const std::vector<int32_t> ids = (*tokenizer)->Encode(text, /*add_special_tokens=*/true);
  (void)(*tokenizer)->Decode(ids, /*skip_special_tokens=*/false);
  return 0;
}
