#pragma once
// Errors of the C++ SDK are values: every call returns engram::client::result<T>.
// A network failure (nothing or no complete answer came back) is a different kind
// from a server refusal (an HTTP answer with an error status and the server's
// message), because callers handle them differently: one is retried, the other is
// usually the caller's to fix.

#include <chrono>
#include <expected>
#include <string>

namespace engram::client {

struct error {
  enum class kind {
    network,   // connect, send or receive failed, or timed out; status is 0
    server,    // the server refused: status is the HTTP status, message its "error"
    protocol,  // the server answered something this SDK cannot decode
    stopped,   // the operation was cancelled by its owner (a subscription's stop())
  };

  kind what = kind::network;
  unsigned status = 0;  // HTTP status for kind::server (and for protocol, if any)
  std::string message;
  // The server's Retry-After, when it sent one (503, or 409 for an idempotent
  // request still in progress).
  std::chrono::seconds retry_after{0};

  bool is_network() const { return what == kind::network; }
  bool is_server() const { return what == kind::server; }
  bool is_not_found() const { return what == kind::server && status == 404; }
  bool is_conflict() const { return what == kind::server && status == 409; }

  // "network: connect to 127.0.0.1:8080: Connection refused",
  // "server 409: resource 'a' is locked by agent 'b' until …".
  std::string describe() const;
};

template <class T>
using result = std::expected<T, error>;

}  // namespace engram::client
