// The WebSocket writer's framing, seen by a plain Beast client: the server frames
// its own messages and gathers many into one write (gateway/coalescing_stream.hpp),
// while Beast answers pings on the same connection.
#include <gtest/gtest.h>

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/websocket.hpp>

#include "support/test_support.hpp"

namespace engram::test {
namespace {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace websocket = beast::websocket;
using tcp = net::ip::tcp;

// The text of the i-th unit: sizes that put its message on each side of the
// 7-bit / 16-bit / 64-bit length encodings (about 240 bytes of JSON plus 4/3 of
// the text as base64, and the text again with ?text=1).
std::string text_of(size_t i) {
  static const size_t sizes[] = {1, 2, 40, 9'000, 27'900, 28'100, 40'000, 200'000};
  return std::string(sizes[i % std::size(sizes)], char('a' + i % 26));
}

// Replays a few hundred units of every size while the client pings all the time:
// every unit arrives whole and in order, every ping gets its pong, and the
// connection closes cleanly (the close frame is not overtaken by the teardown).
TEST(WsFramesTest, UnitsOfEverySizeArriveWholeBetweenPongs) {
  temp_dir dir;
  test_server server(test_config(dir.str() + "/data"));
  auto http = server.connect();
  constexpr size_t units = 300;
  for (size_t i = 0; i < units; ++i) {
    auto r = call(http, "POST", "/workunit", json({{"context_id", "frames"}, {"agent_id", "a"}, {"text", text_of(i)}}).dump());
    ASSERT_EQ(r.status, 201u) << r.raw;
  }

  net::io_context ioc;
  websocket::stream<beast::tcp_stream> ws(ioc);
  beast::get_lowest_layer(ws).connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), server.port()));
  beast::get_lowest_layer(ws).expires_after(std::chrono::seconds(60));  // a hang guard, not a timing check
  ws.read_message_max(4 << 20);
  size_t pongs = 0;
  ws.control_callback([&](websocket::frame_type kind, beast::string_view) { pongs += kind == websocket::frame_type::pong; });
  ws.handshake("127.0.0.1", "/stream?context=frames&since=0&text=1");
  constexpr size_t pings = 50;
  size_t got = 0, pinged = 0;
  beast::flat_buffer buf;
  while (got < units) {
    if (pinged < pings) ws.ping(websocket::ping_data(std::to_string(pinged++).c_str()));  // one between reads, while the replay is written
    ws.read(buf);
    auto msg = json::parse(beast::buffers_to_string(buf.data()), nullptr, false);
    buf.consume(buf.size());
    ASSERT_FALSE(msg.is_discarded()) << "message " << got << " is not JSON";
    if (!msg["type"].is_number_integer()) continue;  // connected, subscribe_ack, heartbeats
    ASSERT_EQ(msg["seq"], got + 1);
    ASSERT_EQ(msg["text"], text_of(got)) << "unit " << got + 1 << " damaged";
    ++got;
  }
  // Pongs still owed arrive before the close frame is answered.
  ws.close(websocket::close_code::normal);
  EXPECT_EQ(pongs, pings);
}

}  // namespace
}  // namespace engram::test
