#pragma once
// Private to the gateway: the state shared by the HTTP server and every session
// (HTTP, WebSocket, SSE), and the hand-off from an HTTP session to a stream session.
// Includes Beast; only server.cpp and stream_sessions.cpp include it.

#include <boost/asio/buffer.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>
#include <array>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "engine/engine.hpp"
#include "gateway/access.hpp"
#include "engine/stream.hpp"
#include "gateway/http.hpp"
#include "gateway/options.hpp"
#include "gateway/response_bytes.hpp"
#include "gateway/server.hpp"
#include "gateway/stream_registry.hpp"

namespace prometheus {
class Counter;
class Gauge;
class Histogram;
}  // namespace prometheus

namespace engram::gateway {

using plain_stream = boost::beast::tcp_stream;
using tls_stream = boost::beast::ssl_stream<boost::beast::tcp_stream>;

// Anything the server must reach during shutdown.
class session_base {
 public:
  virtual ~session_base() = default;
  // Posts to the session's thread: close idle HTTP connections, end streams with a
  // resumable "going away".
  virtual void shutdown() = 0;
  // Stream sessions: ?text=1 (work units carry their payload as "text"); set before start.
  bool with_text = false;
  // Stream sessions: the operator's view (stream_registry), and what ended the stream.
  std::shared_ptr<stream_registry::entry> entry;
  std::string ended_by = "client";
};

struct stream_metrics {
  prometheus::Gauge* ws_subscribers = nullptr;
  prometheus::Gauge* sse_subscribers = nullptr;
  prometheus::Counter* ws_delivered = nullptr;
  prometheus::Counter* sse_delivered = nullptr;
  prometheus::Counter* lag_closes = nullptr;
  prometheus::Histogram* publish_to_write = nullptr;
};

struct server::impl {
  options opts;
  handler_fn handler;
  engine::engine* eng = nullptr;  // for streams; null disables /stream and /stream-sse
  std::atomic<bool> shutting_down{false};

  std::mutex mu;
  std::condition_variable drained;
  std::unordered_map<uint64_t, std::weak_ptr<session_base>> sessions;
  uint64_t next_session = 0;

  prometheus::Gauge* active = nullptr;
  prometheus::Counter* accepted = nullptr;
  prometheus::Counter* rejected = nullptr;
  prometheus::Counter* rate_limited = nullptr;
  stream_metrics streams;
  stream_registry* stream_log = nullptr;  // may be null (no subscriber listing)

  std::shared_ptr<boost::asio::ssl::context> tls;  // set when server.tls.cert is configured
  std::shared_ptr<const authenticator> authn;
  rate_limiter connection_limit;
  stream_slots streams_open;

  impl(options o, handler_fn h, std::shared_ptr<const authenticator> a)
      : opts(std::move(o)),
        handler(std::move(h)),
        authn(std::move(a)),
        connection_limit(opts.limits.connections, "new connections"),
        streams_open(opts.limits.max_streams, opts.limits.max_streams_per_agent) {}

  uint64_t add(const std::shared_ptr<session_base>& s);
  void forget(uint64_t id);
};

// Writes an answer (serialize(): the headers every answer carries) with one gather
// write of its head and body, then calls done(ec). The caller arms the timeout.
template <class Stream, class Done>
void async_write_response(Stream& stream, response r, unsigned version, bool keep_alive, Done done) {
  auto out = std::make_shared<response_bytes>(serialize(std::move(r), version, keep_alive));
  const std::array<boost::asio::const_buffer, 2> buffers{boost::asio::buffer(out->head),
                                                         boost::asio::buffer(out->body)};
  boost::asio::async_write(stream, buffers,
                           [out, done = std::move(done)](boost::system::error_code ec, size_t) mutable { done(ec); });
}

// Hand-offs from an HTTP session whose request asked for a stream. The parameters
// were validated; these take over the socket.
// `who` was authenticated and `sub` authorized; `slot` counts the stream open.
struct stream_start {
  engine::stream_request sub;
  caller who;
  stream_slots::slot slot;
  std::string request_id;
  bool with_text = false;  // ?text=1: units carry their payload as "text"
};
// Defined (and instantiated for plain_stream and tls_stream) in stream_sessions.cpp.
template <class Stream>
void start_websocket(Stream stream, boost::beast::http::request<boost::beast::http::string_body> req,
                     stream_start start, std::shared_ptr<server::impl> srv);
// With `mcp`, the stream speaks MCP (stream_takeover): its first frame, then a
// notification per write carrying new units, rather than Engram's events.
struct stream_takeover;
template <class Stream>
void start_sse(Stream stream, unsigned version, std::vector<std::pair<std::string, std::string>> headers,
               stream_start start, bool single_context, std::shared_ptr<server::impl> srv,
               std::shared_ptr<const stream_takeover> mcp = nullptr);

}  // namespace engram::gateway
