#pragma once
// Time source. Servers use system_clock(); tests may substitute a fake.

#include <chrono>
#include <cstdint>
#include <memory>

namespace engram::model {

class clock {
 public:
  virtual ~clock() = default;
  // Wall-clock time in nanoseconds since the Unix epoch.
  virtual int64_t now_ns() const = 0;
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
