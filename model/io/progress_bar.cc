#include "model/io/progress_bar.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <utility>

#include "absl/strings/str_format.h"

namespace mpa {
namespace {

constexpr int kBarWidth = 30;
constexpr auto kRedrawInterval = std::chrono::milliseconds(100);
constexpr double kMiB = 1024.0 * 1024.0;

}  // namespace

ProgressBar::ProgressBar(std::string label, int64_t total_bytes)
    : label_(std::move(label)),
      total_bytes_(std::max<int64_t>(total_bytes, 0)),
      enabled_(total_bytes_ >= kMinBytesToShow && ::isatty(STDERR_FILENO) == 1),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {
  if (enabled_) Draw();
}

ProgressBar::~ProgressBar() {
  if (enabled_ && !finished_) std::fputc('\n', stderr);
}

void ProgressBar::Update(int64_t done_bytes) {
  done_bytes_ = std::clamp<int64_t>(done_bytes, 0, total_bytes_);
  if (!enabled_ || finished_) return;
  const auto now = std::chrono::steady_clock::now();
  if (now - last_draw_ < kRedrawInterval) return;
  last_draw_ = now;
  Draw();
}

void ProgressBar::Finish() {
  if (finished_) return;
  done_bytes_ = total_bytes_;
  if (enabled_) {
    Draw();
    std::fputc('\n', stderr);
  }
  finished_ = true;
}

void ProgressBar::Draw() {
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const std::string line = Render(label_, done_bytes_, total_bytes_, seconds, kBarWidth);
  // "\x1b[K" clears whatever a longer earlier line left to the right.
  std::fprintf(stderr, "\r%s\x1b[K", line.c_str());
  std::fflush(stderr);
}

std::string ProgressBar::Render(const std::string& label, int64_t done, int64_t total,
                                double seconds, int width) {
  total = std::max<int64_t>(total, 0);
  done = std::clamp<int64_t>(done, 0, total);
  width = std::max(width, 1);
  const double fraction = total > 0 ? static_cast<double>(done) / static_cast<double>(total) : 1.0;
  const int filled = std::min(width, static_cast<int>(fraction * width));
  std::string bar(static_cast<size_t>(filled), '#');
  bar.append(static_cast<size_t>(width - filled), ' ');
  std::string line = absl::StrFormat("%s [%s] %3d%%  %.1f/%.1f MiB", label, bar,
                                     static_cast<int>(fraction * 100.0), done / kMiB, total / kMiB);
  if (seconds > 0.0) absl::StrAppendFormat(&line, "  %.1f MiB/s", done / kMiB / seconds);
  return line;
}

}  // namespace mpa
