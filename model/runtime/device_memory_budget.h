// A byte budget for the attention state that lives beside the KV pool: the GPU's cluster
// hierarchies (centroids, cluster bounds, slot maps) and Quest page bounds of every sequence. The
// pool itself is allocated once at startup; this state grows with each sequence's clustered
// region, so it is charged here before it is allocated and a sequence whose state would pass the
// limit is refused (ResourceExhausted: it attends exactly until its region grows again, the other
// sequences undisturbed) instead of taking device memory the rest of the server counts on.
// Single-threaded, as the model that owns it.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace mpa {

class DeviceMemoryBudget {
 public:
  explicit DeviceMemoryBudget(int64_t limit_bytes) : limit_(limit_bytes < 0 ? 0 : limit_bytes) {}

  // Takes `bytes` (>= 0) if they fit under the limit; otherwise ResourceExhausted naming `what`
  // and nothing is taken.
  absl::Status Charge(int64_t bytes, absl::string_view what);
  // Gives back `bytes` taken before (clamped at what is in use).
  void Release(int64_t bytes);

  int64_t used() const { return used_; }
  int64_t limit() const { return limit_; }
  int64_t peak() const { return peak_; }

 private:
  int64_t limit_;
  int64_t used_ = 0;
  int64_t peak_ = 0;
};

// What one holder has charged to a budget (none: nothing is counted), given back when it goes.
class DeviceMemoryCharge {
 public:
  explicit DeviceMemoryCharge(DeviceMemoryBudget* budget) : budget_(budget) {}
  ~DeviceMemoryCharge() { Reset(); }
  DeviceMemoryCharge(const DeviceMemoryCharge&) = delete;
  DeviceMemoryCharge& operator=(const DeviceMemoryCharge&) = delete;

  // Moves the charge from its current size to `bytes` (growing may fail; shrinking cannot).
  absl::Status Resize(int64_t bytes, absl::string_view what);
  void Reset();  // gives everything back
  int64_t bytes() const { return bytes_; }

 private:
  DeviceMemoryBudget* budget_;
  int64_t bytes_ = 0;
};

}  // namespace mpa
