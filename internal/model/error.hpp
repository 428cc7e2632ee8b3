#pragma once
// One result type for the whole codebase: expected failures are values carrying a
// code (mapped to an HTTP status and body in exactly one place: gateway/errors.hpp
// (error_response)) and a message that tells the caller what was wrong and how to
// fix it.

#include <expected>
#include <string>
#include <utility>

namespace engram::model {

enum class errc {
  invalid_argument,    // 400: the request is malformed or a field is invalid
  not_found,           // 404
  conflict,            // 409: state forbids it now (lock held, stale fencing token)
  in_progress,         // 409 + Retry-After: the same idempotent request is still running
  unauthenticated,     // 401: no valid bearer token (auth enabled)
  forbidden,           // 403: the token does not grant this on this context
  unprocessable,       // 422: idempotency key reused with a different request
  payload_too_large,   // 413
  precondition_failed,    // 412: If-Match names a version that is not the current one
  precondition_required,  // 428: a version exists and the request did not say which it replaces
  rate_limited,        // 429 + Retry-After: a rate limit or a connection/stream cap
  unavailable,         // 503: recovering, overloaded, or storage refused the write
  internal,            // 500: a bug or an I/O failure we cannot attribute to the caller
};

struct error {
  errc code;
  std::string message;
};

template <class T>
using result = std::expected<T, error>;
using status = result<void>;

inline std::unexpected<error> fail(errc code, std::string message) {
  return std::unexpected(error{code, std::move(message)});
}

}  // namespace engram::model
