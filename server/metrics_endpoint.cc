#include "server/metrics_endpoint.h"

#include <CivetServer.h>
#include <civetweb.h>

#include <cstring>
#include <exception>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

namespace mpa::server {

namespace {

constexpr char kMetricsPath[] = "/metrics";
constexpr char kHealthPath[] = "/healthz";

// A short plain-text answer; the connection closes after it.
int Reply(mg_connection* conn, int status, const char* reason, const char* extra_header,
          const char* body) {
  mg_printf(conn,
            "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %zu\r\n"
            "%sConnection: close\r\n\r\n%s",
            status, reason, std::strlen(body), extra_header, body);
  return status;
}

// civetweb's begin_request callback: 0 lets civetweb pass the request on to prometheus-cpp's
// /metrics handler; any other value is the status of the answer already sent here.
int RouteRequest(mg_connection* conn) {
  const mg_request_info* request = mg_get_request_info(conn);
  const char* path = request->local_uri != nullptr ? request->local_uri : "";
  const char* method = request->request_method != nullptr ? request->request_method : "";
  const bool is_get = std::strcmp(method, "GET") == 0;
  if (std::strcmp(path, kMetricsPath) == 0) {
    if (is_get) return 0;
    return Reply(conn, 405, "Method Not Allowed", "Allow: GET\r\n", "method not allowed\n");
  }
  if (std::strcmp(path, kHealthPath) == 0) {
    if (is_get) return Reply(conn, 200, "OK", "", "ok\n");
    return Reply(conn, 405, "Method Not Allowed", "Allow: GET\r\n", "method not allowed\n");
  }
  return Reply(conn, 404, "Not Found", "", "not found\n");
}

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsEndpoint>> MetricsEndpoint::Start(
    const std::string& address, std::shared_ptr<prometheus::Registry> registry) {
  // civetweb options (key, value pairs). No document_root: no file is ever served.
  std::vector<std::string> options = {
      "listening_ports",    address,
      "num_threads",        std::to_string(kWorkerThreads),
      "request_timeout_ms", std::to_string(kRequestTimeoutMs),
      "max_request_size",   std::to_string(kMaxRequestHeadBytes),
      "enable_keep_alive",  "no",
  };
  // Copied by civetweb when the server starts (the constructor zeroes every other callback).
  CivetCallbacks callbacks;
  callbacks.begin_request = RouteRequest;
  std::unique_ptr<prometheus::Exposer> exposer;
  try {
    exposer = std::make_unique<prometheus::Exposer>(std::move(options), &callbacks);
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", address, ": ", e.what()));
  }
  exposer->RegisterCollectable(registry, kMetricsPath);
  return std::unique_ptr<MetricsEndpoint>(new MetricsEndpoint(std::move(exposer)));
}

int MetricsEndpoint::port() const {
  const std::vector<int> ports = exposer_->GetListeningPorts();
  return ports.empty() ? 0 : ports.front();
}

}  // namespace mpa::server
