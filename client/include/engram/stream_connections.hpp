#pragma once
// Synchronous stream clients for Engram's /stream (WebSocket) and /stream-sse.
// Low-level transports of the SDK (the resuming subscriber will build on them);
// also used by the tests and the load tool. Not thread-safe: one per thread.

#include <chrono>
#include <cstdint>
#include <expected>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "engram/http_connection.hpp"

namespace engram::client {

struct ws_close {
  uint16_t code = 0;  // 0 when the connection dropped without a close frame
  std::string reason;
};

class ws_connection {
 public:
  ws_connection();
  ~ws_connection();
  ws_connection(ws_connection&&) noexcept;
  ws_connection& operator=(ws_connection&&) noexcept;

  // Connects and performs the upgrade. On an HTTP refusal the error message holds
  // the status and body.
  std::expected<void, transport_error> connect(const std::string& host, uint16_t port, const std::string& target,
                                               const header_list& headers = {},
                                               std::chrono::milliseconds timeout = std::chrono::seconds(10));
  std::expected<void, transport_error> send(std::string_view text);
  // The next message; nullopt on timeout. After the peer closes, closed() says why.
  std::expected<std::optional<std::string>, transport_error> read(std::chrono::milliseconds timeout);
  const std::optional<ws_close>& closed() const;
  // The one thread-safe member: makes a read() in progress (or the next one) return
  // nullopt at once, so its thread can send something. The pending read stays.
  void interrupt();
  void close();
  // Drops the TCP connection without a close frame (an abrupt disconnect).
  void abort();

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

struct sse_event {
  std::string event;  // empty for the default ("message") event
  std::string id;
  std::string data;
};

class sse_connection {
 public:
  sse_connection();
  ~sse_connection();
  sse_connection(sse_connection&&) noexcept;
  sse_connection& operator=(sse_connection&&) noexcept;

  // Sends the GET and reads the response head. A non-200 answer is returned as an
  // http_result (status and body) in `refused`.
  std::expected<void, transport_error> connect(const std::string& host, uint16_t port, const std::string& target,
                                               const header_list& headers = {});
  const std::optional<http_result>& refused() const;
  const header_list& response_headers() const;
  // The next event (comments such as heartbeats are counted, not returned);
  // nullopt on timeout or when the server ended the stream (ended()).
  std::expected<std::optional<sse_event>, transport_error> next(std::chrono::milliseconds timeout);
  bool ended() const;
  size_t comments() const;
  void abort();

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace engram::client
