#pragma once
// The sink behind the server's log on stderr. spdlog's stderr sink makes one
// fwrite + fflush per line; at one access-log line per request that write(2) was
// about 3% of the server's CPU samples at one connection, on the I/O thread,
// before the response was sent. This sink formats on the caller's thread as
// spdlog's do, gathers the lines in memory and writes them in one write(2) when
// `capacity` bytes are waiting or the logger is flushed. Capacity 0 writes each
// line at once.
//
// Every fd_sink writes under one process-wide mutex, so a buffered chunk and a
// line written at once never interleave, even on a pipe where writes over
// PIPE_BUF are not atomic.

#include <spdlog/sinks/base_sink.h>

#include <cstddef>
#include <mutex>

namespace engram::app {

class fd_sink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  fd_sink(int fd, std::size_t capacity);
  ~fd_sink() override;  // writes what is waiting

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override;
  void flush_() override;

 private:
  void write_out();

  int fd_;
  std::size_t capacity_;
  spdlog::memory_buf_t waiting_;
};

}  // namespace engram::app
