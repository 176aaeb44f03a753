// Reading Hugging Face safetensors checkpoints: one memory-mapped file, or a sharded set named by
// model.safetensors.index.json. Every malformed input is reported as a Status naming the file and
// the problem; nothing here aborts.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace mpa {

enum class DType { kF32, kF16, kBF16, kUnsupported };

struct TensorInfo {
  std::string name;
  std::string dtype_name;  // as written in the header ("F32", "BF16", "I64", ...)
  DType dtype = DType::kUnsupported;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // into the mapping
  size_t num_bytes = 0;
};

// One .safetensors file, memory-mapped read-only for the object's lifetime.
class SafetensorsFile {
 public:
  // InvalidArgument for a malformed file (short header, bad JSON, offsets past the end,
  // overlapping ranges, byte count not matching shape x dtype); NotFound if absent. Ranges need
  // not be aligned: readers copy with memcpy. Unknown dtype names are accepted (their size is not
  // checked); ReadF32 refuses them.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;  // owns the mapping
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const TensorInfo* Find(const std::string& name) const;  // null if absent
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const std::string& path() const { return path_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::vector<TensorInfo> tensors_;
  absl::flat_hash_map<std::string, size_t> index_;  // name -> position in tensors_
};

// A checkpoint folder: model.safetensors, or model.safetensors.index.json and its shards.
class Checkpoint {
 public:
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& dir);

  bool Has(const std::string& name) const;
  const TensorInfo* Find(const std::string& name) const;

  // Whether ReadF32(name, expected_shape, ...) can read the tensor: NotFound naming the tensor
  // if it is missing; InvalidArgument naming tensor, expected and actual shape if the shape
  // differs, or naming the dtype if it is not a float type we read. Reads no data.
  absl::Status CheckF32(const std::string& name, const std::vector<int64_t>& expected_shape) const;

  // Converts tensor `name` (F32, F16 or BF16) to fp32 into out[product(expected_shape)], with
  // the errors of CheckF32. If all_finite is given, it says whether every value was finite (no
  // NaN, no Inf); the check is folded into the conversion.
  absl::Status ReadF32(const std::string& name, const std::vector<int64_t>& expected_shape,
                       float* out, bool* all_finite = nullptr) const;

  int64_t total_bytes() const;  // sum of tensor bytes, for progress reporting

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  // Tensor name -> its entry in one of files_; for a sharded checkpoint, only names in the index.
  absl::flat_hash_map<std::string, const TensorInfo*> routes_;
};

// fp16 / bf16 bit patterns to fp32.
float HalfToFloat(uint16_t h);
float BFloat16ToFloat(uint16_t b);

}  // namespace mpa
