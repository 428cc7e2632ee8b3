#pragma once
// The REST API of DESIGN.md §5: routing, parameter and body validation, JSON
// rendering, CORS and per-route metrics. A function of (request) → response over
// the engine; it never touches a socket. Thread-safe.

#include <memory>

#include "engine/engine.hpp"
#include "locks/manager.hpp"
#include "gateway/http.hpp"
#include "gateway/options.hpp"

namespace prometheus {
class Registry;
}

namespace engram::gateway {

class api_handler {
 public:
  // `metrics` is also what /metrics exposes; it must outlive the handler.
  // `locks` may be null (no /locks routes).
  api_handler(engine::engine& engine, const options& opts, std::shared_ptr<prometheus::Registry> metrics,
              locks::manager* locks = nullptr);
  ~api_handler();

  void handle(request req, responder respond);

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

// The one mapping from error codes to HTTP status and {"error":"…"} bodies.
response error_response(const model::error& err);

}  // namespace engram::gateway
