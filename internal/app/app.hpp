#pragma once
// Wires the modules into a running server from a config. cmd/engram and the tests
// boot the server through this same code, so tests run exactly what users run.
//
// Start-up order: logging → HTTP listener (answers /healthz at once, /readyz 503)
// → storage recovery on a background thread → engine attached → /readyz 200.

#include <chrono>
#include <memory>

#include "config/config.hpp"
#include "model/clock.hpp"
#include "model/error.hpp"

namespace spdlog {
class formatter;
}

namespace engram::app {

class app {
 public:
  // Starts listening and begins recovery in the background. Fails when the
  // listener cannot bind.
  static model::result<std::unique_ptr<app>> start(const config::config& cfg,
                                                   std::shared_ptr<const model::clock> clock = nullptr);
  ~app();  // stop()s if needed

  uint16_t port() const;

  // Waits until recovery finished. Returns the recovery error if it failed, or
  // `unavailable` on timeout.
  model::status wait_ready(std::chrono::milliseconds timeout);

  // Blocks until SIGINT/SIGTERM (or a recovery failure); then stops gracefully.
  // Returns the process exit code.
  int run_until_signal();

  // Graceful stop: HTTP drains within the shutdown timeout, then storage commits
  // what is queued, syncs and closes. Idempotent.
  void stop();

  struct impl;

 private:
  explicit app(std::unique_ptr<impl> p);
  std::unique_ptr<impl> impl_;
};

// Configures the global spdlog logger and the buffered access logger from log
// options, and starts spdlog's flusher thread: call it once, with SIGINT/SIGTERM
// already blocked.
void setup_logging(const config::log_options& opts);

// The formatter setup_logging installs ("text" or "json"): the message followed by
// the fields in scope (request_id, the access log's fields, …). Tests that read the
// log give it to their own sink.
std::unique_ptr<spdlog::formatter> log_formatter(std::string_view format);

}  // namespace engram::app
