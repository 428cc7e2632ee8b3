#pragma once
// The bytes of one HTTP/1.x answer, written by the server without Beast's
// serializer (bench/README "Responses written as two buffers").

#include <string>

#include "gateway/http.hpp"

namespace engram::gateway {

struct response_bytes {
  std::string head;  // status line and header fields, ending with the blank line
  std::string body;
};

// Every HTTP answer goes through here: server-level errors, stream refusals and
// route responses all get the same security headers. `version` is the request's
// (10 for HTTP/1.0, 11 for HTTP/1.1); `keep_alive` says whether the connection
// stays open after the answer. A 1xx, 204 or 304 answer has no body and no
// Content-Length. The server writes the framing fields (Content-Length,
// Transfer-Encoding, Connection) and X-Content-Type-Options itself; a route's own
// are dropped. Control characters in a field value become spaces and a field
// whose name is not an HTTP token is dropped, so no value can end the head early.
response_bytes serialize(response r, unsigned version, bool keep_alive);

}  // namespace engram::gateway
