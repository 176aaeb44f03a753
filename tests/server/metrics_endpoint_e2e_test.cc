// End-to-end test of the metrics endpoint as a hostile client would use it: the real mpa_server
// with stories260K, its metrics port on the loopback, generation streams running the whole time,
// and HTTP traffic that is not a scrape (arbitrary paths and methods, huge and malformed request
// heads, connections left half-open). The server must answer each with a plain status, keep
// serving /metrics and /healthz, and every stream must end as it does alone.
#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "multipole/v1/decode.grpc.pb.h"
#include "tests/server/generate_stream.h"
#include "tests/server/server_process.h"

namespace mpa::server {
namespace {

namespace v1 = ::multipole::v1;
using testing::ChildProcess;
using testing::Generate;
using testing::HttpGet;
using testing::IdsRequest;
using testing::PortOf;
using testing::StreamResult;

const char kModelDir[] = MPA_SOURCE_DIR "/../shared/models/stories260K";

// A loopback TCP connection to `port` with a receive timeout; -1 on failure.
int Connect(int port, absl::Duration receive_timeout) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const timeval timeout = absl::ToTimeval(receive_timeout);
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// Sends `request` as raw bytes (stopping early if the server closes) and returns what the server
// answered before it closed the connection or the timeout passed.
std::string Exchange(int port, const std::string& request) {
  const int fd = Connect(port, absl::Seconds(15));
  if (fd < 0) return "";
  size_t sent = 0;
  while (sent < request.size()) {
    const ssize_t n = send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) break;
    sent += static_cast<size_t>(n);
  }
  std::string response;
  char buf[8192];
  ssize_t n;
  while ((n = recv(fd, buf, sizeof(buf), 0)) > 0) response.append(buf, n);
  close(fd);
  return response;
}

// The status code of an HTTP response ("HTTP/1.1 404 Not Found..." gives 404); 0 if none.
int StatusOf(const std::string& response) {
  if (response.size() < 12 || response.compare(0, 5, "HTTP/") != 0) return 0;
  return std::atoi(response.substr(9, 3).c_str());
}

class MetricsEndpointE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(std::string(kModelDir) + "/config.json")) {
      GTEST_SKIP() << "stories260K not found at " << kModelDir;
    }
    server_ = std::make_unique<ChildProcess>(std::vector<std::string>{
        MPA_SERVER_BINARY, absl::StrCat("--model=", kModelDir), "--address=127.0.0.1:0",
        "--metrics_address=127.0.0.1:0", "--threads=1", "--max_kv_tokens=4096"});
    std::optional<std::string> grpc_address =
        server_->WaitForLine("mpa_server listening on ", absl::Seconds(30));
    ASSERT_TRUE(grpc_address.has_value()) << server_->StartFailure("mpa_server listening on ");
    std::optional<std::string> metrics_address =
        server_->WaitForLine("mpa_server metrics on ", absl::Seconds(5));
    ASSERT_TRUE(metrics_address.has_value()) << server_->StartFailure("mpa_server metrics on ");
    port_ = PortOf(*metrics_address);
    ASSERT_GT(port_, 0);
    stub_ = v1::DecodeService::NewStub(
        grpc::CreateChannel(*grpc_address, grpc::InsecureChannelCredentials()));
  }
  // The server is still running (a crash would have ended it).
  bool Alive() { return server_->Running(); }

  std::unique_ptr<ChildProcess> server_;
  int port_ = 0;
  std::unique_ptr<v1::DecodeService::Stub> stub_;
};

TEST_F(MetricsEndpointE2eTest, HostileHttpNeverStopsTheServerOrItsStreams) {
  // Streams run for the whole test; each must equal the first, run before any HTTP traffic.
  const v1::GenerateRequest request = IdsRequest({1, 400, 300, 200, 100}, 200);
  const StreamResult alone = Generate(*stub_, request);
  ASSERT_TRUE(alone.status.ok()) << alone.status.error_message();
  ASSERT_EQ(alone.ids.size(), 200u);
  std::atomic<bool> done{false};
  std::atomic<int> streams{0}, mismatches{0}, failures{0};
  std::thread streamer([&] {
    while (!done.load()) {
      const StreamResult r = Generate(*stub_, request);
      ++streams;
      if (!r.status.ok()) {
        ++failures;
      } else if (r.ids != alone.ids) {
        ++mismatches;
      }
    }
  });

  // Paths other than /metrics and /healthz: 404, whatever they look like.
  const std::vector<std::string> paths = {"/",
                                          "/index.html",
                                          "/metrics/",
                                          "/metrics/x",
                                          "/metricsx",
                                          "/healthz/",
                                          "/%00",
                                          "/../../../etc/passwd",
                                          "/metrics?x=1&y=%zz",
                                          "//metrics",
                                          "/%2e%2e/%2e%2e/",
                                          std::string("/") + std::string(6000, 'a')};
  for (const std::string& path : paths) {
    const std::string response =
        Exchange(port_, absl::StrCat("GET ", path, " HTTP/1.1\r\nHost: x\r\n\r\n"));
    const int status = StatusOf(response);
    if (path.rfind("/metrics?", 0) == 0 || path == "//metrics") {
      // The query string is not part of the path; "//" is cleaned to "/".
      EXPECT_EQ(status, 200) << path;
    } else {
      EXPECT_TRUE(status == 404 || status == 400) << path.substr(0, 80) << ": " << response;
    }
    ASSERT_TRUE(Alive()) << "after GET " << path.substr(0, 80) << "\n" << server_->output();
  }
  // Methods: GET on /metrics and /healthz; every other one is refused.
  for (const char* method : {"HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE",
                             "CONNECT", "PROPFIND", "MKCOL", "LOCK", "FOO", "BREW"}) {
    for (const char* path : {"/metrics", "/healthz", "/", "/nothing"}) {
      const std::string response =
          Exchange(port_, absl::StrCat(method, " ", path,
                                       " HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"));
      const int status = StatusOf(response);
      EXPECT_TRUE(status == 404 || status == 405 || status == 400)
          << method << " " << path << ": " << response;
      ASSERT_TRUE(Alive()) << "after " << method << " " << path << "\n" << server_->output();
    }
  }

  // Request heads: one huge header, thousands of small ones, a megabyte of header bytes, a
  // header with no end; and malformed request lines and binary garbage.
  const std::vector<std::string> heads = {
      absl::StrCat("GET /metrics HTTP/1.1\r\nX-Big: ", std::string(15000, 'b'), "\r\n\r\n"),
      absl::StrCat("GET / HTTP/1.1\r\nX-Big: ", std::string(100000, 'b'), "\r\n\r\n"),
      [] {
        std::string r = "GET /metrics HTTP/1.1\r\n";
        for (int i = 0; i < 5000; ++i) absl::StrAppend(&r, "X-H", i, ": v\r\n");
        return r + "\r\n";
      }(),
      absl::StrCat("GET / HTTP/1.1\r\n", std::string(1 << 20, 'h')),
      "GARBAGE\r\n\r\n",
      "GET\r\n\r\n",
      "GET / HTTP/9.9\r\n\r\n",
      "GET /metrics\r\n\r\n",
      " / HTTP/1.1\r\n\r\n",
      "GET /metrics HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
      "GET /metrics HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
      "GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzzzz\r\n",
      "GET /metrics HTTP/1.1\r\n: no name\r\n\r\n",
      "GET /metrics HTTP/1.1\r\nHost: \xff\xfe\x00\x01\r\n\r\n",
      std::string("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11),  // a TLS ClientHello start
      std::string(4096, '\0'),
      "\r\n\r\n\r\n\r\n",
  };
  for (size_t i = 0; i < heads.size(); ++i) {
    const std::string response = Exchange(port_, heads[i]);
    const int status = StatusOf(response);
    // Refused (4xx, or 505 for an HTTP version it does not speak), a scrape that ignores what it
    // does not need (200), or closed unanswered.
    EXPECT_TRUE(status == 0 || status == 200 || (status >= 400 && status < 500) || status == 505)
        << "head " << i << ": " << response.substr(0, 200);
    ASSERT_TRUE(Alive()) << "after head " << i << "\n" << server_->output();
  }

  // Half-open connections: some send nothing, some part of a request head, some a head and then
  // close their sending side. The server closes each within its request timeout and serves
  // scrapes meanwhile.
  std::vector<int> held;
  for (int i = 0; i < 12; ++i) {
    const int fd = Connect(port_, absl::Seconds(20));
    ASSERT_GE(fd, 0);
    if (i % 3 == 1) send(fd, "GET /metr", 9, MSG_NOSIGNAL);
    if (i % 3 == 2) {
      send(fd, "GET / HTTP/1.1\r\n", 16, MSG_NOSIGNAL);
      shutdown(fd, SHUT_WR);
    }
    held.push_back(fd);
  }
  const absl::Time held_since = absl::Now();
  for (int fd : held) {
    char buf[1024];
    while (recv(fd, buf, sizeof(buf), 0) > 0) {
    }
    close(fd);
  }
  EXPECT_LT(absl::Now() - held_since, absl::Seconds(20)) << "half-open connections were held";
  ASSERT_TRUE(Alive()) << server_->output();

  // Many connections opened and closed at once, some mid-request.
  std::vector<std::thread> bursts;
  for (int t = 0; t < 8; ++t) {
    bursts.emplace_back([this, t] {
      for (int i = 0; i < 25; ++i) {
        const int fd = Connect(port_, absl::Seconds(5));
        if (fd < 0) continue;
        if ((i + t) % 2 == 0) send(fd, "GET /metrics HTTP/1.1\r\n", 23, MSG_NOSIGNAL);
        close(fd);
      }
    });
  }
  for (std::thread& b : bursts) b.join();

  done = true;
  streamer.join();
  ASSERT_TRUE(Alive()) << server_->output();
  std::optional<std::string> metrics = HttpGet(port_, "/metrics");
  ASSERT_TRUE(metrics.has_value());
  EXPECT_NE(metrics->find("mpa_generated_tokens_total"), std::string::npos);
  EXPECT_EQ(HttpGet(port_, "/healthz"), "ok\n");
  EXPECT_GT(streams.load(), 1);
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(mismatches.load(), 0);
  // gRPC still answers after all of it.
  const StreamResult after = Generate(*stub_, request);
  ASSERT_TRUE(after.status.ok()) << after.status.error_message();
  EXPECT_EQ(after.ids, alone.ids);
}

}  // namespace
}  // namespace mpa::server
