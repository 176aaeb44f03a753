// ParseRequestBytes: the field it names for invalid UTF-8, its verdicts against protobuf's own
// parser (the same messages accepted and refused, UTF-8 judged alike, byte for byte), and that
// it never makes libprotobuf log.
#include "server/request_parser.h"

#include <random>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/stubs/logging.h"
#include "gtest/gtest.h"
#include "multipole/v1/decode.pb.h"

namespace mpa::server {
namespace {

namespace v1 = ::multipole::v1;

int log_lines = 0;

// Counts libprotobuf's log lines instead of printing them, for the test's lifetime.
class CountProtobufLogs : public ::testing::Test {
 protected:
  void SetUp() override {
    log_lines = 0;
    previous_ = google::protobuf::SetLogHandler(
        [](google::protobuf::LogLevel, const char*, int, const std::string&) { ++log_lines; });
  }
  void TearDown() override { google::protobuf::SetLogHandler(previous_); }

 private:
  google::protobuf::LogHandler* previous_ = nullptr;
};

// A length-delimited field: tag, length, bytes.
std::string Field(int number, const std::string& bytes) {
  std::string out;
  uint32_t tag = static_cast<uint32_t>(number) << 3 | 2;
  while (tag >= 0x80) {
    out.push_back(static_cast<char>(tag | 0x80));
    tag >>= 7;
  }
  out.push_back(static_cast<char>(tag));
  size_t n = bytes.size();
  while (n >= 0x80) {
    out.push_back(static_cast<char>(n | 0x80));
    n >>= 7;
  }
  out.push_back(static_cast<char>(n));
  return out + bytes;
}

using RequestParserTest = CountProtobufLogs;

TEST_F(RequestParserTest, NamesTheFieldThatIsNotUtf8) {
  const std::string bad = "ok\xc3";
  struct Case {
    std::string wire;
    std::string field;
  };
  // GenerateRequest: session_id 1, text 2, sampling 4 (stop 6).
  const std::string sampling = Field(6, "a") + Field(6, "b") + Field(6, bad);
  const std::vector<Case> cases = {
      {Field(1, bad), "session_id"},
      {Field(1, "fine") + Field(2, bad), "text"},
      {Field(4, sampling), "sampling.stop[2]"},
      {Field(4, Field(6, bad)), "sampling.stop[0]"},
      // A message field sent twice is merged: the second one's stop strings follow the first's.
      {Field(4, Field(6, "a")) + Field(2, "text") + Field(4, Field(6, "b") + Field(6, bad)),
       "sampling.stop[2]"},
  };
  for (const Case& c : cases) {
    v1::GenerateRequest request;
    const absl::Status status = ParseRequestBytes(c.wire, &request);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_EQ(status.message(), absl::StrCat("request field '", c.field, "' is not valid UTF-8"));
  }
  EXPECT_EQ(log_lines, 0);
}

TEST_F(RequestParserTest, ParsesWhatProtobufParses) {
  v1::GenerateRequest request;
  request.set_session_id(
      "s\xc3\xa9"
      "ance");
  request.set_text("\xf0\x9f\x98\x80 text");
  request.mutable_sampling()->add_stop("\xe2\x9c\x93");
  request.mutable_sampling()->set_top_k(5);
  request.mutable_attention()->set_token_budget(3);
  v1::GenerateRequest parsed;
  ASSERT_TRUE(ParseRequestBytes(request.SerializeAsString(), &parsed).ok());
  EXPECT_EQ(parsed.SerializeAsString(), request.SerializeAsString());

  // Fields the schema does not know are kept, whatever their bytes (protobuf does not look
  // inside them); a string field sent with another wire type is one of those.
  const std::string unknown = Field(99, "\xff\xfe") + std::string("\x10\x05", 2);
  v1::GetSessionRequest get;
  EXPECT_TRUE(get.ParseFromString(unknown));
  EXPECT_TRUE(ParseRequestBytes(unknown, &get).ok());

  // The empty message, and an empty body for every request type.
  v1::GetModelInfoRequest info;
  EXPECT_TRUE(ParseRequestBytes("", &info).ok());
  EXPECT_EQ(log_lines, 0);
}

TEST_F(RequestParserTest, RefusesWhatProtobufRefuses) {
  const std::vector<std::string> bodies = {
      std::string("\x0a\x05"
                  "ab",
                  4),
      std::string("\x08", 1),
      std::string(11, '\x80'),
      std::string("\x00", 1),
      std::string("\x0f", 1),
      std::string("\x0c", 1),
      std::string("\x0b", 1),
      // A submessage whose bytes do not parse, and one that ends mid-field.
      Field(4, "\xff\xff"),
      Field(4, Field(6, "x").substr(0, 2)),
      // Token ids whose packed bytes end in the middle of a varint.
      Field(3, Field(1, "\x80")),
  };
  for (const std::string& body : bodies) {
    SCOPED_TRACE(absl::CEscape(body));
    v1::GenerateRequest request;
    const absl::Status status = ParseRequestBytes(body, &request);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(status.message(), "request body is not a valid GenerateRequest");
    EXPECT_EQ(log_lines, 0);
    v1::GenerateRequest reference;
    EXPECT_FALSE(reference.ParseFromString(body));
  }
}

TEST_F(RequestParserTest, JudgesUtf8ExactlyAsProtobufDoes) {
  // Protobuf's verdict on `bytes` as a proto3 string field (it logs when it refuses one).
  auto protobuf_accepts = [](const std::string& bytes) {
    v1::GetSessionRequest request;
    return request.ParseFromString(Field(1, bytes));
  };
  std::vector<std::string> inputs;
  for (int a = 0; a < 256; ++a) {
    inputs.push_back(std::string(1, static_cast<char>(a)));
    for (int b = 0; b < 256; ++b) inputs.push_back({static_cast<char>(a), static_cast<char>(b)});
  }
  // Three- and four-byte forms around every boundary of their continuation bytes.
  std::vector<int> edges;
  for (int c = 0x7e; c <= 0xc1; ++c) edges.push_back(c);
  for (int a = 0xe0; a <= 0xef; ++a) {
    for (int b : edges) {
      for (int c : edges) {
        inputs.push_back({static_cast<char>(a), static_cast<char>(b), static_cast<char>(c)});
      }
    }
  }
  for (int a = 0xf0; a <= 0xf8; ++a) {
    for (int b : edges) {
      for (int c : {0x7f, 0x80, 0xbf, 0xc0}) {
        for (int d : {0x7f, 0x80, 0xbf, 0xc0}) {
          inputs.push_back({static_cast<char>(a), static_cast<char>(b), static_cast<char>(c),
                            static_cast<char>(d)});
        }
      }
    }
  }
  // Random mixes of ASCII, lead and continuation bytes.
  std::mt19937 rng(12345);
  const std::string alphabet = "a\x7f\x80\xbf\xc2\xdf\xe0\xed\xef\xf0\xf4\xf5\xff";
  for (int i = 0; i < 50000; ++i) {
    std::string s(1 + rng() % 8, ' ');
    for (char& c : s) c = alphabet[rng() % alphabet.size()];
    inputs.push_back(s);
  }
  int refused = 0;
  for (const std::string& s : inputs) {
    const bool ours = IsValidUtf8(s);
    ASSERT_EQ(ours, protobuf_accepts(s)) << absl::CEscape(s);
    if (!ours) ++refused;
  }
  EXPECT_GT(refused, 10000);
  EXPECT_GT(log_lines, 0);  // protobuf's own parser did log each refusal
}

}  // namespace
}  // namespace mpa::server
