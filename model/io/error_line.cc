#include "model/io/error_line.h"

#include "absl/strings/escaping.h"

namespace mpa {

std::string ErrorLine(absl::string_view message) {
  std::string line;
  line.reserve(message.size());
  for (char c : message) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte < 0x20 || byte == 0x7f) {
      line += absl::CEscape(absl::string_view(&c, 1));
    } else {
      line += c;
    }
  }
  return line;
}

}  // namespace mpa
