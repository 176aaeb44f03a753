#include "server/request_parser.h"

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/unknown_field_set.h"

namespace mpa::server {
namespace {

namespace pb = ::google::protobuf;

// Deeper than any request message nests (and than protobuf's own parser goes, 100): a walk
// below this is only reached through a recursive message type and refused like protobuf does.
constexpr int kMaxDepth = 100;

absl::Status NotValid(const pb::Descriptor& type) {
  return absl::InvalidArgumentError(absl::StrCat("request body is not a valid ", type.name()));
}

// Walks a message's fields as the generic wire parser read them (`fields`) against its schema
// (`type`): every string field is checked for UTF-8 and every message field walked in turn.
// Fields the schema does not know, or that arrive with another wire type, are skipped, as the
// real parser keeps those as unknown fields without looking inside. `path` is the field path so
// far ("" at the top, else ending in '.').
//
// `seen` counts the elements of each repeated field by its path, over the whole message: protobuf
// merges a message field that occurs twice, so the second one's elements follow the first's.
absl::Status CheckStrings(const pb::UnknownFieldSet& fields, const pb::Descriptor& type,
                          const std::string& path, int depth, const pb::Descriptor& root,
                          absl::flat_hash_map<std::string, int>& seen) {
  if (depth > kMaxDepth) return NotValid(root);
  for (int i = 0; i < fields.field_count(); ++i) {
    const pb::UnknownField& field = fields.field(i);
    if (field.type() != pb::UnknownField::TYPE_LENGTH_DELIMITED) continue;
    const pb::FieldDescriptor* schema = type.FindFieldByNumber(field.number());
    if (schema == nullptr) continue;
    const bool is_string = schema->type() == pb::FieldDescriptor::TYPE_STRING;
    const bool is_message = schema->type() == pb::FieldDescriptor::TYPE_MESSAGE;
    if (!is_string && !is_message) continue;
    std::string name = absl::StrCat(path, schema->name());
    if (schema->is_repeated()) absl::StrAppend(&name, "[", seen[name]++, "]");
    const std::string& bytes = field.length_delimited();
    if (is_string) {
      if (!IsValidUtf8(bytes)) {
        return absl::InvalidArgumentError(
            absl::StrCat("request field '", name, "' is not valid UTF-8"));
      }
      continue;
    }
    pb::UnknownFieldSet nested;
    if (!nested.ParseFromString(bytes)) return NotValid(root);
    if (absl::Status s =
            CheckStrings(nested, *schema->message_type(), name + ".", depth + 1, root, seen);
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

}  // namespace

bool IsValidUtf8(absl::string_view bytes) {
  const size_t n = bytes.size();
  size_t i = 0;
  while (i < n) {
    const auto lead = static_cast<unsigned char>(bytes[i]);
    if (lead < 0x80) {
      ++i;
      continue;
    }
    size_t length;
    uint32_t code_point;
    uint32_t smallest;  // below it the same character has a shorter (the only valid) form
    if ((lead & 0xe0) == 0xc0) {
      length = 2;
      code_point = lead & 0x1f;
      smallest = 0x80;
    } else if ((lead & 0xf0) == 0xe0) {
      length = 3;
      code_point = lead & 0x0f;
      smallest = 0x800;
    } else if ((lead & 0xf8) == 0xf0) {
      length = 4;
      code_point = lead & 0x07;
      smallest = 0x10000;
    } else {
      return false;  // a continuation byte, or 0xf8..0xff
    }
    if (n - i < length) return false;
    for (size_t k = 1; k < length; ++k) {
      const auto next = static_cast<unsigned char>(bytes[i + k]);
      if ((next & 0xc0) != 0x80) return false;
      code_point = (code_point << 6) | (next & 0x3f);
    }
    if (code_point < smallest || code_point > 0x10ffff ||
        (code_point >= 0xd800 && code_point <= 0xdfff)) {
      return false;
    }
    i += length;
  }
  return true;
}

absl::Status ParseRequestBytes(absl::string_view bytes, pb::Message* out) {
  out->Clear();
  const pb::Descriptor& type = *out->GetDescriptor();
  if (bytes.size() > static_cast<size_t>(std::numeric_limits<int>::max())) return NotValid(type);
  // First the generic wire parser, which keeps every field's bytes without interpreting them,
  // so that a string field that is not UTF-8 is found (and named) here rather than by
  // protobuf's parser, which would only log it and fail.
  pb::UnknownFieldSet fields;
  if (!fields.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) return NotValid(type);
  absl::flat_hash_map<std::string, int> seen;
  if (absl::Status s = CheckStrings(fields, type, "", 0, type, seen); !s.ok()) return s;
  if (!out->ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    out->Clear();
    return NotValid(type);
  }
  return absl::OkStatus();
}

absl::Status ParseRequest(const grpc::ByteBuffer& buffer, pb::Message* out) {
  std::vector<grpc::Slice> slices;
  if (!buffer.Valid() || !buffer.Dump(&slices).ok()) {
    out->Clear();
    return absl::InvalidArgumentError(
        absl::StrCat("request body is missing: no ", out->GetDescriptor()->name(), " was sent"));
  }
  if (slices.size() == 1) {
    return ParseRequestBytes(
        absl::string_view(reinterpret_cast<const char*>(slices[0].begin()), slices[0].size()), out);
  }
  std::string bytes;
  bytes.reserve(buffer.Length());
  for (const grpc::Slice& slice : slices) {
    bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  }
  return ParseRequestBytes(bytes, out);
}

}  // namespace mpa::server
