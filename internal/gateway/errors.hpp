#pragma once
// The one way an HTTP error answer is made (STYLE.md, Errors): route failures,
// refusals (auth, limits), server-level errors (oversized or malformed requests)
// and stream refusals all come from here. Beast-free.

#include <chrono>
#include <optional>
#include <string_view>

#include "gateway/http.hpp"
#include "model/error.hpp"

namespace engram::gateway {

// The HTTP status of an error code.
unsigned http_status(model::errc code);

// {"error":"<message>"} with the status of `err.code`. 503, 429 and in-progress
// 409 answers carry Retry-After (`retry_after`, else 1 s): clients (the SDK) retry
// on it. 401 answers carry WWW-Authenticate.
response error_response(const model::error& err, std::optional<std::chrono::seconds> retry_after = std::nullopt);

// For statuses no error code names (405, 431): the same body and headers.
response error_response(unsigned status, std::string_view message,
                        std::optional<std::chrono::seconds> retry_after = std::nullopt);

}  // namespace engram::gateway
