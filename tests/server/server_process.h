// Test helpers for end-to-end tests of the real binaries: a child process whose output is
// collected (and searched for the addresses it prints), a program run to its end with stdout and
// stderr apart, a shell command's output, and a plain HTTP/1.0 GET over a loopback socket.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

extern char** environ;

namespace mpa::server::testing {

// A child process (argv[0] is the binary's path) with stdout and stderr collected by a thread;
// killed (SIGKILL) when destroyed if it is still running.
class ChildProcess {
 public:
  explicit ChildProcess(std::vector<std::string> argv) {
    int out[2];
    // Close-on-exec, so no other child spawned meanwhile holds the pipe open (the dup2 below
    // gives this child its own descriptors without the flag).
    if (pipe2(out, O_CLOEXEC) != 0) {
      spawn_error_ = errno;
      program_ = argv.empty() ? "" : argv[0];
      return;
    }
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, out[1], 1);
    posix_spawn_file_actions_adddup2(&actions, out[1], 2);
    posix_spawn_file_actions_addclose(&actions, out[0]);
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    program_ = argv[0];
    spawn_error_ = posix_spawn(&pid_, args[0], &actions, nullptr, args.data(), environ);
    if (spawn_error_ != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&actions);
    close(out[1]);
    reader_ = std::thread([this, fd = out[0]] {
      char buf[4096];
      for (;;) {
        const ssize_t n = read(fd, buf, sizeof(buf));
        if (n <= 0) break;
        std::lock_guard<std::mutex> lock(mu_);
        output_.append(buf, n);
      }
      close(fd);
      std::lock_guard<std::mutex> lock(mu_);
      output_complete_ = true;
    });
  }
  ~ChildProcess() {
    if (pid_ > 0 && !exited_) {
      kill(pid_, SIGKILL);
      Wait(absl::Seconds(10));
    }
    if (reader_.joinable()) reader_.join();
  }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  bool started() const { return pid_ > 0; }
  // Whether the process is still running (one that has exited is reaped).
  bool Running() {
    if (pid_ <= 0 || exited_) return false;
    return !Reap();
  }
  void Signal(int sig) {
    if (pid_ > 0 && !exited_) kill(pid_, sig);
  }
  // The exit code, or -1 if it did not exit in time (or died of a signal). Once it has exited,
  // output() holds everything it wrote: the reader thread may still be draining the pipe when
  // the process is reaped (under load it often is), so this waits (up to 5 s) for its end.
  int Wait(absl::Duration timeout) {
    if (pid_ <= 0) return -1;  // never started (waitpid(-1) would reap any child)
    const absl::Time deadline = absl::Now() + timeout;
    while (!exited_ && !Reap() && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(10));
    if (!exited_) return -1;
    WaitForOutputEnd(absl::Seconds(5));
    return WIFEXITED(status_) ? WEXITSTATUS(status_) : -1;
  }
  std::string output() {
    std::lock_guard<std::mutex> lock(mu_);
    return output_;
  }
  // Waits until the output pipe is at its end (every writer closed it), up to `timeout`.
  void WaitForOutputEnd(absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    for (;;) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (output_complete_ || pid_ <= 0) return;
      }
      if (absl::Now() >= deadline) return;
      absl::SleepFor(absl::Milliseconds(1));
    }
  }
  // The rest of the first output line after `prefix`, once the line is complete; nullopt if it
  // did not appear before the timeout, or the process never started or has exited without it.
  std::optional<std::string> WaitForLine(absl::string_view prefix, absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline && pid_ > 0) {
      // Read whether it has ended before the output: then the output is all there is.
      const bool ended = !Running();
      if (ended) WaitForOutputEnd(absl::Seconds(5));
      {
        std::lock_guard<std::mutex> lock(mu_);
        const size_t at = output_.find(std::string(prefix));
        const size_t end = at == std::string::npos ? at : output_.find('\n', at);
        if (end != std::string::npos) {
          return output_.substr(at + prefix.size(), end - at - prefix.size());
        }
      }
      if (ended) break;
      absl::SleepFor(absl::Milliseconds(10));
    }
    return std::nullopt;
  }

  // For the message of a failed assertion on a process that should have printed `expected`
  // (e.g. a server's "listening on "; "" when nothing was awaited): the program, whether it could
  // be started, how it ended (exit code or signal) or that it is still running, and the tail of
  // its output.
  std::string StartFailure(absl::string_view expected) {
    std::string why;
    if (pid_ <= 0) {
      why = absl::StrCat("it could not be started: ", std::strerror(spawn_error_));
    } else if (Running()) {
      why = "it is still running";
    } else if (WIFEXITED(status_)) {
      why = absl::StrCat("it exited with code ", WEXITSTATUS(status_));
    } else if (WIFSIGNALED(status_)) {
      why = absl::StrCat("it was killed by signal ", WTERMSIG(status_), " (",
                         strsignal(WTERMSIG(status_)), ")");
    }
    if (exited_) WaitForOutputEnd(absl::Seconds(5));
    std::string out = output();
    constexpr size_t kTail = 4000;
    const bool cut = out.size() > kTail;
    if (cut) out = out.substr(out.size() - kTail);
    const std::string what =
        expected.empty() ? program_ : absl::StrCat(program_, " did not print \"", expected, "\"");
    return absl::StrCat(what, ": ", why, "; ",
                        out.empty() ? "it printed nothing"
                                    : absl::StrCat(cut ? "the end of " : "", "its output:\n", out));
  }

 private:
  // Reaps the process if it has exited (keeping its status); whether it has.
  bool Reap() {
    if (waitpid(pid_, &status_, WNOHANG) != pid_) return false;
    exited_ = true;
    return true;
  }

  std::string program_;
  int spawn_error_ = 0;  // errno of a failed start
  pid_t pid_ = -1;
  bool exited_ = false;
  int status_ = 0;  // waitpid's status, once exited_
  std::thread reader_;
  std::mutex mu_;
  std::string output_;
  bool output_complete_ = false;  // the reader saw the pipe's end
};

// How a program run to its end (RunProcess) ended.
struct ProcessResult {
  int exit_code = -1;  // when it exited
  int signal = 0;      // when a signal killed it
  bool timed_out = false;
  bool stopped_early = false;  // stop_at appeared on stdout and the process was killed
  std::string out;             // stdout
  std::string err;             // stderr (or why the program could not be started)
};

// Runs argv (argv[0] is the binary's path) with stdout and stderr collected apart, until it
// exits or `timeout` passes (then it is killed). A non-empty stop_at kills it as soon as its
// stdout holds that text (for a server: it came up instead of refusing to start).
inline ProcessResult RunProcess(std::vector<std::string> argv, absl::Duration timeout,
                                const std::string& stop_at = "") {
  ProcessResult r;
  int out[2], err[2];
  if (pipe(out) != 0) return r;
  if (pipe(err) != 0) {
    close(out[0]);
    close(out[1]);
    return r;
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out[1], 1);
  posix_spawn_file_actions_adddup2(&actions, err[1], 2);
  posix_spawn_file_actions_addclose(&actions, out[0]);
  posix_spawn_file_actions_addclose(&actions, err[0]);
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  pid_t pid = -1;
  if (const int error = posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ);
      error != 0) {
    pid = -1;
    r.err = absl::StrCat("could not start ", argv[0], ": ", std::strerror(error));
  }
  posix_spawn_file_actions_destroy(&actions);
  close(out[1]);
  close(err[1]);
  const absl::Time deadline = absl::Now() + timeout;
  pollfd fds[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
  std::string* sinks[2] = {&r.out, &r.err};
  int open_fds = 2;
  while (pid > 0 && open_fds > 0) {
    const int64_t left = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (left <= 0) {
      r.timed_out = true;
      break;
    }
    if (poll(fds, 2, static_cast<int>(std::min<int64_t>(left, 100))) < 0 && errno != EINTR) break;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
      char buf[4096];
      const ssize_t n = read(fds[i].fd, buf, sizeof(buf));
      if (n > 0) {
        sinks[i]->append(buf, n);
      } else {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      }
    }
    if (!stop_at.empty() && r.out.find(stop_at) != std::string::npos) {
      r.stopped_early = true;
      break;
    }
  }
  for (pollfd& f : fds) {
    if (f.fd >= 0) close(f.fd);
  }
  if (pid <= 0) return r;
  bool killed = r.timed_out || r.stopped_early;
  if (killed) kill(pid, SIGKILL);
  int status = 0;
  for (;;) {  // the output may end before the process does
    const pid_t done = waitpid(pid, &status, WNOHANG);
    if (done == pid) break;
    if (done < 0 && errno != EINTR) return r;
    if (!killed && absl::Now() > deadline) {
      r.timed_out = killed = true;
      kill(pid, SIGKILL);
    }
    absl::SleepFor(absl::Milliseconds(2));
  }
  if (killed) return r;
  if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) r.signal = WTERMSIG(status);
  return r;
}

// Runs a shell command; returns (exit code, stdout).
inline std::pair<int, std::string> Shell(const std::string& command) {
  std::string out;
  FILE* f = popen(command.c_str(), "r");
  if (f == nullptr) return {-1, ""};
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, n);
  const int status = pclose(f);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

// GET http://127.0.0.1:port<target> (HTTP/1.0: the server closes the connection after the body,
// so the body is everything after the headers). nullopt on a connection error or a status other
// than 200.
inline std::optional<std::string> HttpGet(int port, const std::string& target) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return std::nullopt;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval timeout{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return std::nullopt;
  }
  const std::string request =
      absl::StrCat("GET ", target, " HTTP/1.0\r\nHost: 127.0.0.1:", port, "\r\n\r\n");
  if (send(fd, request.data(), request.size(), MSG_NOSIGNAL) !=
      static_cast<ssize_t>(request.size())) {
    close(fd);
    return std::nullopt;
  }
  std::string response;
  char buf[8192];
  ssize_t n;
  while ((n = recv(fd, buf, sizeof(buf), 0)) > 0) response.append(buf, n);
  close(fd);
  const size_t header_end = response.find("\r\n\r\n");
  const bool http =
      response.compare(0, 9, "HTTP/1.1 ") == 0 || response.compare(0, 9, "HTTP/1.0 ") == 0;
  if (header_end == std::string::npos || !http) return std::nullopt;
  if (response.compare(9, 3, "200") != 0) return std::nullopt;
  return response.substr(header_end + 4);
}

// The port of "host:port".
inline int PortOf(absl::string_view address) {
  int port = 0;
  const size_t colon = address.rfind(':');
  if (colon == absl::string_view::npos || !absl::SimpleAtoi(address.substr(colon + 1), &port)) {
    return 0;
  }
  return port;
}

// A loopback port that was free a moment ago (for programs that cannot pick their own).
inline int FreeLoopbackPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = 0;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

}  // namespace mpa::server::testing
