// A GenerationSink that records everything and lets a test wait for the end.
#pragma once

#include <condition_variable>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "server/types.h"

namespace mpa::server::testing {

class RecordingSink : public GenerationSink {
 public:
  void Start(const std::string& session_id) override {
    std::lock_guard<std::mutex> lock(mu_);
    session_id_ = session_id;
    ++starts_;
  }
  void Tokens(std::vector<GeneratedToken> tokens) override {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& t : tokens) {
      ids_.push_back(t.id);
      logprobs_.push_back(t.logprob);
      text_ += t.text;
    }
    cv_.notify_all();
  }
  void Finish(const GenerationResult& result) override {
    std::lock_guard<std::mutex> lock(mu_);
    ++ends_;
    result_ = result;
    cv_.notify_all();
  }
  void Fail(const absl::Status& status) override {
    std::lock_guard<std::mutex> lock(mu_);
    ++ends_;
    status_ = status;
    cv_.notify_all();
  }
  bool cancelled() const override { return client_cancelled_; }
  void set_client_cancelled() { client_cancelled_ = true; }

  // Waits for the end (Finish or Fail); false on timeout.
  bool Wait(absl::Duration timeout = absl::Seconds(20)) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, absl::ToChronoNanoseconds(timeout), [&] { return ends_ > 0; });
  }
  // Waits until at least n tokens arrived.
  bool WaitTokens(size_t n, absl::Duration timeout = absl::Seconds(20)) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, absl::ToChronoNanoseconds(timeout),
                        [&] { return ids_.size() >= n || ends_ > 0; });
  }
  std::vector<int32_t> ids() {
    std::lock_guard<std::mutex> lock(mu_);
    return ids_;
  }
  std::vector<float> logprobs() {
    std::lock_guard<std::mutex> lock(mu_);
    return logprobs_;
  }
  std::string text() {
    std::lock_guard<std::mutex> lock(mu_);
    return text_;
  }
  absl::Status status() {
    std::lock_guard<std::mutex> lock(mu_);
    return status_;
  }
  std::optional<GenerationResult> result() {
    std::lock_guard<std::mutex> lock(mu_);
    return result_;
  }
  std::string session_id() {
    std::lock_guard<std::mutex> lock(mu_);
    return session_id_;
  }
  int ends() {
    std::lock_guard<std::mutex> lock(mu_);
    return ends_;
  }
  int starts() {
    std::lock_guard<std::mutex> lock(mu_);
    return starts_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::string session_id_;
  std::vector<int32_t> ids_;
  std::vector<float> logprobs_;
  std::string text_;
  std::optional<GenerationResult> result_;
  absl::Status status_;
  int starts_ = 0;
  int ends_ = 0;
  std::atomic<bool> client_cancelled_{false};
};

}  // namespace mpa::server::testing
