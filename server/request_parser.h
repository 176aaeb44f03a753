// Requests of the DecodeService are parsed here from the bytes gRPC received, not by gRPC: when
// gRPC's own deserializer refuses a message (garbage bytes, a truncated message, invalid UTF-8 in
// a proto3 string field), the callback API answers UNIMPLEMENTED with an empty message before
// the service sees the call, so nothing is counted, and libprotobuf logs a line per request.
// Here the answer is INVALID_ARGUMENT naming the problem, the service counts it like any other
// error, and nothing is logged.
#pragma once

#include <grpcpp/support/byte_buffer.h>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/message.h"

namespace mpa::server {

// Parses `bytes` (the wire form) into `out` (cleared first). InvalidArgument:
//   "request field 'sampling.stop[1]' is not valid UTF-8": a string field, at any depth (the
//     path names each message field and the index of a repeated one), holds bytes that are
//     not UTF-8 (proto3 refuses those);
//   "request body is not a valid GenerateRequest": anything else the protobuf parser refuses.
// Never logs: the UTF-8 check runs before protobuf's parser, which would log its own.
absl::Status ParseRequestBytes(absl::string_view bytes, google::protobuf::Message* out);

// ParseRequestBytes over the message as gRPC hands it to a raw handler; a call that sent no
// message at all is InvalidArgument as well.
absl::Status ParseRequest(const grpc::ByteBuffer& buffer, google::protobuf::Message* out);

// Whether `bytes` is well-formed UTF-8 (RFC 3629: no overlong forms, no surrogates, nothing
// above U+10FFFF), the rule protobuf applies to proto3 string fields.
bool IsValidUtf8(absl::string_view bytes);

}  // namespace mpa::server
