#include "model/text.hpp"

#include <array>
#include <cstdint>

namespace engram::model {
namespace {

constexpr char std_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
constexpr char url_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

// Appends the encoding of `in` to `out`, writing in place (this is on the hot path of
// every page of units).
void encode_append(std::string& out, std::string_view in, const char* alphabet, bool pad) {
  const size_t full = in.size() / 3, rest = in.size() % 3;
  const size_t len = full * 4 + (rest == 0 ? 0 : pad ? 4 : rest + 1);
  const size_t start = out.size();
  out.resize(start + len);
  char* dst = out.data() + start;
  const auto* src = reinterpret_cast<const uint8_t*>(in.data());
  for (size_t i = 0; i < full; ++i, src += 3) {
    const uint32_t v = uint32_t(src[0]) << 16 | uint32_t(src[1]) << 8 | src[2];
    *dst++ = alphabet[v >> 18 & 63];
    *dst++ = alphabet[v >> 12 & 63];
    *dst++ = alphabet[v >> 6 & 63];
    *dst++ = alphabet[v & 63];
  }
  if (rest > 0) {
    uint32_t v = uint32_t(src[0]) << 16;
    if (rest == 2) v |= uint32_t(src[1]) << 8;
    *dst++ = alphabet[v >> 18 & 63];
    *dst++ = alphabet[v >> 12 & 63];
    if (rest == 2) *dst++ = alphabet[v >> 6 & 63];
    if (pad) {
      *dst++ = '=';
      if (rest == 1) *dst++ = '=';
    }
  }
}

std::string encode(std::string_view in, const char* alphabet, bool pad) {
  std::string out;
  encode_append(out, in, alphabet, pad);
  return out;
}

std::array<int8_t, 256> make_table(const char* alphabet) {
  std::array<int8_t, 256> t{};
  t.fill(-1);
  for (int i = 0; i < 64; ++i) t[uint8_t(alphabet[i])] = int8_t(i);
  return t;
}

std::optional<std::string> decode(std::string_view in, const std::array<int8_t, 256>& table,
                                  bool allow_pad) {
  if (allow_pad && in.size() % 4 == 0 && !in.empty()) {
    if (in.back() == '=') in.remove_suffix(1);
    if (in.back() == '=') in.remove_suffix(1);
  }
  if (in.size() % 4 == 1) return std::nullopt;
  std::string out;
  out.reserve(in.size() * 3 / 4);
  uint32_t acc = 0;
  int bits = 0;
  for (const char c : in) {
    const int8_t v = table[uint8_t(c)];
    if (v < 0) return std::nullopt;
    acc = acc << 6 | uint32_t(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(char(acc >> bits & 0xFF));
    }
  }
  // Leftover bits must be zero, otherwise two encodings would decode alike.
  if (bits > 0 && (acc & ((1u << bits) - 1)) != 0) return std::nullopt;
  return out;
}

}  // namespace

std::string base64_encode(std::string_view bytes) { return encode(bytes, std_alphabet, true); }

void base64_encode_append(std::string& out, std::string_view bytes) {
  encode_append(out, bytes, std_alphabet, true);
}

std::optional<std::string> base64_decode(std::string_view text) {
  static const auto table = make_table(std_alphabet);
  return decode(text, table, true);
}

std::string base64url_encode(std::string_view bytes) {
  return encode(bytes, url_alphabet, false);
}

std::optional<std::string> base64url_decode(std::string_view text) {
  static const auto table = make_table(url_alphabet);
  return decode(text, table, false);
}

bool valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
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
