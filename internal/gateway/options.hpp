#pragma once
// HTTP server options, filled in by config.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace engram::gateway {

struct options {
  std::string host = "127.0.0.1";
  uint16_t port = 8080;           // 0 picks an ephemeral port (tests)
  unsigned threads = 0;           // I/O threads; 0 = number of cores
  size_t max_body_bytes = size_t(1) << 20;
  size_t max_header_bytes = 16 * 1024;
  // Keep-alive connection waiting for the next request's header.
  std::chrono::milliseconds idle_timeout{60'000};
  // Reading one request's body once its header arrived; writing one response.
  std::chrono::milliseconds read_timeout{30'000};
  std::chrono::milliseconds write_timeout{30'000};
  size_t max_connections = 10'000;
  // Origins allowed by CORS; "*" allows any. Empty disables CORS headers.
  // Also checked on WebSocket upgrades and SSE requests that carry an Origin.
  std::vector<std::string> cors_origins = {"*"};

  // Streams (/stream WebSocket, /stream-sse).
  std::chrono::milliseconds stream_heartbeat{5'000};
  // A WebSocket client that sends nothing (its heartbeats count, ours do not) for
  // this long is closed.
  std::chrono::milliseconds stream_idle_timeout{60'000};
  size_t ws_max_message_bytes = 64 * 1024;
};

}  // namespace engram::gateway
