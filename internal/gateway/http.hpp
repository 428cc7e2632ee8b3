#pragma once
// Plain HTTP request/response values exchanged between the Beast server and the
// route handler, so handlers compile without Beast and tests can call them directly.

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace engram::gateway {

struct request {
  std::string method;  // "GET", "POST", …
  std::string target;  // raw request-target (origin form)
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // names lowercased
  std::string remote_ip;   // the TCP peer
  std::string request_id;  // X-Request-Id: the client's if sane, else generated
  // Set only for requests a WebSocket session makes on its client's behalf (an
  // append over the socket): the upgrade passed the Origin check, so the token may
  // come from the cookie as it did for the upgrade. Never set from the wire.
  bool cookie_ok = false;

  std::string_view header(std::string_view lower_name) const {
    for (const auto& [k, v] : headers)
      if (k == lower_name) return v;
    return {};
  }
  void set_header(std::string_view lower_name, std::string value) {
    for (auto& [k, v] : headers)
      if (k == lower_name) {
        v = std::move(value);
        return;
      }
    headers.emplace_back(std::string(lower_name), std::move(value));
  }
};

struct stream_takeover;  // gateway/takeover.hpp

struct response {
  unsigned status = 200;
  std::string body;
  std::string content_type = "application/json";
  std::vector<std::pair<std::string, std::string>> headers;
  // Set: not an answer; the connection becomes this stream (only for requests from
  // the wire; a route answering an internal dispatch never sets it).
  std::shared_ptr<stream_takeover> takeover;
};

// Called exactly once per request, from any thread.
using responder = std::function<void(response)>;
using handler_fn = std::function<void(request, responder)>;

}  // namespace engram::gateway
