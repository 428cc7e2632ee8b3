#pragma once
// Work unit ids: UUIDv7 (RFC 9562) — 48-bit Unix milliseconds, then a 12-bit counter
// seeded randomly each millisecond (method 1 of §6.2), then 62 random bits. Ids made
// by one generator are strictly increasing, so they sort like their creation order.

#include <array>
#include <cstdint>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <string_view>

namespace engram::model {

struct uuid {
  std::array<uint8_t, 16> bytes{};

  // Canonical lowercase 8-4-4-4-12 form.
  std::string to_string() const;
  // Accepts the canonical form in either case; nothing else.
  static std::optional<uuid> parse(std::string_view text);
  int version() const { return bytes[6] >> 4; }
  int64_t unix_ms() const;
  auto operator<=>(const uuid&) const = default;
};

// Thread-safe.
class uuid_v7_generator {
 public:
  uuid_v7_generator();
  uuid next(int64_t unix_ms);

 private:
  std::mutex mu_;
  std::mt19937_64 rng_;
  int64_t last_ms_ = -1;
  uint16_t counter_ = 0;
};

}  // namespace engram::model
