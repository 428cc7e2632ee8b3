// WebSocket (/stream) and SSE (/stream-sse) sessions: I/O only. Each owns one
// engine::stream, writes with a single writer (one write in flight), sends
// heartbeats, and ends with a resumable reason when the subscriber lags too far or
// the server shuts down. Threading: everything runs on the session's I/O thread
// (its executor); the stream's notify posts to it.
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/beast/websocket/ssl.hpp>
#include <boost/url/encode.hpp>
#include <boost/url/rfc/unreserved_chars.hpp>
#include <nlohmann/json.hpp>

#include "engine/drafts.hpp"
#include "engine/presence.hpp"
#include "gateway/coalescing_stream.hpp"
#include "gateway/errors.hpp"
#include "gateway/fields.hpp"
#include "gateway/routes.hpp"
#include "gateway/server_impl.hpp"
#include "gateway/takeover.hpp"
#include "gateway/stream_params.hpp"
#include "gateway/wake_service.hpp"
#include "model/text.hpp"

namespace engram::gateway {
namespace {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
using model::json;
using steady = std::chrono::steady_clock;

constexpr size_t poll_bytes = 256 * 1024;  // most event bytes taken per write round
// Writes a pump finishes at once before it leaves the rest to an asynchronous one
// (and the thread to its other connections).
constexpr int max_sync_writes = 4;
// What a session keeps between writes (a few events' worth): more, after a burst
// or a catch-up batch, is freed, so an idle subscriber holds little.
constexpr size_t kept_text_bytes = 4 * 1024;  // an SSE session's framed text
constexpr size_t kept_event_slots = 64;       // the events a write carried
// WebSocket close codes in the private range (RFC 6455 §7.4.2): clients reconnect
// with their cursor.
constexpr uint16_t close_lagging = 4000;
constexpr uint16_t close_token_expired = 4001;

std::atomic<uint64_t> next_client_id{1};

json positions_json(const engine::stream& s) {
  json list = json::array();
  for (const auto& p : s.positions())
    list.push_back(
        {{"context_id", p.context_id}, {"from_seq", p.from_seq}, {"head_seq", p.head_seq}, {"exists", p.exists}});
  return list;
}

// {"type":"subscribe_ack","contexts":[…]} plus, when a pattern matched nothing,
// "unmatched_patterns":[…], so a client can warn about a misspelt id or pattern.
json subscribe_ack(const engine::stream& s) {
  json ack{{"type", "subscribe_ack"}, {"contexts", positions_json(s)}};
  if (!s.unmatched_patterns().empty()) ack["unmatched_patterns"] = s.unmatched_patterns();
  return ack;
}

// ?text=1: each work unit gets its payload as "text", in a copy for this subscriber
// (the shared wire form stays what v3 clients read). Other events pass unchanged.
void add_text(std::vector<router::event_ptr>& events) {
  for (auto& ev : events) {
    if (!ev->sse_event.empty()) continue;
    auto copy = std::make_shared<router::wire_event>(*ev);
    copy->json = model::with_text_json(ev->json);
    ev = std::move(copy);
  }
}

model::result<std::string> required_string(const json& msg, const char* field) {
  auto v = msg.find(field);
  if (v == msg.end() || !v->is_string())
    return model::fail(model::errc::invalid_argument, std::string(field) + " is required and must be a string");
  return v->get<std::string>();
}

// Registers the stream for operators (GET /contexts/{id}/subscribers, gauges, the
// access log's line when it ends). `owner_key` and `stop`: for a stream a later
// request may end (MCP resources/unsubscribe).
std::shared_ptr<stream_registry::entry> register_stream(server::impl& srv, std::string_view transport,
                                                        const caller& who, std::string request_id,
                                                        std::string owner_key = {}, std::function<void()> stop = {}) {
  auto e = std::make_shared<stream_registry::entry>();
  e->transport = transport;
  e->agent = who.principal ? who.principal->agent : std::string();
  e->ip = who.ip;
  e->request_id = std::move(request_id);
  e->owner_key = std::move(owner_key);
  e->stop = std::move(stop);
  if (srv.stream_log) srv.stream_log->register_stream(e);
  return e;
}

void deregister_stream(server::impl& srv, const session_base& s, unsigned status) {
  if (srv.stream_log && s.entry) srv.stream_log->close_stream(s.entry, status, s.ended_by, srv.opts.access_log);
}

void note_subscription(const session_base& s, const std::shared_ptr<engine::stream>& stream,
                       std::vector<std::string> contexts, std::vector<std::string> prefixes) {
  if (s.entry) s.entry->subscribe(stream, std::move(contexts), std::move(prefixes));
}

// Closes a WebSocket session's socket at once (the bare socket over plain TCP, the
// tcp_stream under TLS), ignoring errors: the connection is being abandoned.
void close_socket(net::ip::tcp::socket& s) {
  beast::error_code ignored;
  s.close(ignored);
}
void close_socket(beast::tcp_stream& s) { s.close(); }

// Empties a buffer after its write, keeping its storage for the next one unless it
// grew past `max_capacity` elements.
template <class Container>
void clear_keeping(Container& x, size_t max_capacity) {
  if (x.capacity() > max_capacity) release_storage(x);
  else x.clear();
}

// What one write of a stream session carried, counted the same way for both
// transports: publish → write latency (against one clock read), the transport's
// delivered counter, and the subscriber listing's events and bytes.
void count_written(session_base& session, prometheus::Histogram* latency, prometheus::Counter* delivered,
                   const std::vector<router::event_ptr>& events, size_t bytes) {
  if (latency && !events.empty()) {
    const auto now = steady::now();
    for (const auto& ev : events) latency->Observe(std::chrono::duration<double>(now - ev->published).count());
  }
  if (delivered) delivered->Increment(double(events.size()));
  if (session.entry) {
    session.entry->events += events.size();
    session.entry->bytes += bytes;
  }
}

// A stream's notify for `session`: its wake() on its own thread, in one handler
// with the other sessions woken on that thread meanwhile (wake_service.hpp).
// Sessions run on an io_context's own executor (server.cpp); on any other (a
// strand, say) each wake is posted on its own, as before the batching.
std::function<void()> waker(std::weak_ptr<wakeable> session, const net::any_io_executor& exec) {
  if (const auto* own = exec.target<net::io_context::executor_type>())
    return [session, svc = &net::use_service<wake_service>(own->context())] { svc->wake(session); };
  return [session, exec] {
    net::post(exec, [session] {
      if (auto s = session.lock()) s->wake();
    });
  };
}

// ---------------------------------------------------------------------------------
template <class Stream>
class ws_session final : public session_base,
                         public wakeable,
                         public std::enable_shared_from_this<ws_session<Stream>> {
  using std::enable_shared_from_this<ws_session<Stream>>::shared_from_this;

 public:
  ws_session(Stream&& stream, std::shared_ptr<server::impl> srv, caller who, stream_slots::slot slot)
      : ws_(std::move(stream)), srv_(std::move(srv)), who_(std::move(who)), slot_(std::move(slot)),
        timer_(ws_.get_executor()) {}
  ~ws_session() override {
    if (stream_) stream_->close();
    release_presence();
    if (!accepted_) ended_by = "handshake failed";
    deregister_stream(*srv_, *this, accepted_ ? 101 : 400);
    if (counted_ && srv_->streams.ws_subscribers) srv_->streams.ws_subscribers->Decrement();
    srv_->forget(id_);
  }

  void start(http::request<http::string_body> req, engine::stream_request sub, std::string request_id) {
    id_ = srv_->add(shared_from_this());
    ws_.next_layer().keep_alive_with(this->weak_from_this());
    // What appends over the socket present as credentials: the upgrade's.
    for (std::string_view name : {"authorization", "cookie"})
      if (auto v = req[name]; !v.empty()) auth_headers_.emplace_back(std::string(name), std::string(v));
    // Liveness: Beast pings a client it has heard nothing from (no message, no pong)
    // for half of stream_idle_timeout and drops it after the whole. Every browser
    // and WebSocket library answers pings, so a healthy client that never writes
    // (an Engram v3 subscriber) stays; a dead peer is dropped.
    ws_.set_option(websocket::stream_base::timeout{std::chrono::seconds(30), srv_->opts.stream_idle_timeout, true});
    ws_.set_option(websocket::stream_base::decorator([request_id = std::move(request_id)](websocket::response_type& res) {
      res.set(http::field::server, "engram");
      if (!request_id.empty()) res.set("X-Request-Id", request_id);
    }));
    ws_.read_message_max(srv_->opts.ws_max_message_bytes);
    ws_.text(true);
    ws_.async_accept(req, [self = shared_from_this(), sub = std::move(sub)](beast::error_code ec) mutable {
      if (ec) return;  // handshake failed; the session ends
      self->accepted_ = true;
      if (self->close_deferred_) return self->do_close();  // shut down during the handshake
      self->on_open(std::move(sub));
    });
  }

  void wake() override { pump(); }  // the stream has something to send

  void shutdown() override {
    net::post(ws_.get_executor(), [self = shared_from_this()] {
      self->close_with(websocket::close_code::going_away, "server shutting down; reconnect and resume from your last seq");
    });
  }

 private:
  void on_open(engine::stream_request sub) {
    if (srv_->streams.ws_subscribers) srv_->streams.ws_subscribers->Increment();
    counted_ = true;
    control(json{{"event", "connected"}, {"client_id", "c" + std::to_string(next_client_id++)}});
    subscribe(std::move(sub));
    arm_heartbeat();
    read();
  }

  // (Re)places the subscription; the ack (where replay starts, current heads) is
  // written before any of the new stream's events.
  void subscribe(engine::stream_request sub) {
    if (stream_) stream_->close();
    stream_.reset();
    release_presence();
    const bool presence = sub.presence;
    const std::string agent = sub.agent_id;
    // Events of the old subscription still being written are in sending_events_.
    batch_.clear();
    batch_pos_ = 0;
    ++subscription_;
    auto asked_contexts = sub.contexts, asked_prefixes = sub.prefixes;
    auto opened = srv_->eng->open_stream(std::move(sub), waker(this->weak_from_this(), ws_.get_executor()));
    if (!opened) {
      if (entry) entry->unsubscribe();
      control(json{{"type", "error"}, {"error", opened.error().message}});
      return;
    }
    stream_ = std::move(*opened);
    if (presence) hold_presence(agent, asked_contexts);
    note_subscription(*this, stream_, std::move(asked_contexts), std::move(asked_prefixes));
    control(subscribe_ack(*stream_));
  }

  void control(const json& msg) {
    control_.push_back(model::dump(msg));
    pump();
  }

  // The single writer: every queued control message, then the events of the
  // current batch (up to poll_bytes), framed into one gather write. The bytes stay
  // in sending_controls_ and the events' shared wire form until it completes. A
  // write the socket takes at once (try_flush_now) is finished here and the loop
  // goes on with what is queued next, up to max_sync_writes times; otherwise the
  // write completes asynchronously and pumps again.
  void pump() {
    for (int sync_writes = 0;; ++sync_writes) {
      // !is_open(): the client's close frame arrived and Beast answered it; nothing
      // may follow (on_closed comes when the read ends).
      if (writing_ || closing_ || !ws_.is_open()) return;
      auto& out = ws_.next_layer();
      sending_controls_.swap(control_);  // empty after every write
      for (const auto& message : sending_controls_) out.add_text_frame(message);
      if (stream_ && next_batch()) {
        for (size_t bytes = 0; batch_pos_ < batch_.size() && bytes < poll_bytes; ++batch_pos_) {
          out.add_text_frame(batch_[batch_pos_]->json);
          bytes += batch_[batch_pos_]->json.size();
          sending_events_.push_back(batch_[batch_pos_]);
        }
      }
      if (closing_ || (sending_controls_.empty() && sending_events_.empty())) return;
      writing_ = true;
      if (sync_writes < max_sync_writes && out.try_flush_now()) {
        if (!written({})) return;
        continue;
      }
      write_started_ = steady::now();  // for the write deadline (arm_heartbeat)
      out.async_flush([self = shared_from_this()](beast::error_code ec) {
        if (self->written(ec)) self->pump();
      });
      return;
    }
  }

  // True when batch_ has events left to send: the stream's queue, or storage for a
  // subscriber behind it (which pumps again when read).
  bool next_batch() {
    if (batch_pos_ < batch_.size()) return true;
    if (stream_->lagging()) {
      if (srv_->streams.lag_closes) srv_->streams.lag_closes->Increment();
      close_with(close_lagging, "subscriber fell too far behind; reconnect and resume from your last seq");
      return false;
    }
    if (reading_) return false;  // on_read() pumps again
    auto queued = stream_->poll_queued(poll_bytes);
    if (!queued) {
      read_from_storage();
      return false;
    }
    batch_ = std::move(*queued);
    if (with_text) add_text(batch_);
    batch_pos_ = 0;
    return !batch_.empty();  // else the stream notifies when there is more
  }

  // A write finished (or failed): counts what it carried. False when nothing more
  // is to be written (it failed, or a close was waiting for it).
  bool written(beast::error_code ec) {
    writing_ = false;
    release_storage(sending_controls_);  // rare and small: not worth keeping on an idle connection
    if (ec) {
      sending_events_.clear();
      return false;
    }
    if (sending_events_.empty()) {
      ws_.next_layer().release_buffers();  // control messages only: likely idle
    } else {
      size_t bytes = 0;  // the events' JSON (an SSE session counts all it writes)
      for (const auto& ev : sending_events_) bytes += ev->json.size();
      count_written(*this, srv_->streams.publish_to_write, srv_->streams.ws_delivered, sending_events_, bytes);
      clear_keeping(sending_events_, kept_event_slots);
    }
    if (close_deferred_) {
      do_close();
      return false;
    }
    return true;
  }

  // Catch-up reads storage on the engine's read pool, never on this thread.
  void read_from_storage() {
    reading_ = true;
    srv_->eng->poll_stream(stream_, poll_bytes, [self = shared_from_this(), sub = subscription_](auto next) {
      net::post(self->ws_.get_executor(), [self, sub, next = std::move(next)]() mutable {
        self->on_read(sub, std::move(next));
      });
    });
  }

  void on_read(uint64_t sub, model::result<std::vector<router::event_ptr>> next) {
    reading_ = false;
    if (closing_) return;
    if (sub != subscription_) return pump();  // read for a replaced subscription
    if (!next) {
      if (srv_->shutting_down)
        return close_with(websocket::close_code::going_away,
                          "server shutting down; reconnect and resume from your last seq");
      spdlog::error("stream: catch-up read failed: {}", next.error().message);
      return close_with(websocket::close_code::try_again_later, "temporary storage error; resume from your last seq");
    }
    batch_ = std::move(*next);
    if (with_text) add_text(batch_);
    batch_pos_ = 0;
    pump();
  }

  // Reads a client message piece by piece into in_, which is empty between
  // messages, so an idle subscriber holds no read buffer (Beast's async_read into
  // a flat_buffer keeps ~1.5 KiB per connection prepared for the next message). A
  // message's first piece fits in the string's inline storage; the rest is read in
  // pieces of what the current frame has left (read_size_hint(1): 1 between
  // frames), up to max_read_piece, so in_ never grows past what the client sent
  // and a message of many tiny frames costs no more than their bytes. Beast checks
  // UTF-8 across pieces and the size against read_message_max as for whole reads.
  void read() {
    const size_t have = in_.size();
    const size_t want = have == 0 ? std::string().capacity()
                                  : std::clamp(ws_.read_size_hint(1), size_t(1), max_read_piece);
    in_.resize(have + want);
    ws_.async_read_some(net::buffer(in_.data() + have, want), [self = shared_from_this(), have](beast::error_code ec,
                                                                                                  size_t n) {
      if (ec) {
        if (ec == beast::error::timeout) self->ended_by = "idle";  // no message or pong for stream_idle_timeout
        return self->on_closed();
      }
      self->in_.resize(have + n);
      if (self->ws_.is_message_done()) self->on_message(std::exchange(self->in_, std::string()));
      self->read();
    });
  }

  void on_message(const std::string& text) {
    auto msg = model::parse_json(text);
    if (!msg || !msg->is_object() || !msg->contains("type") || !(*msg)["type"].is_string())
      return control(json{{"type", "error"}, {"error", "messages must be JSON objects with a string \"type\""}});
    const auto type = (*msg)["type"].get<std::string>();
    if (type == "heartbeat") return control(json{{"type", "heartbeat_ack"}});
    if (type == "append") return append(*msg);
    if (type == "delta") return delta(*msg);
    if (type == "draft_commit") return draft_commit(*msg);
    if (type == "draft_abort") return draft_abort(*msg);
    if (type == "subscribe") {
      auto sub = parse_subscribe_message(*msg);
      if (!sub) return control(json{{"type", "error"}, {"error", sub.error().message}});
      if (auto ok = authorize_stream(*sub, who_); !ok)
        return control(json{{"type", "error"},
                            {"error", ok.error().message},
                            {"status", ok.error().code == model::errc::forbidden ? 403 : 400}});
      return subscribe(std::move(*sub));
    }
    control(json{{"type", "error"}, {"error", "unknown message type '" + type.substr(0, 64) + "'"}});
  }

  // {"type":"append","request_id","work_unit":{…}} or {…,"context_id","agent_id"?,
  // "work_units":[…]}, with "idempotency_key"? and "fence"?: the same request as
  // POST /workunit or /workunits, through the same route (validation, auth, rate
  // limits, idempotency, durability), answered by append_ack once committed or
  // append_error. Many may be in flight; their answers come as they complete.
  // A client's request_id: echoed in the answer so it can match answers to
  // messages (they may come in any order). nullopt: invalid, answered already.
  std::optional<std::string> request_id_of(const json& msg, std::string_view error_type) {
    auto id = msg.find("request_id");
    if (id == msg.end() || id->is_null()) return std::string();
    if (id->is_string() && id->get_ref<const std::string&>().size() <= 128) return id->get<std::string>();
    control(json{{"type", error_type}, {"status", 400}, {"error", "request_id must be a string of at most 128 bytes"}});
    return std::nullopt;
  }

  void append(const json& msg) {
    auto request_id = request_id_of(msg, "append_error");
    if (!request_id) return;
    auto refuse = [&](unsigned status, std::string error) {
      control(json{{"type", "append_error"}, {"request_id", *request_id}, {"status", status}, {"error", std::move(error)}});
    };
    const auto one = msg.find("work_unit");
    const auto many = msg.find("work_units");
    if ((one == msg.end()) == (many == msg.end()))
      return refuse(400, "append needs \"work_unit\": {…} or \"work_units\": […] (one of them)");
    if (one != msg.end()) {
      if (!one->is_object()) return refuse(400, "work_unit must be an object");
      json unit = *one;
      if (auto f = msg.find("fence"); f != msg.end() && !unit.contains("fence")) unit["fence"] = *f;
      return forward(msg, *request_id, "/workunit", model::dump(unit));
    }
    json batch = json::object();
    for (const char* k : {"context_id", "agent_id", "fence"})
      if (auto v = msg.find(k); v != msg.end()) batch[k] = *v;
    batch["work_units"] = *many;
    forward(msg, *request_id, "/workunits", model::dump(batch));
  }

  // {"type":"draft_commit","request_id","draft_id","work_unit":{…},"idempotency_key"?,
  // "fence"?}: POST /contexts/{ctx}/drafts/{draft_id}/commit, answered like an append.
  void draft_commit(const json& msg) {
    auto request_id = request_id_of(msg, "append_error");
    if (!request_id) return;
    auto refuse = [&](unsigned status, std::string error) {
      control(json{{"type", "append_error"}, {"request_id", *request_id}, {"status", status}, {"error", std::move(error)}});
    };
    const auto draft = msg.find("draft_id");
    if (draft == msg.end() || !draft->is_string()) return refuse(400, "draft_commit needs \"draft_id\" (a string)");
    const auto unit = msg.find("work_unit");
    if (unit == msg.end() || !unit->is_object()) return refuse(400, "draft_commit needs \"work_unit\": {…}, the final unit");
    json body = *unit;
    std::string ctx;
    if (auto c = body.find("context_id"); c != body.end() && c->is_string()) ctx = c->get<std::string>();
    else if (auto m = msg.find("context_id"); m != msg.end() && m->is_string()) ctx = m->get<std::string>();
    if (ctx.empty()) return refuse(400, "draft_commit needs the draft's context_id (in work_unit or the message)");
    if (auto f = msg.find("fence"); f != msg.end() && !body.contains("fence")) body["fence"] = *f;
    auto encode = [](const std::string& v) { return boost::urls::encode(v, boost::urls::unreserved_chars); };
    forward(msg, *request_id, "/contexts/" + encode(ctx) + "/drafts/" + encode(draft->get<std::string>()) + "/commit",
            model::dump(body));
  }

  // Runs a POST through the route table as this connection's client (its upgrade's
  // credentials, rate limits, idempotency) and answers append_ack once committed,
  // or append_error. Many may be in flight; their answers come as they complete.
  void forward(const json& msg, const std::string& request_id, std::string target, std::string body) {
    if (appends_in_flight_ >= max_appends_in_flight)
      return control(json{{"type", "append_error"}, {"request_id", request_id}, {"status", 429},
                          {"error", "more than " + std::to_string(max_appends_in_flight) +
                                        " appends in flight on this connection; wait for their acks"}});
    request req;
    req.method = "POST";
    req.target = std::move(target);
    req.body = std::move(body);
    req.remote_ip = who_.ip;
    req.request_id = request_id_for("");
    req.cookie_ok = true;
    req.headers = auth_headers_;
    req.set_header("content-type", "application/json");
    if (auto key = msg.find("idempotency_key"); key != msg.end() && !key->is_null()) {
      if (!key->is_string())
        return control(json{{"type", "append_error"}, {"request_id", request_id}, {"status", 400},
                            {"error", "idempotency_key must be a string"}});
      req.set_header("idempotency-key", key->get<std::string>());
    }
    ++appends_in_flight_;
    std::weak_ptr<ws_session> weak = this->shared_from_this();
    srv_->handler(std::move(req), [weak, exec = ws_.get_executor(), request_id](response r) {
      net::post(exec, [weak, request_id, r = std::move(r)] {
        auto self = weak.lock();
        if (!self) return;
        --self->appends_in_flight_;
        // The route's JSON object, spliced into the ack: {"type":…,"request_id":…,<its members>}.
        std::string out = r.status < 300 ? R"({"type":"append_ack","request_id":)" : R"({"type":"append_error","request_id":)";
        model::append_json_string(out, request_id);
        if (r.status >= 300) out += ",\"status\":" + std::to_string(r.status);
        // A 429 or 503 says when to retry, as its Retry-After header would.
        for (const auto& [name, value] : r.headers)
          if (beast::iequals(name, "retry-after") && !value.empty() &&
              value.find_first_not_of("0123456789") == std::string::npos)
            out += ",\"retry_after_s\":" + value;
        if (r.body.size() > 2 && r.body.front() == '{') out.append(",").append(r.body, 1);
        else out.push_back('}');
        self->control_.push_back(std::move(out));
        self->pump();
      });
    });
  }

  // The ids a draft message names, checked, with the acting agent (the message's
  // agent_id, else the token's subject) and its write grant on the context.
  struct draft_target {
    std::string context_id, draft_id, agent;
  };
  model::result<draft_target> draft_target_of(const json& msg, field_names known) {
    if (srv_->opts.reject_unknown_fields)
      if (auto ok = check_fields(msg, known, "the message"); !ok) return std::unexpected(ok.error());
    draft_target t;
    for (auto [field, out] : {std::pair{"context_id", &t.context_id}, std::pair{"draft_id", &t.draft_id}}) {
      auto v = required_string(msg, field);
      if (!v) return std::unexpected(v.error());
      *out = std::move(*v);
    }
    if (auto bad = model::check_identifier("context_id", t.context_id, model::max_id_bytes))
      return model::fail(model::errc::invalid_argument, *bad);
    if (auto ok = check_draft_id(t.draft_id); !ok) return std::unexpected(ok.error());
    if (auto a = msg.find("agent_id"); a != msg.end() && !a->is_null()) {
      if (!a->is_string()) return model::fail(model::errc::invalid_argument, "agent_id must be a string");
      t.agent = a->get<std::string>();
    }
    if (t.agent.empty() && who_.principal) t.agent = who_.principal->agent;
    if (t.agent.empty()) return model::fail(model::errc::invalid_argument, "agent_id is required (or a token naming the agent)");
    if (auto bad = model::check_identifier("agent_id", t.agent, model::max_id_bytes))
      return model::fail(model::errc::invalid_argument, *bad);
    if (auto ok = acting_as(who_, t.agent); !ok) return std::unexpected(ok.error());
    if (!who_.can(auth::write, t.context_id))
      return model::fail(model::errc::forbidden, "not allowed to write context '" + t.context_id + "'");
    return t;
  }

  // Answers a draft message: draft_error always, draft_ack only when the client
  // sent a request_id (a token stream need not be acknowledged delta by delta).
  void draft_answer(const json& msg, const std::string& request_id, model::result<json> answer) {
    if (!answer) {
      json err{{"type", "draft_error"}, {"status", http_status(answer.error().code)}, {"error", answer.error().message}};
      if (!request_id.empty()) err["request_id"] = request_id;
      for (const char* k : {"context_id", "draft_id", "index"})
        if (auto v = msg.find(k); v != msg.end() && (v->is_string() || v->is_number_unsigned())) err[k] = *v;
      return control(err);
    }
    if (request_id.empty()) return;
    (*answer)["type"] = "draft_ack";
    (*answer)["request_id"] = request_id;
    control(*answer);
  }

  // {"type":"delta","context_id","draft_id","agent_id"?,"index","text"|"payload",
  // "request_id"?}: applied to the draft and shown to the context's subscribers.
  void delta(const json& msg) {
    auto request_id = request_id_of(msg, "draft_error");
    if (!request_id) return;
    auto apply = [&]() -> model::result<json> {
      auto t = draft_target_of(msg, fields::ws_delta);
      if (!t) return std::unexpected(t.error());
      auto registry = srv_->eng->draft_registry();
      if (!registry) return std::unexpected(registry.error());
      auto d = draft_delta_from(msg, t->context_id, t->draft_id, t->agent);
      if (!d) return std::unexpected(d.error());
      d->owner = "ws:" + std::to_string(id_);
      const uint64_t index = d->index;
      auto applied = (*registry)->add(std::move(*d));
      if (!applied) return std::unexpected(applied.error());
      return json{{"draft_id", t->draft_id}, {"index", index}, {"duplicate", !*applied}};
    };
    draft_answer(msg, *request_id, apply());
  }

  // {"type":"draft_abort","context_id","draft_id","agent_id"?,"request_id"?}.
  void draft_abort(const json& msg) {
    auto request_id = request_id_of(msg, "draft_error");
    if (!request_id) return;
    auto apply = [&]() -> model::result<json> {
      auto t = draft_target_of(msg, fields::ws_draft_abort);
      if (!t) return std::unexpected(t.error());
      auto registry = srv_->eng->draft_registry();
      if (!registry) return std::unexpected(registry.error());
      auto ended = (*registry)->end(t->context_id, t->draft_id, t->agent, engine::draft_end::aborted);
      if (!ended) return std::unexpected(ended.error());
      if (!*ended)
        return model::fail(model::errc::not_found, "no open draft '" + t->draft_id + "' in context '" + t->context_id + "'");
      return json{{"draft_id", t->draft_id}, {"aborted", true}};
    };
    draft_answer(msg, *request_id, apply());
  }

  void arm_heartbeat() {
    timer_.expires_after(srv_->opts.stream_heartbeat);
    timer_.async_wait([self = shared_from_this()](beast::error_code ec) {
      if (ec || self->closing_) return;
      // A client that stopped reading leaves our write pending forever; its stream
      // is already bounded (catch-up), so release the connection: it can resume.
      if (self->writing_ && (steady::now() - self->write_started_ > self->srv_->opts.write_timeout ||
                             (self->stream_ && self->stream_->lagging()))) {
        if (self->srv_->streams.lag_closes) self->srv_->streams.lag_closes->Increment();
        self->closing_ = true;
        self->ended_by = "lagging";
        if (self->stream_) self->stream_->close();
        close_socket(beast::get_lowest_layer(self->ws_));
        return;
      }
      if (self->srv_->authn->expired(self->who_))
        return self->close_with(close_token_expired, "token expired; reconnect with a fresh token and your last seq");
      self->control(json{{"type", "heartbeat"}});
      self->arm_heartbeat();
    });
  }

  // Sends a close frame once nothing else is being written: never overlap the
  // handshake's response or one of our writes (Beast does not serialise a close
  // against the accept's response write; overlapping writes corrupt the stream).
  void close_with(uint16_t code, std::string reason) {
    if (closing_) return;
    closing_ = true;
    timer_.cancel();
    if (stream_) stream_->close();
    close_reason_.code = code;
    close_reason_.reason = reason;
    ended_by = code == close_lagging                                  ? "lagging"
               : code == close_token_expired                          ? "expired"
               : code == websocket::close_code::going_away            ? "shutdown"
               : code == websocket::close_code::policy_error          ? "idle"
               : code == websocket::close_code::try_again_later       ? "error"
                                                                      : "server";
    if (!accepted_ || writing_) {
      close_deferred_ = true;  // done when the handshake or the current write completes
      return;
    }
    do_close();
  }

  void do_close() {
    close_deferred_ = false;
    ws_.async_close(close_reason_, [self = shared_from_this()](beast::error_code) {});
  }

  void on_closed() {
    closing_ = true;
    timer_.cancel();
    if (stream_) stream_->close();
    release_presence();
  }

  // Presence through the connection (README, Presence): the subscription's agent
  // is held present in its exact contexts until the subscription is replaced or the
  // connection ends, then leaves after presence.ws_grace_ms.
  void hold_presence(const std::string& agent, const std::vector<std::string>& contexts) {
    auto p = srv_->eng->presence_manager();
    if (!p) return control(json{{"type", "error"}, {"error", p.error().message}, {"status", 503}});
    present_agent_ = agent;
    present_in_ = contexts;
    std::weak_ptr<ws_session> weak = this->shared_from_this();
    (*p)->connect(id_, present_agent_, present_in_, [weak, exec = ws_.get_executor()](model::status ok) {
      if (ok) return;
      net::post(exec, [weak, msg = ok.error().message] {
        if (auto self = weak.lock()) self->control(json{{"type", "error"}, {"error", "presence: " + msg}, {"status", 503}});
      });
    });
  }

  void release_presence() {
    if (present_in_.empty()) return;
    if (auto p = srv_->eng->presence_manager()) (*p)->disconnect(id_, present_agent_, present_in_);
    present_in_.clear();
  }

  websocket::stream<coalescing_stream<Stream>> ws_;
  std::shared_ptr<server::impl> srv_;
  caller who_;
  stream_slots::slot slot_;
  uint64_t id_ = 0;
  static constexpr size_t max_appends_in_flight = 1024;
  size_t appends_in_flight_ = 0;
  std::vector<std::pair<std::string, std::string>> auth_headers_;  // the upgrade's credentials, for appends
  std::string present_agent_;              // presence held by this connection, if any
  std::vector<std::string> present_in_;
  net::steady_timer timer_;
  std::string in_;  // the client message being read
  static constexpr size_t max_read_piece = 64 * 1024;
  std::shared_ptr<engine::stream> stream_;
  std::vector<std::string> control_;  // not a deque: an empty one allocates ~600 B
  std::vector<std::string> sending_controls_;      // in the write in flight
  std::vector<router::event_ptr> sending_events_;  // in the write in flight
  std::vector<router::event_ptr> batch_;
  size_t batch_pos_ = 0;
  uint64_t subscription_ = 0;  // bumped by each subscribe(): which subscription a catch-up read is for
  bool writing_ = false;
  bool reading_ = false;  // a catch-up read is on the read pool
  bool closing_ = false;
  bool counted_ = false;
  bool accepted_ = false;
  bool close_deferred_ = false;
  websocket::close_reason close_reason_;
  steady::time_point write_started_;
};

// ---------------------------------------------------------------------------------
template <class Stream>
class sse_session final : public session_base,
                          public wakeable,
                          public std::enable_shared_from_this<sse_session<Stream>> {
  using std::enable_shared_from_this<sse_session<Stream>>::shared_from_this;

 public:
  sse_session(Stream&& stream, std::shared_ptr<server::impl> srv, bool single_context, caller who,
              stream_slots::slot slot, std::shared_ptr<const stream_takeover> mcp)
      : stream_(std::move(stream)), srv_(std::move(srv)), single_(single_context), who_(std::move(who)),
        slot_(std::move(slot)), mcp_(std::move(mcp)), timer_(stream_.get_executor()) {}
  ~sse_session() override {
    if (sub_) sub_->close();
    deregister_stream(*srv_, *this, refused_status_ ? refused_status_ : 200);
    if (counted_ && srv_->streams.sse_subscribers) srv_->streams.sse_subscribers->Decrement();
    srv_->forget(id_);
  }

  void start(unsigned version, std::vector<std::pair<std::string, std::string>> headers, engine::stream_request req) {
    id_ = srv_->add(shared_from_this());
    auto asked_contexts = req.contexts, asked_prefixes = req.prefixes;
    auto opened = srv_->eng->open_stream(std::move(req), waker(this->weak_from_this(), stream_.get_executor()));
    if (!opened) return refuse(version, std::move(headers), opened.error());
    sub_ = std::move(*opened);
    note_subscription(*this, sub_, std::move(asked_contexts), std::move(asked_prefixes));
    if (srv_->streams.sse_subscribers) srv_->streams.sse_subscribers->Increment();
    counted_ = true;
    // No Content-Length and no chunking: the body is the rest of the connection.
    out_ = std::string("HTTP/1.") + (version == 10 ? "0" : "1") +
           " 200 OK\r\nServer: engram\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
           "Cache-Control: no-store\r\nConnection: close\r\nX-Accel-Buffering: no\r\nX-Content-Type-Options: nosniff\r\n";
    for (const auto& [k, v] : headers) out_ += k + ": " + v + "\r\n";
    if (mcp_) {
      out_ += "\r\n";
      event("message", mcp_->first_frame, "");
    } else {
      out_ += "\r\nretry: 2000\n";
      event("subscribed", model::dump(subscribe_ack(*sub_)), "");
    }
    watch_for_close();
    arm_heartbeat();
    pump();
  }

  // The stream could not open: an ordinary HTTP error answer, then close.
  void refuse(unsigned version, std::vector<std::pair<std::string, std::string>> headers, const model::error& why) {
    ending_ = true;
    // Bad parameters are the client's; anything else (storage) is worth a retry.
    auto r = error_response(why.code == model::errc::invalid_argument
                                ? why
                                : model::error{model::errc::unavailable, why.message});
    refused_status_ = r.status;
    ended_by = "refused";
    for (auto& h : headers) r.headers.push_back(std::move(h));
    lowest().expires_after(srv_->opts.write_timeout);
    async_write_response(stream_, std::move(r), version, false, [self = shared_from_this()](beast::error_code) { self->close(); });
  }

  void wake() override { pump(); }  // the stream has something to send

  void shutdown() override {
    net::post(stream_.get_executor(), [self = shared_from_this()] {
      self->end("shutdown", "server shutting down; reconnect with Last-Event-ID to resume");
    });
  }

  // Ends the stream from any thread, with a final event named `name`.
  void stop(std::string name, std::string why) {
    net::post(stream_.get_executor(), [self = shared_from_this(), name = std::move(name), why = std::move(why)] {
      self->end(name, why);
    });
  }

 private:
  void event(std::string_view name, std::string_view data, std::string_view id) {
    if (!name.empty()) out_.append("event: ").append(name).push_back('\n');
    if (!id.empty()) out_.append("id: ").append(id).push_back('\n');
    out_.append("data: ").append(data).append("\n\n");  // our JSON never contains raw newlines
  }

  // The single writer: frames what the stream has queued into out_ and writes it.
  // As in the WebSocket session, a write the socket takes at once (try_write_now)
  // is finished here and the loop goes on, up to max_sync_writes times; otherwise
  // write_out writes asynchronously and pumps again when done.
  void pump() {
    for (int sync_writes = 0;; ++sync_writes) {
      if (writing_) return;
      if (out_.empty() && sub_ && !ending_) {
        if (sub_->lagging()) {
          if (srv_->streams.lag_closes) srv_->streams.lag_closes->Increment();
          return end("lagging", "subscriber fell too far behind; reconnect with Last-Event-ID to resume");
        }
        if (reading_) return;  // on_read() pumps again
        auto queued = sub_->poll_queued(poll_bytes);
        if (!queued) return read_from_storage();
        take(std::move(*queued));
      }
      if (out_.empty()) {
        if (ending_) close();
        return;
      }
      if (sync_writes < max_sync_writes && try_write_now()) continue;
      return write_out();
    }
  }

  // Frames events into out_; they are counted as sent with its next write.
  void take(std::vector<router::event_ptr> events) {
    if (mcp_) return take_mcp(std::move(events));
    if (with_text) add_text(events);
    for (auto& ev : events) {
      if (ev->draft) {
        event(ev->sse_event, ev->json, "");  // not in the log: no id, Last-Event-ID stays
      } else {
        cursors_[ev->context_id] = ev->seq;
        event(ev->sse_event, ev->json, single_ ? std::to_string(ev->seq) : resume_token(cursors_));
      }
      pending_.push_back(std::move(ev));
    }
  }

  // MCP: the subscriber reads the resource itself; new units are one notification,
  // however many (drafts and other events change no resource).
  void take_mcp(std::vector<router::event_ptr> events) {
    bool units = false;
    for (auto& ev : events) {
      units = units || (!ev->draft && ev->sse_event.empty());
      pending_.push_back(std::move(ev));
    }
    if (units) event("message", mcp_->notification, "");
  }

  // Catch-up reads storage on the engine's read pool, never on this thread.
  void read_from_storage() {
    reading_ = true;
    srv_->eng->poll_stream(sub_, poll_bytes, [self = shared_from_this()](auto next) {
      net::post(self->stream_.get_executor(), [self, next = std::move(next)]() mutable {
        self->reading_ = false;
        if (self->ending_) return self->pump();
        if (!next && self->srv_->shutting_down)
          return self->end("shutdown", "server shutting down; reconnect with Last-Event-ID to resume");
        if (!next) return self->end("error", "temporary storage error; reconnect with Last-Event-ID to resume");
        self->take(std::move(*next));
        self->pump();
      });
    });
  }

  // Plain TCP: one write_some of out_ that never waits, with no asynchronous
  // write, timer or posted completion when the socket takes all of it (it nearly
  // always has room). False sends out_ through write_out, which skips what the
  // socket took here. TLS always writes asynchronously.
  bool try_write_now() {
    if constexpr (!std::is_same_v<Stream, plain_stream>) {
      return false;
    } else {
      beast::error_code ec;
      const size_t n = write_without_waiting(lowest().socket(), net::buffer(out_), ec);
      if (ec) return false;  // would block, or failed: the asynchronous write finds out which
      if (n < out_.size()) {
        out_taken_ = n;
        return false;
      }
      sent(pending_, out_.size());
      clear_keeping(out_, kept_text_bytes);
      clear_keeping(pending_, kept_event_slots);
      return true;
    }
  }

  void write_out() {
    writing_ = true;
    sending_.swap(out_);
    out_.clear();
    auto events = std::move(pending_);
    pending_.clear();
    const size_t taken = std::exchange(out_taken_, 0);
    lowest().expires_after(srv_->opts.write_timeout);
    net::async_write(stream_, net::buffer(sending_) + taken,
                     [self = shared_from_this(), events = std::move(events)](beast::error_code ec, size_t) {
                       self->writing_ = false;
                       if (ec) return self->close();
                       self->lowest().expires_never();  // the deadline was for this write only
                       self->sent(events, self->sending_.size());
                       clear_keeping(self->sending_, kept_text_bytes);
                       self->pump();
                     });
  }

  // A write carried these events in `bytes`, which count everything written (the
  // response head, `retry:`, heartbeats, and each event's `event:`/`id:`/`data:`
  // lines), where a WebSocket session counts the events' JSON.
  void sent(const std::vector<router::event_ptr>& events, size_t bytes) {
    count_written(*this, srv_->streams.publish_to_write, srv_->streams.sse_delivered, events, bytes);
  }

  // EventSource never sends after the request; a read completing means the client
  // went away (or misbehaves): either way the stream ends.
  void watch_for_close() {
    stream_.async_read_some(net::buffer(scratch_), [self = shared_from_this()](beast::error_code, size_t) {
      self->close();
    });
  }

  void arm_heartbeat() {
    timer_.expires_after(srv_->opts.stream_heartbeat);
    timer_.async_wait([self = shared_from_this()](beast::error_code ec) {
      if (ec || self->ending_) return;
      if (self->srv_->authn->expired(self->who_))
        return self->end("expired", "token expired; reconnect with a fresh token and Last-Event-ID");
      self->out_.append(": heartbeat\n\n");
      self->pump();
      self->arm_heartbeat();
    });
  }

  // Ends the stream with a final named event; EventSource reconnects by itself.
  void end(std::string_view name, std::string_view why) {
    if (ending_) return;
    ended_by = name;
    if (sub_) sub_->close();
    event(name, model::dump(json{{"type", name}, {"reason", why}}), "");
    ending_ = true;
    timer_.cancel();
    pump();
  }

  void close() {
    ending_ = true;
    timer_.cancel();
    if (sub_) sub_->close();
    beast::error_code ec;
    lowest().socket().shutdown(net::ip::tcp::socket::shutdown_both, ec);
    lowest().close();
  }

  beast::tcp_stream& lowest() { return beast::get_lowest_layer(stream_); }

  Stream stream_;
  std::shared_ptr<server::impl> srv_;
  const bool single_;
  caller who_;
  stream_slots::slot slot_;
  std::shared_ptr<const stream_takeover> mcp_;
  uint64_t id_ = 0;
  net::steady_timer timer_;
  std::shared_ptr<engine::stream> sub_;
  std::map<std::string, uint64_t> cursors_;
  std::string out_, sending_;
  std::vector<router::event_ptr> pending_;
  size_t out_taken_ = 0;  // bytes at the front of out_ a partial try_write_now sent
  std::array<char, 512> scratch_{};
  bool writing_ = false;
  bool reading_ = false;  // a catch-up read is on the read pool
  bool ending_ = false;
  bool counted_ = false;
  unsigned refused_status_ = 0;  // the error answered instead of a stream
};

template <class Stream>
void open_websocket(Stream stream, http::request<http::string_body> req, stream_start start,
                    std::shared_ptr<server::impl> srv) {
  auto entry = register_stream(*srv, "websocket", start.who, start.request_id);
  auto s = std::make_shared<ws_session<Stream>>(std::move(stream), std::move(srv), std::move(start.who), std::move(start.slot));
  s->with_text = start.with_text;
  s->entry = std::move(entry);
  s->start(std::move(req), std::move(start.sub), std::move(start.request_id));
}

}  // namespace

template <class Stream>
void start_websocket(Stream stream, http::request<http::string_body> req, stream_start start,
                     std::shared_ptr<server::impl> srv) {
  beast::get_lowest_layer(stream).expires_never();
  if constexpr (std::is_same_v<Stream, plain_stream>) {
    // Over plain TCP the session takes the bare socket: tcp_stream's timers and
    // rate policy serve HTTP, while a WebSocket has its own (Beast's idle pings,
    // our heartbeat's write check). That saves ~0.6 KiB per subscriber and a layer
    // of bookkeeping on every write.
    return open_websocket(stream.release_socket(), std::move(req), std::move(start), std::move(srv));
  } else {
    return open_websocket(std::move(stream), std::move(req), std::move(start), std::move(srv));
  }
}

template <class Stream>
void start_sse(Stream stream, unsigned version, std::vector<std::pair<std::string, std::string>> headers,
               stream_start start, bool single_context, std::shared_ptr<server::impl> srv,
               std::shared_ptr<const stream_takeover> mcp) {
  beast::get_lowest_layer(stream).expires_never();
  auto& state = *srv;
  auto s = std::make_shared<sse_session<Stream>>(std::move(stream), std::move(srv), single_context, start.who,
                                                 std::move(start.slot), mcp);
  std::function<void()> stop;
  if (mcp)
    stop = [weak = std::weak_ptr(s)] {
      if (auto self = weak.lock()) self->stop("unsubscribed", "resources/unsubscribe");
    };
  s->entry = register_stream(state, mcp ? "mcp" : "sse", start.who, start.request_id,
                             mcp ? mcp->owner_key : std::string(), std::move(stop));
  if (!start.request_id.empty()) headers.emplace_back("X-Request-Id", std::move(start.request_id));
  s->with_text = start.with_text;
  s->start(version, std::move(headers), std::move(start.sub));
}

template void start_websocket(plain_stream, http::request<http::string_body>, stream_start,
                              std::shared_ptr<server::impl>);
template void start_websocket(tls_stream, http::request<http::string_body>, stream_start,
                              std::shared_ptr<server::impl>);
template void start_sse(plain_stream, unsigned, std::vector<std::pair<std::string, std::string>>, stream_start, bool,
                        std::shared_ptr<server::impl>, std::shared_ptr<const stream_takeover>);
template void start_sse(tls_stream, unsigned, std::vector<std::pair<std::string, std::string>>, stream_start, bool,
                        std::shared_ptr<server::impl>, std::shared_ptr<const stream_takeover>);

}  // namespace engram::gateway
