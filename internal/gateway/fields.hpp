#pragma once
// Unknown members in request bodies: a misspelt field ("txt" for "text") is a 400
// that names it and suggests the closest known name, rather than a unit written
// without it. server.reject_unknown_fields: false turns the check off for clients
// that send extra members.

#include <nlohmann/json_fwd.hpp>
#include <span>
#include <string>
#include <string_view>

#include "model/error.hpp"

namespace engram::gateway {

using field_names = std::span<const std::string_view>;

// The known name `name` most likely meant: of those it is a prefix of (or that are
// a prefix of it), the nearest in length; else the nearest by edit distance (a swap of neighbours
// is one edit) within two edits, or a third of its length when longer; empty when
// none is that near.
std::string_view closest_field(std::string_view name, field_names known);

// invalid_argument naming the first member of `object` that is not in `known`:
// "unknown field 'txt' in <where>; did you mean 'text'?". Non-objects pass.
model::status check_fields(const nlohmann::json& object, field_names known, std::string_view where);

// The members of each kind of request body, every field an Engram v3 client sends
// included (a v3 PATCH carries the context's `id`; a v3 unit its server-assigned
// `id`, `seq`, `ts`).
namespace fields {
inline constexpr std::string_view unit[] = {
    "id",      "context_id",    "seq",  "agent_id",  "type",           "ts",   "meta",
    "payload", "relationships", "text", "embedding", "embedding_model", "fence", "idempotency_key", "call_id", "tokens"};
inline constexpr std::string_view relationship[] = {"target_id", "type", "meta"};
inline constexpr std::string_view search_relationship[] = {"target_id", "type"};
inline constexpr std::string_view fence[] = {"resource", "token"};
inline constexpr std::string_view batch[] = {"context_id", "agent_id", "work_units", "fence", "idempotency_key"};
inline constexpr std::string_view context_patch[] = {"id",          "display_name", "add_agents", "remove_agents",
                                                     "pin_units",   "unpin_units",  "meta",       "retention"};
inline constexpr std::string_view search[] = {
    "query", "context_id", "agent_ids", "types", "meta_filters", "relationships",   "from",
    "to",    "limit",      "offset",    "mode",  "vector",       "embedding_model", "snippets"};
inline constexpr std::string_view acquire[] = {"resource_path", "resource_paths", "agent_id",  "ttl_seconds",
                                               "ttl_ms",        "wait_ms",        "context_id"};
inline constexpr std::string_view renew[] = {"lock_id", "agent_id", "ttl_seconds", "ttl_ms"};
inline constexpr std::string_view backup[] = {"dir"};
inline constexpr std::string_view import[] = {"events"};
inline constexpr std::string_view checkpoint[] = {"cursor_seq", "state"};
inline constexpr std::string_view heartbeat[] = {"contexts", "status", "progress", "task_id"};
inline constexpr std::string_view task_create[] = {"task_id", "title", "spec", "depends_on", "max_attempts", "agent_id"};
inline constexpr std::string_view task_claim[] = {"agent_id", "ttl_seconds", "ttl_ms"};
inline constexpr std::string_view task_complete[] = {"agent_id", "fence", "result"};
inline constexpr std::string_view task_fail[] = {"agent_id", "fence", "error"};
inline constexpr std::string_view fact[] = {"value", "valid_from", "valid_to", "sources", "confidence", "status", "agent_id"};
inline constexpr std::string_view draft_delta[] = {"agent_id", "index", "text", "payload"};
// WebSocket messages (the socket's own members besides the request's).
inline constexpr std::string_view ws_delta[] = {"type", "request_id", "context_id", "draft_id",
                                                "agent_id", "index", "text", "payload"};
inline constexpr std::string_view ws_draft_abort[] = {"type", "request_id", "context_id", "draft_id", "agent_id"};
}  // namespace fields

// A work unit object: its members, its relationships' and its fence's.
model::status check_unit_fields(const nlohmann::json& unit, std::string_view where);

}  // namespace engram::gateway
