// The WebSocket writer's framing, seen by a plain Beast client: the server frames
// its own messages and gathers many into one write (gateway/coalescing_stream.hpp),
// while Beast answers pings on the same connection.
#include <gtest/gtest.h>

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

// The same seen on the wire: a raw client reads the server's frames itself and
// sends its close in the middle of a long replay. The server's close frame is the
// last frame it sends (RFC 6455 §5.5.1), however much replay was still queued.
TEST(WsFramesTest, NothingFollowsTheServersCloseFrame) {
  temp_dir dir;
  test_server server(test_config(dir.str() + "/data"));
  auto http = server.connect();
  append_units(http, "raw", 600);  // ~50 MB to replay

  net::io_context ioc;
  beast::tcp_stream s(ioc);
  s.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), server.port()));
  s.expires_after(std::chrono::seconds(60));  // a hang guard, not a timing check
  net::write(s, net::buffer(std::string(
                    "GET /stream?context=raw&since=0&text=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")));
  beast::flat_buffer in;  // what follows the 101's header stays here: the first frames
  beast::http::response_parser<beast::http::empty_body> upgrade;
  beast::http::read_header(s, in, upgrade);
  ASSERT_EQ(upgrade.get().result_int(), 101u);

  // The next server frame (unmasked): its opcode, or -1 at the end of the stream.
  auto next_frame = [&]() -> int {
    auto need = [&](size_t n) {
      beast::error_code ec;
      while (in.size() < n && !ec) in.commit(s.read_some(in.prepare(64 * 1024), ec));
      return in.size() >= n;
    };
    if (!need(2)) return -1;
    auto byte = [&](size_t i) { return static_cast<const uint8_t*>(in.cdata().data())[i]; };
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
    in.consume(header + size);
    return opcode;
  };
  for (int data = 0; data < 4;) data += next_frame() == 1;  // connected, subscribe_ack, the replay under way
  // The client's close, masked with a zero key (so the code reads as is): 1000.
  const uint8_t close_frame[] = {0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8};
  net::write(s, net::buffer(close_frame));
  int opcode = 0;
  size_t before = 0, after = 0;
  while ((opcode = next_frame()) != 8 && opcode != -1) ++before;  // what was already on its way
  ASSERT_EQ(opcode, 8) << "no close frame from the server";
  while ((opcode = next_frame()) != -1) ++after;
  EXPECT_EQ(after, 0u) << before << " frames came between our close and the server's, then " << after << " more";
}

}  // namespace
}  // namespace engram::test
