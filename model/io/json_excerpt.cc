#include "model/io/json_excerpt.h"

namespace mpa {
namespace {

constexpr int kMaxDepth = 3;
constexpr size_t kMaxEntries = 4;
constexpr size_t kMaxChars = 80;

void Append(const nlohmann::json& value, int depth, std::string* out) {
  if (out->size() > kMaxChars) return;
  if (!value.is_structured()) {
    // Invalid UTF-8 cannot come from the parser, but dump() would throw on it.
    std::string text = value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    if (text.size() > kMaxChars) text = text.substr(0, kMaxChars) + "...";
    out->append(text);
    return;
  }
  const bool array = value.is_array();
  out->push_back(array ? '[' : '{');
  if (depth >= kMaxDepth && !value.empty()) {
    out->append("...");
  } else {
    size_t i = 0;
    for (auto it = value.begin(); it != value.end(); ++it, ++i) {
      if (i > 0) out->push_back(',');
      if (i == kMaxEntries || out->size() > kMaxChars) {
        out->append("...");
        break;
      }
      if (!array) {
        Append(nlohmann::json(it.key()), depth + 1, out);
        out->push_back(':');
      }
      Append(*it, depth + 1, out);
    }
  }
  out->push_back(array ? ']' : '}');
}

}  // namespace

std::string JsonExcerpt(const nlohmann::json& value) {
  std::string out;
  Append(value, 0, &out);
  return out;
}

}  // namespace mpa
