// Robustness of the safetensors reader against corrupt files: random single-byte changes and
// truncations of a valid file (mostly in its length field and JSON header) must give either a
// usable file or an error Status, never a crash, and a file that opens must describe only bytes
// it really holds.
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "model/io/safetensors.h"
#include "tests/model/io/safetensors_writer.h"

namespace mpa {
namespace {

using ::mpa::testutil::F32Bytes;
using ::mpa::testutil::U16Bytes;
using ::mpa::testutil::WriteSafetensors;
using ::mpa::testutil::WriteSafetensorsIndex;

size_t KnownSize(const std::string& dtype) {
  if (dtype == "F32" || dtype == "I32") return 4;
  if (dtype == "F16" || dtype == "BF16") return 2;
  if (dtype == "I64" || dtype == "F64") return 8;
  return 0;
}

std::vector<uint8_t> ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

void WriteAll(const std::string& path, const std::vector<uint8_t>& bytes, size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(size));
}

class CheckpointFuzzTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "checkpoint_fuzz_XXXXXX";
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string dir_;
};

// Opens the checkpoint in `dir` (one model.safetensors of `file_size` bytes); when it opens,
// checks that its tensors fit in the file and that every float tensor converts. Returns whether it
// opened.
bool OpenAndCheck(const std::string& dir, size_t file_size) {
  auto file = SafetensorsFile::Open(dir + "/model.safetensors");
  if (!file.ok()) {
    EXPECT_NE(file.status().message(), "");
    return false;
  }
  auto checkpoint = Checkpoint::Open(dir);
  EXPECT_TRUE(checkpoint.ok()) << checkpoint.status();
  if (!checkpoint.ok()) return true;
  size_t total = 0;
  std::vector<float> out;
  for (const TensorInfo& info : (*file)->tensors()) {
    total += info.num_bytes;
    EXPECT_LE(info.num_bytes, file_size) << info.name;
    uint64_t elements = 1;
    for (int64_t d : info.shape) {
      EXPECT_GE(d, 0) << info.name;
      elements *= static_cast<uint64_t>(d);
    }
    if (KnownSize(info.dtype_name) != 0) {
      EXPECT_EQ(elements * KnownSize(info.dtype_name), info.num_bytes) << info.name;
    }
    if (info.dtype != DType::kUnsupported && elements <= file_size) {
      out.resize(elements);
      EXPECT_TRUE((*checkpoint)->ReadF32(info.name, info.shape, out.data()).ok()) << info.name;
    }
  }
  EXPECT_LE(total, file_size);
  return true;
}

TEST_F(CheckpointFuzzTest, CorruptHeadersNeverCrash) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  const std::string path = dir_ + "/model.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, {{"embed", "F32", {4, 3}, F32Bytes(std::vector<float>(12))},
                                      {"norm", "BF16", {3}, U16Bytes({1, 2, 3})},
                                      {"proj", "F16", {2, 2}, U16Bytes({0x3c00, 0, 0x7c00, 1})},
                                      {"ids", "I64", {2}, std::vector<uint8_t>(16, 1)}}));
  const std::vector<uint8_t> original = ReadAll(path);
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | original[i];
  ASSERT_LT(8 + header_size, original.size());
  const size_t header_end = 8 + header_size;

  // Characters that change a JSON header's meaning more often than random bytes do.
  const std::string interesting = "{}[]\",:-0123456789e.  \\\x00\xff";
  // Stop on a time budget so that a slow machine shortens the run instead of failing it.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(1500);
  int opened = 0, refused = 0, iteration = 0;
  for (; iteration < 3000 && std::chrono::steady_clock::now() < deadline; ++iteration) {
    std::vector<uint8_t> bytes = original;
    size_t size = bytes.size();
    switch (rng() % 4) {
      case 0:  // any byte of length field or header, random value
        bytes[rng() % header_end] = static_cast<uint8_t>(rng());
        break;
      case 1:  // a header byte, JSON-significant value
        bytes[8 + rng() % header_size] =
            static_cast<uint8_t>(interesting[rng() % interesting.size()]);
        break;
      case 2:  // one bit of the length field
        bytes[rng() % 8] ^= static_cast<uint8_t>(1u << (rng() % 8));
        break;
      case 3:  // truncation anywhere
        size = rng() % (bytes.size() + 1);
        break;
    }
    WriteAll(path, bytes, size);
    OpenAndCheck(dir_, size) ? ++opened : ++refused;
    if (HasFailure()) {
      ADD_FAILURE() << "iteration " << iteration;
      return;
    }
  }
  RecordProperty("iterations", iteration);
  RecordProperty("opened", opened);
  EXPECT_GE(iteration, 200) << "too few iterations in the time budget";
  EXPECT_GT(refused, 0);
  EXPECT_GT(opened, 0);  // e.g. a changed digit of a dimension that keeps the sizes consistent
}

TEST_F(CheckpointFuzzTest, CorruptIndexNeverCrashes) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  ASSERT_TRUE(WriteSafetensors(dir_ + "/a.safetensors", {{"x", "F32", {1}, F32Bytes({1})}}));
  ASSERT_TRUE(WriteSafetensors(dir_ + "/b.safetensors", {{"y", "F32", {1}, F32Bytes({2})}}));
  ASSERT_TRUE(WriteSafetensorsIndex(dir_, {{"x", "a.safetensors"}, {"y", "b.safetensors"}}));
  const std::string index_path = dir_ + "/model.safetensors.index.json";
  const std::vector<uint8_t> original = ReadAll(index_path);
  for (int iteration = 0; iteration < 1000; ++iteration) {
    std::vector<uint8_t> bytes = original;
    size_t size = bytes.size();
    if (rng() % 4 == 0) {
      size = rng() % (bytes.size() + 1);
    } else {
      bytes[rng() % bytes.size()] = static_cast<uint8_t>(rng());
    }
    WriteAll(index_path, bytes, size);
    auto checkpoint = Checkpoint::Open(dir_);
    if (checkpoint.ok()) {
      for (const char* name : {"x", "y"}) {
        float value = 0;
        if ((*checkpoint)->Has(name)) {
          ASSERT_TRUE((*checkpoint)->ReadF32(name, {1}, &value).ok());
          EXPECT_EQ(value, name[0] == 'x' ? 1.0f : 2.0f);
        }
      }
    } else {
      EXPECT_NE(checkpoint.status().message(), "");
    }
  }
}

}  // namespace
}  // namespace mpa
