#include "model/text.hpp"

#include <cstdint>
#include <cstring>
#include <ctime>

namespace engram::model {

std::string rfc3339_seconds(int64_t ns) {
  const std::time_t secs = ns / 1'000'000'000;
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

bool valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    // ASCII eight bytes at a time: most payloads are mostly ASCII.
    if (i + 8 <= s.size()) {
      uint64_t word;
      std::memcpy(&word, s.data() + i, 8);
      if ((word & 0x8080808080808080u) == 0) {
        i += 8;
        continue;
      }
    }
    const uint8_t c = uint8_t(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint32_t cp;
    if ((c & 0xE0) == 0xC0) {
      len = 2;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + len > s.size()) return false;
    for (size_t k = 1; k < len; ++k) {
      const uint8_t cc = uint8_t(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = cp << 6 | (cc & 0x3F);
    }
    static constexpr uint32_t min_for_len[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_for_len[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += len;
  }
  return true;
}

std::optional<std::string> check_identifier(std::string_view field, std::string_view value,
                                            size_t max_len) {
  if (value.empty()) return std::string(field) + " is required";
  if (value.size() > max_len)
    return std::string(field) + " is longer than " + std::to_string(max_len) + " bytes";
  if (!valid_utf8(value)) return std::string(field) + " is not valid UTF-8";
  for (const char c : value) {
    if (uint8_t(c) < 0x20 || c == 0x7F)
      return std::string(field) + " must not contain control characters";
  }
  return std::nullopt;
}

}  // namespace engram::model
