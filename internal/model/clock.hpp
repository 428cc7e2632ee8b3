#pragma once
// Time source, injected into every module that reads time. Servers use
// system_clock; tests substitute a manual clock (tests/support/manual_clock.hpp).

#include <chrono>
#include <cstdint>
#include <memory>

namespace engram::model {

class clock {
 public:
  virtual ~clock() = default;
  // Wall-clock time in nanoseconds since the Unix epoch: what is stored and shown.
  virtual int64_t now_ns() const = 0;
  // Monotonic time for in-process deadlines, which must not jump when the wall
  // clock is stepped.
  virtual std::chrono::steady_clock::time_point steady_now() const { return std::chrono::steady_clock::now(); }
  // Whole seconds since the Unix epoch (JWT NumericDate).
  int64_t now_s() const { return now_ns() / 1'000'000'000; }
};

class system_clock final : public clock {
 public:
  int64_t now_ns() const override {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
  }
};

inline std::shared_ptr<const clock> default_clock() {
  static const auto instance = std::make_shared<const system_clock>();
  return instance;
}

}  // namespace engram::model
