#pragma once
// Parsing of lock request bodies (POST /locks, POST /locks/{path}/renew) and of the
// `fence` member of appends. No I/O; authorization stays with the handler. Errors
// are 400s naming the field.
//
// POST /locks        {"resource_path":"…" | "resource_paths":[…], "agent_id"?:"…",
//                     "ttl_ms"?:N | "ttl_seconds"?:X, "wait_ms"?:N, "context_id"?:"…"}
// POST …/renew       {"lock_id":"…", "agent_id"?:"…", "ttl_ms"?:N | "ttl_seconds"?:X}
// appends            "fence":{"resource":"…","token":N}

#include <chrono>
#include <string>
#include <string_view>
#include <vector>

#include "locks/manager.hpp"
#include "model/codec.hpp"
#include "model/error.hpp"
#include "storage/store.hpp"

namespace engram::gateway {

struct acquire_body {
  locks::acquire_request request;  // agent: the body's, else `default_agent`
  bool multi = false;              // resource_paths (answer with "locks")
};
model::result<acquire_body> parse_acquire_body(const model::json& body, std::string_view default_agent);

struct renew_body {
  std::string agent;  // the body's, else `default_agent`
  std::string lock_id;
  std::chrono::milliseconds ttl{0};  // <= 0: the configured default
};
model::result<renew_body> parse_renew_body(const model::json& body, std::string_view default_agent);

// `ttl_ms`, else `ttl_seconds` (fractions allowed); neither: 0 (the configured default).
model::result<std::chrono::milliseconds> ttl_field(const model::json& body);
// The body's agent_id when it names one, else `default_agent` (X-Agent-ID).
model::result<std::string> agent_field(const model::json& body, std::string_view default_agent);

// Appends `object`'s fence, if it has one, to `out`.
model::status parse_fence(const model::json& object, std::vector<storage::fence>& out);

}  // namespace engram::gateway
