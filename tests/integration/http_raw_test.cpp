// HTTP edge cases over a raw TCP socket: malformed framing, pipelining, slow and
// vanishing clients, oversized headers, connection caps, shutdown.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <thread>

#include "support/test_support.hpp"

namespace engram::test {
namespace {

// A blocking loopback socket with poll()-based read deadlines.
class raw_conn {
 public:
  explicit raw_conn(uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) ADD_FAILURE() << "connect failed";
  }
  ~raw_conn() { close(); }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  void send(std::string_view data) {
    while (!data.empty()) {
      const auto n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n <= 0) return;
      data.remove_prefix(size_t(n));
    }
  }
  // Reads until `done(buffer)` holds, the peer closes, or the deadline passes.
  std::string read_until(const std::function<bool(const std::string&)>& done,
                         std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!done(buf_)) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) break;
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, int(left.count())) <= 0) break;
      char chunk[4096];
      const auto n = ::recv(fd_, chunk, sizeof chunk, 0);
      if (n <= 0) {
        closed_ = true;
        break;
      }
      buf_.append(chunk, size_t(n));
    }
    return buf_;
  }
  std::string read_to_close(std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    return read_until([](const std::string&) { return false; }, timeout);
  }
  bool closed() const { return closed_; }
  static size_t count(const std::string& hay, std::string_view needle) {
    size_t n = 0;
    for (auto pos = hay.find(needle); pos != std::string::npos; pos = hay.find(needle, pos + 1)) ++n;
    return n;
  }

 private:
  int fd_ = -1;
  std::string buf_;
  bool closed_ = false;
};

class RawHttpTest : public ::testing::Test {
 protected:
  void start(const std::function<void(config::config&)>& tweak = {}) {
    auto cfg = test_config(dir_.str() + "/data");
    if (tweak) tweak(cfg);
    server_ = std::make_unique<test_server>(cfg);
  }
  uint16_t port() const { return server_->port(); }
  bool healthy() {
    auto c = server_->connect();
    auto r = c.request("GET", "/healthz");
    return r && r->status == 200;
  }
  temp_dir dir_;
  std::unique_ptr<test_server> server_;
};

TEST_F(RawHttpTest, MalformedRequestLineGets400AndClose) {
  start();
  raw_conn c(port());
  c.send("THIS IS NOT HTTP\r\n\r\n");
  const auto out = c.read_to_close();
  EXPECT_TRUE(out.starts_with("HTTP/1.1 400")) << out;
  EXPECT_TRUE(c.closed());
  EXPECT_TRUE(healthy());
}

TEST_F(RawHttpTest, BadTargetGets400) {
  start();
  raw_conn c(port());
  c.send("GET /workunits/a%zz HTTP/1.1\r\nHost: x\r\n\r\n");
  const auto out = c.read_until([](const std::string& b) { return b.find("\r\n\r\n") != std::string::npos; });
  EXPECT_TRUE(out.starts_with("HTTP/1.1 400")) << out;
}

TEST_F(RawHttpTest, PipelinedRequestsAnsweredInOrder) {
  start();
  raw_conn c(port());
  const std::string body = R"({"context_id":"pipe","agent_id":"a","text":"x"})";
  const std::string post = "POST /workunit HTTP/1.1\r\nHost: x\r\nContent-Length: " +
                           std::to_string(body.size()) + "\r\n\r\n" + body;
  c.send(post + post + "GET /workunits/pipe HTTP/1.1\r\nHost: x\r\n\r\n");
  const auto out = c.read_until([](const std::string& b) { return b.find("\"work_units\"") != std::string::npos && b.ends_with("}"); });
  EXPECT_EQ(raw_conn::count(out, "HTTP/1.1 201"), 2u) << out;
  EXPECT_EQ(raw_conn::count(out, "HTTP/1.1 200"), 1u) << out;
  const auto first = out.find("\"seq\":1");
  const auto second = out.find("\"seq\":2");
  ASSERT_NE(first, std::string::npos);
  ASSERT_NE(second, std::string::npos);
  EXPECT_LT(first, second);
  EXPECT_LT(second, out.find("HTTP/1.1 200"));
}

TEST_F(RawHttpTest, OversizedHeaderGets431) {
  start();
  raw_conn c(port());
  c.send("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(32 * 1024, 'a') + "\r\n\r\n");
  const auto out = c.read_to_close();
  EXPECT_TRUE(out.starts_with("HTTP/1.1 431")) << out.substr(0, 100);
}

TEST_F(RawHttpTest, DeclaredOversizedBodyRefusedBeforeReading) {
  start();
  raw_conn c(port());
  c.send("POST /workunit HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n");
  const auto out = c.read_to_close();
  EXPECT_TRUE(out.starts_with("HTTP/1.1 413")) << out;
}

// A body that came with its header is parsed from the read buffer; one still in
// flight is read as it arrives. Both paths, with Content-Length and chunked, and the
// body limit on a chunked body that arrived whole.
TEST_F(RawHttpTest, BodiesAreReadWithTheHeaderInChunksOrLater) {
  start([](config::config& c) { c.server.max_body_bytes = 4096; });
  const std::string body = R"({"context_id":"bodies","agent_id":"a","text":"x"})";
  auto chunked = [](const std::string& b) {
    std::string out;
    for (size_t i = 0; i < b.size(); i += 7) {
      const auto piece = b.substr(i, 7);
      char size[16];
      std::snprintf(size, sizeof size, "%zx\r\n", piece.size());
      out.append(size).append(piece).append("\r\n");
    }
    return out + "0\r\n\r\n";
  };
  const auto answered = [](const std::string& b) { return b.find("\r\n\r\n") != std::string::npos && b.ends_with("}"); };
  {
    raw_conn c(port());  // chunked, whole
    c.send("POST /workunit HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(body));
    const auto out = c.read_until(answered);
    EXPECT_TRUE(out.starts_with("HTTP/1.1 201")) << out;
  }
  {
    raw_conn c(port());  // Content-Length, half with the header and half later
    c.send("POST /workunit HTTP/1.1\r\nHost: x\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" +
           body.substr(0, body.size() / 2));
    std::this_thread::sleep_for(std::chrono::milliseconds(50));  // pacing: the rest arrives in a later read
    c.send(body.substr(body.size() / 2));
    const auto out = c.read_until(answered);
    EXPECT_TRUE(out.starts_with("HTTP/1.1 201")) << out;
  }
  {
    raw_conn c(port());  // chunked, the header and two chunks first, the rest later
    const auto all = chunked(body);
    c.send("POST /workunit HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + all.substr(0, 20));
    std::this_thread::sleep_for(std::chrono::milliseconds(50));  // pacing, as above
    c.send(all.substr(20));
    const auto out = c.read_until(answered);
    EXPECT_TRUE(out.starts_with("HTTP/1.1 201")) << out;
  }
  {
    raw_conn c(port());  // chunked, over the limit, all in the first read
    c.send("POST /workunit HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" +
           chunked(std::string(5000, 'a')));
    const auto out = c.read_to_close();
    EXPECT_TRUE(out.starts_with("HTTP/1.1 413")) << out.substr(0, 200);
  }
  auto r = server_->connect().request("GET", "/workunits/bodies");
  ASSERT_TRUE(r);
  EXPECT_EQ(raw_conn::count(r->body, "\"seq\":"), 3u) << r->body;
}

TEST_F(RawHttpTest, ExpectContinueIsHonoured) {
  start();
  raw_conn c(port());
  const std::string body = R"({"context_id":"cont","agent_id":"a"})";
  c.send("POST /workunit HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: " +
         std::to_string(body.size()) + "\r\n\r\n");
  auto out = c.read_until([](const std::string& b) { return b.find("100 Continue") != std::string::npos; });
  ASSERT_NE(out.find("HTTP/1.1 100 Continue"), std::string::npos) << out;
  c.send(body);
  out = c.read_until([](const std::string& b) { return b.find("201 Created") != std::string::npos && b.ends_with("}}"); });
  EXPECT_NE(out.find("201 Created"), std::string::npos) << out;
}

TEST_F(RawHttpTest, Http10ClosesAfterResponse) {
  start();
  raw_conn c(port());
  c.send("GET /healthz HTTP/1.0\r\n\r\n");
  const auto out = c.read_to_close();
  EXPECT_TRUE(out.starts_with("HTTP/1.0 200")) << out;
  EXPECT_TRUE(c.closed());
}

TEST_F(RawHttpTest, AbruptDisconnectMidBodyStoresNothing) {
  start();
  {
    raw_conn c(port());
    c.send("POST /workunit HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"context_id\":\"gone\"");
  }  // closed mid-body
  for (int i = 0; i < 20; ++i) {
    raw_conn c(port());
    c.send("POST /workunit HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{\"con");
  }
  EXPECT_TRUE(healthy());
  auto conn = server_->connect();
  EXPECT_EQ(conn.request("GET", "/contexts/gone")->status, 404u);
}

TEST_F(RawHttpTest, IdleAndSlowClientsAreClosed) {
  start([](config::config& c) {
    c.server.idle_timeout = std::chrono::milliseconds(300);
    c.server.read_timeout = std::chrono::milliseconds(300);
  });
  raw_conn idle(port());
  raw_conn slow(port());
  slow.send("POST /workunit HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{");  // never finishes
  idle.read_to_close(std::chrono::seconds(10));
  slow.read_to_close(std::chrono::seconds(10));
  EXPECT_TRUE(idle.closed());
  EXPECT_TRUE(slow.closed());
  EXPECT_TRUE(healthy());
}

TEST_F(RawHttpTest, ConnectionCapAnswers503) {
  start([](config::config& c) { c.server.max_connections = 2; });
  raw_conn a(port()), b(port());
  // Make sure both are accepted and counted before the third arrives.
  a.send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
  b.send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
  a.read_until([](const std::string& s) { return s.ends_with("OK"); });
  b.read_until([](const std::string& s) { return s.ends_with("OK"); });
  raw_conn c(port());
  const auto out = c.read_to_close();
  EXPECT_TRUE(out.starts_with("HTTP/1.1 503")) << out;
  a.close();
  b.close();
  EXPECT_TRUE(wait_until([&] { return healthy(); }));
}

TEST_F(RawHttpTest, ShutdownFinishesInFlightAndClosesIdle) {
  start();
  raw_conn idle(port());
  idle.send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
  idle.read_until([](const std::string& s) { return s.ends_with("OK"); });
  raw_conn busy(port());
  const std::string body = R"({"context_id":"sd","agent_id":"a","text":"last"})";
  // 100 Continue proves the server has taken the request: it is in flight when
  // shutdown begins, and its body arrives only afterwards.
  busy.send("POST /workunit HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: " +
            std::to_string(body.size()) + "\r\n\r\n");
  busy.read_until([](const std::string& b) { return b.find("100 Continue\r\n\r\n") != std::string::npos; });
  std::thread stopper([&] { server_->stop(); });
  idle.read_to_close();
  EXPECT_TRUE(idle.closed());  // idle connections are closed at once
  busy.send(body);
  const auto out = busy.read_to_close();
  stopper.join();
  EXPECT_NE(out.find("HTTP/1.1 201"), std::string::npos) << out;
  EXPECT_NE(out.find("Connection: close"), std::string::npos) << out;
  EXPECT_TRUE(busy.closed());
  // The acknowledged unit is durable.
  server_->start();
  auto c = server_->connect();
  auto r = c.request("GET", "/workunits/sd");
  ASSERT_TRUE(r);
  EXPECT_NE(r->body.find("\"seq\":1"), std::string::npos) << r->body;
}

}  // namespace
}  // namespace engram::test
