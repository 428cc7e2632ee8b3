// The bytes of an HTTP answer (gateway::serialize), read back by Beast's response
// parser: status, reason, the headers every answer carries, Content-Length,
// keep-alive for HTTP/1.0 and 1.1, bodiless statuses, and field values that try
// to end the head early.
#include <gtest/gtest.h>

#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>
#include <string>
#include <vector>

#include "gateway/response_bytes.hpp"

namespace engram::test {
namespace {

namespace http = boost::beast::http;
using gateway::response;

struct parsed {
  http::response<http::string_body> msg;
  bool keep_alive = false;
  size_t used = 0;  // bytes the parser consumed
  std::string wire;
};

// Parses head + body as a client would.
parsed read_back(const gateway::response_bytes& out) {
  parsed p;
  p.wire = out.head + out.body;
  http::response_parser<http::string_body> parser;
  parser.body_limit(64u << 20);
  boost::beast::error_code ec;
  p.used = parser.put(boost::asio::buffer(p.wire), ec);
  if (!ec && !parser.is_done()) {
    const size_t more = parser.put(boost::asio::buffer(p.wire.data() + p.used, p.wire.size() - p.used), ec);
    p.used += more;
  }
  EXPECT_FALSE(ec) << ec.message() << "\n" << p.wire;
  EXPECT_TRUE(parser.is_done()) << p.wire;
  p.keep_alive = parser.keep_alive();
  p.msg = parser.release();
  return p;
}

std::vector<std::string> values(const http::response<http::string_body>& m, std::string_view name) {
  std::vector<std::string> out;
  for (const auto& f : m)
    if (boost::beast::iequals(f.name_string(), name)) out.emplace_back(f.value());
  return out;
}

response json(unsigned status, std::string body) {
  response r;
  r.status = status;
  r.body = std::move(body);
  return r;
}

TEST(ResponseBytes, OkAnswerCarriesTheCommonHeaders) {
  auto r = json(200, R"({"id":"u1"})");
  r.headers.emplace_back("X-Request-Id", "abc");
  const auto out = gateway::serialize(r, 11, true);
  EXPECT_TRUE(out.head.starts_with("HTTP/1.1 200 OK\r\n")) << out.head;
  EXPECT_TRUE(out.head.ends_with("\r\n\r\n"));
  EXPECT_EQ(out.head.find("\r\n\r\n"), out.head.size() - 4);
  const auto p = read_back(out);
  EXPECT_EQ(p.used, p.wire.size());
  EXPECT_EQ(p.msg.result_int(), 200);
  EXPECT_EQ(p.msg.version(), 11);
  EXPECT_EQ(p.msg.body(), R"({"id":"u1"})");
  EXPECT_TRUE(p.keep_alive);
  EXPECT_EQ(values(p.msg, "Server"), std::vector<std::string>{"engram"});
  EXPECT_EQ(values(p.msg, "Content-Type"), std::vector<std::string>{"application/json"});
  EXPECT_EQ(values(p.msg, "Content-Length"), std::vector<std::string>{"11"});
  EXPECT_EQ(values(p.msg, "X-Content-Type-Options"), std::vector<std::string>{"nosniff"});
  EXPECT_EQ(values(p.msg, "Cache-Control"), std::vector<std::string>{"no-store"});
  EXPECT_EQ(values(p.msg, "X-Request-Id"), std::vector<std::string>{"abc"});
  EXPECT_TRUE(values(p.msg, "Connection").empty());
}

TEST(ResponseBytes, KeepAliveFollowsTheVersion) {
  {  // HTTP/1.1 stays open unless told
    const auto p = read_back(gateway::serialize(json(200, "{}"), 11, false));
    EXPECT_FALSE(p.keep_alive);
    EXPECT_EQ(values(p.msg, "Connection"), std::vector<std::string>{"close"});
  }
  {  // HTTP/1.0 closes unless told
    const auto out = gateway::serialize(json(200, "{}"), 10, true);
    EXPECT_TRUE(out.head.starts_with("HTTP/1.0 200 OK\r\n")) << out.head;
    const auto p = read_back(out);
    EXPECT_EQ(p.msg.version(), 10);
    EXPECT_TRUE(p.keep_alive);
    EXPECT_EQ(values(p.msg, "Connection"), std::vector<std::string>{"keep-alive"});
  }
  {
    const auto p = read_back(gateway::serialize(json(200, "{}"), 10, false));
    EXPECT_FALSE(p.keep_alive);
    EXPECT_TRUE(values(p.msg, "Connection").empty());
  }
}

TEST(ResponseBytes, ReasonPhrasesAndEmptyBodies) {
  auto r = json(429, R"({"error":"slow down"})");
  r.headers.emplace_back("Retry-After", "2");
  auto out = gateway::serialize(r, 11, true);
  EXPECT_TRUE(out.head.starts_with("HTTP/1.1 429 Too Many Requests\r\n")) << out.head;
  EXPECT_EQ(values(read_back(out).msg, "Retry-After"), std::vector<std::string>{"2"});

  out = gateway::serialize(json(404, ""), 11, true);
  EXPECT_TRUE(out.head.starts_with("HTTP/1.1 404 Not Found\r\n"));
  const auto p = read_back(out);
  EXPECT_EQ(values(p.msg, "Content-Length"), std::vector<std::string>{"0"});
  EXPECT_TRUE(p.msg.body().empty());

  response plain;  // no content type at all
  plain.content_type.clear();
  plain.body = "OK";
  EXPECT_TRUE(values(read_back(gateway::serialize(plain, 11, true)).msg, "Content-Type").empty());
}

TEST(ResponseBytes, BodilessStatusesHaveNoBodyOrLength) {
  for (const unsigned status : {101u, 204u, 304u}) {
    auto r = json(status, "must not be sent");
    const auto out = gateway::serialize(r, 11, true);
    EXPECT_TRUE(out.body.empty()) << status;
    EXPECT_EQ(out.head.find("Content-Length"), std::string::npos) << out.head;
    if (status == 101) continue;  // Beast's parser reads no further than a 1xx head
    const auto p = read_back(out);
    EXPECT_EQ(p.msg.result_int(), status);
    EXPECT_EQ(p.used, p.wire.size());
  }
}

TEST(ResponseBytes, RouteHeadersCannotEndTheHeadOrDropTheCommonOnes) {
  auto r = json(200, "{}");
  r.headers.emplace_back("cache-control", "no-cache");  // a route's own policy wins
  r.headers.emplace_back("X-Evil", "a\r\nSet-Cookie: stolen=1\r\n\r\nHTTP/1.1 200 OK");
  r.headers.emplace_back("Bad Name", "dropped");
  r.headers.emplace_back("Bad:Name", "dropped");
  r.headers.emplace_back("", "dropped");
  r.headers.emplace_back("X-Content-Type-Options", "sniff");  // the server's value stands
  r.headers.emplace_back("X-Tab", "a\tb");
  r.headers.emplace_back("X-Lf", "a\nSet-Cookie: lf=1");
  r.headers.emplace_back("X-Cr", "a\rSet-Cookie: cr=1");
  r.headers.emplace_back("X-Nul-Del", std::string("a\0b\x7f" "c", 5));
  r.content_type = "text/plain\r\nSet-Cookie: ct=1";
  const auto out = gateway::serialize(r, 11, true);
  EXPECT_EQ(out.head.find("\r\n\r\n"), out.head.size() - 4) << out.head;
  const auto p = read_back(out);
  EXPECT_EQ(p.used, p.wire.size());
  EXPECT_EQ(p.msg.body(), "{}");
  EXPECT_EQ(values(p.msg, "Cache-Control"), std::vector<std::string>{"no-cache"});
  EXPECT_TRUE(values(p.msg, "Set-Cookie").empty());
  EXPECT_EQ(values(p.msg, "X-Evil"), std::vector<std::string>{"a  Set-Cookie: stolen=1    HTTP/1.1 200 OK"});
  EXPECT_EQ(values(p.msg, "X-Content-Type-Options"), std::vector<std::string>{"nosniff"});
  EXPECT_EQ(values(p.msg, "X-Tab"), std::vector<std::string>{"a\tb"});
  EXPECT_EQ(values(p.msg, "X-Lf"), std::vector<std::string>{"a Set-Cookie: lf=1"});
  EXPECT_EQ(values(p.msg, "X-Cr"), std::vector<std::string>{"a Set-Cookie: cr=1"});
  EXPECT_EQ(values(p.msg, "X-Nul-Del"), std::vector<std::string>{"a b c"});
  EXPECT_EQ(values(p.msg, "Content-Type"), std::vector<std::string>{"text/plain  Set-Cookie: ct=1"});
  EXPECT_EQ(out.head.find("dropped"), std::string::npos);
  for (const char c : out.head)
    if (c == '\0' || c == '\x7f') ADD_FAILURE() << "NUL or DEL in the head";
  for (size_t i = 0; i < out.head.size(); ++i) {  // CR only before LF, LF only after CR
    if (out.head[i] == '\r') {
      EXPECT_EQ(out.head[i + 1], '\n') << i;
    }
    if (out.head[i] == '\n') {
      EXPECT_EQ(out.head[i - 1], '\r') << i;
    }
  }
}

// Framing is the server's: a route's own Content-Length, Transfer-Encoding or
// Connection would contradict it and let a client split the answer wrongly.
TEST(ResponseBytes, FramingFieldsAreTheServersOwn) {
  auto r = json(200, "{}");
  r.headers.emplace_back("Content-Length", "999");
  r.headers.emplace_back("transfer-encoding", "chunked");
  r.headers.emplace_back("Connection", "keep-alive");
  const auto p = read_back(gateway::serialize(r, 11, false));
  EXPECT_EQ(p.used, p.wire.size());
  EXPECT_EQ(values(p.msg, "Content-Length"), std::vector<std::string>{"2"});
  EXPECT_TRUE(values(p.msg, "Transfer-Encoding").empty());
  EXPECT_EQ(values(p.msg, "Connection"), std::vector<std::string>{"close"});
  EXPECT_FALSE(p.keep_alive);
  EXPECT_EQ(p.msg.body(), "{}");
}

TEST(ResponseBytes, LargeBodyIsMovedAndCounted) {
  std::string body(3u << 20, 'x');
  body.back() = 'y';
  const char* data = body.data();
  const auto out = gateway::serialize(json(200, std::move(body)), 11, true);
  EXPECT_EQ(out.body.data(), data);  // moved, not copied
  const auto p = read_back(out);
  EXPECT_EQ(values(p.msg, "Content-Length"), std::vector<std::string>{std::to_string(3u << 20)});
  EXPECT_EQ(p.msg.body().size(), 3u << 20);
  EXPECT_EQ(p.msg.body().back(), 'y');
}

}  // namespace
}  // namespace engram::test
