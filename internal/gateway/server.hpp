#pragma once
// The HTTP/1.1 server (Boost.Beast, callback style): an acceptor and one session per
// connection, each on one I/O thread for life. Sessions do I/O only and hand each request to
// the handler; the response may come back from any thread. Owns the I/O threads,
// each with an io_context of its own (server.cpp says why).

#include <chrono>
#include <functional>
#include <memory>

#include "gateway/access.hpp"
#include "gateway/http.hpp"
#include "gateway/options.hpp"
#include "model/error.hpp"

namespace prometheus {
class Registry;
}
namespace engram::engine {
class engine;
}

namespace engram::gateway {

class stream_registry;

class server {
 public:
  // `streams` serves /stream and /stream-sse; null leaves them to `handler`.
  // `authn` is shared with the handler (app builds it once).
  // `stream_log` (optional) lists open streams for operators.
  server(options opts, handler_fn handler, std::shared_ptr<const authenticator> authn,
         prometheus::Registry* metrics, engine::engine* streams = nullptr, stream_registry* stream_log = nullptr);
  ~server();  // stop()s if needed

  // Binds, listens and starts the I/O threads.
  model::status start();
  uint16_t port() const;

  // Runs `f` on I/O thread `home` (model::this_io_thread of the thread that asked),
  // or on the threads in turn when `home` is not one of them (-1). Used for storage
  // completions.
  void post(int home, std::function<void()> f);

  // Two-phase shutdown: stop accepting; close idle connections; let in-flight
  // requests finish (their responses carry Connection: close) until `deadline`;
  // then close everything and join the I/O threads.
  void stop(std::chrono::milliseconds deadline);

  struct impl;  // state shared with sessions (options, handler, session registry)
  struct io;    // the io_contexts, acceptor and threads

 private:
  // Sessions keep `impl` alive; `io_` is destroyed first, and destroying it
  // destroys any handler still queued in its io_contexts, and with it its session
  // (every io_context is shut down before any is destroyed: a handler queued in
  // one may own a session of another). (If sessions owned the io_contexts, queued
  // handlers would form a cycle.)
  std::shared_ptr<impl> impl_;
  std::unique_ptr<io> io_;
};

}  // namespace engram::gateway
