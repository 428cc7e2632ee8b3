#pragma once
// Byte/text helpers for the wire format. Hand-written because no Debian-packaged
// library offers a plain UTF-8 validity check.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "wire/base64.hpp"

namespace engram::model {

// Base64 lives in api/wire, shared with the SDK so both sides encode alike: standard
// padded for payloads, URL-safe unpadded for cursors, strict decoders.
using wire::base64_decode;
using wire::base64_encode;
using wire::base64_encode_append;
using wire::base64url_decode;
using wire::base64url_encode;

// "2026-11-21T20:40:00Z": a time (ns since the epoch) to the second, UTC, for
// messages.
std::string rfc3339_seconds(int64_t ns);

// Well-formed UTF-8 (no overlongs, no surrogates, max U+10FFFF).
bool valid_utf8(std::string_view text);

// Ids chosen by clients (context and agent ids): 1..max_len bytes of valid UTF-8
// without control characters. Returns a message naming `field` when invalid.
std::optional<std::string> check_identifier(std::string_view field, std::string_view value,
                                            size_t max_len = 256);

}  // namespace engram::model
