#pragma once
// The access-log line (server.access_log), one per request or stream: no query
// strings, bodies or headers, which may carry payloads or credentials.

#include <cstdint>
#include <memory>
#include <optional>
#include <string_view>

namespace spdlog {
class logger;
}

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

// Logs `access` at info with the line's fields, to the access logger when one is
// set, else to the default logger.
void log_access(const access_line& line);

// The logger for access lines (setup_logging's, which buffers them). Set it before
// the server starts; servers started in-process by tests leave it unset.
void set_access_logger(std::shared_ptr<spdlog::logger> logger);

// Writes out the access lines waiting in the access logger (at shutdown).
void flush_access_log();

}  // namespace engram::gateway
