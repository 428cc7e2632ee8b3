#pragma once
// A clock that moves only when a test advances it (STYLE: fakes only for the clock).
// Wall and monotonic readings move together. Thread-safe.

#include <atomic>
#include <chrono>
#include <cstdint>

#include "model/clock.hpp"

namespace engram::test {

class manual_clock final : public model::clock {
 public:
  explicit manual_clock(int64_t wall_start_ns = 1'700'000'000'000'000'000) : wall_start_ns_(wall_start_ns) {}

  int64_t now_ns() const override { return wall_start_ns_ + elapsed_ns_.load(); }
  std::chrono::steady_clock::time_point steady_now() const override {
    return std::chrono::steady_clock::time_point(
        std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::nanoseconds(elapsed_ns_.load())));
  }

  void advance(std::chrono::nanoseconds d) { elapsed_ns_ += d.count(); }

 private:
  const int64_t wall_start_ns_;
  std::atomic<int64_t> elapsed_ns_{0};
};

}  // namespace engram::test
