#pragma once
// Byte/text helpers for the wire format. Hand-written because no Debian-packaged
// library offers a *strict* base64 decoder (OpenSSL's EVP_DecodeBlock accepts
// whitespace and hides padding errors) or a plain UTF-8 validity check.

#include <optional>
#include <string>
#include <string_view>

namespace engram::model {

// Standard alphabet (RFC 4648 §4) with padding; what Engram v3 clients send.
std::string base64_encode(std::string_view bytes);
void base64_encode_append(std::string& out, std::string_view bytes);
// Strict: standard alphabet, padding optional but must be correct if present, no
// whitespace. Returns nullopt on any malformed input.
std::optional<std::string> base64_decode(std::string_view text);

// URL-safe alphabet (RFC 4648 §5) without padding, for opaque cursors.
std::string base64url_encode(std::string_view bytes);
std::optional<std::string> base64url_decode(std::string_view text);

// Well-formed UTF-8 (no overlongs, no surrogates, max U+10FFFF).
bool valid_utf8(std::string_view text);

// Ids chosen by clients (context and agent ids): 1..max_len bytes of valid UTF-8
// without control characters. Returns a message naming `field` when invalid.
std::optional<std::string> check_identifier(std::string_view field, std::string_view value,
                                            size_t max_len = 256);

}  // namespace engram::model
