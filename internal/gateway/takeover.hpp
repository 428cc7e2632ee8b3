#pragma once
// A route's answer that turns its connection into a stream instead of a response:
// the MCP endpoint's resources/subscribe (README "MCP"). The route validates and
// authorizes; the server takes the socket (server.cpp) and an SSE session sends
// `first_frame`, then `notification` whenever the watched context gets work units
// (stream_sessions.cpp). Beast-free.

#include <string>

#include "engine/stream.hpp"
#include "gateway/access.hpp"

namespace engram::gateway {

struct stream_takeover {
  engine::stream_request sub;  // what to watch, from its head (live only)
  caller who;
  std::string first_frame;   // the JSON-RPC response to the request
  std::string notification;  // sent once per write that carries new units
  // Streams with the same key end together (resources/unsubscribe).
  std::string owner_key;
};

}  // namespace engram::gateway
