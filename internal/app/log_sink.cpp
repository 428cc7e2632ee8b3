#include "app/log_sink.hpp"

#include <unistd.h>

#include <cerrno>

namespace engram::app {
namespace {

// Never destroyed: loggers held by spdlog's registry write out at exit.
std::mutex& write_mutex() {
  static auto* m = new std::mutex;
  return *m;
}

}  // namespace

fd_sink::fd_sink(int fd, std::size_t capacity) : fd_(fd), capacity_(capacity) {}

fd_sink::~fd_sink() {
  std::lock_guard lock(mutex_);
  write_out();
}

void fd_sink::sink_it_(const spdlog::details::log_msg& msg) {
  formatter_->format(msg, waiting_);
  if (waiting_.size() >= capacity_) write_out();
}

void fd_sink::flush_() { write_out(); }

// Writes everything waiting. Lines whose write fails (a closed pipe, a full disk,
// a full non-blocking pipe) are dropped, not kept to grow without bound.
void fd_sink::write_out() {
  if (waiting_.size() == 0) return;
  std::lock_guard lock(write_mutex());
  const char* p = waiting_.data();
  std::size_t left = waiting_.size();
  while (left > 0) {
    const ssize_t n = ::write(fd_, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    p += n;
    left -= std::size_t(n);
  }
  waiting_.clear();
}

}  // namespace engram::app
