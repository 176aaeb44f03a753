// MetricsEndpoint: the HTTP side of the metrics. prometheus-cpp's Exposer (an embedded civetweb
// server) answers GET /metrics with the registry's text exposition and GET /healthz with
// "ok"; every other path is a 404 and every other method a 405, answered before civetweb looks
// for a handler or a file. Connections that send nothing are dropped after a few seconds.
//
// The worker threads' stack is what thread_stack.cc raises: see there for why.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "prometheus/exposer.h"
#include "prometheus/registry.h"

namespace mpa::server {

class MetricsEndpoint {
 public:
  // Worker threads: at most this many HTTP connections are served at once (a scrape takes
  // milliseconds; the others wait in civetweb's connection queue). A worker stays with a
  // connection until its request head is complete or the timeout below passes, so idle
  // connections hold workers: with 4 workers and 5 s, four idle connections stopped scraping.
  // More workers and a shorter timeout raise what that takes (the threads' stacks are reserved,
  // not committed); a client that keeps that many connections open can still delay scrapes,
  // which is why the endpoint should not face untrusted networks (README, threat model).
  static constexpr int kWorkerThreads = 16;
  // A connection that has not sent a complete request head in this time is closed.
  static constexpr int kRequestTimeoutMs = 2000;
  // Request head (request line and headers) in bytes; a larger one is refused with 413.
  static constexpr int kMaxRequestHeadBytes = 16384;

  // Listens on `address` (host:port; port 0 picks a free one) and serves `registry`.
  // Unavailable if the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<MetricsEndpoint>> Start(
      const std::string& address, std::shared_ptr<prometheus::Registry> registry);

  // The bound port.
  int port() const;

 private:
  explicit MetricsEndpoint(std::unique_ptr<prometheus::Exposer> exposer)
      : exposer_(std::move(exposer)) {}

  std::unique_ptr<prometheus::Exposer> exposer_;
};

}  // namespace mpa::server
