// The line a program prints for the error that stops it.
#pragma once

#include <string>

#include "absl/strings/string_view.h"

namespace mpa {

// `message` with its line breaks and other control characters written as C escapes ("\n"),
// so that it stays one line: messages quote what model files hold (an architecture's name, a
// tensor's name), and those may hold any character. Other bytes are kept as they are.
std::string ErrorLine(absl::string_view message);

}  // namespace mpa
