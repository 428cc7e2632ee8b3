#include "wire/base64.hpp"

#include <array>
#include <cstdint>

namespace engram::wire {
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

}  // namespace engram::wire
