// The one place absl::Status becomes grpc::Status.
#pragma once

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace mpa::server {

// Same code (the canonical codes are numbered alike) and message.
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace mpa::server
