#pragma once
// The SDK's side of the v3 wire JSON (api/openapi.yaml): decoding server answers
// into client types and encoding requests. Private to the library.
//
// Decoding is lenient about what it does not know (new fields are ignored, so a
// newer server works with an older SDK) and strict about the types of what it
// reads: a field of the wrong type is a protocol error, never a crash.

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "engram/error.hpp"
#include "engram/types.hpp"
#include "wire/base64.hpp"

namespace engram::client::codec {

using json = nlohmann::json;

// Standard base64 (RFC 4648 §4, padded): the server's own encoder and strict decoder
// (api/wire), so payloads cannot be read differently on the two sides.
using wire::base64_decode;
using wire::base64_encode;

// A 36-character random (v4) UUID, for idempotency keys.
std::string random_key();

result<work_unit> unit_from(const json& j);
result<context> context_from(const json& j);
result<lock> lock_from(const json& j);
result<task> task_from(const json& j);
result<present_agent> present_agent_from(const json& j);
result<search_result> search_from(const json& j);
// A stream message that carries an event (it has context_id and seq).
result<event> event_from(const json& j, std::string raw);

json unit_input_json(const unit_input& u, bool with_context);
json context_patch_json(const context_patch& p);
json search_request_json(const search_request& r);

json to_wire(const work_unit& u);
json to_wire(const context& c);
json to_wire(const lock& l);
json to_wire(const search_result& r);
json to_wire(const task& t);

// The body's JSON; a body that is not JSON (or not an object) is a protocol error.
result<json> parse_object(std::string_view body, unsigned status);

}  // namespace engram::client::codec
