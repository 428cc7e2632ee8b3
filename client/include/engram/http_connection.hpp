#pragma once
// A synchronous HTTP/1.1 keep-alive connection to an Engram server (Boost.Beast).
// The low-level transport of the C++ SDK; also what the tests and the load tool use.
// Not thread-safe: use one connection per thread.

#include <chrono>
#include <cstdint>
#include <expected>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace engram::client {

using header_list = std::vector<std::pair<std::string, std::string>>;

struct http_result {
  unsigned status = 0;
  std::string body;
  header_list headers;  // names lowercased
  std::string header(std::string_view lower_name) const;
};

// A transport failure (connect, send, receive, timeout), as opposed to any answer
// from the server.
struct transport_error {
  transport_error() = default;
  explicit transport_error(std::string msg, bool sent = false) : message(std::move(msg)), maybe_sent(sent) {}

  std::string message;
  // True when the failure came after the request started to go out, so the server
  // may have acted on it; false when it never left (connect failed).
  bool maybe_sent = false;
  // A WebSocket upgrade the server answered with an HTTP error instead: its status
  // and body (0 and empty for every other failure).
  unsigned status = 0;
  std::string body;
};

class http_connection {
 public:
  http_connection(std::string host, uint16_t port,
                  std::chrono::milliseconds timeout = std::chrono::seconds(30));
  ~http_connection();
  http_connection(http_connection&&) noexcept;
  http_connection& operator=(http_connection&&) noexcept;

  // Sends one request and reads its response. Connects on first use and reconnects
  // if the server closed an idle keep-alive connection before the request was sent.
  std::expected<http_result, transport_error> request(std::string_view method, std::string_view target,
                                                      std::string_view body = {},
                                                      const header_list& headers = {});

  void close();
  // The limit for each later request's connect, send and receive.
  void set_timeout(std::chrono::milliseconds timeout);

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace engram::client
