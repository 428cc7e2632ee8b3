// Drafts through the real server: deltas over the WebSocket and REST reach every
// subscriber of the context in order, a late joiner first gets the draft so far, a
// commit appends the final unit (meta.draft_id) and ends the draft, abort and idle
// expiry end it too, and nothing but the committed unit is stored.
#include <gtest/gtest.h>

#include <map>

#include "engram/stream_connections.hpp"
#include "support/manual_clock.hpp"
#include "support/test_support.hpp"

namespace engram::test {
namespace {

using namespace std::chrono_literals;

// The next message that is not a heartbeat or the connection's own bookkeeping.
json next_message(client::ws_connection& ws, std::chrono::milliseconds timeout = 10s) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    auto m = ws.read(200ms);
    if (!m) {
      ADD_FAILURE() << m.error().message;
      return {};
    }
    if (!*m) continue;
    auto j = json::parse(**m);
    if (j.contains("event")) continue;  // {"event":"connected"}
    if (j["type"].is_string() && (j["type"] == "heartbeat" || j["type"] == "subscribe_ack")) continue;
    return j;
  }
  ADD_FAILURE() << "no message within " << timeout.count() << " ms";
  return {};
}

// Reads up to the subscribe_ack: from then on the stream sees every draft message
// (before it, a draft shows up as the "draft" snapshot instead of its deltas).
bool subscribed(client::ws_connection& ws) {
  bool acked = false;
  return wait_until([&] {
    auto m = ws.read(100ms);
    if (m && *m) acked = acked || json::parse(**m).value("type", json()) == "subscribe_ack";
    return acked;
  });
}

std::string type_of(const json& j) { return j["type"].is_string() ? j["type"].get<std::string>() : "unit"; }

json delta(const std::string& ctx, const std::string& draft, uint64_t index, const std::string& text,
           const std::string& agent = "writer") {
  return {{"type", "delta"}, {"context_id", ctx}, {"draft_id", draft}, {"agent_id", agent}, {"index", index}, {"text", text}};
}

TEST(Drafts, DeltasReachEverySubscriberInOrderThenTheCommittedUnit) {
  temp_dir dir;
  test_server server(test_config(dir.str() + "/data"));
  auto http = server.connect();
  constexpr int subscribers = 100, deltas = 50;
  std::vector<client::ws_connection> subs(subscribers);
  for (auto& s : subs) ASSERT_TRUE(s.connect("127.0.0.1", server.port(), "/stream?context=dr"));
  client::sse_connection sse;
  ASSERT_TRUE(sse.connect("127.0.0.1", server.port(), "/stream-sse?context=dr"));
  for (auto& s : subs) ASSERT_TRUE(subscribed(s));
  client::ws_connection writer;
  ASSERT_TRUE(writer.connect("127.0.0.1", server.port(), "/stream?context=elsewhere"));
  std::string full;
  for (int i = 0; i < deltas; ++i) {
    const std::string text = "tok" + std::to_string(i) + " ";
    full += text;
    ASSERT_TRUE(writer.send(delta("dr", "ans", uint64_t(i), text).dump()));
  }
  ASSERT_TRUE(writer.send(json({{"type", "draft_commit"}, {"request_id", "c1"}, {"draft_id", "ans"},
                                {"work_unit", {{"context_id", "dr"}, {"agent_id", "writer"}, {"text", full}}}})
                              .dump()));
  json ack;
  for (ack = next_message(writer); !ack.is_null() && type_of(ack) != "append_ack"; ack = next_message(writer))
    ASSERT_NE(type_of(ack), "append_error") << ack.dump();
  ASSERT_EQ(ack["request_id"], "c1");
  EXPECT_EQ(ack["draft_ended"], true);
  EXPECT_EQ(ack["work_unit"]["meta"]["draft_id"], "ans");
  const uint64_t seq = ack["work_unit"]["seq"];

  for (int n = 0; n < subscribers; ++n) {
    std::string seen;
    uint64_t next_index = 0;
    bool ended = false, unit = false;
    while (!(ended && unit)) {
      auto m = next_message(subs[size_t(n)]);
      ASSERT_FALSE(m.is_null()) << "subscriber " << n;
      const auto type = type_of(m);
      if (type == "delta") {
        ASSERT_EQ(m["index"], next_index) << "subscriber " << n;  // in order, none missing or twice
        ++next_index;
        seen += m["text"].get<std::string>();
        EXPECT_EQ(m["agent_id"], "writer");
      } else if (type == "draft_end") {
        EXPECT_EQ(m["reason"], "committed");
        EXPECT_EQ(m["unit_seq"], seq);
        EXPECT_FALSE(m.contains("seq")) << "not a log event";
        ended = true;
      } else if (type == "unit") {
        EXPECT_EQ(m["seq"], seq);
        EXPECT_EQ(m["meta"]["draft_id"], "ans");
        unit = true;
      } else {
        FAIL() << "unexpected " << m.dump();
      }
    }
    EXPECT_EQ(next_index, uint64_t(deltas)) << "subscriber " << n;
    EXPECT_EQ(seen, full) << "subscriber " << n;
  }
  // SSE: named events, deltas without an id (Last-Event-ID stays the log's).
  std::string seen;
  std::string last_id;
  for (bool done = false; !done;) {
    auto e = sse.next(10s);
    ASSERT_TRUE(e && *e);
    if ((*e)->event == "subscribed") continue;
    if ((*e)->event == "delta") {
      EXPECT_TRUE((*e)->id.empty());
      seen += json::parse((*e)->data)["text"].get<std::string>();
    } else if ((*e)->event.empty()) {
      last_id = (*e)->id;
    }
    done = !last_id.empty() && seen.size() == full.size();
  }
  EXPECT_EQ(seen, full);
  EXPECT_EQ(last_id, std::to_string(seq));
  // Only the committed unit is in the log.
  EXPECT_EQ(call(http, "GET", "/contexts/dr").body["context"]["head_seq"], 1);
  EXPECT_EQ(call(http, "GET", "/contexts/dr/drafts").body["drafts"].size(), 0u);
}

TEST(Drafts, LateJoinerGetsTheDraftSoFarOverRestWebSocketAndSse) {
  temp_dir dir;
  test_server server(test_config(dir.str() + "/data"));
  auto http = server.connect();
  auto post_delta = [&](uint64_t index, const std::string& text) {
    return call(http, "POST", "/contexts/late/drafts/x/deltas",
                json({{"agent_id", "w"}, {"index", index}, {"text", text}}).dump());
  };
  std::string so_far;
  for (uint64_t i = 0; i < 5; ++i) {
    auto r = post_delta(i, "part" + std::to_string(i) + " ");
    ASSERT_EQ(r.status, 200u) << r.raw;
    EXPECT_EQ(r.body["duplicate"], false);
    so_far += "part" + std::to_string(i) + " ";
  }
  client::ws_connection ws;
  ASSERT_TRUE(ws.connect("127.0.0.1", server.port(), "/stream?context=late&since=0"));
  client::sse_connection sse;
  ASSERT_TRUE(sse.connect("127.0.0.1", server.port(), "/stream-sse?context=late"));
  auto first = next_message(ws);
  EXPECT_EQ(type_of(first), "draft") << first.dump();
  EXPECT_EQ(first["text"], so_far);
  EXPECT_EQ(first["index"], 4);
  EXPECT_EQ(first["agent_id"], "w");
  auto sse_next = [&]() -> client::sse_event {
    for (;;) {
      auto e = sse.next(10s);
      if (!e || !*e) {
        ADD_FAILURE() << "no SSE event";
        return {};
      }
      if ((*e)->event != "subscribed") return **e;
    }
  };
  auto sse_first = sse_next();
  EXPECT_EQ(sse_first.event, "draft");
  EXPECT_EQ(json::parse(sse_first.data)["text"], so_far);

  // Later deltas follow; a retried one is answered but not shown twice.
  ASSERT_EQ(post_delta(5, "more").status, 200u);
  auto again = post_delta(5, "more");
  EXPECT_EQ(again.status, 200u);
  EXPECT_EQ(again.body["duplicate"], true);
  auto d5 = next_message(ws);
  EXPECT_EQ(type_of(d5), "delta");
  EXPECT_EQ(d5["index"], 5);
  EXPECT_EQ(sse_next().event, "delta");

  auto listed = call(http, "GET", "/contexts/late/drafts");
  ASSERT_EQ(listed.body["drafts"].size(), 1u) << listed.raw;
  EXPECT_EQ(listed.body["drafts"][0]["next_index"], 6);
  EXPECT_EQ(call(http, "GET", "/contexts/late/drafts/x").body["text"], so_far + "more");

  auto committed = call(http, "POST", "/contexts/late/drafts/x/commit", R"({"agent_id":"w","text":"the answer"})");
  ASSERT_EQ(committed.status, 201u) << committed.raw;
  EXPECT_EQ(committed.body["draft_ended"], true);
  EXPECT_EQ(committed.body["work_unit"]["meta"]["draft_id"], "x");
  EXPECT_EQ(committed.body["work_unit"]["context_id"], "late");
  std::map<std::string, json> got;
  while (got.size() < 2) {
    auto m = next_message(ws);
    ASSERT_FALSE(m.is_null());
    got[type_of(m)] = m;
  }
  EXPECT_EQ(got["draft_end"]["reason"], "committed");
  EXPECT_EQ(got["unit"]["payload"], committed.body["work_unit"]["payload"]);
  EXPECT_EQ(call(http, "GET", "/contexts/late/drafts/x").status, 404u);
  // After the commit a delta cannot reopen it except from index 0.
  EXPECT_EQ(post_delta(6, "late").status, 409u);

  // Abort: subscribers are told; a second abort finds nothing.
  ASSERT_EQ(call(http, "POST", "/contexts/late/drafts/y/deltas", R"({"agent_id":"w","index":0,"text":"no"})").status, 200u);
  EXPECT_EQ(type_of(next_message(ws)), "delta");
  EXPECT_EQ(call(http, "DELETE", "/contexts/late/drafts/y").status, 200u);
  auto aborted = next_message(ws);
  EXPECT_EQ(type_of(aborted), "draft_end");
  EXPECT_EQ(aborted["reason"], "aborted");
  EXPECT_EQ(call(http, "DELETE", "/contexts/late/drafts/y").status, 404u);
  EXPECT_EQ(call(http, "GET", "/contexts/late").body["context"]["head_seq"], 1);
}

TEST(Drafts, BadDeltasGetClearErrorsOnTheSocketAndOverRest) {
  temp_dir dir;
  auto cfg = test_config(dir.str() + "/data");
  cfg.engine.drafts.max_delta_bytes = 100;
  cfg.engine.drafts.max_per_owner = 2;
  test_server server(cfg);
  auto http = server.connect();
  client::ws_connection ws;
  ASSERT_TRUE(ws.connect("127.0.0.1", server.port(), "/stream?context=errs"));
  ASSERT_TRUE(subscribed(ws));
  auto answer_to = [&](const json& msg) {
    EXPECT_TRUE(ws.send(msg.dump()));
    for (;;) {
      auto m = next_message(ws);
      if (m.is_null()) return m;
      const auto t = type_of(m);
      if (t == "draft_error" || t == "draft_ack" || t == "append_error" || t == "error") return m;
    }
  };
  auto acked = answer_to({{"type", "delta"}, {"request_id", "r0"}, {"context_id", "errs"}, {"draft_id", "a"},
                          {"agent_id", "w"}, {"index", 0}, {"text", "hi"}});
  EXPECT_EQ(acked["type"], "draft_ack");
  EXPECT_EQ(acked["request_id"], "r0");
  EXPECT_EQ(acked["duplicate"], false);
  struct bad_case {
    json msg;
    unsigned status;
    std::string says;
  };
  auto base = delta("errs", "a", 1, "x", "w");
  auto with = [](json j, const json& patch) {
    j.merge_patch(patch);
    return j;
  };
  std::vector<bad_case> cases = {
      {json{{"type", "delta"}, {"context_id", "errs"}, {"draft_id", "a"}, {"agent_id", "w"}, {"text", "x"}}, 400, "index"},
      {delta("errs", "a", 3, "x", "w"), 409, "expects index 1"},
      {delta("errs", "a", 1, "x", "intruder"), 409, "belongs to agent 'w'"},
      {delta("errs", "a", 1, std::string(101, 'x'), "w"), 413, "drafts.max_delta_bytes"},
      {with(base, {{"txt", "x"}}), 400, "'txt'"},
      {with(base, {{"payload", "AAAA"}}), 400, "one of them"},
      {with(base, {{"draft_id", ""}}), 400, "draft_id"},
      {with(base, {{"context_id", 5}}), 400, "context_id"},
      {json{{"type", "draft_abort"}, {"context_id", "errs"}, {"draft_id", "nope"}, {"agent_id", "w"}}, 404, "no open draft"},
  };
  for (const auto& c : cases) {
    auto m = answer_to(c.msg);
    EXPECT_EQ(m["type"], "draft_error") << c.msg.dump() << " → " << m.dump();
    EXPECT_EQ(m["status"], c.status) << c.msg.dump() << " → " << m.dump();
    EXPECT_NE(m.value("error", "").find(c.says), std::string::npos) << m.dump();
  }
  // Two open drafts per connection (drafts.max_per_owner).
  EXPECT_EQ(answer_to(with(delta("errs", "b", 0, "x", "w"), {{"request_id", "r1"}}))["type"], "draft_ack");
  auto third = answer_to(delta("errs", "c", 0, "x", "w"));
  EXPECT_EQ(third["status"], 429) << third.dump();
  auto commit = answer_to({{"type", "draft_commit"}, {"request_id", "c"}, {"work_unit", {{"context_id", "errs"}}}});
  EXPECT_EQ(commit["type"], "append_error");
  EXPECT_EQ(commit["status"], 400);
  // A commit by another agent than the draft's is refused before anything is stored.
  auto stolen = call(http, "POST", "/contexts/errs/drafts/a/commit", R"({"agent_id":"intruder","text":"mine"})");
  EXPECT_EQ(stolen.status, 409u) << stolen.raw;
  EXPECT_EQ(call(http, "POST", "/contexts/errs/drafts/a/commit", R"({"agent_id":"w","context_id":"other","text":"x"})").status, 400u);
  EXPECT_EQ(call(http, "POST", "/contexts/errs/drafts/a/deltas", R"({"agent_id":"w","index":"1","text":"x"})").status, 400u);
  EXPECT_EQ(call(http, "POST", "/contexts/errs/drafts/a/deltas", R"({"agent_id":"w","index":1,"payload":"!!"})").status, 400u);
  EXPECT_EQ(call(http, "GET", "/contexts/errs").status, 404u);  // nothing was stored
}

TEST(Drafts, AnIdleDraftExpiresAndSubscribersAreTold) {
  temp_dir dir;
  auto cfg = test_config(dir.str() + "/data");
  cfg.engine.drafts.idle = 1000ms;
  auto clock = std::make_shared<manual_clock>();
  test_server server(cfg, clock);
  auto http = server.connect();
  client::ws_connection ws;
  ASSERT_TRUE(ws.connect("127.0.0.1", server.port(), "/stream?context=idle"));
  ASSERT_TRUE(subscribed(ws));
  ASSERT_EQ(call(http, "POST", "/contexts/idle/drafts/q/deltas", R"({"agent_id":"w","index":0,"text":"hmm"})").status, 200u);
  EXPECT_EQ(type_of(next_message(ws)), "delta");
  clock->advance(1500ms);
  auto end = next_message(ws);
  EXPECT_EQ(type_of(end), "draft_end") << end.dump();
  EXPECT_EQ(end["reason"], "expired");
  EXPECT_EQ(call(http, "GET", "/contexts/idle/drafts/q").status, 404u);
}

}  // namespace
}  // namespace engram::test
