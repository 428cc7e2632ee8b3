#include "gateway/errors.hpp"

#include "model/json_writer.hpp"

namespace engram::gateway {

using model::errc;

unsigned http_status(errc code) {
  switch (code) {
    case errc::invalid_argument: return 400;
    case errc::not_found: return 404;
    case errc::conflict: return 409;
    case errc::in_progress: return 409;
    case errc::unauthenticated: return 401;
    case errc::forbidden: return 403;
    case errc::rate_limited: return 429;
    case errc::unprocessable: return 422;
    case errc::payload_too_large: return 413;
    case errc::precondition_failed: return 412;
    case errc::precondition_required: return 428;
    case errc::unavailable: return 503;
    case errc::internal: return 500;
  }
  return 500;
}

response error_response(unsigned status, std::string_view message, std::optional<std::chrono::seconds> retry_after) {
  response r;
  r.status = status;
  model::json_object body(r.body);
  body.string("error", message);
  body.close();
  if (status == 503 || status == 429) retry_after = retry_after.value_or(std::chrono::seconds(1));
  if (retry_after) r.headers.emplace_back("Retry-After", std::to_string(retry_after->count()));
  if (status == 401) r.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"engram\"");
  return r;
}

response error_response(const model::error& err, std::optional<std::chrono::seconds> retry_after) {
  // "Try the same request again shortly", like 503 and 429.
  if (err.code == errc::in_progress) retry_after = retry_after.value_or(std::chrono::seconds(1));
  return error_response(http_status(err.code), err.message, retry_after);
}

}  // namespace engram::gateway
