#pragma once
// Parsing of subscription parameters for /stream (WebSocket) and /stream-sse, and
// the SSE resume token. No I/O; tested directly.
//
//   ?context=a,b,project-7/*     exact ids and prefix patterns (a trailing '*')
//   ?since=N                     resume after seq N in every matched context
//   ?agent_id=A&presence=true    WS: A is present in the exact contexts while connected
//   Last-Event-ID: N             SSE: same as since=N (single-context streams)
//   Last-Event-ID: <token>       SSE: per-context cursors from resume_token()

#include <map>
#include <string>

#include "engine/stream.hpp"
#include "gateway/access.hpp"
#include "gateway/http.hpp"
#include "model/codec.hpp"
#include "model/error.hpp"

namespace engram::gateway {

inline constexpr size_t max_stream_contexts = 100;

// From the query string (and, for SSE, Last-Event-ID). Errors are 400s.
model::result<engine::stream_request> parse_stream_query(const request& req, bool sse);

// ?text=1 (or true): work units also carry their payload as a "text" member.
model::result<bool> parse_stream_text(const request& req);

// From a WS message {"type":"subscribe","contexts":[…],"since":N|{"ctx":N},
// "cursors":{"ctx":N}} (cursors override since for the contexts they name).
model::result<engine::stream_request> parse_subscribe_message(const model::json& msg);

// Authorization of a subscription: every exact context must be readable (else
// errc::forbidden), and patterns deliver only readable contexts. A subscription
// with presence needs an agent_id (the token's subject by default; another agent's
// needs admin on "*") and `write` on its exact contexts.
model::status authorize_stream(engine::stream_request& sub, const caller& who);

// The SSE `id:` of an event: the plain seq when the stream is one exact context
// (what Engram v3 clients expect); otherwise an opaque token carrying every
// context's cursor, which Last-Event-ID hands back on reconnect.
std::string resume_token(const std::map<std::string, uint64_t>& cursors);

}  // namespace engram::gateway
