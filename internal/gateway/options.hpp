#pragma once
// HTTP server options, filled in by config.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "auth/auth.hpp"

namespace engram::gateway {

// A token bucket: `per_second` refill, `burst` capacity. per_second 0: unlimited.
struct rate_limit {
  double per_second = 0;
  double burst = 0;  // 0: max(1, per_second)
};

// Per agent (per client IP when auth is disabled). All off by default (local use);
// config.example.yaml shows values for an exposed server.
struct limit_options {
  rate_limit writes;       // POST /workunit(s), PATCH /contexts/{id}
  rate_limit searches;     // /search
  rate_limit locks;        // acquire, renew, release
  rate_limit connections;  // new TCP connections, per client IP
  size_t max_streams = 10'000;        // open WebSocket/SSE streams, server-wide
  size_t max_streams_per_agent = 0;   // 0: no per-agent cap
};

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
  // A WebSocket client not heard from (message or pong) for half of this is
  // pinged, and dropped after all of it.
  std::chrono::milliseconds stream_idle_timeout{60'000};
  size_t ws_max_message_bytes = 64 * 1024;

  // TLS (HTTPS and WSS on the same port) when both are set: PEM files.
  std::string tls_cert_file;  // the certificate chain
  std::string tls_key_file;

  bool access_log = true;  // one line per request (log.access)
  // A request body member no route knows is a 400 naming it (and the closest known
  // name); false accepts and ignores such members.
  bool reject_unknown_fields = true;

  auth::options auth;
  limit_options limits;
};

}  // namespace engram::gateway
