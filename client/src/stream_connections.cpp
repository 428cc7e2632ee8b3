#include "engram/stream_connections.hpp"

#include <atomic>
#include <cstdlib>
#include <poll.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>

namespace engram::client {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
using tcp = net::ip::tcp;

// -------------------------------------------------------------------------------
struct ws_connection::impl {
  net::io_context ioc;
  std::optional<websocket::stream<beast::tcp_stream>> ws;
  beast::flat_buffer buffer;
  std::optional<ws_close> closed;
  bool reading = false;
  beast::error_code read_ec;
  bool read_done = false;
  std::atomic<bool> interrupted{false};
};

ws_connection::ws_connection() : impl_(std::make_unique<impl>()) {}
ws_connection::~ws_connection() = default;
ws_connection::ws_connection(ws_connection&&) noexcept = default;
ws_connection& ws_connection::operator=(ws_connection&&) noexcept = default;

std::expected<void, transport_error> ws_connection::connect(const std::string& host, uint16_t port,
                                                            const std::string& target, const header_list& headers,
                                                            std::chrono::milliseconds timeout) {
  auto& s = *impl_;
  s.ws.emplace(s.ioc);
  s.closed.reset();
  s.reading = false;
  s.buffer.clear();
  beast::error_code ec;
  tcp::resolver resolver(s.ioc);
  auto results = resolver.resolve(host, std::to_string(port), ec);
  if (ec) return std::unexpected(transport_error{"resolve " + host + ": " + ec.message()});
  // Connect and handshake under one deadline (tcp_stream's timer), so a server that
  // accepts but never answers cannot hang the caller.
  auto& tcp_layer = beast::get_lowest_layer(*s.ws);
  tcp_layer.expires_after(timeout);
  bool done = false;
  tcp_layer.async_connect(results, [&](beast::error_code e, const tcp::endpoint&) {
    ec = e;
    done = true;
  });
  s.ioc.restart();
  while (!done) s.ioc.run_one();
  if (ec) return std::unexpected(transport_error{"connect to " + host + ":" + std::to_string(port) + ": " + ec.message()});
  tcp_layer.socket().set_option(tcp::no_delay(true), ec);
  s.ws->set_option(websocket::stream_base::decorator([headers](websocket::request_type& req) {
    for (const auto& [k, v] : headers) req.set(k, v);
  }));
  websocket::response_type res;
  done = false;
  tcp_layer.expires_after(timeout);
  s.ws->async_handshake(res, host + ":" + std::to_string(port), target, [&](beast::error_code e) {
    ec = e;
    done = true;
  });
  s.ioc.restart();
  while (!done) s.ioc.run_one();
  tcp_layer.expires_never();  // reads take their own timeout
  if (ec) {
    transport_error err{"upgrade: " + ec.message(), true};
    if (res.result_int() != 0 && res.result_int() != 101) {
      err.status = res.result_int();
      err.body = res.body();
      err.message = "upgrade refused: " + std::to_string(err.status) + " " + err.body;
    }
    return std::unexpected(std::move(err));
  }
  return {};
}

std::expected<void, transport_error> ws_connection::send(std::string_view text) {
  beast::error_code ec;
  impl_->ws->text(true);
  impl_->ws->write(net::buffer(text.data(), text.size()), ec);
  if (ec) return std::unexpected(transport_error{"send: " + ec.message()});
  return {};
}

std::expected<std::optional<std::string>, transport_error> ws_connection::read(std::chrono::milliseconds timeout) {
  auto& s = *impl_;
  if (s.closed) return std::optional<std::string>();
  if (!s.reading) {
    s.reading = true;
    s.read_done = false;
    s.ws->async_read(s.buffer, [&s](beast::error_code ec, size_t) {
      s.read_ec = ec;
      s.read_done = true;
    });
  }
  s.ioc.restart();
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!s.read_done && !s.interrupted.exchange(false) && std::chrono::steady_clock::now() < deadline)
    s.ioc.run_one_until(deadline);
  if (!s.read_done) return std::optional<std::string>();  // the read stays pending for next time
  s.reading = false;
  if (s.read_ec) {
    if (s.read_ec == websocket::error::closed) {
      const auto& why = s.ws->reason();
      s.closed = ws_close{uint16_t(why.code), std::string(why.reason.data(), why.reason.size())};
      return std::optional<std::string>();
    }
    s.closed = ws_close{0, s.read_ec.message()};
    return std::optional<std::string>();
  }
  std::string out = beast::buffers_to_string(s.buffer.data());
  s.buffer.consume(s.buffer.size());
  return std::optional<std::string>(std::move(out));
}

const std::optional<ws_close>& ws_connection::closed() const { return impl_->closed; }

void ws_connection::interrupt() {
  impl_->interrupted = true;
  net::post(impl_->ioc, [] {});  // wakes run_one_until
}

void ws_connection::close() {
  if (!impl_->ws || impl_->closed) return;
  beast::error_code ec;
  impl_->ws->close(websocket::close_code::normal, ec);
}

void ws_connection::abort() {
  if (!impl_->ws) return;
  beast::error_code ec;
  beast::get_lowest_layer(*impl_->ws).socket().shutdown(tcp::socket::shutdown_both, ec);
  beast::get_lowest_layer(*impl_->ws).socket().close(ec);
}

// -------------------------------------------------------------------------------
struct sse_connection::impl {
  net::io_context ioc;
  std::optional<tcp::socket> socket;
  std::string buf;  // unparsed bytes after the response head
  std::optional<http_result> refused;
  header_list headers;
  bool ended = false;
  size_t comments = 0;

  // Reads more bytes into buf; false on timeout; sets ended on EOF.
  bool fill(std::chrono::steady_clock::time_point deadline) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd p{socket->native_handle(), POLLIN, 0};
    if (::poll(&p, 1, int(left.count())) <= 0) return false;
    char chunk[16384];
    beast::error_code ec;
    const size_t n = socket->read_some(net::buffer(chunk), ec);
    if (ec) {
      ended = true;
      return false;
    }
    buf.append(chunk, n);
    return true;
  }
};

sse_connection::sse_connection() : impl_(std::make_unique<impl>()) {}
sse_connection::~sse_connection() = default;
sse_connection::sse_connection(sse_connection&&) noexcept = default;
sse_connection& sse_connection::operator=(sse_connection&&) noexcept = default;

std::expected<void, transport_error> sse_connection::connect(const std::string& host, uint16_t port,
                                                             const std::string& target, const header_list& headers) {
  auto& s = *impl_;
  s.socket.emplace(s.ioc);
  beast::error_code ec;
  tcp::resolver resolver(s.ioc);
  auto results = resolver.resolve(host, std::to_string(port), ec);
  if (!ec) net::connect(*s.socket, results, ec);
  if (ec) return std::unexpected(transport_error{"connect: " + ec.message()});
  std::string req = "GET " + target + " HTTP/1.1\r\nHost: " + host + "\r\nAccept: text/event-stream\r\n";
  for (const auto& [k, v] : headers) req += k + ": " + v + "\r\n";
  req += "\r\n";
  net::write(*s.socket, net::buffer(req), ec);
  if (ec) return std::unexpected(transport_error{"send: " + ec.message()});
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  size_t head_end;
  while ((head_end = s.buf.find("\r\n\r\n")) == std::string::npos)
    if (!s.fill(deadline)) return std::unexpected(transport_error{"no response head"});
  const std::string head = s.buf.substr(0, head_end);
  s.buf.erase(0, head_end + 4);
  const unsigned status = unsigned(std::stoi(head.substr(9, 3)));
  size_t pos = head.find("\r\n");
  while (pos != std::string::npos && pos < head.size()) {
    const size_t next = head.find("\r\n", pos + 2);
    const std::string line = head.substr(pos + 2, next == std::string::npos ? std::string::npos : next - pos - 2);
    if (const auto colon = line.find(':'); colon != std::string::npos) {
      std::string name = line.substr(0, colon);
      for (auto& c : name) c = char(std::tolower(static_cast<unsigned char>(c)));
      s.headers.emplace_back(name, line.substr(line.find_first_not_of(' ', colon + 1)));
    }
    pos = next;
  }
  if (status != 200) {
    http_result r;
    r.status = status;
    r.headers = s.headers;
    // Error bodies carry Content-Length (the connection may stay open); without
    // one, the body ends at the close.
    std::optional<size_t> length;
    for (const auto& [k, v] : s.headers)
      if (k == "content-length") length = size_t(std::strtoull(v.c_str(), nullptr, 10));
    while ((!length || s.buf.size() < *length) && s.fill(deadline)) {}
    r.body = length ? s.buf.substr(0, *length) : s.buf;
    s.refused = std::move(r);
  }
  return {};
}

const std::optional<http_result>& sse_connection::refused() const { return impl_->refused; }
const header_list& sse_connection::response_headers() const { return impl_->headers; }
bool sse_connection::ended() const { return impl_->ended; }
size_t sse_connection::comments() const { return impl_->comments; }

std::expected<std::optional<sse_event>, transport_error> sse_connection::next(std::chrono::milliseconds timeout) {
  auto& s = *impl_;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    // One event is the lines up to a blank line.
    const auto end = s.buf.find("\n\n");
    if (end != std::string::npos) {
      const std::string block = s.buf.substr(0, end);
      s.buf.erase(0, end + 2);
      sse_event ev;
      bool any = false;
      size_t pos = 0;
      while (pos <= block.size()) {
        size_t nl = block.find('\n', pos);
        if (nl == std::string::npos) nl = block.size();
        const std::string line = block.substr(pos, nl - pos);
        pos = nl + 1;
        if (line.empty()) continue;
        if (line[0] == ':') {
          ++s.comments;
          continue;
        }
        const auto colon = line.find(':');
        const std::string field = line.substr(0, colon);
        std::string value = colon == std::string::npos ? "" : line.substr(colon + 1);
        if (!value.empty() && value[0] == ' ') value.erase(0, 1);
        if (field == "data") {
          if (any && !ev.data.empty()) ev.data += '\n';
          ev.data += value;
          any = true;
        } else if (field == "event") {
          ev.event = value;
          any = true;
        } else if (field == "id") {
          ev.id = value;
          any = true;
        }
      }
      if (any && (!ev.data.empty() || !ev.event.empty())) return std::optional<sse_event>(std::move(ev));
      continue;
    }
    if (s.ended || !s.fill(deadline)) return std::optional<sse_event>();
  }
}

void sse_connection::abort() {
  if (!impl_->socket) return;
  beast::error_code ec;
  impl_->socket->shutdown(tcp::socket::shutdown_both, ec);
  impl_->socket->close(ec);
}

}  // namespace engram::client
