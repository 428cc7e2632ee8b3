#include "model/ids.hpp"

namespace engram::model {
namespace {

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

constexpr bool is_dash_position(size_t i) { return i == 8 || i == 13 || i == 18 || i == 23; }

}  // namespace

std::string uuid::to_string() const {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out;
  out.reserve(36);
  for (size_t i = 0; i < bytes.size(); ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out.push_back('-');
    out.push_back(digits[bytes[i] >> 4]);
    out.push_back(digits[bytes[i] & 0xF]);
  }
  return out;
}

std::optional<uuid> uuid::parse(std::string_view text) {
  if (text.size() != 36) return std::nullopt;
  uuid id;
  size_t byte = 0;
  for (size_t i = 0; i < text.size();) {
    if (is_dash_position(i)) {
      if (text[i] != '-') return std::nullopt;
      ++i;
      continue;
    }
    const int hi = hex_value(text[i]);
    const int lo = hex_value(text[i + 1]);
    if (hi < 0 || lo < 0 || is_dash_position(i + 1)) return std::nullopt;
    id.bytes[byte++] = static_cast<uint8_t>(hi << 4 | lo);
    i += 2;
  }
  return id;
}

int64_t uuid::unix_ms() const {
  int64_t ms = 0;
  for (int i = 0; i < 6; ++i) ms = ms << 8 | bytes[i];
  return ms;
}

uuid_v7_generator::uuid_v7_generator() : rng_(std::random_device{}()) {}

uuid uuid_v7_generator::next(int64_t unix_ms) {
  std::lock_guard lock(mu_);
  if (unix_ms > last_ms_) {
    last_ms_ = unix_ms;
    // Start the counter in the lower half so a burst within one ms rarely overflows.
    counter_ = static_cast<uint16_t>(rng_() & 0x7FF);
  } else if (++counter_ > 0xFFF) {
    // Counter exhausted (or the clock went back): borrow the next millisecond so
    // ids stay strictly increasing.
    ++last_ms_;
    counter_ = static_cast<uint16_t>(rng_() & 0x7FF);
  }
  uuid id;
  const uint64_t ms = static_cast<uint64_t>(last_ms_);
  for (int i = 0; i < 6; ++i) id.bytes[i] = static_cast<uint8_t>(ms >> (8 * (5 - i)));
  id.bytes[6] = static_cast<uint8_t>(0x70 | (counter_ >> 8));
  id.bytes[7] = static_cast<uint8_t>(counter_ & 0xFF);
  const uint64_t rand_b = rng_();
  for (int i = 8; i < 16; ++i) id.bytes[i] = static_cast<uint8_t>(rand_b >> (8 * (15 - i)));
  id.bytes[8] = static_cast<uint8_t>(0x80 | (id.bytes[8] & 0x3F));  // RFC variant 10xx
  return id;
}

}  // namespace engram::model
