// Streams over real WebSocket and SSE clients against the real server.
#include <gtest/gtest.h>
#include <sstream>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <random>
#include <set>
#include <thread>

#include "engram/stream_connections.hpp"
#include "storage/store.hpp"
#include "support/test_support.hpp"

namespace engram::test {
namespace {

using namespace std::chrono_literals;

// A WebSocket subscriber that separates units (integer "type") from control messages.
class ws_sub {
 public:
  ws_sub(uint16_t port, const std::string& target, const client::header_list& headers = {},
         std::chrono::milliseconds connect_timeout = 10s) {
    auto ok = ws_.connect("127.0.0.1", port, target, headers, connect_timeout);
    EXPECT_TRUE(ok) << ok.error().message;
    connected_ = bool(ok);
  }
  bool connected() const { return connected_; }
  client::ws_connection& raw() { return ws_; }

  std::optional<json> next(std::chrono::milliseconds timeout = 10s) {
    auto m = ws_.read(timeout);
    if (!m || !*m) return std::nullopt;
    return json::parse(**m);
  }
  // Next control message (string "type" or "event"), skipping heartbeats if asked.
  std::optional<json> next_control(bool skip_heartbeats = true, std::chrono::milliseconds timeout = 10s) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      auto m = next(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()));
      if (!m) return std::nullopt;
      if ((*m)["type"].is_number_integer()) {
        units_.push_back(*m);
        continue;
      }
      if (skip_heartbeats && (*m)["type"] == "heartbeat") continue;
      return m;
    }
    return std::nullopt;
  }
  // Reads until `n` units have arrived in total (or the deadline passes).
  const std::vector<json>& units_until(size_t n, std::chrono::milliseconds timeout = 30s) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (units_.size() < n && std::chrono::steady_clock::now() < deadline) {
      auto m = next(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()));
      if (!m) break;
      if ((*m)["type"].is_number_integer()) units_.push_back(*m);
      else controls_.push_back(*m);
    }
    return units_;
  }
  // Reads until the server ends the connection (a close frame or a dropped
  // connection), keeping what arrived before; false if it is still open when the
  // hang guard expires.
  bool read_until_closed(std::chrono::milliseconds guard) {
    const auto deadline = std::chrono::steady_clock::now() + guard;
    while (!ws_.closed() && std::chrono::steady_clock::now() < deadline) {
      auto m = next(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()));
      if (!m) continue;  // closed (the loop ends) or the deadline passed
      if ((*m)["type"].is_number_integer()) units_.push_back(*m);
      else controls_.push_back(*m);
    }
    return ws_.closed().has_value();
  }
  std::vector<json>& units() { return units_; }
  std::vector<json>& controls() { return controls_; }

 private:
  client::ws_connection ws_;
  bool connected_ = false;
  std::vector<json> units_, controls_;
};

class StreamTest : public ::testing::Test {
 protected:
  void start(const std::function<void(config::config&)>& tweak = {}) {
    auto cfg = test_config(dir_.str() + "/data");
    cfg.server.stream_heartbeat = 200ms;
    if (tweak) tweak(cfg);
    server_ = std::make_unique<test_server>(cfg);
    http_ = std::make_unique<client::http_connection>(server_->connect());
  }
  uint16_t port() const { return server_->port(); }

  json append(const std::string& ctx, const std::string& text) {
    auto r = call(*http_, "POST", "/workunit", json({{"context_id", ctx}, {"agent_id", "a"}, {"text", text}}).dump());
    EXPECT_EQ(r.status, 201u) << r.raw;
    return r.body["work_unit"];
  }
  void append_batch(client::http_connection& c, const std::string& ctx, size_t n, const std::string& tag) {
    json units = json::array();
    for (size_t i = 0; i < n; ++i) units.push_back({{"text", tag + std::to_string(i)}});
    auto r = call(c, "POST", "/workunits", json({{"context_id", ctx}, {"agent_id", "a"}, {"work_units", units}}).dump());
    ASSERT_EQ(r.status, 201u) << r.raw;
  }
  double metric(const std::string& name) { return test::metric(*http_, name); }

  static std::vector<uint64_t> seqs(const std::vector<json>& units) {
    std::vector<uint64_t> out;
    for (const auto& u : units) out.push_back(u["seq"]);
    return out;
  }
  // Explains how `got` differs from from..to (size, first mismatch), for readable failures.
  static std::string diverges(const std::vector<uint64_t>& got, uint64_t from, uint64_t to) {
    const uint64_t want = to >= from ? to - from + 1 : 0;
    for (size_t i = 0; i < got.size() && i < want; ++i)
      if (got[i] != from + i)
        return "first mismatch at index " + std::to_string(i) + ": got " + std::to_string(got[i]) + ", want " +
               std::to_string(from + i);
    if (got.size() != want)
      return "got " + std::to_string(got.size()) + " seqs, want " + std::to_string(want) + " (a prefix matched)";
    return "";
  }
  static std::vector<uint64_t> range(uint64_t from, uint64_t to) {
    std::vector<uint64_t> out;
    for (uint64_t s = from; s <= to; ++s) out.push_back(s);
    return out;
  }

  temp_dir dir_;
  std::unique_ptr<test_server> server_;
  std::unique_ptr<client::http_connection> http_;
};

// A misspelt context or a pattern that matches nothing still streams (the context
// may be created later), but the ack says so, on both transports.
TEST_F(StreamTest, AckMarksContextsThatDoNotExistAndPatternsThatMatchNothing) {
  start();
  append("real", "x");
  ws_sub sub(port(), "/stream?context=real,typo&since=0");
  ASSERT_TRUE(sub.next());  // connected
  auto ack = sub.next_control();
  ASSERT_TRUE(ack);
  EXPECT_EQ((*ack)["contexts"], json::parse(R"([{"context_id":"real","from_seq":1,"head_seq":1,"exists":true},
                                               {"context_id":"typo","from_seq":1,"head_seq":0,"exists":false}])"));
  ws_sub pattern(port(), "/stream?context=nothing/*,real");
  ASSERT_TRUE(pattern.next());
  auto pack = pattern.next_control();
  ASSERT_TRUE(pack);
  EXPECT_EQ((*pack)["unmatched_patterns"], json::array({"nothing/*"})) << pack->dump();
  // The missing context is streamed once it is created. (Order holds per context
  // only: under load the replay of "real" may come after the live "typo" unit.)
  append("typo", "late");
  const auto& units = sub.units_until(2);
  ASSERT_EQ(units.size(), 2u);
  EXPECT_TRUE(std::any_of(units.begin(), units.end(), [](const json& u) { return u["context_id"] == "typo"; }))
      << units.back().dump();
}

TEST_F(StreamTest, WebSocketReplaysThenDeliversLive) {
  start();
  for (int i = 1; i <= 3; ++i) append("ctx", "u" + std::to_string(i));
  ws_sub sub(port(), "/stream?context=ctx&since=0");
  auto hello = sub.next();
  ASSERT_TRUE(hello);
  EXPECT_EQ((*hello)["event"], "connected");
  EXPECT_TRUE((*hello)["client_id"].is_string());
  auto ack = sub.next_control();
  ASSERT_TRUE(ack);
  EXPECT_EQ((*ack)["type"], "subscribe_ack");
  EXPECT_EQ((*ack)["contexts"], json::parse(R"([{"context_id":"ctx","from_seq":1,"head_seq":3,"exists":true}])"));
  EXPECT_FALSE(ack->contains("unmatched_patterns"));
  append("ctx", "u4");
  append("ctx", "u5");
  const auto& units = sub.units_until(5);
  EXPECT_EQ(seqs(units), range(1, 5));
  EXPECT_EQ(units[0]["type"], 0);  // a bare unit with an integer type, as v3 clients decode
  EXPECT_EQ(units[4]["payload"], "dTU=");

  // Without a cursor: live from the current head.
  ws_sub live(port(), "/stream?context=ctx");
  ASSERT_TRUE(live.next());
  auto live_ack = live.next_control();
  EXPECT_EQ((*live_ack)["contexts"][0]["from_seq"], 6);
  append("ctx", "u6");
  EXPECT_EQ(seqs(live.units_until(1)), range(6, 6));
}

// ?text=1 adds each unit's payload as "text" on both transports, replayed and live;
// without it the units are v3's, unchanged.
TEST_F(StreamTest, TextParameterAddsThePayloadAsText) {
  start();
  append("t", "replayed");
  ws_sub sub(port(), "/stream?context=t&since=0&text=1");
  ws_sub plain(port(), "/stream?context=t&since=0");
  append("t", "live");
  const auto& units = sub.units_until(2);
  EXPECT_EQ(units[0]["text"], "replayed");
  EXPECT_EQ(units[1]["text"], "live");
  EXPECT_EQ(units[1]["payload"], "bGl2ZQ==");  // the base64 payload stays
  EXPECT_FALSE(plain.units_until(2)[1].contains("text"));

  client::sse_connection sse;
  ASSERT_TRUE(sse.connect("127.0.0.1", port(), "/stream-sse?context=t&since=0&text=true"));
  ASSERT_FALSE(sse.refused());
  auto subscribed = sse.next(5s);
  ASSERT_TRUE(subscribed && *subscribed);
  auto first = sse.next(5s);
  ASSERT_TRUE(first && *first);
  EXPECT_EQ(json::parse((*first)->data)["text"], "replayed");

  client::sse_connection bad;
  ASSERT_TRUE(bad.connect("127.0.0.1", port(), "/stream-sse?context=t&text=maybe"));
  ASSERT_TRUE(bad.refused());
  EXPECT_EQ(bad.refused()->status, 400u);
}

// Operators see who watches a context and how far behind each subscriber is
// (GET /contexts/{id}/subscribers and per-context gauges), and every stream, refused
// or served, gets an access-log line.
TEST_F(StreamTest, SubscribersAreListedCountedAndLogged) {
  std::ostringstream log;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(log);
  sink->set_formatter(app::log_formatter("text"));  // with the access log's fields
  spdlog::default_logger()->sinks().push_back(sink);  // before the server starts
  struct remove_sink {
    ~remove_sink() { spdlog::default_logger()->sinks().pop_back(); }
  } remove;
  start();
  for (int i = 1; i <= 3; ++i) append("ops/a", "u" + std::to_string(i));
  EXPECT_EQ(call(*http_, "GET", "/contexts/ops/a/subscribers").body["subscribers"], json::array());

  auto ws = std::make_unique<ws_sub>(port(), "/stream?context=ops/a&since=0");
  ASSERT_TRUE(ws->connected());
  ASSERT_EQ(seqs(ws->units_until(3)), range(1, 3));
  client::sse_connection sse;
  ASSERT_TRUE(sse.connect("127.0.0.1", port(), "/stream-sse?context=ops/*&since=0", {{"X-Request-Id", "sse-ops-1"}}));
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(sse.next(5s));  // subscribed, then seqs 1..3
  append("ops/a", "u4");
  ASSERT_EQ(ws->units_until(4).size(), 4u);
  ASSERT_TRUE(sse.next(5s));

  json subs;
  ASSERT_TRUE(wait_until([&] {  // the SSE write completes after the client read it
    subs = call(*http_, "GET", "/contexts/ops/a/subscribers").body;
    if (subs["subscribers"].size() != 2) return false;
    for (const auto& s : subs["subscribers"])
      if (s["delivered_seq"] != 4 || s["events_sent"] != 4) return false;
    return true;
  }, 10s)) << subs.dump();
  EXPECT_EQ(subs["head_seq"], 4);
  std::map<std::string, json> by_transport;
  for (const auto& s : subs["subscribers"]) by_transport[s["transport"]] = s;
  ASSERT_EQ(by_transport.size(), 2u) << subs.dump();
  EXPECT_EQ(by_transport["websocket"]["subscribed_as"], "ops/a");
  EXPECT_EQ(by_transport["sse"]["subscribed_as"], "ops/*");
  EXPECT_EQ(by_transport["sse"]["request_id"], "sse-ops-1");
  EXPECT_EQ(by_transport["sse"]["ip"], "127.0.0.1");
  for (const auto& [t, s] : by_transport) {
    EXPECT_EQ(s["head_seq"], 4) << t;
    EXPECT_EQ(s["lag"], 0) << t;
    EXPECT_EQ(s["catching_up"], false) << t;
    EXPECT_GT(s["bytes_sent"].get<uint64_t>(), 0u) << t;
    EXPECT_GT(s["opened_at"]["seconds"].get<int64_t>(), 0) << t;
  }
  EXPECT_EQ(metric("engram_stream_context_subscribers{context=\"ops/a\"}"), 2);
  EXPECT_EQ(metric("engram_stream_context_max_lag_events{context=\"ops/a\"}"), 0);

  EXPECT_EQ(call(*http_, "GET", "/contexts/ops/missing/subscribers").status, 404u);
  client::ws_connection refused;
  EXPECT_FALSE(refused.connect("127.0.0.1", port(), "/stream?since=0", {{"X-Request-Id", "ws-refused-1"}}, 5s));

  ws.reset();  // the client goes away
  ASSERT_TRUE(wait_until([&] { return call(*http_, "GET", "/contexts/ops/a/subscribers").body["subscribers"].size() == 1; }, 10s));
  EXPECT_EQ(metric("engram_stream_context_subscribers{context=\"ops/a\"}"), 1);
  sse.abort();
  ASSERT_TRUE(wait_until([&] { return call(*http_, "GET", "/contexts/ops/a/subscribers").body["subscribers"].empty(); }, 10s));
  EXPECT_EQ(metric("engram_stream_context_subscribers{context=\"ops/a\"}"), -1);  // the series is gone
  server_.reset();

  // One line per stream: the refused upgrade, and each served stream when it ended.
  std::vector<std::string> lines;
  std::istringstream in(log.str());
  for (std::string line; std::getline(in, line);)
    if (line.find("access") != std::string::npos && line.find("stream=") != std::string::npos) lines.push_back(line);
  auto has = [&](std::initializer_list<const char*> parts) {
    return std::any_of(lines.begin(), lines.end(), [&](const std::string& l) {
      return std::all_of(parts.begin(), parts.end(), [&](const char* p) { return l.find(p) != std::string::npos; });
    });
  };
  std::string all;
  for (const auto& l : lines) all += l + "\n";
  EXPECT_TRUE(has({"request_id=ws-refused-1", "path=/stream", "status=400", "stream=websocket", "ended_by=refused"})) << all;
  EXPECT_TRUE(has({"path=/stream", "status=101", "stream=websocket", "events=4", "ended_by=client"})) << all;
  EXPECT_TRUE(has({"request_id=sse-ops-1", "path=/stream-sse", "status=200", "stream=sse", "events=4"})) << all;
}

TEST_F(StreamTest, SseReplaysResumesWithLastEventIdAndSendsIds) {
  start();
  for (int i = 1; i <= 3; ++i) append("s", "u" + std::to_string(i));
  client::sse_connection sse;
  ASSERT_TRUE(sse.connect("127.0.0.1", port(), "/stream-sse?context=s&since=1"));
  ASSERT_FALSE(sse.refused());
  bool event_stream = false;
  for (const auto& [k, v] : sse.response_headers())
    if (k == "content-type" && v.starts_with("text/event-stream")) event_stream = true;
  EXPECT_TRUE(event_stream);
  auto first = sse.next(5s);
  ASSERT_TRUE(first && *first);
  EXPECT_EQ((*first)->event, "subscribed");
  EXPECT_EQ(json::parse((*first)->data)["contexts"][0]["from_seq"], 2);
  std::vector<std::string> ids;
  for (int i = 0; i < 2; ++i) {
    auto ev = sse.next(5s);
    ASSERT_TRUE(ev && *ev);
    EXPECT_EQ((*ev)->event, "");  // default event: EventSource.onmessage
    ids.push_back((*ev)->id);
    EXPECT_EQ(json::parse((*ev)->data)["seq"], std::stoi((*ev)->id));
  }
  EXPECT_EQ(ids, (std::vector<std::string>{"2", "3"}));
  sse.abort();
  append("s", "u4");
  // Reconnect as EventSource does, with Last-Event-ID.
  client::sse_connection again;
  ASSERT_TRUE(again.connect("127.0.0.1", port(), "/stream-sse?context=s", {{"Last-Event-ID", "3"}}));
  ASSERT_TRUE(again.next(5s));  // subscribed
  auto ev = again.next(5s);
  ASSERT_TRUE(ev && *ev);
  EXPECT_EQ((*ev)->id, "4");
}

// An SSE replay far larger than the socket buffers (~15 MB: each catch-up write
// carries 256 events of ~19 KB) to a reader that pauses: the session's writes are
// cut short (a try_write_now the socket takes only part of, then an asynchronous
// write of the rest) and every byte still arrives once, in order, and is counted
// once in the subscriber's events_sent and bytes_sent.
TEST_F(StreamTest, SseReplayToAPausingReaderArrivesWholeAndCountedOnce) {
  start();
  constexpr size_t batches = 40, per_batch = 20, total = batches * per_batch;
  auto text_of = [](size_t i) { return std::to_string(i) + ":" + std::string(8000, char('a' + i % 26)); };
  for (size_t b = 0; b < batches; ++b) {
    json units = json::array();
    for (size_t i = 0; i < per_batch; ++i) units.push_back({{"text", text_of(b * per_batch + i + 1)}});
    auto r = call(*http_, "POST", "/workunits", json({{"context_id", "big"}, {"agent_id", "a"}, {"work_units", units}}).dump());
    ASSERT_EQ(r.status, 201u) << r.raw;
  }
  client::sse_connection sse;
  ASSERT_TRUE(sse.connect("127.0.0.1", port(), "/stream-sse?context=big&since=0&text=true"));
  // The bytes of each event as the server frames it ("event:", "id:", "data:").
  size_t framed = 0;
  auto count = [&](const client::sse_event& ev) {
    if (!ev.event.empty()) framed += 8 + ev.event.size();
    if (!ev.id.empty()) framed += 5 + ev.id.size();
    framed += 8 + ev.data.size();
  };
  auto first = sse.next(10s);
  ASSERT_TRUE(first && *first);
  EXPECT_EQ((*first)->event, "subscribed");
  count(**first);
  uint64_t expect = 1;
  while (expect <= total) {
    auto ev = sse.next(30s);
    ASSERT_TRUE(ev && *ev) << "stalled at seq " << expect;
    const auto unit = json::parse((*ev)->data);
    ASSERT_EQ((*ev)->id, std::to_string(expect));
    ASSERT_EQ(unit["seq"], expect);
    ASSERT_EQ(unit["text"], text_of(expect)) << "seq " << expect;
    count(**ev);
    // Pacing, not waiting for anything: the pauses leave the server's writes
    // facing full socket buffers more often.
    if (++expect % 50 == 0) std::this_thread::sleep_for(20ms);
  }
  // Live events follow the replay on the same connection.
  append("big", "live");
  auto live = sse.next(10s);
  ASSERT_TRUE(live && *live);
  EXPECT_EQ((*live)->id, std::to_string(total + 1));
  EXPECT_EQ(json::parse((*live)->data)["text"], "live");
  count(**live);
  // Each event counted once, and the bytes: every event's frame, plus the response
  // head, "retry:" and heartbeats (13 bytes each), which together stay far below
  // one event's ~19 KB, so a write counted twice or not at all shows.
  json sub;
  ASSERT_TRUE(wait_until([&] {
    auto subs = call(*http_, "GET", "/contexts/big/subscribers").body["subscribers"];
    if (subs.size() != 1 || subs[0]["events_sent"] != total + 1) return false;
    sub = subs[0];
    return true;
  }, 10s)) << call(*http_, "GET", "/contexts/big/subscribers").raw;
  const auto bytes = sub["bytes_sent"].get<uint64_t>();
  EXPECT_GE(bytes, framed + 13 * sse.comments());
  EXPECT_LE(bytes, framed + 13 * sse.comments() + 4096);
}

TEST_F(StreamTest, BadParametersAreRefusedBeforeUpgrade) {
  start([](config::config& c) { c.server.cors_origins = {"https://good.example"}; });
  for (const char* target : {"/stream-sse", "/stream-sse?context=", "/stream-sse?context=a&since=x",
                             "/stream-sse?context=a*b*", "/stream-sse?context=%FF", "/stream-sse?context=*x*",
                             "/stream-sse?context=a&since=18446744073709551615"}) {
    auto r = call(*http_, "GET", target);
    EXPECT_EQ(r.status, 400u) << target << " " << r.raw;
    EXPECT_TRUE(r.body.contains("error")) << r.raw;
  }
  EXPECT_EQ(call(*http_, "GET", "/stream?context=a").status, 400u);  // not an upgrade
  EXPECT_EQ(call(*http_, "POST", "/stream-sse?context=a", "{}").status, 405u);
  client::ws_connection ws;
  auto refused = ws.connect("127.0.0.1", port(), "/stream");
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message.find("400"), std::string::npos) << refused.error().message;
  client::ws_connection evil;
  auto forbidden = evil.connect("127.0.0.1", port(), "/stream?context=a", {{"Origin", "https://evil.example"}});
  ASSERT_FALSE(forbidden);
  EXPECT_NE(forbidden.error().message.find("403"), std::string::npos);
  client::ws_connection good;
  EXPECT_TRUE(good.connect("127.0.0.1", port(), "/stream?context=a", {{"Origin", "https://good.example"}}));
  client::sse_connection sse;
  ASSERT_TRUE(sse.connect("127.0.0.1", port(), "/stream-sse?context=a", {{"Origin", "https://good.example"}}));
  bool cors = false;
  for (const auto& [k, v] : sse.response_headers())
    if (k == "access-control-allow-origin" && v == "https://good.example") cors = true;
  EXPECT_TRUE(cors);
}

TEST_F(StreamTest, WebSocketClientMessages) {
  start();
  append("other", "o1");
  ws_sub sub(port(), "/stream?context=first");
  ASSERT_TRUE(sub.next());               // connected
  ASSERT_TRUE(sub.next_control());       // subscribe_ack
  ASSERT_TRUE(sub.raw().send(R"({"type":"heartbeat"})"));
  EXPECT_EQ((*sub.next_control())["type"], "heartbeat_ack");
  for (const char* bad : {"not json", "[]", R"({"type":7})", R"({"type":"dance"})",
                          R"({"type":"subscribe","contexts":[]})", R"({"type":"subscribe","contexts":["a"],"since":"x"})"}) {
    ASSERT_TRUE(sub.raw().send(bad));
    auto err = sub.next_control();
    ASSERT_TRUE(err) << bad;
    EXPECT_EQ((*err)["type"], "error") << bad;
    EXPECT_TRUE((*err)["error"].is_string());
  }
  ASSERT_TRUE(sub.raw().send(R"({"type":"subscribe","contexts":["other"],"since":0})"));
  auto ack = sub.next_control();
  ASSERT_TRUE(ack);
  EXPECT_EQ((*ack)["type"], "subscribe_ack");
  EXPECT_EQ((*ack)["contexts"][0]["context_id"], "other");
  append("other", "o2");
  const auto& units = sub.units_until(2);
  ASSERT_EQ(units.size(), 2u);
  EXPECT_EQ(units[0]["context_id"], "other");
  EXPECT_EQ(seqs(units), range(1, 2));
}

// Regression (found by bench/soak.sh): a subscribe message that arrived while an
// event of the previous subscription was being written made that write's completion
// advance the new, empty batch, and the next write read past it (a crash).
TEST_F(StreamTest, ResubscribingWhileAReplayIsBeingWrittenSwitchesCleanly) {
  start();
  for (int b = 0; b < 4; ++b) append_batch(*http_, "big", 1000, std::string(200, 'x'));
  append("small", "s1");
  for (int round = 0; round < 10; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    ws_sub sub(port(), "/stream?context=big&since=0");
    ASSERT_TRUE(sub.next());  // connected
    // The client reads nothing more yet, so the 800 KB replay fills the socket and
    // a write is in flight when the new subscription arrives.
    ASSERT_TRUE(sub.raw().send(R"({"type":"subscribe","contexts":["small"],"since":0})"));
    bool switched = false;
    std::optional<json> unit;
    while (!unit) {
      auto m = sub.next();
      ASSERT_TRUE(m) << "the stream ended";
      const auto type = m->value("type", json());
      if (type == "subscribe_ack" && (*m)["contexts"][0]["context_id"] == "small") switched = true;
      else if (switched && type.is_number_integer()) unit = m;
    }
    EXPECT_EQ((*unit)["context_id"], "small");  // nothing of the old stream after the ack
    EXPECT_EQ((*unit)["seq"], 1);
  }
  EXPECT_EQ(call(*http_, "GET", "/healthz").status, 200u);
}

TEST_F(StreamTest, PatternsMatchLaterContextsAndContextUpdates) {
  start();
  append("proj/existing", "e1");
  ws_sub sub(port(), "/stream?context=proj/*,solo");
  ASSERT_TRUE(sub.next());
  auto ack = sub.next_control();
  ASSERT_TRUE(ack);
  // proj/existing matched the pattern; solo is listed though it does not exist yet.
  EXPECT_EQ((*ack)["contexts"],
            json::parse(R"([{"context_id":"proj/existing","from_seq":2,"head_seq":1,"exists":true},
                            {"context_id":"solo","from_seq":1,"head_seq":0,"exists":false}])"));
  append("proj/new", "n1");
  append("unrelated", "x");
  append("solo", "s1");
  ASSERT_EQ(call(*http_, "PATCH", "/contexts/proj/new", R"({"display_name":"N"})").status, 200u);
  append("proj/existing", "e2");
  const auto& units = sub.units_until(3);
  ASSERT_EQ(units.size(), 3u);
  std::set<std::string> got;
  for (const auto& u : units) got.insert(u["context_id"].get<std::string>() + "#" + std::to_string(u["seq"].get<int>()));
  EXPECT_EQ(got, (std::set<std::string>{"proj/new#1", "solo#1", "proj/existing#2"}));
  bool updated = false;
  for (const auto& c : sub.controls())
    if (c["type"] == "context_updated" && c["context_id"] == "proj/new" && c["seq"] == 2 &&
        c["context"]["display_name"] == "N")
      updated = true;
  if (!updated) {
    auto more = sub.next_control();
    updated = more && (*more)["type"] == "context_updated";
  }
  EXPECT_TRUE(updated);
}

TEST_F(StreamTest, ManySubscribersEachGetEverythingInOrder) {
  start();
  constexpr int per_transport = 50;
  std::vector<std::unique_ptr<ws_sub>> ws;
  std::vector<std::unique_ptr<client::sse_connection>> sse;
  for (int i = 0; i < per_transport; ++i) {
    ws.push_back(std::make_unique<ws_sub>(port(), "/stream?context=many"));
    sse.push_back(std::make_unique<client::sse_connection>());
    ASSERT_TRUE(sse.back()->connect("127.0.0.1", port(), "/stream-sse?context=many"));
  }
  // Every subscription is registered once its ack arrived: each WebSocket first
  // says "connected", then "subscribe_ack"; each SSE stream sends "subscribed".
  for (auto& w : ws) ASSERT_EQ((*w->next_control(true, 10s))["event"], "connected");
  for (auto& w : ws) ASSERT_EQ((*w->next_control(true, 10s))["type"], "subscribe_ack");
  for (auto& e : sse) ASSERT_TRUE(e->next(10s).value_or(std::nullopt));
  constexpr size_t total = 600;
  std::vector<std::thread> writers;
  for (int w = 0; w < 4; ++w)
    writers.emplace_back([&] {
      auto c = server_->connect();
      for (size_t i = 0; i < total / 4; ++i)
        ASSERT_EQ(call(c, "POST", "/workunit", json({{"context_id", "many"}, {"agent_id", "w"}, {"text", "x"}}).dump()).status, 201u);
    });
  for (auto& t : writers) t.join();
  for (auto& w : ws) EXPECT_EQ(seqs(w->units_until(total)), range(1, total));
  for (auto& e : sse) {
    std::vector<uint64_t> got;
    while (got.size() < total) {
      auto ev = e->next(10s);
      ASSERT_TRUE(ev && *ev) << "sse subscriber stalled at " << got.size();
      if ((*ev)->event.empty()) got.push_back(json::parse((*ev)->data)["seq"]);
    }
    EXPECT_EQ(got, range(1, total));
  }
}

// Subscribers start at random cursors while 8 writers append; each must see every
// seq after its cursor exactly once, in order.
TEST_F(StreamTest, ResumeFromRandomCursorsUnderConcurrentWriters) {
  start();
  std::mt19937 rng(12345);
  for (int round = 0; round < 4; ++round) {
    const std::string ctx = "race/" + std::to_string(round);
    append(ctx, "seed");
    constexpr int writers = 8, per_writer = 60;
    std::atomic<int> written{0};
    std::vector<std::thread> ws;
    for (int w = 0; w < writers; ++w) {
      ws.emplace_back([&, w] {
        auto c = server_->connect();
        for (int i = 0; i < per_writer; ++i) {
          if (i % 10 == 9) {
            append_batch(c, ctx, 3, "b" + std::to_string(w) + "-" + std::to_string(i) + "-");
            written += 3;
          } else {
            auto r = call(c, "POST", "/workunit", json({{"context_id", ctx}, {"agent_id", "w"}, {"text", "x"}}).dump());
            ASSERT_EQ(r.status, 201u);
            written += 1;
          }
        }
      });
    }
    // Subscribers join at random moments with random cursors below the head.
    struct joined {
      uint64_t since;
      std::unique_ptr<ws_sub> ws;
      std::unique_ptr<client::sse_connection> sse;
      std::vector<uint64_t> got;
    };
    std::vector<joined> subs;
    for (int k = 0; k < 6; ++k) {
      wait_until([&] { return written >= (k + 1) * writers * per_writer / 8; }, 20s);
      const uint64_t head = 1 + uint64_t(written.load());
      joined j{std::uniform_int_distribution<uint64_t>(0, head)(rng), nullptr, nullptr, {}};
      const std::string q = "context=" + ctx + "&since=" + std::to_string(j.since);
      if (k % 2 == 0) {
        j.ws = std::make_unique<ws_sub>(port(), "/stream?" + q);
      } else {
        j.sse = std::make_unique<client::sse_connection>();
        EXPECT_TRUE(j.sse->connect("127.0.0.1", port(), "/stream-sse?" + q));
      }
      subs.push_back(std::move(j));
    }
    for (auto& t : ws) t.join();
    const uint64_t final_head = 1 + uint64_t(written.load());
    for (auto& j : subs) {
      if (j.ws) {
        j.got = seqs(j.ws->units_until(final_head - j.since));
      } else {
        const auto deadline = std::chrono::steady_clock::now() + 30s;
        while (j.got.size() < final_head - j.since && std::chrono::steady_clock::now() < deadline) {
          auto ev = j.sse->next(5s);
          ASSERT_TRUE(ev);
          if (!*ev) break;
          if ((*ev)->event.empty()) j.got.push_back(json::parse((*ev)->data)["seq"]);
        }
      }
      EXPECT_EQ(j.got, range(j.since + 1, final_head)) << "round " << round << " since " << j.since
                                                       << (j.ws ? " (ws)" : " (sse)");
    }
  }
}

TEST_F(StreamTest, StalledSubscriberLosesNothingAndDelaysNoOne) {
  constexpr size_t queue_limit = 64 * 1024;
  start([](config::config& c) {
    c.engine.stream.queue_bytes = queue_limit;
    c.engine.stream.max_lag = 10'000'000;
    c.server.write_timeout = 120s;
    c.server.stream_idle_timeout = 600s;  // the slow client sends nothing, by design
  });
  ws_sub slow(port(), "/stream?context=flood&since=0");
  ASSERT_TRUE(slow.next());          // connected
  ASSERT_TRUE(slow.next_control());  // ack; then it stops reading
  client::sse_connection fast;
  ASSERT_TRUE(fast.connect("127.0.0.1", port(), "/stream-sse?context=flood&since=0"));
  constexpr size_t total = 50'000;
  std::atomic<bool> writer_done{false};
  std::thread writer([&] {
    auto c = server_->connect();
    for (size_t b = 0; b < total / 1000; ++b) append_batch(c, "flood", 1000, "f");
    writer_done = true;
  });
  // The fast subscriber keeps up while the slow one reads nothing.
  size_t fast_units = 0;
  double max_queued = 0;
  uint64_t expect = 1;
  const auto deadline = std::chrono::steady_clock::now() + 120s;
  while (fast_units < total && std::chrono::steady_clock::now() < deadline) {
    auto ev = fast.next(10s);
    ASSERT_TRUE(ev && *ev) << "fast subscriber stalled at " << fast_units;
    if (!(*ev)->event.empty()) continue;
    ASSERT_EQ(json::parse((*ev)->data)["seq"].get<uint64_t>(), expect++);
    if (++fast_units % 5000 == 0) max_queued = std::max(max_queued, metric("engram_stream_queued_bytes"));
  }
  writer.join();
  EXPECT_TRUE(writer_done);
  EXPECT_EQ(fast_units, total);
  // Memory stays bounded: queued live bytes never exceeded the two queues' bounds.
  EXPECT_GE(max_queued, 0);
  EXPECT_LE(max_queued, double(2 * queue_limit));
  EXPECT_GE(metric("engram_stream_catch_ups_total"), 1);
  // The slow subscriber resumes reading and gets everything, in order.
  EXPECT_EQ(diverges(seqs(slow.units_until(total, 300s)), 1, total), "");
}

// The server closes a subscriber that fell max_lag events behind; it resumes from
// its cursor. Every wait here is for the server to act, bounded only by hang_guard:
// how fast this machine writes or reads decides nothing.
TEST_F(StreamTest, LaggingSubscriberIsClosedAndResumesWithItsCursor) {
  start([](config::config& c) {
    c.engine.stream.queue_bytes = 16 * 1024;
    c.engine.stream.max_lag = 500;
    c.server.write_timeout = 500ms;
    c.server.stream_heartbeat = 100ms;
    // The subscribers send nothing, by design: on a slow machine the writes below
    // may take longer than the default idle timeout, which would close the stream
    // as idle (1008) instead of lagging.
    c.server.stream_idle_timeout = 600s;
  });
  auto sub = std::make_unique<ws_sub>(port(), "/stream?context=lag&since=0", client::header_list{}, hang_guard);
  ASSERT_TRUE(sub->next(hang_guard));                // connected
  ASSERT_TRUE(sub->next_control(true, hang_guard));  // subscribe_ack
  // ~27 MB of events: more than loopback socket buffers hold, so the server's
  // writes to this non-reading subscriber stall and it falls behind.
  constexpr size_t total = 10'000, batch = 250;
  const std::string payload(2000, 'p');
  auto c = server_->connect();
  c.set_timeout(hang_guard);
  for (size_t b = 0; b < total / batch; ++b) {
    json units = json::array();
    for (size_t i = 0; i < batch; ++i) units.push_back({{"text", payload}});
    ASSERT_EQ(call(c, "POST", "/workunits", json({{"context_id", "lag"}, {"agent_id", "a"}, {"work_units", units}}).dump()).status, 201u);
  }
  // The server decides to close before we read anything: reading earlier could let
  // the subscriber catch up, and then nothing would lag.
  ASSERT_TRUE(wait_until([&] { return metric("engram_stream_lag_closes_total") >= 1; }, hang_guard))
      << "the lagging subscriber was never closed";
  // Read what the server sent before the close, until the close itself (what the
  // socket buffers hold can take a while to parse on a slow machine).
  ASSERT_TRUE(sub->read_until_closed(hang_guard)) << "the server did not end the lagging stream";
  std::vector<uint64_t> got = seqs(sub->units());
  const uint64_t cursor = got.empty() ? 0 : got.back();
  EXPECT_LT(got.size(), total);
  const auto code = sub->raw().closed()->code;
  EXPECT_TRUE(code == 4000 || code == 0) << code;  // 0: dropped while our write was stuck
  // Like any client: reconnect with the cursor until complete. (With a 500 ms write
  // timeout a slow reader, e.g. under a sanitizer, may be dropped again: each time it
  // resumes where it stopped, and each connection delivers at least what the socket
  // buffers held, so this ends.)
  const auto deadline = std::chrono::steady_clock::now() + hang_guard;
  int reconnects = 0;
  while (got.size() < total && std::chrono::steady_clock::now() < deadline) {
    ws_sub again(port(), "/stream?context=lag&since=" + std::to_string(got.empty() ? 0 : got.back()),
                 client::header_list{}, hang_guard);
    ++reconnects;
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    auto rest = seqs(again.units_until(total - got.size(), left));
    got.insert(got.end(), rest.begin(), rest.end());
  }
  EXPECT_EQ(diverges(got, 1, total), "") << "first cursor " << cursor << ", reconnects " << reconnects;
}

// Liveness is ping frames. A client that only reads (an Engram v3 subscriber never
// writes) answers them and stays, receiving units, far past the idle timeout; a
// peer that neither writes nor reads (dead: no pongs) is dropped.
TEST_F(StreamTest, HeartbeatsAndPingLiveness) {
  start([](config::config& c) {
    c.server.stream_heartbeat = 100ms;
    // Long enough that a loaded machine's stall between two of the quiet client's
    // reads (it answers pings only while reading) does not look like a dead peer;
    // with 1 s, CI once dropped it.
    c.server.stream_idle_timeout = 2000ms;
  });
  auto http = client::http_connection("127.0.0.1", port());
  ws_sub quiet(port(), "/stream?context=h");
  ws_sub chatty(port(), "/stream?context=h");
  client::ws_connection dead;
  ASSERT_TRUE(dead.connect("127.0.0.1", port(), "/stream?context=h"));  // and never read again
  client::sse_connection sse;
  ASSERT_TRUE(sse.connect("127.0.0.1", port(), "/stream-sse?context=h"));
  int server_heartbeats = 0, quiet_units = 0;
  // Three idle timeouts: the reading clients stay, and the quiet one keeps getting units.
  const auto until = std::chrono::steady_clock::now() + 6000ms;
  while (std::chrono::steady_clock::now() < until) {
    ASSERT_TRUE(chatty.raw().send(R"({"type":"heartbeat"})"));
    ASSERT_EQ(call(http, "POST", "/workunit", R"({"context_id":"h","agent_id":"a","text":"tick"})").status, 201u);
    auto m = chatty.next(100ms);
    if (m && (*m)["type"] == "heartbeat") ++server_heartbeats;
    while (auto q = quiet.next(10ms))
      if (q->contains("seq")) ++quiet_units;
    ASSERT_FALSE(chatty.raw().closed()) << "a client sending heartbeats must stay connected";
    ASSERT_FALSE(quiet.raw().closed()) << "a client that only reads must stay connected";
  }
  EXPECT_GE(server_heartbeats, 3);
  EXPECT_GT(quiet_units, 10);
  // The dead one was dropped: three websocket subscribers were open, two are left.
  EXPECT_TRUE(wait_until([&] { return metric(R"(engram_stream_subscribers{transport="websocket"})") == 2; }, 30s))
      << metric(R"(engram_stream_subscribers{transport="websocket"})");
  // Returns the "subscribed" event, then counts comment-only blocks for 300 ms.
  while (sse.next(300ms).value_or(std::nullopt)) {
  }
  EXPECT_GE(sse.comments(), 2u);  // ": heartbeat" lines
}

TEST_F(StreamTest, ShutdownEndsStreamsWithAResumableReason) {
  start();
  ws_sub ws(port(), "/stream?context=sd");
  ASSERT_TRUE(ws.next());
  client::sse_connection sse;
  ASSERT_TRUE(sse.connect("127.0.0.1", port(), "/stream-sse?context=sd"));
  ASSERT_TRUE(sse.next(5s));  // subscribed
  std::thread stopper([&] { server_->stop(); });
  EXPECT_TRUE(wait_until([&] {
    ws.next(50ms);
    return ws.raw().closed().has_value();
  }, 10s));
  EXPECT_EQ(ws.raw().closed()->code, 1001);  // going away
  std::string last_event;
  for (;;) {
    auto ev = sse.next(5s);
    if (!ev || !*ev) break;
    last_event = (*ev)->event;
  }
  EXPECT_EQ(last_event, "shutdown");
  stopper.join();
}

// Regression: a shutdown arriving while WebSocket handshakes are being answered
// overlapped the close frame with the 101 response write (a Beast assertion in
// Debug builds, stream corruption otherwise). Many upgrades, then stop at once.
TEST_F(StreamTest, ShutdownRightAfterUpgradesNeverOverlapsWrites) {
  for (int round = 0; round < 6; ++round) {
    // Clients read only after stop() returns, so stop() waits out its deadline.
    start([](config::config& c) { c.shutdown_timeout = 300ms; });
    std::vector<std::unique_ptr<client::ws_connection>> conns(30);
    std::vector<std::thread> ts;
    for (auto& c : conns)
      ts.emplace_back([&c, p = port()] {
        c = std::make_unique<client::ws_connection>();
        (void)c->connect("127.0.0.1", p, "/stream?context=sd");
      });
    for (auto& t : ts) t.join();
    server_->stop();  // right after the upgrades: some 101 writes may still be completing
    for (auto& c : conns) {
      // Every client sees a proper close or a dropped connection, never a hang.
      EXPECT_TRUE(wait_until([&] {
        c->read(20ms);
        return c->closed().has_value();
      }, 10s));
      if (c->closed()->code != 0) {
        EXPECT_EQ(c->closed()->code, 1001);
      }
    }
    server_.reset();
  }
}

TEST_F(StreamTest, StreamsAreNotReadyBeforeRecovery) {
  temp_dir dir;
  auto cfg = test_config(dir.str() + "/data");
  auto holder = storage::store::open(cfg.storage, nullptr, nullptr, nullptr);  // holds the RocksDB lock
  ASSERT_TRUE(holder);
  auto app = app::app::start(cfg);
  ASSERT_TRUE(app);
  (*app)->wait_ready(5s);
  client::http_connection c("127.0.0.1", (*app)->port());
  EXPECT_EQ(call(c, "GET", "/stream-sse?context=x").status, 503u);
}

}  // namespace
}  // namespace engram::test
