// A one-line progress bar for long loads (checkpoints), drawn on stderr only when stderr is a
// terminal and the work is large enough to be worth watching; otherwise it prints nothing, so logs
// and pipes stay clean.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace mpa {

class ProgressBar {
 public:
  // Loads smaller than this finish before a bar would be seen.
  static constexpr int64_t kMinBytesToShow = int64_t{64} << 20;

  ProgressBar(std::string label, int64_t total_bytes);
  ~ProgressBar();  // ends the line if Finish() was not called
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  // `done_bytes` is the running total (not an increment); values are clamped to [0, total].
  // Redraws at most every 100 ms.
  void Update(int64_t done_bytes);
  // Draws the final state and ends the line; later calls do nothing.
  void Finish();

  bool enabled() const { return enabled_; }

  // The line drawn for `done` of `total` bytes after `seconds`, `width` cells of bar, without the
  // leading carriage return: "label [#####     ]  50%  32.0/64.0 MiB  16.0 MiB/s".
  static std::string Render(const std::string& label, int64_t done, int64_t total, double seconds,
                            int width);

 private:
  void Draw();

  std::string label_;
  int64_t total_bytes_;
  int64_t done_bytes_ = 0;
  bool enabled_;
  bool finished_ = false;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
};

}  // namespace mpa
