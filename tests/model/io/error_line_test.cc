#include "model/io/error_line.h"

#include "gtest/gtest.h"

namespace mpa {
namespace {

TEST(ErrorLineTest, ControlCharactersBecomeEscapes) {
  EXPECT_EQ(ErrorLine("plain text: 'caf\xc3\xa9'"), "plain text: 'caf\xc3\xa9'");
  EXPECT_EQ(ErrorLine("tensor 'a\nb'\r\t"), "tensor 'a\\nb'\\r\\t");
  EXPECT_EQ(ErrorLine(std::string("x\0y\x1b\x7f", 5)), "x\\000y\\033\\177");
}

}  // namespace
}  // namespace mpa
