#pragma once
// The access-log line (server.access_log), one per request or stream: no query
// strings, bodies or headers, which may carry payloads or credentials.

#include <cstdint>
#include <optional>
#include <string_view>

namespace engram::gateway {

struct access_line {
  std::string_view request_id, method, path;
  unsigned status = 0;
  uint64_t bytes = 0;
  double seconds = 0;
  std::string_view agent, ip;
  // Streams only: the transport ("websocket", "sse"), events written, and what ended it.
  std::string_view stream;
  std::optional<uint64_t> events;
  std::string_view ended_by;
};

// Logs `access` at info with the line's fields.
void log_access(const access_line& line);

}  // namespace engram::gateway
