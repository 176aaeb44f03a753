// Test helper: writes safetensors files and sharded checkpoint indexes byte for byte, including
// deliberately malformed ones, so tests can build real checkpoints on disk. Header-only and free of
// JSON libraries so any test can include it.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace mpa::testutil {

struct SafetensorsEntry {
  std::string name;
  std::string dtype;  // "F32", "F16", "BF16", "I64", ...
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;  // raw little-endian data, written as-is
};

inline std::vector<uint8_t> F32Bytes(const std::vector<float>& values) {
  std::vector<uint8_t> bytes(values.size() * sizeof(float));
  if (!values.empty()) std::memcpy(bytes.data(), values.data(), bytes.size());
  return bytes;
}

// Raw 16-bit patterns (fp16 or bf16) as little-endian bytes.
inline std::vector<uint8_t> U16Bytes(const std::vector<uint16_t>& values) {
  std::vector<uint8_t> bytes(values.size() * 2);
  if (!values.empty()) std::memcpy(bytes.data(), values.data(), bytes.size());
  return bytes;
}

// bf16 by truncation of the fp32 pattern: exact for values that bf16 represents.
inline std::vector<uint8_t> BF16BytesTruncated(const std::vector<float>& values) {
  std::vector<uint16_t> bits;
  bits.reserve(values.size());
  for (float v : values) bits.push_back(static_cast<uint16_t>(std::bit_cast<uint32_t>(v) >> 16));
  return U16Bytes(bits);
}

inline std::string JsonQuote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

// Writes `header` (padded with spaces to a multiple of 8 bytes unless `pad` is false) and `data`
// as a safetensors file; `header_length` overrides the length field when >= 0.
inline bool WriteRawSafetensors(const std::string& path, std::string header,
                                const std::vector<uint8_t>& data, bool pad = true,
                                int64_t header_length = -1) {
  if (pad) {
    while (header.size() % 8 != 0) header += ' ';
  }
  const uint64_t n = header_length >= 0 ? static_cast<uint64_t>(header_length) : header.size();
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return false;
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>((n >> (8 * i)) & 0xff));
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
  return static_cast<bool>(out);
}

// The JSON header that WriteSafetensors writes: entries packed in order, offsets from 0.
inline std::string SafetensorsHeader(const std::vector<SafetensorsEntry>& entries,
                                     const std::map<std::string, std::string>& metadata = {}) {
  std::string header = "{";
  bool first = true;
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    for (const auto& [key, value] : metadata) {
      if (!first) header += ",";
      first = false;
      header += JsonQuote(key) + ":" + JsonQuote(value);
    }
    header += "}";
  }
  uint64_t offset = 0;
  for (const SafetensorsEntry& e : entries) {
    if (!header.empty() && header.back() != '{') header += ",";
    header += JsonQuote(e.name) + ":{\"dtype\":" + JsonQuote(e.dtype) + ",\"shape\":[";
    for (size_t i = 0; i < e.shape.size(); ++i) {
      if (i > 0) header += ",";
      header += std::to_string(e.shape[i]);
    }
    header += "],\"data_offsets\":[" + std::to_string(offset) + "," +
              std::to_string(offset + e.bytes.size()) + "]}";
    offset += e.bytes.size();
  }
  return header + "}";
}

// Writes a well-formed safetensors file holding `entries` (bytes are not checked against shape,
// so a test can write a mismatch on purpose).
inline bool WriteSafetensors(const std::string& path, const std::vector<SafetensorsEntry>& entries,
                             const std::map<std::string, std::string>& metadata = {
                                 {"format", "pt"}}) {
  std::vector<uint8_t> data;
  for (const SafetensorsEntry& e : entries) data.insert(data.end(), e.bytes.begin(), e.bytes.end());
  return WriteRawSafetensors(path, SafetensorsHeader(entries, metadata), data);
}

// Writes model.safetensors.index.json in `dir` mapping each tensor to its shard file name.
inline bool WriteSafetensorsIndex(const std::string& dir,
                                  const std::map<std::string, std::string>& weight_map) {
  std::string text = "{\"metadata\":{},\"weight_map\":{";
  bool first = true;
  for (const auto& [tensor, shard] : weight_map) {
    if (!first) text += ",";
    first = false;
    text += JsonQuote(tensor) + ":" + JsonQuote(shard);
  }
  text += "}}";
  std::ofstream out(dir + "/model.safetensors.index.json", std::ios::trunc);
  out << text;
  return static_cast<bool>(out);
}

}  // namespace mpa::testutil
