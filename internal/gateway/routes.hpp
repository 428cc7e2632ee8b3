#pragma once
// Private to the gateway: the route table and what a route is given. A new
// resource is one routes_<resource>.cpp plus its rows in routes.cpp.

#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "auth/auth.hpp"
#include "engine/drafts.hpp"
#include "engine/engine.hpp"
#include "gateway/access.hpp"
#include "gateway/errors.hpp"
#include "gateway/fields.hpp"
#include "gateway/http.hpp"
#include "gateway/options.hpp"

namespace prometheus {
class Registry;
}

namespace engram::gateway {

class stream_registry;

struct query_params {
  std::vector<std::pair<std::string, std::string>> items;
  const std::string* get(std::string_view key) const {
    for (const auto& [k, v] : items)
      if (k == key) return &v;
    return nullptr;
  }
};

// What every route may use; owned by api_handler.
struct services {
  engine::engine& eng;
  const options& opts;
  prometheus::Registry& metrics;
  stream_registry* streams = nullptr;  // open streams, when the server has them
  // Handles a request as if it came from the wire (routing, auth, limits): what the
  // MCP endpoint sends its tool calls through.
  std::function<void(request, responder)> dispatch;
};

// One request as its route sees it: authenticated, within its rate limit, and
// holding the route's grant on its subject.
struct call {
  request req;
  std::string path;     // the encoded path, without the query
  std::string subject;  // the route's path parameter, decoded and validated; empty if none
  // Every path parameter, percent-decoded (the subject's among them); not validated.
  std::vector<std::pair<std::string_view, std::string>> params;
  query_params query;
  caller who;

  const std::string* param(std::string_view name) const {
    for (const auto& [n, v] : params)
      if (n == name) return &v;
    return nullptr;
  }
};

using route_fn = void (*)(services&, call&, responder);

enum class limit_class { none, writes, searches, locks };

// The path parameter a route acts on: percent-decoded once, validated as an
// identifier (named `what` in messages) and, when `need` is set, checked against
// the caller's grants before the route runs. Routes whose subject is in the body
// (or found by reading) check grants themselves.
struct subject_rule {
  std::string_view param;  // the pattern's parameter name
  std::string_view what;   // "context id"
  std::optional<auth::capability> need;
};

struct route {
  std::string_view method;
  // Segments are literals, "{name}" (one segment) or "{name*}" (one or more
  // segments, '/' included; at most one per pattern). Doubles as the metric
  // label, without the '*'.
  std::string_view pattern;
  route_fn fn;
  limit_class limit = limit_class::none;
  bool is_public = false;  // served without authentication
  std::optional<subject_rule> subject;
};

struct route_match {
  const route* hit = nullptr;  // the first route of the table for this method and path; null: none
  // Without a hit: the methods of every route whose pattern matches ("" if none:
  // no such path). With a hit, the search stopped there and this is not filled.
  std::string allow;
  std::string_view label = "unmatched";  // the hit's (or first match's) pattern without '*'; static
  std::vector<std::pair<std::string_view, std::string>> params;  // of `hit`, still encoded
};
// Matches a request against the route table (routes.cpp), in its order.
route_match match_route(std::string_view method, std::string_view encoded_path);

// ---- helpers shared by routes ------------------------------------------------------
response json_response(unsigned status, const nlohmann::json& body);
response bad_request(std::string message);
// Refuses a missing grant: "not allowed to read context 'x'", "… to lock 'x'".
response forbidden(auth::capability cap, std::string_view id);
// A non-empty JSON object body.
model::result<nlohmann::json> parse_body(const request& req);
// parse_body, then each member must be one of `known` (unless
// server.reject_unknown_fields is off): a typo is a 400 naming the closest field.
model::result<nlohmann::json> parse_body(const services& s, const request& req, field_names known,
                                         std::string_view what);
// A work unit object's members (and its relationships' and fence's), unless off.
model::status check_unit(const services& s, const nlohmann::json& unit, std::string_view what);
model::result<std::optional<uint64_t>> uint_param(const query_params& q, std::string_view key);
model::result<bool> bool_param(const query_params& q, std::string_view key);
// A request acts as the token's subject and no one else.
model::status acting_as(const caller& who, std::string_view agent);
// The acting agent of a request: the body's agent_id (or X-Agent-ID, else the
// token's subject), a valid id, and the token's subject when auth is on.
model::result<std::string> acting_agent(const call& c, const nlohmann::json& body);

// ---- the routes, one file per resource ---------------------------------------------
// routes_units.cpp
void append_unit(services&, call&, responder);
void append_units(services&, call&, responder);
void get_unit(services&, call&, responder);
void list_units(services&, call&, responder);
// routes_contexts.cpp
void list_contexts(services&, call&, responder);
void get_context(services&, call&, responder);
void list_events(services&, call&, responder);
void list_subscribers(services&, call&, responder);
void backup(services&, call&, responder);
void patch_context(services&, call&, responder);
void delete_context(services&, call&, responder);
void import_events(services&, call&, responder);
void get_tool_call(services&, call&, responder);
void heartbeat(services&, call&, responder);
void leave_context(services&, call&, responder);
void list_presence(services&, call&, responder);
void put_checkpoint(services&, call&, responder);
void get_checkpoint(services&, call&, responder);
void list_checkpoints(services&, call&, responder);
// routes_tasks.cpp
void create_task(services&, call&, responder);
void list_tasks(services&, call&, responder);
void get_task(services&, call&, responder);
void claim_task(services&, call&, responder);
void complete_task(services&, call&, responder);
void fail_task(services&, call&, responder);
// A task's JSON member (spec, progress, result) as JSON text ("" when absent or
// null): an object of at most `max_bytes` (413 beyond).
model::result<std::string> task_json_member(const nlohmann::json& body, const char* field, size_t max_bytes);
// routes_facts.cpp
void set_fact(services&, call&, responder);
void retract_fact(services&, call&, responder);
void list_facts(services&, call&, responder);
void get_fact(services&, call&, responder);
// routes_packet.cpp
void build_packet(services&, call&, responder);
// routes_mcp.cpp
void mcp_post(services&, call&, responder);
void mcp_other(services&, call&, responder);
// routes_drafts.cpp
void add_draft_delta(services&, call&, responder);
void commit_draft(services&, call&, responder);
void abort_draft(services&, call&, responder);
void list_drafts(services&, call&, responder);
void get_draft(services&, call&, responder);
// Shared with the WebSocket's delta and draft_abort messages.
inline constexpr size_t max_draft_id_bytes = 128;
model::status check_draft_id(std::string_view id);
// A delta's index and content ("text", or base64 "payload") from a REST body or a
// WebSocket message; the caller has checked the ids, the agent and its grants.
model::result<engine::draft_delta> draft_delta_from(const nlohmann::json& body, std::string context_id,
                                                    std::string draft_id, std::string agent);
// routes_locks.cpp
void list_locks(services&, call&, responder);
void acquire_locks(services&, call&, responder);
void get_lock(services&, call&, responder);
void release_lock(services&, call&, responder);
void renew_lock(services&, call&, responder);
// routes_search.cpp
void search(services&, call&, responder);
// routes_ops.cpp
void healthz(services&, call&, responder);
void readyz(services&, call&, responder);
void metrics(services&, call&, responder);
void ui_live(services&, call&, responder);
void ui_asset(services&, call&, responder);
void ui_redirect(services&, call&, responder);
void root(services&, call&, responder);
void openapi(services&, call&, responder);

}  // namespace engram::gateway
