#include "model/runtime/device_memory_budget.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace mpa {

absl::Status DeviceMemoryBudget::Charge(int64_t bytes, absl::string_view what) {
  if (bytes < 0) return absl::InvalidArgumentError("a negative charge");
  if (bytes > limit_ - used_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "attention state memory is full: ", what, " needs ", bytes, " more bytes, ", used_, " of ",
        limit_, " are in use (raise --attention_state_mb, or lower --max_kv_tokens)"));
  }
  used_ += bytes;
  peak_ = std::max(peak_, used_);
  return absl::OkStatus();
}

void DeviceMemoryBudget::Release(int64_t bytes) { used_ -= std::clamp<int64_t>(bytes, 0, used_); }

absl::Status DeviceMemoryCharge::Resize(int64_t bytes, absl::string_view what) {
  if (budget_ == nullptr) {
    bytes_ = bytes;
    return absl::OkStatus();
  }
  if (bytes > bytes_) {
    if (absl::Status s = budget_->Charge(bytes - bytes_, what); !s.ok()) return s;
  } else {
    budget_->Release(bytes_ - bytes);
  }
  bytes_ = bytes;
  return absl::OkStatus();
}

void DeviceMemoryCharge::Reset() {
  if (budget_ != nullptr) budget_->Release(bytes_);
  bytes_ = 0;
}

}  // namespace mpa
