#pragma once
// The REST API of DESIGN.md §5 as a function of (request) → response over the
// engine: it never touches a socket. Thread-safe. See README.md.

#include <memory>

#include "engine/engine.hpp"
#include "gateway/access.hpp"
#include "gateway/errors.hpp"
#include "gateway/http.hpp"
#include "gateway/options.hpp"

namespace prometheus {
class Registry;
}

namespace engram::gateway {

class stream_registry;

class api_handler {
 public:
  // `metrics` is also what /metrics exposes; it must outlive the handler.
  // `streams` (optional) answers GET /contexts/{id}/subscribers and feeds /metrics.
  api_handler(engine::engine& engine, const options& opts, std::shared_ptr<prometheus::Registry> metrics,
              std::shared_ptr<const authenticator> authn, stream_registry* streams = nullptr);
  ~api_handler();

  // `respond` is called exactly once, from any thread.
  void handle(request req, responder respond);

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace engram::gateway
