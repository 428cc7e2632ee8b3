// Presence against the real server: heartbeats join, silence and DELETE leave, each
// as a durable event of the context's log; a restart resumes who was present.
#include <gtest/gtest.h>

#include "engram/stream_connections.hpp"
#include "support/test_support.hpp"

namespace engram::test {
namespace {

using namespace std::chrono_literals;

std::vector<json> presence_events(client::http_connection& http, const std::string& ctx) {
  std::vector<json> out;
  const auto r = call(http, "GET", "/contexts/" + ctx + "/events?limit=1000");
  for (const auto& e : r.body["events"])
    if (e["type"] == "agent_joined" || e["type"] == "agent_left") out.push_back(e);
  return out;
}

std::vector<std::string> present(client::http_connection& http, const std::string& ctx) {
  std::vector<std::string> out;
  const auto r = call(http, "GET", "/contexts/" + ctx + "/presence");
  EXPECT_EQ(r.status, 200u) << r.raw;
  for (const auto& a : r.body["agents"]) out.push_back(a["agent_id"]);
  return out;
}

TEST(Presence, HeartbeatsJoinSilenceAndDeleteLeave) {
  temp_dir dir;
  auto cfg = test_config(dir.str() + "/data");
  cfg.presence.ttl = 400ms;
  test_server server(cfg);
  auto http = server.connect();
  auto beat = [&](const std::string& agent, const json& contexts, const std::string& status = "") {
    json body{{"contexts", contexts}};
    if (!status.empty()) body["status"] = status;
    return call(http, "POST", "/agents/" + agent + "/heartbeat", body.dump());
  };
  ASSERT_EQ(beat("alice", {"p/a", "p/b"}, "working").status, 200u);
  ASSERT_EQ(beat("alice", {"p/a", "p/b"}, "still working").status, 200u);
  ASSERT_EQ(beat("bob", {"p/a"}).status, 200u);
  EXPECT_EQ(present(http, "p/a"), (std::vector<std::string>{"alice", "bob"}));
  auto who = call(http, "GET", "/contexts/p/a/presence").body["agents"][0];
  EXPECT_EQ(who["status"], "still working");
  EXPECT_TRUE(who.contains("joined_at") && who.contains("last_seen"));
  auto events = presence_events(http, "p/a");
  ASSERT_EQ(events.size(), 2u);  // one join each, however many heartbeats
  EXPECT_EQ(events[0]["type"], "agent_joined");
  EXPECT_EQ(events[0]["agent_id"], "alice");
  EXPECT_EQ(events[0]["status"], "working");

  // Bob leaves explicitly; leaving again changes nothing.
  auto left = call(http, "DELETE", "/agents/bob/presence?context=p/a");
  EXPECT_EQ(left.body["left"], true) << left.raw;
  EXPECT_EQ(call(http, "DELETE", "/agents/bob/presence?context=p/a").body["left"], false);
  events = presence_events(http, "p/a");
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[2]["type"], "agent_left");
  EXPECT_EQ(events[2]["reason"], "left");

  // Alice goes silent: she leaves both contexts by timeout.
  ASSERT_TRUE(wait_until([&] { return present(http, "p/a").empty() && present(http, "p/b").empty(); }, 30s));
  ASSERT_TRUE(wait_until([&] { return presence_events(http, "p/b").size() == 2; }, 30s));
  EXPECT_EQ(presence_events(http, "p/b")[1]["reason"], "timeout");

  // Bad heartbeats change nothing.
  for (const char* bad : {R"({"contexts":[1]})", R"({"contexts":"p/a"})", R"({"progress":[]})",
                          R"({"contexts":["p/a"],"status":5})", R"({"contexts":["p/a"],"progres":{}})"}) {
    auto r = call(http, "POST", "/agents/carol/heartbeat", bad);
    EXPECT_EQ(r.status, 400u) << bad << " → " << r.raw;
  }
  EXPECT_EQ(call(http, "DELETE", "/agents/carol/presence").status, 400u);
  EXPECT_TRUE(present(http, "p/a").empty());
}

// A WebSocket subscriber with presence is present while connected, however long it
// stays silent; a second connection of the same agent keeps it present when the
// first drops; the last drop makes it leave after the grace, once. Reconnecting
// within the grace neither leaves nor joins again.
TEST(Presence, WebSocketSubscribersArePresentWhileConnected) {
  temp_dir dir;
  auto cfg = test_config(dir.str() + "/data");
  cfg.presence.ttl = 300ms;     // far shorter than the connections last: only the holds keep it
  cfg.presence.grace = 3000ms;  // reconnecting takes far less, even on a slow machine
  test_server server(cfg);
  auto http = server.connect();
  auto open = [&](const std::string& target) {
    auto ws = std::make_unique<client::ws_connection>();
    auto ok = ws->connect("127.0.0.1", server.port(), target);
    EXPECT_TRUE(ok) << ok.error().message;
    return ws;
  };
  auto first = open("/stream?context=w/a&agent_id=ann&presence=true");
  ASSERT_TRUE(wait_until([&] { return present(http, "w/a") == std::vector<std::string>{"ann"}; }, 30s));
  // A subscribe message can declare it too, on a second connection.
  auto second = open("/stream?context=w/other");
  ASSERT_TRUE(second->send(R"({"type":"subscribe","contexts":["w/a"],"agent_id":"ann","presence":true})"));
  // Well past the ttl: still present, held by the connections.
  const auto held_until = std::chrono::steady_clock::now() + 1200ms;
  while (std::chrono::steady_clock::now() < held_until) {
    ASSERT_EQ(present(http, "w/a"), std::vector<std::string>{"ann"});
    std::this_thread::sleep_for(50ms);  // sampling, not synchronisation
  }
  first->abort();  // dropped without a close frame; the second connection still holds
  ASSERT_TRUE(wait_until([&] { return metric(http, R"(engram_stream_subscribers{transport="websocket"})") == 1; }, 30s));
  std::this_thread::sleep_for(3600ms);  // past the grace: she must not have left
  EXPECT_EQ(present(http, "w/a"), std::vector<std::string>{"ann"});
  second->close();
  // Reconnecting within the grace keeps her, without a second join.
  auto third = open("/stream?context=w/a&agent_id=ann&presence=true");
  std::this_thread::sleep_for(3600ms);
  EXPECT_EQ(present(http, "w/a"), std::vector<std::string>{"ann"});
  third->close();
  ASSERT_TRUE(wait_until([&] { return present(http, "w/a").empty(); }, 30s));
  ASSERT_TRUE(wait_until([&] { return presence_events(http, "w/a").size() == 2; }, 30s));
  const auto events = presence_events(http, "w/a");
  EXPECT_EQ(events[0]["type"], "agent_joined");
  EXPECT_EQ(events[1]["type"], "agent_left");
  EXPECT_EQ(events[1]["reason"], "timeout");

  // Leaving explicitly while a connection holds her: she leaves, and that
  // connection's end changes nothing more.
  auto fourth = open("/stream?context=w/c&agent_id=bob&presence=true");
  ASSERT_TRUE(wait_until([&] { return present(http, "w/c") == std::vector<std::string>{"bob"}; }, 30s));
  EXPECT_EQ(call(http, "DELETE", "/agents/bob/presence?context=w/c").body["left"], true);
  EXPECT_TRUE(present(http, "w/c").empty());
  fourth->close();
  auto fifth = open("/stream?context=w/c&agent_id=bob&presence=true");  // back again
  ASSERT_TRUE(wait_until([&] { return present(http, "w/c") == std::vector<std::string>{"bob"}; }, 30s));
  std::this_thread::sleep_for(3600ms);  // the fourth's end must not take the fifth's hold
  EXPECT_EQ(present(http, "w/c"), std::vector<std::string>{"bob"});
  fifth->close();

  // Presence needs an agent and exact contexts; SSE has no presence.
  client::ws_connection refused;
  EXPECT_FALSE(refused.connect("127.0.0.1", server.port(), "/stream?context=w/a&presence=true"));
  EXPECT_FALSE(refused.connect("127.0.0.1", server.port(), "/stream?context=w/*&agent_id=x&presence=true"));
  EXPECT_EQ(call(http, "GET", "/stream-sse?context=w/a&agent_id=x&presence=true").status, 400u);
  auto ws = open("/stream?context=w/b");
  ASSERT_TRUE(ws->send(R"({"type":"subscribe","contexts":["w/b"],"presence":"yes"})"));
  ASSERT_TRUE(ws->send(R"({"type":"subscribe","contexts":["w/b"],"presence":true})"));
  std::vector<std::string> errors;
  while (errors.size() < 2) {
    auto msg = ws->read(30s);
    ASSERT_TRUE(msg && *msg) << "no error message";
    const auto j = json::parse(**msg);
    if (j.value("type", "") == "error") errors.push_back(j.value("error", ""));
  }
  EXPECT_EQ(errors[0], "presence must be true or false");
  EXPECT_EQ(errors[1], "presence needs agent_id: the agent that is present while connected");
}

// A restart keeps who was present: each gets a full ttl from the restart to beat
// again, without a second agent_joined; a silent one then leaves by timeout.
TEST(Presence, ARestartResumesWhoWasPresent) {
  temp_dir dir;
  auto cfg = test_config(dir.str() + "/data");
  cfg.presence.ttl = 1500ms;
  test_server server(cfg);
  auto http = server.connect();
  ASSERT_EQ(call(http, "POST", "/agents/dave/heartbeat", R"({"contexts":["r"]})").status, 200u);
  ASSERT_EQ(call(http, "POST", "/agents/erin/heartbeat", R"({"contexts":["r"]})").status, 200u);
  server.restart();
  http = server.connect();
  EXPECT_EQ(present(http, "r"), (std::vector<std::string>{"dave", "erin"}));
  ASSERT_EQ(call(http, "POST", "/agents/dave/heartbeat", R"({"contexts":["r"]})").status, 200u);
  // Erin stays silent and leaves; Dave keeps beating (each poll is a heartbeat) and stays.
  EXPECT_TRUE(wait_until([&] {
    EXPECT_EQ(call(http, "POST", "/agents/dave/heartbeat", R"({"contexts":["r"]})").status, 200u);
    // The listing drops Erin as the sweeper logs her agent_left: wait for both.
    return present(http, "r") == std::vector<std::string>{"dave"} && presence_events(http, "r").size() >= 3;
  }, 30s)) << json(present(http, "r")).dump();
  const auto events = presence_events(http, "r");
  ASSERT_EQ(events.size(), 3u);  // two joins, then Erin's timeout; no join repeated after the restart
  EXPECT_EQ(events[2]["agent_id"], "erin");
  EXPECT_EQ(events[2]["reason"], "timeout");
}

}  // namespace
}  // namespace engram::test
