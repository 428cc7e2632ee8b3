#include "gateway/server.hpp"

#include <boost/beast/websocket/rfc6455.hpp>
#include <nlohmann/json.hpp>

#include "gateway/errors.hpp"
#include "gateway/access_log.hpp"
#include "gateway/server_impl.hpp"
#include "gateway/stream_params.hpp"
#include "gateway/takeover.hpp"
#include "model/io_thread.hpp"
#include "model/thread_name.hpp"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <spdlog/spdlog.h>

#include <boost/asio/dispatch.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/beast/http.hpp>
#include <array>
#include <atomic>
#include <condition_variable>
#include <future>
#include <iterator>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>

namespace engram::gateway {
namespace {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;

}  // namespace

uint64_t server::impl::add(const std::shared_ptr<session_base>& s) {
  std::lock_guard lock(mu);
  const uint64_t id = next_session++;
  sessions.emplace(id, s);
  if (active) active->Set(double(sessions.size()));
  return id;
}

void server::impl::forget(uint64_t id) {
  std::lock_guard lock(mu);
  sessions.erase(id);
  if (active) active->Set(double(sessions.size()));
  if (sessions.empty()) drained.notify_all();
}

// The I/O machinery, owned by the server alone (see server.hpp).
//
// One io_context per I/O thread, each run by its thread alone; a connection lives
// on one of them for its life (round robin at accept). With one io_context shared
// by all the threads, every handler a thread posts for its own connection woke
// another thread to run it, so a request bounced between threads: on 2 cores
// that made one connection's GET 78 µs instead of 56 µs (bench/README.md). The
// read pool posts to a connection's own executor; a stream's wake-ups (from the
// router) go through its io_context's wake_service, one handler per round of
// woken sessions; storage completions come through server::post, to the thread
// that asked (model::this_io_thread) or else to the threads in turn.
struct server::io {
  // An io_context whose services can be shut down (queued handlers destroyed)
  // before it is destroyed.
  struct io_context : net::io_context {
    using net::io_context::io_context;
    using net::io_context::shutdown;
  };

  std::shared_ptr<server::impl> state;
  std::vector<std::unique_ptr<io_context>> iocs;
  std::optional<tcp::acceptor> acceptor;  // on iocs[0]
  std::vector<std::thread> threads;
  std::vector<net::executor_work_guard<net::io_context::executor_type>> work;
  std::atomic<size_t> next_accept{0}, next_post{0};
  bool stopped = false;

  explicit io(unsigned threads) {
    for (unsigned i = 0; i < threads; ++i) iocs.push_back(std::make_unique<io_context>(1));
    acceptor.emplace(net::make_strand(*iocs.front()));
  }
  // A handler queued in one io_context (a storage completion posted by
  // server::post) may hold the last reference to a session whose socket and timers
  // belong to another: all are shut down, destroying such handlers while
  // every service still exists, before any is destroyed. The threads are joined.
  ~io() {
    acceptor.reset();
    for (auto& ioc : iocs) ioc->shutdown();
  }
  io_context& next(std::atomic<size_t>& turn) {
    return *iocs[turn.fetch_add(1, std::memory_order_relaxed) % iocs.size()];
  }

  void do_accept();
  void on_accept(beast::error_code ec, tcp::socket socket);
  template <class Session>
  void serve(std::shared_ptr<Session> s, const std::string& ip);
};

namespace {

// The plain request the handler sees: method, target, lowercased header names, body.
request to_plain(http::request<http::string_body>& msg, const std::string& remote_ip) {
  request req;
  req.remote_ip = remote_ip;
  req.method = std::string(msg.method_string());
  req.target = std::string(msg.target());
  req.body = std::move(msg.body());
  req.headers.reserve(size_t(std::distance(msg.begin(), msg.end())));
  for (const auto& f : msg) {
    std::string name(f.name_string());
    for (auto& c : name) c = char(std::tolower(static_cast<unsigned char>(c)));
    req.headers.emplace_back(std::move(name), std::string(f.value()));
  }
  req.request_id = request_id_for(req.header("x-request-id"));
  return req;
}

// One HTTP connection, over plain TCP or TLS (`Stream` is plain_stream or
// tls_stream). Reads one request at a time (so pipelined requests are answered in
// order and bounded to one in progress), hands it to the handler and writes the
// response. All members are touched on its I/O thread only.
template <class Stream>
class session : public session_base, public std::enable_shared_from_this<session<Stream>> {
  static constexpr bool tls = std::is_same_v<Stream, tls_stream>;
  using std::enable_shared_from_this<session<Stream>>::shared_from_this;

 public:
  session(tcp::socket&& socket, std::shared_ptr<server::impl> srv, std::string remote_ip)
    requires(!tls)
      : stream_(std::move(socket)), executor_(stream_.get_executor()), srv_(std::move(srv)),
        remote_ip_(std::move(remote_ip)) {}
  session(tcp::socket&& socket, std::shared_ptr<server::impl> srv, std::string remote_ip)
    requires(tls)
      : stream_(std::move(socket), *srv->tls), executor_(stream_.get_executor()), srv_(std::move(srv)),
        remote_ip_(std::move(remote_ip)) {}
  ~session() override {
    if (registered_) srv_->forget(id_);
  }
  void set_id(uint64_t id) {
    id_ = id;
    registered_ = true;
  }

  void run() {
    net::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->handshake([self] { self->read_header(); }); });
  }

  // TLS: the handshake, bounded by the read timeout; plain TCP: nothing to do.
  template <class Next>
  void handshake(Next next) {
    if constexpr (tls) {
      lowest().expires_after(opts().read_timeout);
      stream_.async_handshake(net::ssl::stream_base::server,
                              [self = shared_from_this(), next = std::move(next)](beast::error_code ec) {
                                if (ec) return self->close();  // not TLS, or a bad client: nothing to answer
                                next();
                              });
    } else {
      next();
    }
  }

  // Called from the server during shutdown.
  void shutdown() override {
    // executor_, not stream_: the socket may have moved to a stream session.
    net::dispatch(executor_, [self = shared_from_this()] {
      if (self->handed_off_) return;  // the stream session handles its own shutdown
      if (!self->busy_) self->close();  // idle: cancel the pending read
      // busy: the response in progress is sent with Connection: close.
    });
  }

  // Refuses a new connection (a cap or a rate limit) and closes it.
  void reject(model::error why, std::chrono::seconds retry_after) {
    net::dispatch(stream_.get_executor(), [self = shared_from_this(), r = error_response(why, retry_after)] {
      self->handshake([self, r] {
        self->lowest().expires_after(std::chrono::seconds(5));
        async_write_response(self->stream_, r, 11, false, [self](beast::error_code) { self->close(); });
      });
    });
  }

 private:
  const options& opts() const { return srv_->opts; }

  void read_header() {
    if (srv_->shutting_down) return close();
    parser_.emplace();
    parser_->header_limit(uint32_t(opts().max_header_bytes));
    parser_->body_limit(opts().max_body_bytes);
    lowest().expires_after(opts().idle_timeout);
    http::async_read_header(stream_, buffer_, *parser_,
                            [self = shared_from_this()](beast::error_code ec, size_t) {
                              self->on_header(ec);
                            });
  }

  void on_header(beast::error_code ec) {
    if (ec) return on_read_error(ec);
    busy_ = true;
    auto& req = parser_->get();
    if (auto len = parser_->content_length(); len && *len > opts().max_body_bytes) return body_too_large();
    if (beast::iequals(req[http::field::expect], "100-continue")) {
      auto cont = std::make_shared<http::response<http::empty_body>>(http::status::continue_, req.version());
      lowest().expires_after(opts().write_timeout);
      return http::async_write(stream_, *cont, [self = shared_from_this(), cont](beast::error_code ec, size_t) {
        if (ec) return self->close();
        self->read_body();
      });
    }
    read_body();
  }

  // A body that came with its header (most requests' do) is parsed from the
  // buffer at once, and a request without a body is done already: another async
  // read would only post its completion, which costs a pass through the reactor
  // (an epoll_wait) and a timer re-arm (a timerfd_settime) per request.
  void read_body() {
    if (!parser_->is_done() && buffer_.size() > 0) {
      parser_->eager(true);  // the whole body, not one chunk at a time
      beast::error_code ec;
      buffer_.consume(parser_->put(buffer_.data(), ec));
      if (ec && ec != http::error::need_more) return on_read_error(ec);
    }
    if (parser_->is_done()) return dispatch_request();
    lowest().expires_after(opts().read_timeout);
    http::async_read(stream_, buffer_, *parser_, [self = shared_from_this()](beast::error_code ec, size_t) {
      if (ec) return self->on_read_error(ec);
      self->dispatch_request();
    });
  }

  void on_read_error(beast::error_code ec) {
    if (ec == http::error::end_of_stream || ec == beast::error::timeout || ec == net::error::operation_aborted ||
        ec == net::error::connection_reset || ec == net::error::eof)
      return close();
    if (ec == http::error::body_limit) return body_too_large();
    if (ec == http::error::header_limit)
      return fail_and_close(error_response(431, "request header exceeds the limit of " +
                                                    std::to_string(opts().max_header_bytes) + " bytes"));
    // Anything else is a malformed request; its framing cannot be trusted, so close.
    fail_and_close(error_response({model::errc::invalid_argument, "malformed HTTP request: " + ec.message()}));
  }

  void body_too_large() {
    fail_and_close(error_response({model::errc::payload_too_large, "request body exceeds the limit of " +
                                                                       std::to_string(opts().max_body_bytes) + " bytes"}));
  }

  void dispatch_request() {
    auto msg = parser_->release();
    const auto target = msg.target();
    const auto path = target.substr(0, target.find('?'));
    if ((path == "/stream" || path == "/stream-sse") && srv_->eng) return open_stream(std::move(msg), path == "/stream-sse");
    request req = to_plain(msg, remote_ip_);
    version_ = msg.version();
    keep_alive_ = msg.keep_alive();
    request_id_ = req.request_id;
    srv_->handler(std::move(req), [self = shared_from_this()](response r) {
      // On this connection's thread (most answers: inline appends, reads, and
      // storage answers, which come back to the thread that asked), the answer is
      // written at once; from any other thread it is posted here. A takeover is
      // always posted: it hands the socket over, not from inside the handler.
      if (r.takeover) return net::post(self->stream_.get_executor(), [self, r = std::move(r)]() mutable {
        self->take_over(std::move(r));
      });
      net::dispatch(self->stream_.get_executor(), [self, r = std::move(r)]() mutable { self->send(std::move(r)); });
    });
  }

  // A route answered with a stream (MCP resources/subscribe): it validated and
  // authorized; what is left is the server's share, the stream slots.
  // `r` carries the headers the handler added (CORS).
  void take_over(response r) {
    if (srv_->shutting_down) return send(error_response({model::errc::unavailable, "the server is shutting down"}));
    if (!srv_->eng) return send(error_response({model::errc::unavailable, "streams are not served here"}));
    auto slot = srv_->streams_open.acquire(r.takeover->who.limit_key());
    if (!slot) return send(error_response(slot.error()));
    std::shared_ptr<const stream_takeover> mcp = r.takeover;
    stream_start start{r.takeover->sub, r.takeover->who, std::move(*slot), request_id_, false};
    busy_ = false;
    handed_off_ = true;
    start_sse(std::move(stream_), version_, std::move(r.headers), std::move(start), true, srv_, std::move(mcp));
  }

  // /stream (WebSocket) and /stream-sse: validate before upgrading, then hand the
  // socket to a stream session. Errors are ordinary HTTP responses.
  void open_stream(http::request<http::string_body> msg, bool sse) {
    request req = to_plain(msg, remote_ip_);  // a GET: no body to lose; msg keeps its headers
    version_ = msg.version();
    keep_alive_ = msg.keep_alive();
    request_id_ = req.request_id;
    // A refused stream is an ordinary answer, logged like one (with the transport).
    const auto started = std::chrono::steady_clock::now();
    auto refuse = [&](response r) {
      if (opts().access_log) {
        access_line line;
        line.request_id = req.request_id;
        line.method = req.method;
        line.path = std::string_view(req.target).substr(0, req.target.find('?')).substr(0, 200);
        line.status = r.status;
        line.bytes = r.body.size();
        line.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
        line.agent = req.header("x-agent-id").substr(0, 256);
        line.ip = req.remote_ip;
        line.stream = sse ? "sse" : "websocket";
        line.ended_by = "refused";
        log_access(line);
      }
      send(std::move(r));
    };
    auto reject = [&](model::errc code, std::string message) { refuse(error_response({code, std::move(message)})); };
    if (msg.method() != http::verb::get) {
      auto r = error_response(405, "use GET");
      r.headers.emplace_back("Allow", "GET");
      return refuse(std::move(r));
    }
    if (!origin_allowed(req.header("origin")))
      return reject(model::errc::forbidden, "origin not allowed; add it to server.cors_origins");
    if (srv_->shutting_down) return reject(model::errc::unavailable, "the server is shutting down");
    if (!srv_->eng->ready()) return reject(model::errc::unavailable, "the server is recovering its data; retry shortly");
    auto who = srv_->authn->authenticate(req, cookie_allowed(req));
    if (!who) return refuse(error_response(who.error()));
    auto sub = parse_stream_query(req, sse);
    if (!sub) return refuse(error_response(sub.error()));
    auto text = parse_stream_text(req);
    if (!text) return refuse(error_response(text.error()));
    if (auto ok = authorize_stream(*sub, *who); !ok) return refuse(error_response(ok.error()));
    auto slot = srv_->streams_open.acquire(who->limit_key());
    if (!slot) return refuse(error_response(slot.error()));
    stream_start start{std::move(*sub), std::move(*who), std::move(*slot), request_id_, *text};
    if (!sse) {
      if (!boost::beast::websocket::is_upgrade(msg))
        return reject(model::errc::invalid_argument,
                      "/stream is a WebSocket endpoint; send an Upgrade request (or use /stream-sse)");
      busy_ = false;
      handed_off_ = true;
      return start_websocket(std::move(stream_), std::move(msg), std::move(start), srv_);
    }
    std::vector<std::pair<std::string, std::string>> cors;
    if (const auto origin = req.header("origin"); !origin.empty() && origin_allowed(origin))
      cors.emplace_back("Access-Control-Allow-Origin", allow_all_origins() ? std::string("*") : std::string(origin));
    const bool single = start.sub.contexts.size() == 1 && start.sub.prefixes.empty();
    busy_ = false;
    handed_off_ = true;
    start_sse(std::move(stream_), version_, std::move(cors), std::move(start), single, srv_);
  }

  // A cookie is a browser's ambient credential: accept it only where a page of
  // another origin cannot ride on it (no Origin, an origin listed by name in
  // cors_origins, or this server's own origin). Bearer headers need no such care.
  bool cookie_allowed(const request& req) const {
    const auto origin = req.header("origin");
    if (origin.empty()) return true;
    for (const auto& o : opts().cors_origins)
      if (o == origin) return true;
    const auto host = req.header("host");
    return !host.empty() && (origin == "http://" + std::string(host) || origin == "https://" + std::string(host));
  }

  bool allow_all_origins() const {
    for (const auto& o : opts().cors_origins)
      if (o == "*") return true;
    return false;
  }
  // Browsers always send Origin on WebSocket upgrades; non-browser clients may not.
  bool origin_allowed(std::string_view origin) const {
    if (origin.empty() || allow_all_origins()) return true;
    for (const auto& o : opts().cors_origins)
      if (o == origin) return true;
    return false;
  }

  void send(response r) {
    const bool keep = keep_alive_ && !srv_->shutting_down;
    if (!request_id_.empty()) r.headers.emplace_back("X-Request-Id", std::move(request_id_));
    request_id_.clear();
    lowest().expires_after(opts().write_timeout);
    async_write_response(stream_, std::move(r), version_, keep, [self = shared_from_this(), keep](beast::error_code ec) {
      self->busy_ = false;
      if (!ec && self->linger_) return self->linger();
      if (ec || !keep) return self->close();
      self->read_header();
    });
  }

  // Answers and closes a connection whose request cannot be read (or trusted).
  void fail_and_close(response r) {
    keep_alive_ = false;
    linger_ = true;
    busy_ = true;
    send(std::move(r));
  }

  // Lingering close: after an early error response the client may still be sending
  // its body; closing at once would reset the connection and destroy the response
  // before the client reads it. Stop sending, then read and discard (bounded in
  // time and bytes) until the client closes.
  void linger() {
    beast::error_code ec;
    lowest().socket().shutdown(tcp::socket::shutdown_send, ec);
    lowest().expires_after(std::chrono::seconds(2));
    discard();
  }
  void discard() {
    if (discarded_ > (size_t(64) << 20)) return close();
    if (!discard_buf_) discard_buf_ = std::make_unique<std::array<char, 16 * 1024>>();
    stream_.async_read_some(net::buffer(*discard_buf_), [self = shared_from_this()](beast::error_code ec, size_t n) {
      if (ec) return self->close();
      self->discarded_ += n;
      self->discard();
    });
  }

  void close() {
    beast::error_code ec;
    lowest().socket().shutdown(tcp::socket::shutdown_send, ec);
    lowest().close();
  }

  beast::tcp_stream& lowest() { return beast::get_lowest_layer(stream_); }

  Stream stream_;
  net::any_io_executor executor_;  // its io_context's; outlives a hand-off of stream_
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::shared_ptr<server::impl> srv_;
  std::string remote_ip_;
  std::string request_id_;  // of the request being answered
  bool handed_off_ = false;
  uint64_t id_ = 0;
  bool registered_ = false;
  unsigned version_ = 11;
  bool keep_alive_ = true;
  bool busy_ = false;
  bool linger_ = false;
  size_t discarded_ = 0;
  // Only a lingering close needs it: inline, it made every connection 16 KiB
  // bigger (an idle keep-alive connection: 19 KiB of RSS, now 3.5; bench/README).
  std::unique_ptr<std::array<char, 16 * 1024>> discard_buf_;
};

}  // namespace

void server::io::do_accept() {
  // `this` outlives the handler: destroying the io_context destroys pending handlers.
  // A connection's handlers run on its io_context's executor, without a strand:
  // each io_context is run by one thread, so they never run concurrently, and a
  // strand's queue and lock per hand-off would serialise what already is.
  acceptor->async_accept(next(next_accept).get_executor(), [this](beast::error_code ec, tcp::socket s) {
    on_accept(ec, std::move(s));
  });
}

void server::io::on_accept(beast::error_code ec, tcp::socket socket) {
  if (ec == net::error::operation_aborted || !acceptor->is_open()) return;
  auto& st = *state;
  if (!ec) {
    // Small frames (stream events, heartbeats, short JSON answers) must leave at
    // once; with Nagle they wait for the peer's delayed ACK (~40 ms on Linux).
    beast::error_code opt_ec;
    socket.set_option(tcp::no_delay(true), opt_ec);
    beast::error_code ep_ec;
    const auto peer = socket.remote_endpoint(ep_ec);
    std::string ip = ep_ec ? std::string() : peer.address().to_string();
    if (st.tls) serve(std::make_shared<session<tls_stream>>(std::move(socket), state, ip), ip);
    else serve(std::make_shared<session<plain_stream>>(std::move(socket), state, ip), ip);
  } else {
    spdlog::warn("http: accept failed: {}", ec.message());
  }
  do_accept();
}

template <class Session>
void server::io::serve(std::shared_ptr<Session> s, const std::string& ip) {
  auto& st = *state;
  {
    bool over_limit = false;
    {
      std::lock_guard lock(st.mu);
      over_limit = st.sessions.size() >= st.opts.max_connections;
    }
    const auto wait = over_limit ? std::nullopt : st.connection_limit.take(caller::ip_key(ip), rate_limiter::clock::now());
    s->set_id(st.add(s));
    if (over_limit) {
      if (st.rejected) st.rejected->Increment();
      s->reject({model::errc::unavailable, "too many connections; retry shortly"}, std::chrono::seconds(1));
    } else if (wait) {
      if (st.rate_limited) st.rate_limited->Increment();
      s->reject({model::errc::rate_limited, "too many new connections from your address; retry after the Retry-After delay"},
                std::chrono::seconds(retry_after_seconds(*wait)));
    } else {
      if (st.accepted) st.accepted->Increment();
      s->run();
    }
  }
}

server::server(options opts, handler_fn handler, std::shared_ptr<const authenticator> authn,
               prometheus::Registry* metrics, engine::engine* streams, stream_registry* stream_log)
    : io_(std::make_unique<io>(opts.threads ? opts.threads : std::max(1u, std::thread::hardware_concurrency()))) {
  impl_ = std::make_shared<impl>(std::move(opts), std::move(handler), std::move(authn));
  io_->state = impl_;
  impl_->eng = streams;
  impl_->stream_log = stream_log;
  if (metrics) {
    impl_->active = &prometheus::BuildGauge().Name("engram_http_connections_active")
                         .Help("Open HTTP connections").Register(*metrics).Add({});
    auto& conns = prometheus::BuildCounter().Name("engram_http_connections_total")
                      .Help("Accepted HTTP connections by outcome").Register(*metrics);
    impl_->accepted = &conns.Add({{"outcome", "served"}});
    impl_->rejected = &conns.Add({{"outcome", "rejected_limit"}});
    impl_->rate_limited = &conns.Add({{"outcome", "rejected_rate"}});
    auto& subs = prometheus::BuildGauge().Name("engram_stream_subscribers")
                     .Help("Connected stream subscribers by transport").Register(*metrics);
    impl_->streams.ws_subscribers = &subs.Add({{"transport", "websocket"}});
    impl_->streams.sse_subscribers = &subs.Add({{"transport", "sse"}});
    auto& delivered = prometheus::BuildCounter().Name("engram_stream_events_delivered_total")
                          .Help("Events written to stream subscribers by transport").Register(*metrics);
    impl_->streams.ws_delivered = &delivered.Add({{"transport", "websocket"}});
    impl_->streams.sse_delivered = &delivered.Add({{"transport", "sse"}});
    impl_->streams.lag_closes = &prometheus::BuildCounter().Name("engram_stream_lag_closes_total")
                                     .Help("Streams closed because the subscriber fell too far behind")
                                     .Register(*metrics).Add({});
    impl_->streams.publish_to_write = &prometheus::BuildHistogram()
        .Name("engram_stream_publish_to_write_seconds")
        .Help("From the router receiving a committed event to its write completing on a live stream")
        .Register(*metrics)
        .Add({}, prometheus::Histogram::BucketBoundaries{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                                         0.025, 0.1, 1});
  }
}

server::~server() { stop(std::chrono::milliseconds(0)); }

model::status server::start() {
  auto& a = *io_->acceptor;
  const auto& opts = impl_->opts;
  beast::error_code ec;
  const auto addr = net::ip::make_address(opts.host, ec);
  if (ec)
    return model::fail(model::errc::invalid_argument,
                       "server.addr: '" + opts.host + "' is not an IP address: " + ec.message());
  if (!opts.tls_cert_file.empty()) {  // config checked that the key is set too
    namespace ssl = net::ssl;
    auto ctx = std::make_shared<ssl::context>(ssl::context::tls_server);
    ctx->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 | ssl::context::no_sslv3 |
                     ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1 | ssl::context::single_dh_use);
    ctx->use_certificate_chain_file(opts.tls_cert_file, ec);
    if (ec) return model::fail(model::errc::invalid_argument, "server.tls.cert '" + opts.tls_cert_file + "': " + ec.message());
    ctx->use_private_key_file(opts.tls_key_file, ssl::context::pem, ec);
    if (ec) return model::fail(model::errc::invalid_argument, "server.tls.key '" + opts.tls_key_file + "': " + ec.message());
    impl_->tls = std::move(ctx);
  }
  const tcp::endpoint ep{addr, opts.port};
  a.open(ep.protocol(), ec);
  if (!ec) a.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) a.bind(ep, ec);
  if (!ec) a.listen(net::socket_base::max_listen_connections, ec);
  if (ec)
    return model::fail(model::errc::unavailable, "cannot listen on " + opts.host + ":" +
                                                     std::to_string(opts.port) + ": " + ec.message());
  for (auto& ioc : io_->iocs) io_->work.push_back(net::make_work_guard(*ioc));
  io_->do_accept();
  for (size_t i = 0; i < io_->iocs.size(); ++i)
    io_->threads.emplace_back([&ioc = *io_->iocs[i], i] {
      model::name_this_thread("engram-io");
      model::this_io_thread = int(i);
      ioc.run();
    });
  return {};
}

uint16_t server::port() const {
  beast::error_code ec;
  auto ep = io_->acceptor->local_endpoint(ec);
  return ec ? 0 : ep.port();
}

void server::post(int home, std::function<void()> f) {
  if (home >= 0 && size_t(home) < io_->iocs.size()) return net::post(*io_->iocs[size_t(home)], std::move(f));
  net::post(io_->next(io_->next_post), std::move(f));
}

void server::stop(std::chrono::milliseconds deadline) {
  auto& s = *impl_;
  auto& io = *io_;
  if (io.stopped) return;
  io.stopped = true;
  s.shutting_down = true;
  // Phase 1: stop accepting and close idle connections.
  if (!io.threads.empty()) {
    std::promise<void> closed;
    net::dispatch(io.acceptor->get_executor(), [&] {
      beast::error_code ec;
      io.acceptor->close(ec);
      closed.set_value();
    });
    closed.get_future().wait();
  }
  std::vector<std::shared_ptr<session_base>> live;
  {
    std::lock_guard lock(s.mu);
    for (auto& [id, w] : s.sessions)
      if (auto p = w.lock()) live.push_back(std::move(p));
  }
  for (auto& p : live) p->shutdown();
  live.clear();
  // Phase 2: wait for in-flight requests to finish, up to the deadline.
  if (!io.threads.empty()) {
    std::unique_lock lock(s.mu);
    s.drained.wait_for(lock, deadline, [&] { return s.sessions.empty(); });
    if (!s.sessions.empty())
      spdlog::warn("http: {} connections still open at the shutdown deadline", s.sessions.size());
  }
  io.work.clear();
  for (auto& ioc : io.iocs) ioc->stop();
  for (auto& t : io.threads) t.join();
  io.threads.clear();
}

}  // namespace engram::gateway
