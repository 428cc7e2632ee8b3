#pragma once
// Parsing of POST /contexts/{id}/packet bodies (README "Memory packet") into an
// engine::packet_request. No I/O; tested directly. Errors are 400s naming the field
// ("budget.sections.recnt: unknown section; …").
//
// {"agent_id"?, "purpose"?, "query"?: "text" | {"text"?, "vector"?, "model"?},
//  "budget"?: {"max_tokens"?, "sections"?: {"<section>": tokens}},
//  "policy"?: {"name"?, "recent_window"?, "retrieve_limit"?, "summaries_limit"?,
//              "types"?: [type…], "half_life_s"?, "weights"?: {"<signal>": w}},
//  "as_of_seq"?, "since_seq"?, "now"?, "format"?: "json" | "text"}

#include "engine/packet.hpp"
#include "gateway/fields.hpp"
#include "model/codec.hpp"
#include "model/error.hpp"

namespace engram::gateway {

namespace fields {
inline constexpr std::string_view packet[] = {"agent_id", "purpose", "query", "budget", "policy",
                                              "as_of_seq", "since_seq", "now", "format"};
inline constexpr std::string_view packet_query[] = {"text", "vector", "model"};
inline constexpr std::string_view packet_budget[] = {"max_tokens", "sections"};
inline constexpr std::string_view packet_policy[] = {"name",  "recent_window", "retrieve_limit", "summaries_limit",
                                                     "types", "half_life_s",   "weights"};
}  // namespace fields

// `body` is an object whose top-level members were checked already (parse_body);
// `check_nested` checks the nested objects' members the same way. The agent
// (agent_id / X-Agent-ID) and the context id are the route's to fill in.
model::result<engine::packet_request> parse_packet_body(const model::json& body, bool check_nested);

}  // namespace engram::gateway
