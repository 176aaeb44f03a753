#include "model/io/safetensors.h"

#include <unistd.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/model/io/safetensors_writer.h"

namespace mpa {
namespace {

using ::mpa::testutil::BF16BytesTruncated;
using ::mpa::testutil::F32Bytes;
using ::mpa::testutil::SafetensorsEntry;
using ::mpa::testutil::U16Bytes;
using ::mpa::testutil::WriteRawSafetensors;
using ::mpa::testutil::WriteSafetensors;
using ::mpa::testutil::WriteSafetensorsIndex;
using ::testing::AllOf;
using ::testing::HasSubstr;

uint32_t Bits(float f) { return std::bit_cast<uint32_t>(f); }

// A fresh directory per test, removed afterwards.
class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "safetensors_test_XXXXXX";
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string Path(const std::string& name) const { return dir_ + "/" + name; }

  // Opens a file whose header is `header` over `data`, expecting InvalidArgument; returns the
  // message.
  std::string OpenExpectingInvalid(const std::string& header, const std::vector<uint8_t>& data) {
    const std::string path = Path("model.safetensors");
    EXPECT_TRUE(WriteRawSafetensors(path, header, data));
    auto file = SafetensorsFile::Open(path);
    EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << file.status();
    EXPECT_THAT(std::string(file.status().message()), HasSubstr(path));
    return std::string(file.status().message());
  }

  std::string dir_;
};

// --- Conversions ---------------------------------------------------------------------------------

TEST(HalfToFloatTest, KnownBitPatterns) {
  struct Case {
    uint16_t half;
    uint32_t expected_fp32_bits;
  };
  const Case cases[] = {
      {0x0000, 0x00000000},  // +0
      {0x8000, 0x80000000},  // -0
      {0x3c00, 0x3f800000},  // 1
      {0xc000, 0xc0000000},  // -2
      {0x3555, 0x3eaaa000},  // 0.333251953125
      {0x7bff, 0x477fe000},  // 65504, largest finite
      {0x0400, 0x38800000},  // 2^-14, smallest normal
      {0x03ff, 0x387fc000},  // largest subnormal, 1023 x 2^-24
      {0x0200, 0x38000000},  // 2^-15
      {0x0001, 0x33800000},  // 2^-24, smallest subnormal
      {0x8001, 0xb3800000},  // -2^-24
      {0x0003, 0x34400000},  // 3 x 2^-24
      {0x7c00, 0x7f800000},  // +inf
      {0xfc00, 0xff800000},  // -inf
      {0x7e00, 0x7fc00000},  // quiet NaN
      {0x7c01, 0x7f802000},  // signalling NaN, payload kept
      {0xfe01, 0xffc02000},  // negative NaN with payload
  };
  for (const Case& c : cases) {
    EXPECT_EQ(Bits(HalfToFloat(c.half)), c.expected_fp32_bits) << std::hex << "half 0x" << c.half;
  }
}

// Every one of the 65536 patterns against the definition of the format, computed in double.
TEST(HalfToFloatTest, AllPatternsMatchDefinition) {
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    const double sign = (h & 0x8000) ? -1.0 : 1.0;
    const int exponent = (h >> 10) & 0x1f;
    const int mantissa = h & 0x3ff;
    const float got = HalfToFloat(static_cast<uint16_t>(h));
    if (exponent == 31) {
      if (mantissa == 0) {
        EXPECT_TRUE(std::isinf(got) && std::signbit(got) == bool(h & 0x8000)) << h;
      } else {
        EXPECT_TRUE(std::isnan(got)) << h;
      }
      continue;
    }
    const double expected = exponent == 0 ? sign * std::ldexp(mantissa, -24)
                                          : sign * std::ldexp(1024 + mantissa, exponent - 25);
    ASSERT_EQ(static_cast<double>(got), expected) << "half 0x" << std::hex << h;
    ASSERT_EQ(std::signbit(got), bool(h & 0x8000)) << "half 0x" << std::hex << h;
  }
}

TEST(BFloat16ToFloatTest, KnownBitPatterns) {
  EXPECT_EQ(BFloat16ToFloat(0x3f80), 1.0f);
  EXPECT_EQ(BFloat16ToFloat(0xc2f7), -123.5f);
  EXPECT_EQ(Bits(BFloat16ToFloat(0x8000)), 0x80000000u);  // -0
  EXPECT_EQ(Bits(BFloat16ToFloat(0x0001)), 0x00010000u);  // subnormal
  EXPECT_EQ(BFloat16ToFloat(0x0001), std::ldexp(1.0f, -133));
  EXPECT_EQ(BFloat16ToFloat(0x7f80), std::numeric_limits<float>::infinity());
  EXPECT_EQ(BFloat16ToFloat(0xff80), -std::numeric_limits<float>::infinity());
  EXPECT_EQ(Bits(BFloat16ToFloat(0x7fc1)), 0x7fc10000u);  // NaN, payload kept
  EXPECT_TRUE(std::isnan(BFloat16ToFloat(0xffc0)));
}

// --- Reading valid files -------------------------------------------------------------------------

TEST_F(SafetensorsTest, RoundTripF32F16BF16) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::uniform_int_distribution<uint32_t> u16(0, 0xffff);

  // Odd element counts put every later tensor at an offset that is not a multiple of 4, so the
  // reader must cope with unaligned data.
  std::vector<uint16_t> bf16_bits(7);
  for (auto& b : bf16_bits) b = static_cast<uint16_t>(u16(rng));
  bf16_bits[0] = 0x7f80;  // +inf
  bf16_bits[1] = 0x0001;  // subnormal
  std::vector<uint16_t> f16_bits(3 * 5);
  for (auto& h : f16_bits) h = static_cast<uint16_t>(u16(rng));
  f16_bits[0] = 0x0001;  // smallest subnormal
  f16_bits[1] = 0xfc00;  // -inf
  f16_bits[2] = 0x7e00;  // NaN
  f16_bits[3] = 0x3c00;  // 1
  std::vector<float> f32(4 * 6);
  for (float& v : f32) v = normal(rng);

  ASSERT_TRUE(WriteSafetensors(Path("model.safetensors"),
                               {{"b.bf16", "BF16", {7}, U16Bytes(bf16_bits)},
                                {"c.f16", "F16", {3, 5}, U16Bytes(f16_bits)},
                                {"a.f32", "F32", {4, 6}, F32Bytes(f32)},
                                {"d.ids", "I64", {2}, std::vector<uint8_t>(16, 0)}}));
  auto checkpoint = Checkpoint::Open(dir_);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  const Checkpoint& ckpt = **checkpoint;

  std::vector<float> out(f32.size(), -1.0f);
  ASSERT_TRUE(ckpt.ReadF32("a.f32", {4, 6}, out.data()).ok());
  for (size_t i = 0; i < f32.size(); ++i) ASSERT_EQ(Bits(out[i]), Bits(f32[i])) << i;

  out.assign(f16_bits.size(), -1.0f);
  ASSERT_TRUE(ckpt.ReadF32("c.f16", {3, 5}, out.data()).ok());
  EXPECT_EQ(Bits(out[0]), 0x33800000u);
  EXPECT_EQ(Bits(out[1]), 0xff800000u);
  EXPECT_EQ(Bits(out[2]), 0x7fc00000u);
  EXPECT_EQ(out[3], 1.0f);
  for (size_t i = 0; i < f16_bits.size(); ++i) {
    ASSERT_EQ(Bits(out[i]), Bits(HalfToFloat(f16_bits[i]))) << i;
  }

  out.assign(bf16_bits.size(), -1.0f);
  ASSERT_TRUE(ckpt.ReadF32("b.bf16", {7}, out.data()).ok());
  for (size_t i = 0; i < bf16_bits.size(); ++i) {
    ASSERT_EQ(Bits(out[i]), static_cast<uint32_t>(bf16_bits[i]) << 16) << i;
  }

  const TensorInfo* info = ckpt.Find("c.f16");
  ASSERT_NE(info, nullptr);
  EXPECT_EQ(info->dtype, DType::kF16);
  EXPECT_EQ(info->dtype_name, "F16");
  EXPECT_EQ(info->shape, (std::vector<int64_t>{3, 5}));
  EXPECT_EQ(info->num_bytes, 30u);
  EXPECT_TRUE(ckpt.Has("d.ids"));
  EXPECT_EQ(ckpt.Find("d.ids")->dtype, DType::kUnsupported);
  EXPECT_FALSE(ckpt.Has("__metadata__"));
  EXPECT_FALSE(ckpt.Has("absent"));
  EXPECT_EQ(ckpt.total_bytes(), 14 + 30 + 96 + 16);
}

TEST_F(SafetensorsTest, FileListsTensorsAndSkipsMetadata) {
  const std::vector<float> values = {1.5f, -2.0f};
  ASSERT_TRUE(WriteSafetensors(Path("x.safetensors"),
                               {{"w", "F32", {2}, F32Bytes(values)},
                                {"scalar", "BF16", {}, BF16BytesTruncated({0.25f})},
                                {"empty", "F32", {0, 3}, {}}},
                               {{"format", "pt"}, {"note", "x"}}));
  auto file = SafetensorsFile::Open(Path("x.safetensors"));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->path(), Path("x.safetensors"));
  ASSERT_EQ((*file)->tensors().size(), 3u);
  const TensorInfo* w = (*file)->Find("w");
  ASSERT_NE(w, nullptr);
  float read[2];
  std::memcpy(read, w->data, sizeof(read));
  EXPECT_EQ(read[0], 1.5f);
  EXPECT_EQ(read[1], -2.0f);
  const TensorInfo* scalar = (*file)->Find("scalar");
  ASSERT_NE(scalar, nullptr);
  EXPECT_TRUE(scalar->shape.empty());
  EXPECT_EQ(scalar->num_bytes, 2u);
  EXPECT_EQ((*file)->Find("empty")->num_bytes, 0u);
  EXPECT_EQ((*file)->Find("__metadata__"), nullptr);
}

TEST_F(SafetensorsTest, ShardedIndexRoutesToShards) {
  const std::vector<float> a = {1, 2, 3, 4, 5, 6};
  const std::vector<float> b = {-1, -2};
  const std::vector<float> c = {0.5f, 0.25f, 0.125f};
  ASSERT_TRUE(WriteSafetensors(Path("model-00001-of-00002.safetensors"),
                               {{"layer.0.a", "F32", {2, 3}, F32Bytes(a)},
                                {"layer.0.b", "BF16", {2}, BF16BytesTruncated(b)}}));
  ASSERT_TRUE(WriteSafetensors(Path("model-00002-of-00002.safetensors"),
                               {{"layer.1.c", "F32", {3}, F32Bytes(c)},
                                // Same name as in shard 1: the index decides which one is read.
                                {"layer.0.a", "F32", {2, 3}, F32Bytes({9, 9, 9, 9, 9, 9})}}));
  ASSERT_TRUE(WriteSafetensorsIndex(dir_, {{"layer.0.a", "model-00001-of-00002.safetensors"},
                                           {"layer.0.b", "model-00001-of-00002.safetensors"},
                                           {"layer.1.c", "model-00002-of-00002.safetensors"}}));
  // A stray single-file checkpoint beside the index must be ignored.
  ASSERT_TRUE(WriteSafetensors(Path("model.safetensors"), {{"stray", "F32", {1}, F32Bytes({7})}}));

  auto checkpoint = Checkpoint::Open(dir_);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  const Checkpoint& ckpt = **checkpoint;
  EXPECT_FALSE(ckpt.Has("stray"));
  std::vector<float> out(6);
  ASSERT_TRUE(ckpt.ReadF32("layer.0.a", {2, 3}, out.data()).ok());
  EXPECT_EQ(out, a);
  out.resize(2);
  ASSERT_TRUE(ckpt.ReadF32("layer.0.b", {2}, out.data()).ok());
  EXPECT_EQ(out, b);
  out.resize(3);
  ASSERT_TRUE(ckpt.ReadF32("layer.1.c", {3}, out.data()).ok());
  EXPECT_EQ(out, c);
  EXPECT_EQ(ckpt.total_bytes(), 24 + 4 + 12);
}

TEST(SafetensorsRealModelTest, ReadsStories260K) {
  const std::string dir = MPA_SOURCE_DIR "/../shared/models/stories260K";
  if (!std::filesystem::exists(dir + "/model.safetensors")) {
    GTEST_SKIP() << "stories260K checkpoint not found at " << dir;
  }
  auto checkpoint = Checkpoint::Open(dir);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  std::vector<float> embed(512 * 64);
  ASSERT_TRUE((*checkpoint)->ReadF32("model.embed_tokens.weight", {512, 64}, embed.data()).ok());
  double sum_sq = 0;
  for (float v : embed) {
    ASSERT_TRUE(std::isfinite(v));
    sum_sq += double(v) * v;
  }
  EXPECT_GT(sum_sq, 0.0);
  EXPECT_TRUE((*checkpoint)->Has("model.layers.4.mlp.down_proj.weight"));
  EXPECT_EQ((*checkpoint)->Find("model.layers.0.mlp.down_proj.weight")->shape,
            (std::vector<int64_t>{64, 172}));
}

// --- Errors: files -------------------------------------------------------------------------------

TEST_F(SafetensorsTest, MissingFileIsNotFound) {
  const std::string path = Path("nope.safetensors");
  auto file = SafetensorsFile::Open(path);
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(file.status().message()), HasSubstr(path));
}

TEST_F(SafetensorsTest, EmptyFile) {
  std::ofstream(Path("model.safetensors")).close();
  auto file = SafetensorsFile::Open(Path("model.safetensors"));
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(file.status().message()),
              AllOf(HasSubstr(Path("model.safetensors")), HasSubstr("empty")));
}

TEST_F(SafetensorsTest, ShorterThanHeaderLength) {
  std::ofstream(Path("model.safetensors"), std::ios::binary).write("\x05\x00\x00", 3);
  auto file = SafetensorsFile::Open(Path("model.safetensors"));
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(file.status().message()),
              AllOf(HasSubstr(Path("model.safetensors")), HasSubstr("3 bytes")));
}

TEST_F(SafetensorsTest, HeaderLengthOverrun) {
  const std::string path = Path("model.safetensors");
  ASSERT_TRUE(WriteRawSafetensors(path, "{}", {}, /*pad=*/true, /*header_length=*/1000));
  auto file = SafetensorsFile::Open(path);
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(file.status().message()),
              AllOf(HasSubstr(path), HasSubstr("header length 1000"), HasSubstr("16 bytes")));
}

TEST_F(SafetensorsTest, TruncatedFile) {
  const std::string path = Path("model.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"w", "F32", {4, 4}, F32Bytes(std::vector<float>(16))}}));
  const auto full_size = std::filesystem::file_size(path);
  // Cut into the data buffer: the tensor's range runs past the end.
  std::filesystem::resize_file(path, full_size - 5);
  auto file = SafetensorsFile::Open(path);
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(file.status().message()),
              AllOf(HasSubstr(path), HasSubstr("'w'"), HasSubstr("64"), HasSubstr("59")));
  // Cut into the header: the header length runs past the end.
  std::filesystem::resize_file(path, 20);
  file = SafetensorsFile::Open(path);
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(file.status().message()),
              AllOf(HasSubstr(path), HasSubstr("header length"), HasSubstr("truncated")));
}

TEST_F(SafetensorsTest, OffsetsBeyondDataBuffer) {
  const std::string message = OpenExpectingInvalid(
      R"({"w":{"dtype":"F32","shape":[16],"data_offsets":[8,72]}})", std::vector<uint8_t>(40));
  EXPECT_THAT(message, AllOf(HasSubstr("'w'"), HasSubstr("[8, 72]"), HasSubstr("40 bytes")));
}

TEST_F(SafetensorsTest, OffsetsEndBeforeBegin) {
  const std::string message = OpenExpectingInvalid(
      R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", std::vector<uint8_t>(8));
  EXPECT_THAT(message, AllOf(HasSubstr("'w'"), HasSubstr("end 4 before begin 8")));
}

TEST_F(SafetensorsTest, ByteCountDoesNotMatchShape) {
  const std::string message = OpenExpectingInvalid(
      R"({"w":{"dtype":"F16","shape":[2,3],"data_offsets":[0,16]}})", std::vector<uint8_t>(16));
  EXPECT_THAT(message, AllOf(HasSubstr("'w'"), HasSubstr("16 bytes"), HasSubstr("[2, 3]"),
                             HasSubstr("F16"), HasSubstr("needs 12")));
  // Known non-float dtypes are size-checked too.
  const std::string i64 = OpenExpectingInvalid(
      R"({"ids":{"dtype":"I64","shape":[3],"data_offsets":[0,16]}})", std::vector<uint8_t>(16));
  EXPECT_THAT(i64, AllOf(HasSubstr("'ids'"), HasSubstr("needs 24")));
}

TEST_F(SafetensorsTest, OverflowingShape) {
  const std::string message = OpenExpectingInvalid(
      R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})",
      std::vector<uint8_t>(8));
  EXPECT_THAT(message, AllOf(HasSubstr("'w'"), HasSubstr("too large")));
}

TEST_F(SafetensorsTest, OverlappingTensors) {
  const std::string message =
      OpenExpectingInvalid(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                           R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                           std::vector<uint8_t>(12));
  EXPECT_THAT(message, AllOf(HasSubstr("'a'"), HasSubstr("'b'"), HasSubstr("overlap")));
}

TEST_F(SafetensorsTest, TensorNamedTwice) {
  const std::string message =
      OpenExpectingInvalid(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                           R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                           std::vector<uint8_t>(8));
  EXPECT_THAT(message, AllOf(HasSubstr("'a'"), HasSubstr("more than once")));
}

TEST_F(SafetensorsTest, BadJson) {
  EXPECT_THAT(OpenExpectingInvalid(R"({"w":{"dtype":"F32",)", {}), HasSubstr("not valid JSON"));
  EXPECT_THAT(OpenExpectingInvalid("[1, 2]", {}), HasSubstr("not a JSON object"));
  EXPECT_THAT(OpenExpectingInvalid(R"({"__metadata__":[1]})", {}), HasSubstr("__metadata__"));
  EXPECT_THAT(OpenExpectingInvalid(R"({"w":7})", {}),
              AllOf(HasSubstr("'w'"), HasSubstr("not a JSON object")));
}

TEST_F(SafetensorsTest, MalformedEntries) {
  const std::vector<uint8_t> data(8);
  struct Case {
    const char* entry;
    const char* problem;
  };
  const Case cases[] = {
      {R"({"shape":[2],"data_offsets":[0,8]})", "no \"dtype\""},
      {R"({"dtype":4,"shape":[2],"data_offsets":[0,8]})", "\"dtype\" that is not a string"},
      {R"({"dtype":"F32","data_offsets":[0,8]})", "no \"shape\""},
      {R"({"dtype":"F32","shape":"2","data_offsets":[0,8]})", "\"shape\" that is not an array"},
      {R"({"dtype":"F32","shape":[2.5],"data_offsets":[0,8]})", "shape entry 2.5"},
      {R"({"dtype":"F32","shape":[-2],"data_offsets":[0,8]})", "negative dimension -2"},
      {R"({"dtype":"F32","shape":[2]})", "no \"data_offsets\""},
      {R"({"dtype":"F32","shape":[2],"data_offsets":[0]})", "\"data_offsets\" [0]"},
      {R"({"dtype":"F32","shape":[2],"data_offsets":"0,8"})", "\"data_offsets\" \"0,8\""},
      {R"({"dtype":"F32","shape":[2],"data_offsets":[-8,0]})", "\"data_offsets\" [-8,0]"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.entry);
    EXPECT_THAT(OpenExpectingInvalid(std::string(R"({"the.weight":)") + c.entry + "}", data),
                AllOf(HasSubstr("'the.weight'"), HasSubstr(c.problem)));
  }
}

// --- Errors: checkpoints -------------------------------------------------------------------------

TEST_F(SafetensorsTest, CheckpointWithoutFilesIsNotFound) {
  auto checkpoint = Checkpoint::Open(dir_);
  EXPECT_EQ(checkpoint.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(checkpoint.status().message(),
            "no model.safetensors or model.safetensors.index.json in " + dir_);
  EXPECT_EQ(Checkpoint::Open(Path("no_such_dir")).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(SafetensorsTest, CheckpointPassesFileErrorsThrough) {
  ASSERT_TRUE(WriteRawSafetensors(Path("model.safetensors"), "{oops", {}));
  auto checkpoint = Checkpoint::Open(dir_);
  EXPECT_EQ(checkpoint.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(checkpoint.status().message()), HasSubstr(Path("model.safetensors")));
}

TEST_F(SafetensorsTest, ReadF32Errors) {
  ASSERT_TRUE(WriteSafetensors(Path("model.safetensors"),
                               {{"w", "F32", {2, 3}, F32Bytes(std::vector<float>(6))},
                                {"ids", "I64", {2}, std::vector<uint8_t>(16)},
                                {"odd", "F8_E4M3", {3}, std::vector<uint8_t>(3)}}));
  auto checkpoint = Checkpoint::Open(dir_);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  std::vector<float> out(6);

  absl::Status missing = (*checkpoint)->ReadF32("v", {2, 3}, out.data());
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.message()),
              HasSubstr("missing tensor 'v' in checkpoint " + dir_));

  absl::Status shape = (*checkpoint)->ReadF32("w", {3, 2}, out.data());
  EXPECT_EQ(shape.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(shape.message()),
              HasSubstr("tensor 'w' has shape [2, 3], expected [3, 2]"));
  EXPECT_EQ((*checkpoint)->ReadF32("w", {6}, out.data()).code(),
            absl::StatusCode::kInvalidArgument);

  absl::Status dtype = (*checkpoint)->ReadF32("ids", {2}, out.data());
  EXPECT_EQ(dtype.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(dtype.message()),
              HasSubstr("tensor 'ids' has dtype I64; expected F32, F16 or BF16"));
  EXPECT_THAT(std::string((*checkpoint)->ReadF32("odd", {3}, out.data()).message()),
              HasSubstr("dtype F8_E4M3"));
}

TEST_F(SafetensorsTest, MissingShard) {
  ASSERT_TRUE(WriteSafetensors(Path("shard-1.safetensors"), {{"a", "F32", {1}, F32Bytes({1})}}));
  ASSERT_TRUE(
      WriteSafetensorsIndex(dir_, {{"a", "shard-1.safetensors"}, {"b", "shard-2.safetensors"}}));
  auto checkpoint = Checkpoint::Open(dir_);
  EXPECT_EQ(checkpoint.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(checkpoint.status().message()),
              AllOf(HasSubstr("shard-2.safetensors"), HasSubstr(dir_)));
}

TEST_F(SafetensorsTest, IndexedTensorAbsentFromShard) {
  ASSERT_TRUE(WriteSafetensors(Path("shard-1.safetensors"), {{"a", "F32", {1}, F32Bytes({1})}}));
  ASSERT_TRUE(WriteSafetensorsIndex(
      dir_, {{"a", "shard-1.safetensors"}, {"ghost", "shard-1.safetensors"}}));
  auto checkpoint = Checkpoint::Open(dir_);
  EXPECT_EQ(checkpoint.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(checkpoint.status().message()),
              AllOf(HasSubstr("'ghost'"), HasSubstr("shard-1.safetensors")));
}

TEST_F(SafetensorsTest, MalformedIndex) {
  const std::string index_path = Path("model.safetensors.index.json");
  struct Case {
    const char* text;
    const char* problem;
  };
  const Case cases[] = {
      {"{\"weight_map\": {", "not valid JSON"},
      {"[]", "not a JSON object"},
      {"{\"metadata\": {}}", "no \"weight_map\""},
      {"{\"weight_map\": []}", "\"weight_map\" is not a JSON object"},
      {"{\"weight_map\": {\"a\": 3}}", "tensor 'a' is not a file name"},
      {"{\"weight_map\": {\"a\": \"../x.safetensors\"}}", "'../x.safetensors'"},
      {"{\"weight_map\": {\"a\": \"/x.safetensors\"}}", "'/x.safetensors'"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.text);
    std::ofstream(index_path, std::ios::trunc) << c.text;
    auto checkpoint = Checkpoint::Open(dir_);
    EXPECT_EQ(checkpoint.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(checkpoint.status().message()),
                AllOf(HasSubstr(index_path), HasSubstr(c.problem)));
  }
}

}  // namespace
}  // namespace mpa
