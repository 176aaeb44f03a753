#include "model/io/progress_bar.h"

#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mpa {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

constexpr int64_t kMiB = int64_t{1} << 20;

TEST(ProgressBarTest, RenderShowsBarPercentSizesAndRate) {
  EXPECT_EQ(ProgressBar::Render("loading", 32 * kMiB, 64 * kMiB, 2.0, 10),
            "loading [#####     ]  50%  32.0/64.0 MiB  16.0 MiB/s");
  EXPECT_EQ(ProgressBar::Render("w", 0, 100 * kMiB, 0.0, 4), "w [    ]   0%  0.0/100.0 MiB");
}

TEST(ProgressBarTest, RenderClampsOutOfRangeProgress) {
  EXPECT_EQ(ProgressBar::Render("x", 200 * kMiB, 64 * kMiB, 0.0, 4),
            "x [####] 100%  64.0/64.0 MiB");
  EXPECT_EQ(ProgressBar::Render("x", -5, 64 * kMiB, 0.0, 4), "x [    ]   0%  0.0/64.0 MiB");
  EXPECT_EQ(ProgressBar::Render("x", 0, 0, 0.0, 2), "x [##] 100%  0.0/0.0 MiB");
}

// Runs `body` with stderr pointed at a pseudo-terminal (or, with use_terminal false, at a pipe)
// and returns what it wrote.
template <typename Body>
std::string CaptureStderr(bool use_terminal, Body body) {
  int read_fd = -1, write_fd = -1;
  if (use_terminal) {
    read_fd = ::posix_openpt(O_RDWR | O_NOCTTY);
    if (read_fd < 0 || ::grantpt(read_fd) != 0 || ::unlockpt(read_fd) != 0) return "<no pty>";
    write_fd = ::open(::ptsname(read_fd), O_RDWR | O_NOCTTY);
  } else {
    int fds[2];
    if (::pipe(fds) != 0) return "<no pipe>";
    read_fd = fds[0];
    write_fd = fds[1];
  }
  if (write_fd < 0) return "<no terminal>";
  std::fflush(stderr);
  const int saved = ::dup(STDERR_FILENO);
  ::dup2(write_fd, STDERR_FILENO);
  body();
  std::fflush(stderr);
  ::dup2(saved, STDERR_FILENO);
  ::close(saved);
  std::string captured;
  char buffer[4096];
  pollfd p{read_fd, POLLIN, 0};
  while (::poll(&p, 1, 50) > 0 && (p.revents & POLLIN)) {
    const ssize_t n = ::read(read_fd, buffer, sizeof(buffer));
    if (n <= 0) break;
    captured.append(buffer, static_cast<size_t>(n));
  }
  ::close(write_fd);
  ::close(read_fd);
  return captured;
}

TEST(ProgressBarTest, DrawsOnTerminalForLargeLoads) {
  bool enabled = false;
  const std::string out = CaptureStderr(true, [&] {
    ProgressBar bar("weights", 128 * kMiB);
    enabled = bar.enabled();
    bar.Update(64 * kMiB);
    bar.Finish();
    bar.Finish();  // second call must not draw again
  });
  EXPECT_TRUE(enabled);
  EXPECT_THAT(out, AllOf(HasSubstr("weights ["), HasSubstr("100%"), HasSubstr("128.0/128.0 MiB")));
  EXPECT_EQ(out.find("100%"), out.rfind("100%")) << out;
}

TEST(ProgressBarTest, SilentForSmallLoadsOnTerminal) {
  bool enabled = true;
  const std::string out = CaptureStderr(true, [&] {
    ProgressBar bar("weights", ProgressBar::kMinBytesToShow - 1);
    enabled = bar.enabled();
    bar.Update(1000);
    bar.Finish();
  });
  EXPECT_FALSE(enabled);
  EXPECT_EQ(out, "");
}

TEST(ProgressBarTest, SilentWhenStderrIsNotATerminal) {
  bool enabled = true;
  const std::string out = CaptureStderr(false, [&] {
    ProgressBar bar("weights", 1024 * kMiB);
    enabled = bar.enabled();
    bar.Update(512 * kMiB);
    bar.Finish();
  });
  EXPECT_FALSE(enabled);
  EXPECT_EQ(out, "");
}

}  // namespace
}  // namespace mpa
