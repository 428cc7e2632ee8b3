#pragma once
// Base64 as the wire uses it: standard and padded for payloads (what Engram v3 clients
// send and read), URL-safe and unpadded for opaque cursors. Hand-written because no
// Debian-packaged library offers a *strict* decoder (OpenSSL's EVP_DecodeBlock accepts
// whitespace and hides padding errors), and the SDK must not make its users link
// libcrypto for it. The server and the SDK both use this one.

#include <optional>
#include <string>
#include <string_view>

namespace engram::wire {

// Standard alphabet (RFC 4648 §4) with padding.
std::string base64_encode(std::string_view bytes);
void base64_encode_append(std::string& out, std::string_view bytes);
// Strict: standard alphabet, padding optional but must be correct if present, no
// whitespace, unused trailing bits zero. Returns nullopt on any malformed input.
std::optional<std::string> base64_decode(std::string_view text);

// URL-safe alphabet (RFC 4648 §5) without padding, for opaque cursors.
std::string base64url_encode(std::string_view bytes);
std::optional<std::string> base64url_decode(std::string_view text);

}  // namespace engram::wire
