// The WebSocket writer's framing, seen by a plain Beast client: the server frames
// its own messages and gathers many into one write (gateway/coalescing_stream.hpp),
// while Beast answers pings on the same connection.
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <condition_variable>
#include <mutex>
#include <stop_token>
#include <thread>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>

#include "support/test_support.hpp"

namespace engram::test {
namespace {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace websocket = beast::websocket;
using tcp = net::ip::tcp;
using namespace std::chrono_literals;

// The text of the i-th unit. With ?text=1 a unit's message is ~240 bytes of JSON
// plus the text twice over (as base64 payload and as text): these sizes give
// messages under and over 65,535 bytes, which take the 16- and 64-bit lengths;
// control messages ("connected", heartbeats) take the 7-bit one. The test checks
// that each was seen.
std::string text_of(size_t i) {
  static const size_t sizes[] = {1, 2, 40, 9'000, 27'000, 29'000, 40'000, 200'000};
  return std::string(sizes[i % std::size(sizes)], char('a' + i % 26));
}

// Appends `n` units of text_of(0..n-1) to `context`.
void append_units(client::http_connection& http, const std::string& context, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    auto r = call(http, "POST", "/workunit", json({{"context_id", context}, {"agent_id", "a"}, {"text", text_of(i)}}).dump());
    ASSERT_EQ(r.status, 201u) << r.raw;
  }
}

// A Beast client on the server's loopback port, with a hang guard (not a timing check).
websocket::stream<beast::tcp_stream> connect(net::io_context& ioc, uint16_t port) {
  websocket::stream<beast::tcp_stream> ws(ioc);
  beast::get_lowest_layer(ws).connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), port));
  beast::get_lowest_layer(ws).expires_after(std::chrono::seconds(60));
  ws.read_message_max(4 << 20);
  return ws;
}

TEST(WsFramesTest, UnitsOfEverySizeArriveWholeBetweenPongs) {
  temp_dir dir;
  test_server server(test_config(dir.str() + "/data"));
  auto http = server.connect();
  constexpr size_t units = 300;
  append_units(http, "frames", units);

  net::io_context ioc;
  auto ws = connect(ioc, server.port());
  size_t pongs = 0;
  ws.control_callback([&](websocket::frame_type kind, beast::string_view) { pongs += kind == websocket::frame_type::pong; });
  ws.handshake("127.0.0.1", "/stream?context=frames&since=0&text=1");
  constexpr size_t pings = 50;
  size_t got = 0, pinged = 0;
  bool short_seen = false, medium_seen = false, long_seen = false;  // 7-, 16-, 64-bit lengths
  beast::flat_buffer buf;
  while (got < units) {
    if (pinged < pings) ws.ping(websocket::ping_data(std::to_string(pinged++).c_str()));  // while the replay is written
    ws.read(buf);
    const size_t size = buf.size();
    short_seen |= size < 126;
    medium_seen |= size >= 126 && size <= 0xffff;
    long_seen |= size > 0xffff;
    auto msg = json::parse(beast::buffers_to_string(buf.data()), nullptr, false);
    buf.consume(buf.size());
    ASSERT_FALSE(msg.is_discarded()) << "message " << got << " is not JSON";
    if (!msg["type"].is_number_integer()) continue;  // connected, subscribe_ack, heartbeats
    ASSERT_EQ(msg["seq"], got + 1);
    ASSERT_EQ(msg["text"], text_of(got)) << "unit " << got + 1 << " damaged";
    ++got;
  }
  EXPECT_TRUE(short_seen && medium_seen && long_seen) << short_seen << medium_seen << long_seen;
  ws.close(websocket::close_code::normal);  // reads the pongs still owed, then the close frame
  EXPECT_EQ(pongs, pings);
}

// A client that closes while the server still has a long replay to send: the
// close completes, the session ends (not left waiting for its teardown) and the
// replay stops short. (NothingFollowsTheServersCloseFrame checks the wire.)
TEST(WsFramesTest, AClientCloseDuringAReplayEndsTheSession) {
  temp_dir dir;
  test_server server(test_config(dir.str() + "/data"));
  auto http = server.connect();
  constexpr size_t units = 600;  // ~50 MB to replay: more than loopback's socket buffers hold
  append_units(http, "closing", units);
  auto subscribers = [&] { return metric(http, R"(engram_stream_subscribers{transport="websocket"})"); };
  auto delivered = [&] { return metric(http, R"(engram_stream_events_delivered_total{transport="websocket"})"); };

  net::io_context ioc;
  auto ws = connect(ioc, server.port());
  ws.handshake("127.0.0.1", "/stream?context=closing&since=0&text=1");
  beast::flat_buffer buf;
  for (int i = 0; i < 4; ++i) ws.read(buf);  // connected, subscribe_ack, the replay under way
  ws.close(websocket::close_code::normal);   // throws if the server never answers
  EXPECT_TRUE(wait_until([&] { return subscribers() == 0; }, 20s)) << subscribers();
  EXPECT_LT(delivered(), double(units)) << "the replay went on after the close";
}

// A WebSocket client that reads the server's frames itself (Beast's client hides
// what arrives after a close) and sends frames masked with a zero key. A watchdog
// shuts the socket down after 60 s, so a server that never answers fails the test
// instead of hanging it (a guard, not a timing check).
class raw_client {
 public:
  raw_client(uint16_t port, const std::string& target) : s_(ioc_) {
    s_.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), port));
    watchdog_ = std::jthread([this](std::stop_token stop) {
      std::mutex m;
      std::unique_lock lock(m);
      if (!std::condition_variable_any().wait_for(lock, stop, std::chrono::seconds(60), [] { return false; }))
        ::shutdown(s_.native_handle(), SHUT_RDWR);
    });
    net::write(s_, net::buffer("GET " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                               "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                               "Sec-WebSocket-Version: 13\r\n\r\n"));
    beast::http::response_parser<beast::http::empty_body> upgrade;
    beast::http::read_header(s_, in_, upgrade);  // what follows the header stays in in_: the first frames
    upgraded_ = upgrade.get().result_int() == 101;
  }
  bool upgraded() const { return upgraded_; }

  // The next server frame (unmasked): its opcode, or -1 at the end of the stream.
  int next_frame() {
    if (!need(2)) return -1;
    const int opcode = byte(0) & 0x0f;
    uint64_t size = byte(1) & 0x7f;
    size_t header = 2;
    if (size >= 126) {
      const size_t extra = size == 126 ? 2 : 8;
      if (!need(2 + extra)) return -1;
      size = 0;
      for (size_t i = 0; i < extra; ++i) size = size << 8 | byte(2 + i);
      header += extra;
    }
    if (!need(header + size)) return -1;
    in_.consume(header + size);
    return opcode;
  }

  // A final frame of `opcode` with a payload of at most 125 bytes. May be called
  // from another thread than next_frame (a socket reads and writes at once).
  void send(uint8_t opcode, std::string_view payload) {
    std::string frame{char(0x80 | opcode), char(0x80 | payload.size()), 0, 0, 0, 0};
    frame.append(payload);
    net::write(s_, net::buffer(frame));
  }

 private:
  bool need(size_t n) {
    beast::error_code ec;
    while (in_.size() < n && !ec) in_.commit(s_.read_some(in_.prepare(64 * 1024), ec));
    return in_.size() >= n;
  }
  uint8_t byte(size_t i) const { return static_cast<const uint8_t*>(in_.cdata().data())[i]; }

  net::io_context ioc_;
  tcp::socket s_;
  beast::flat_buffer in_;
  bool upgraded_ = false;
  std::jthread watchdog_;  // last: stopped before the socket closes
};

// The same seen on the wire: a client sends its close in the middle of a long
// replay. The server's close frame is the last frame it sends (RFC 6455 §5.5.1),
// however much replay was still queued.
TEST(WsFramesTest, NothingFollowsTheServersCloseFrame) {
  temp_dir dir;
  test_server server(test_config(dir.str() + "/data"));
  auto http = server.connect();
  append_units(http, "raw", 600);  // ~50 MB to replay
  raw_client c(server.port(), "/stream?context=raw&since=0&text=1");
  ASSERT_TRUE(c.upgraded());
  for (int data = 0; data < 4;) data += c.next_frame() == 1;  // connected, subscribe_ack, the replay under way
  c.send(0x8, std::string_view("\x03\xe8", 2));                // close, 1000
  int opcode = 0;
  size_t before = 0, after = 0;
  while ((opcode = c.next_frame()) != 8 && opcode != -1) ++before;  // what was already on its way
  ASSERT_EQ(opcode, 8) << "no close frame from the server";
  while ((opcode = c.next_frame()) != -1) ++after;
  EXPECT_EQ(after, 0u) << before << " frames came between our close and the server's, then " << after << " more";
}

// A client that pings while the server cannot write (the client has not read a
// long replay, so the sockets' buffers are full): the server's pongs queue up to
// a bound, then it stops reading pings until the socket takes them. Read at last,
// every unit and every pong arrives.
TEST(WsFramesTest, PongsQueuedBehindAStalledReplayAllArrive) {
  temp_dir dir;
  test_server server(test_config(dir.str() + "/data"));
  auto http = server.connect();
  constexpr size_t units = 600;  // ~50 MB: the sockets' buffers fill long before it is sent
  append_units(http, "pings", units);
  raw_client c(server.port(), "/stream?context=pings&since=0&text=1");
  ASSERT_TRUE(c.upgraded());
  // Stalled: the server's count of delivered events stops moving.
  auto delivered = [&] { return metric(http, R"(engram_stream_events_delivered_total{transport="websocket"})"); };
  double last = -1;
  for (int still = 0, polls = 0; still < 5 && polls < 300; ++polls) {
    const double now = delivered();
    still = now == last ? still + 1 : 0;
    last = now;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));  // polling an observable state, not a sync
  }
  ASSERT_LT(last, double(units)) << "the replay never stalled: the test would prove nothing";
  constexpr size_t pings = 600;  // 76 KB of pongs, past the 64 KiB the server queues; 79 KB of pings fit the buffers
  const std::string payload(125, 'p');
  for (size_t i = 0; i < pings; ++i) c.send(0x9, payload);
  size_t pongs = 0, data = 0;
  for (int opcode; (pongs < pings || data < units + 2) && (opcode = c.next_frame()) != -1;) {
    pongs += opcode == 0xA;
    data += opcode == 1;
  }
  EXPECT_EQ(pongs, pings);
  EXPECT_GE(data, units + 2);  // connected, subscribe_ack, every unit (heartbeats may come too)
}

// Client messages are read piece by piece (the first piece into a string's inline
// 15 bytes, so an idle subscriber holds no read buffer). Messages of 0, 15 and 16
// bytes, and an append of ~45 KB of multi-byte UTF-8 sent in 256-byte fragments
// (characters split between frames and between pieces), each arrive whole.
TEST(WsFramesTest, ClientMessagesArriveWholeWhateverTheirSizeOrFragments) {
  temp_dir dir;
  test_server server(test_config(dir.str() + "/data"));
  auto http = server.connect();
  net::io_context ioc;
  auto ws = connect(ioc, server.port());
  ws.handshake("127.0.0.1", "/stream?context=pieces");
  beast::flat_buffer buf;
  auto next = [&](std::string_view type) {  // the next message of `type`, skipping others
    for (;;) {
      ws.read(buf);
      auto msg = json::parse(beast::buffers_to_string(buf.data()), nullptr, false);
      buf.consume(buf.size());
      // (the appended unit's own event comes too: its "type" is a number)
      if (msg.is_object() && msg["type"].is_string() && msg["type"] == type) return msg;
    }
  };
  ws.write(net::buffer(std::string()));
  EXPECT_EQ(next("error")["error"], "messages must be JSON objects with a string \"type\"");
  ws.write(net::buffer(std::string(R"({"type":"abcd"})")));  // 15 bytes: the first piece exactly
  EXPECT_EQ(next("error")["error"], "unknown message type 'abcd'");
  ws.write(net::buffer(std::string(R"({"type":"abcde"})")));  // 16: one byte past it
  EXPECT_EQ(next("error")["error"], "unknown message type 'abcde'");

  std::string text;
  for (int i = 0; i < 4000; ++i) text += "é€😀-";  // 10 bytes a round: 2-, 3- and 4-byte characters
  const auto append = json({{"type", "append"},
                            {"request_id", "big"},
                            {"work_unit", {{"context_id", "pieces"}, {"agent_id", "a"}, {"text", text}}}})
                          .dump();
  ASSERT_LT(append.size(), 64u * 1024) << "must fit server.ws_max_message_bytes";
  ws.auto_fragment(true);
  ws.write_buffer_bytes(256);  // a client's writes are masked through this buffer: 256-byte frames
  ws.write(net::buffer(append));
  const auto ack = next("append_ack");
  EXPECT_EQ(ack["request_id"], "big");
  auto unit = call(http, "GET", "/workunit/" + ack["work_unit"]["id"].get<std::string>() + "?text=1");
  ASSERT_EQ(unit.status, 200u) << unit.raw;
  EXPECT_EQ(unit.body["work_unit"]["text"], text);
  ws.close(websocket::close_code::normal);
}

// A client message over server.ws_max_message_bytes ends the connection with
// 1009 (message too big) before the server reads it all, and the server goes on.
TEST(WsFramesTest, AClientMessageOverTheLimitIsRefusedWith1009) {
  temp_dir dir;
  auto cfg = test_config(dir.str() + "/data");
  cfg.server.ws_max_message_bytes = 1024;
  test_server server(cfg);
  net::io_context ioc;
  auto ws = connect(ioc, server.port());
  ws.handshake("127.0.0.1", "/stream?context=limit");
  ws.write(net::buffer(std::string(R"({"type":"heartbeat"})")));  // under the limit: answered
  beast::flat_buffer buf;
  bool acked = false;
  while (!acked) {
    ws.read(buf);
    acked = beast::buffers_to_string(buf.data()).find("heartbeat_ack") != std::string::npos;
    buf.consume(buf.size());
  }
  ws.write(net::buffer(R"({"type":"heartbeat","pad":")" + std::string(2000, 'x') + R"("})"));
  auto refused = [&](websocket::stream<beast::tcp_stream>& client) {
    beast::error_code ec;
    while (!ec) {
      client.read(buf, ec);
      buf.consume(buf.size());
    }
    // Beast's client answers the close frame and tears down; the server may have
    // closed its end by then (ENOTCONN). The close code is what was said.
    EXPECT_TRUE(ec == websocket::error::closed || ec == net::error::not_connected) << ec.message();
    EXPECT_EQ(client.reason().code, websocket::close_code::too_big);
  };
  refused(ws);
  // Over the limit only in its later fragments: refused all the same.
  auto ws2 = connect(ioc, server.port());
  ws2.handshake("127.0.0.1", "/stream?context=limit");
  ws2.auto_fragment(true);
  ws2.write_buffer_bytes(256);
  beast::error_code write_ec;  // the server may close before the last fragment is written
  ws2.write(net::buffer(R"({"type":"heartbeat","pad":")" + std::string(3000, 'y') + R"("})"), write_ec);
  refused(ws2);
  auto http = server.connect();
  EXPECT_EQ(call(http, "GET", "/healthz").status, 200u);
}

}  // namespace
}  // namespace engram::test
