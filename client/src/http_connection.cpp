#include "engram/http_connection.hpp"

#include <poll.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

namespace engram::client {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;

std::string http_result::header(std::string_view lower_name) const {
  for (const auto& [k, v] : headers)
    if (k == lower_name) return v;
  return {};
}

struct http_connection::impl {
  std::string host;
  uint16_t port;
  std::chrono::milliseconds timeout;
  net::io_context ioc;
  std::optional<beast::tcp_stream> stream;
  beast::flat_buffer buffer;

  beast::error_code connect() {
    stream.emplace(ioc);
    buffer.clear();
    beast::error_code ec;
    tcp::resolver resolver(ioc);
    auto results = resolver.resolve(host, std::to_string(port), ec);
    if (ec) return ec;
    ec = run([&](auto handler) {
      stream->async_connect(results, [handler](beast::error_code e, const tcp::endpoint&) { handler(e, 0); });
    });
    if (!ec) stream->socket().set_option(tcp::no_delay(true), ec);
    return ec;
  }

  // True when the idle socket has something to read: nothing is expected between
  // responses, so that is the server's FIN (or RST).
  bool peer_closed() {
    pollfd p{stream->socket().native_handle(), POLLIN, 0};
    return ::poll(&p, 1, 0) > 0;
  }

  // Runs one async operation to completion with the stream's timeout applied.
  template <class Op>
  beast::error_code run(Op&& op) {
    beast::error_code result = net::error::would_block;
    stream->expires_after(timeout);
    op([&](beast::error_code ec, size_t) { result = ec; });
    ioc.restart();
    ioc.run();
    return result;
  }
};

http_connection::http_connection(std::string host, uint16_t port, std::chrono::milliseconds timeout)
    : impl_(std::make_unique<impl>()) {
  impl_->host = std::move(host);
  impl_->port = port;
  impl_->timeout = timeout;
}
http_connection::~http_connection() = default;
http_connection::http_connection(http_connection&&) noexcept = default;
http_connection& http_connection::operator=(http_connection&&) noexcept = default;

void http_connection::set_timeout(std::chrono::milliseconds timeout) { impl_->timeout = timeout; }

void http_connection::close() {
  if (impl_->stream) {
    beast::error_code ec;
    impl_->stream->socket().shutdown(tcp::socket::shutdown_both, ec);
    impl_->stream->close();
    impl_->stream.reset();
  }
}

std::expected<http_result, transport_error> http_connection::request(std::string_view method,
                                                                     std::string_view target,
                                                                     std::string_view body,
                                                                     const header_list& headers) {
  auto& s = *impl_;
  http::request<http::string_body> req{http::string_to_verb(method), std::string(target), 11};
  if (req.method() == http::verb::unknown) req.method_string(std::string(method));
  req.set(http::field::host, s.host + ":" + std::to_string(s.port));
  req.set(http::field::user_agent, "engram-client/0.1");
  req.keep_alive(true);
  bool has_type = false;
  for (const auto& [k, v] : headers) {
    req.set(k, v);
    if (beast::iequals(k, "content-type")) has_type = true;
  }
  if (!body.empty() && !has_type) req.set(http::field::content_type, "application/json");
  req.body() = std::string(body);
  req.prepare_payload();

  // Resending after a failure on a reused connection is only safe when repeating
  // the request cannot change the outcome (RFC 9110 §9.2.2), which an
  // Idempotency-Key also guarantees (as Go's net/http treats it).
  const auto verb = req.method();
  const bool repeatable = verb == http::verb::get || verb == http::verb::head || verb == http::verb::options ||
                          verb == http::verb::put || verb == http::verb::delete_ ||
                          req.find("idempotency-key") != req.end();
  for (int attempt = 0; attempt < 2; ++attempt) {
    // An idle connection the server has closed shows as readable (EOF pending):
    // drop it before sending rather than fail after.
    if (s.stream && s.peer_closed()) close();
    const bool reused = s.stream.has_value();
    if (!reused) {
      if (auto ec = s.connect()) {
        s.stream.reset();
        return std::unexpected(transport_error{"connect to " + s.host + ":" + std::to_string(s.port) +
                                               ": " + ec.message()});
      }
    }
    auto ec = s.run([&](auto handler) { http::async_write(*s.stream, req, handler); });
    http::response_parser<http::string_body> parser;
    parser.body_limit(std::numeric_limits<uint64_t>::max());
    if (!ec) ec = s.run([&](auto handler) { http::async_read(*s.stream, s.buffer, parser, handler); });
    if (ec) {
      close();
      // A kept-alive connection the server already closed: retry once on a new one.
      const bool stale = reused && (ec == http::error::end_of_stream || ec == net::error::connection_reset ||
                                    ec == net::error::broken_pipe || ec == net::error::eof);
      if (stale && repeatable && attempt == 0) continue;
      return std::unexpected(
          transport_error{std::string(method) + " " + std::string(target) + ": " + ec.message(), true});
    }
    auto msg = parser.release();
    http_result out;
    out.status = msg.result_int();
    out.body = std::move(msg.body());
    for (const auto& f : msg) {
      std::string name(f.name_string());
      for (auto& c : name) c = char(std::tolower(static_cast<unsigned char>(c)));
      out.headers.emplace_back(std::move(name), std::string(f.value()));
    }
    if (!msg.keep_alive()) close();
    return out;
  }
  return std::unexpected(transport_error{"unreachable"});
}

}  // namespace engram::client
