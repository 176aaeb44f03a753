// A short, one-line rendering of a JSON value read from a model file, for error messages.
// nlohmann's dump() recurses once per nesting level, so dumping a value from a corrupt file (a
// shape entry nested 100000 arrays deep) overflowed the stack; and a message should show what
// was found, not all of it.
#pragma once

#include <string>

#include "nlohmann/json.hpp"

namespace mpa {

// Scalars as JSON text (strings escaped); arrays and objects to a few levels and entries, the
// rest as "..."; at most about 80 characters.
std::string JsonExcerpt(const nlohmann::json& value);

}  // namespace mpa
