// Deleting contexts and retention against the real server: what goes (units, ids,
// vectors, search entries, idempotency records), what stays, and what streams and
// cursors see afterwards.
#include <gtest/gtest.h>

#include <set>

#include "engram/stream_connections.hpp"
#include "support/manual_clock.hpp"
#include "support/test_support.hpp"

namespace engram::test {
namespace {

using namespace std::chrono_literals;

std::set<std::string> keyword_hits(client::http_connection& http, const std::string& text) {
  auto r = call(http, "POST", "/search", json({{"query", text}, {"limit", 100}}).dump());
  EXPECT_EQ(r.status, 200u) << r.raw;
  std::set<std::string> out;
  for (const auto& id : r.body["results"]) out.insert(id);
  return out;
}

std::vector<json> events_after(client::http_connection& http, const std::string& context, uint64_t after) {
  auto r = call(http, "GET", "/contexts/" + context + "/events?limit=1000&after_seq=" + std::to_string(after));
  EXPECT_EQ(r.status, 200u) << r.raw;
  return r.body["events"].get<std::vector<json>>();
}

// Reads WebSocket messages until one of `type` arrives.
std::optional<json> next_of_type(client::ws_connection& ws, const std::string& type) {
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (std::chrono::steady_clock::now() < deadline) {
    auto m = ws.read(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()));
    if (!m || !*m) return std::nullopt;
    auto j = json::parse(**m);
    if (j["type"] == type) return j;
  }
  return std::nullopt;
}

TEST(ContextDeletion, RemovesEverythingOfTheContextAndNothingElse) {
  temp_dir dir;
  test_server server(dir);
  auto http = server.connect();
  std::vector<std::string> doomed;
  for (int i = 0; i < 3; ++i) {
    json unit{{"context_id", "doomed"}, {"agent_id", "a"}, {"text", "zebra crossing " + std::to_string(i)}};
    if (i == 0) unit.update({{"embedding", {1.0, 0.0, 0.0, 0.0}}, {"embedding_model", "m"}});
    auto r = call(http, "POST", "/workunit", unit.dump(), {{"Idempotency-Key", "op-" + std::to_string(i)}});
    ASSERT_EQ(r.status, 201u) << r.raw;
    doomed.push_back(r.body["work_unit"]["id"]);
  }
  ASSERT_EQ(call(http, "PATCH", "/contexts/doomed", R"({"display_name":"Doomed","meta":{"k":"v"}})").status, 200u);
  auto kept = call(http, "POST", "/workunit",
                   json({{"context_id", "kept"}, {"agent_id", "a"}, {"text", "zebra kept"},
                         {"embedding", {0.9, 0.1, 0.0, 0.0}}, {"embedding_model", "m"}}).dump());
  ASSERT_EQ(kept.status, 201u) << kept.raw;
  const std::string kept_id = kept.body["work_unit"]["id"];
  ASSERT_TRUE(wait_until([&] { return keyword_hits(http, "zebra").size() == 4; }, 30s));
  auto semantic = [&] {
    auto r = call(http, "POST", "/search", R"({"vector":[1,0,0,0],"embedding_model":"m","limit":10})");
    EXPECT_EQ(r.status, 200u) << r.raw;
    return r.body["results"];
  };
  ASSERT_TRUE(wait_until([&] { return semantic().size() == 2; }, 30s));

  auto lease = call(http, "POST", "/locks", R"({"resource_path":"doomed.txt","agent_id":"a","context_id":"doomed"})");
  ASSERT_EQ(lease.status, 200u) << lease.raw;
  const uint64_t head_before = call(http, "GET", "/contexts/doomed").body["context"]["head_seq"];

  client::ws_connection live;
  ASSERT_TRUE(live.connect("127.0.0.1", server.port(), "/stream?context=doomed", {}, 10s));
  ASSERT_TRUE(next_of_type(live, "subscribe_ack"));

  auto del = call(http, "DELETE", "/contexts/doomed");
  ASSERT_EQ(del.status, 200u) << del.raw;
  EXPECT_EQ(del.body["removed_events"], head_before);  // three units, the PATCH, the lease
  EXPECT_EQ(del.body["seq"], head_before + 1);         // the context_deleted event
  const uint64_t tomb = head_before + 1;

  // Subscribers hear it as an event of the log.
  auto notice = next_of_type(live, "context_deleted");
  ASSERT_TRUE(notice);
  EXPECT_EQ((*notice)["context_id"], "doomed");
  EXPECT_EQ((*notice)["seq"], tomb);
  EXPECT_EQ((*notice)["removed_events"], head_before);
  // A lease that outlives the context does not bring it back.
  ASSERT_EQ(call(http, "DELETE", "/locks/doomed.txt?agent_id=a&lock_id=" + lease.body["lock"]["lock_id"].get<std::string>())
                .status,
            200u);
  // A new subscriber without a cursor starts live, after the deletion.
  client::ws_connection late;
  ASSERT_TRUE(late.connect("127.0.0.1", server.port(), "/stream?context=doomed", {}, 10s));
  auto late_ack = next_of_type(late, "subscribe_ack");
  ASSERT_TRUE(late_ack);
  EXPECT_EQ((*late_ack)["contexts"][0]["exists"], false) << *late_ack;

  // The units, the context and its listing are gone; the other context is not.
  for (const auto& id : doomed) EXPECT_EQ(call(http, "GET", "/workunit/" + id).status, 404u) << id;
  EXPECT_EQ(call(http, "GET", "/contexts/doomed").status, 404u);
  auto listed = call(http, "GET", "/workunits/doomed");
  EXPECT_EQ(listed.status, 200u);
  EXPECT_EQ(listed.body["context_exists"], false);
  EXPECT_TRUE(listed.body["work_units"].empty());
  const auto contexts = call(http, "GET", "/contexts");
  ASSERT_FALSE(contexts.body["contexts"].empty());
  for (const auto& c : contexts.body["contexts"]) EXPECT_NE(c["id"], "doomed");
  EXPECT_EQ(call(http, "GET", "/workunit/" + kept_id).status, 200u);
  EXPECT_TRUE(wait_until([&] { return keyword_hits(http, "zebra") == std::set<std::string>{kept_id}; }, 30s))
      << "search entries of the deleted context stay";
  EXPECT_TRUE(wait_until([&] { return semantic() == json::array({kept_id}); }, 30s)) << semantic();

  // Deleting again, or a context that never was, is a 404.
  EXPECT_EQ(call(http, "DELETE", "/contexts/doomed").status, 404u);
  EXPECT_EQ(call(http, "DELETE", "/contexts/never").status, 404u);

  // The id can be used again: seqs continue after the deletion, and its old
  // idempotency keys are forgotten (a new unit, not a replay).
  auto again = call(http, "POST", "/workunit",
                    json({{"context_id", "doomed"}, {"agent_id", "a"}, {"text", "zebra crossing 0"}}).dump(),
                    {{"Idempotency-Key", "op-0"}});
  ASSERT_EQ(again.status, 201u) << again.raw;
  EXPECT_EQ(again.body["work_unit"]["seq"], tomb + 1);
  EXPECT_NE(again.body["work_unit"]["id"], doomed[0]);
  auto ctx = call(http, "GET", "/contexts/doomed");
  ASSERT_EQ(ctx.status, 200u);
  EXPECT_EQ(ctx.body["context"]["head_seq"], tomb + 1);
  EXPECT_EQ(ctx.body["context"]["first_seq"], tomb);
  EXPECT_EQ(ctx.body["context"]["display_name"], "");
  EXPECT_TRUE(ctx.body["context"]["meta"].empty());

  // A cursor from before the deletion resumes with the deletion, then the new unit:
  // nothing of the old life comes back, nothing is skipped silently.
  auto resumed = events_after(http, "doomed", 2);
  ASSERT_EQ(resumed.size(), 2u);
  EXPECT_EQ(resumed[0]["type"], "context_deleted");
  EXPECT_EQ(resumed[1]["id"], again.body["work_unit"]["id"]);
  // The live streams stay subscribed and receive the new unit (the late one: only it).
  for (auto* ws : {&live, &late}) {
    auto m = ws->read(10s);
    while (m && *m && !json::parse(**m)["type"].is_number_integer()) m = ws->read(10s);
    ASSERT_TRUE(m && *m);
    EXPECT_EQ(json::parse(**m)["id"], again.body["work_unit"]["id"]);
  }

  // After a restart: still deleted, search still clean.
  live.close();
  late.close();
  server.restart();
  http = server.connect();
  for (const auto& id : doomed) EXPECT_EQ(call(http, "GET", "/workunit/" + id).status, 404u) << id;
  EXPECT_EQ(call(http, "GET", "/contexts/doomed").body["context"]["head_seq"], tomb + 1);
  EXPECT_TRUE(wait_until([&] { return keyword_hits(http, "zebra").size() == 2; }, 30s));
}

TEST(ContextDeletion, LargeContextsAreRemovedInStepsWhileOthersWrite) {
  temp_dir dir;
  test_server server(dir);
  auto http = server.connect();
  constexpr int batches = 10, per_batch = 1000;  // 10k units: three removal steps
  for (int b = 0; b < batches; ++b) {
    json units = json::array();
    for (int i = 0; i < per_batch; ++i) units.push_back({{"text", "bulk " + std::to_string(b * per_batch + i)}});
    ASSERT_EQ(call(http, "POST", "/workunits", json({{"context_id", "big"}, {"agent_id", "a"}, {"work_units", units}}).dump())
                  .status,
              201u);
  }
  std::atomic<bool> stop{false};
  std::atomic<int> other_writes{0};
  std::thread writer([&] {
    auto c = server.connect();
    while (!stop) {
      auto r = call(c, "POST", "/workunit", R"({"context_id":"other","agent_id":"a","text":"x"})");
      if (r.status != 201) return ADD_FAILURE() << r.raw;
      ++other_writes;
    }
  });
  auto del = call(http, "DELETE", "/contexts/big");
  stop = true;
  writer.join();
  ASSERT_EQ(del.status, 200u) << del.raw;
  EXPECT_EQ(del.body["removed_events"], batches * per_batch);
  EXPECT_EQ(del.body["seq"], batches * per_batch + 1);
  EXPECT_EQ(call(http, "GET", "/contexts/big").status, 404u);
  auto other = call(http, "GET", "/contexts/other");
  EXPECT_EQ(other.body["context"]["head_seq"], other_writes.load());
}

TEST(Retention, KeepsTheNewestEventsOfEachContext) {
  temp_dir dir;
  auto cfg = test_config(dir.str() + "/data");
  cfg.retention.interval = 50ms;
  cfg.retention.max_events = 8;  // the default
  test_server server(cfg);
  auto http = server.connect();
  // One context under the default, one with its own (smaller) limit, one exempt.
  ASSERT_EQ(call(http, "PATCH", "/contexts/own", R"({"retention":{"max_events":3}})").status, 200u);
  ASSERT_EQ(call(http, "PATCH", "/contexts/exempt", R"({"retention":{}})").status, 200u);
  std::map<std::string, std::vector<std::string>> ids;
  for (int i = 0; i < 20; ++i)
    for (const char* ctx : {"default", "own", "exempt"}) {
      auto r = call(http, "POST", "/workunit",
                    json({{"context_id", ctx}, {"agent_id", "a"}, {"text", "kestrel " + std::to_string(i)}}).dump());
      ASSERT_EQ(r.status, 201u) << r.raw;
      ids[ctx].push_back(r.body["work_unit"]["id"]);
    }
  // Heads: default 20, own and exempt 21 (their PATCH is seq 1).
  auto first_seq = [&](const std::string& ctx) -> uint64_t {
    return call(http, "GET", "/contexts/" + ctx).body["context"].value("first_seq", uint64_t(1));
  };
  ASSERT_TRUE(wait_until([&] { return first_seq("default") == 13 && first_seq("own") == 19; }, 30s))
      << first_seq("default") << " " << first_seq("own");
  EXPECT_EQ(first_seq("exempt"), 1u);
  EXPECT_EQ(call(http, "GET", "/workunits/default?limit=100").body["work_units"].size(), 8u);
  EXPECT_EQ(call(http, "GET", "/workunit/" + ids["default"][11]).status, 404u);
  EXPECT_EQ(call(http, "GET", "/workunit/" + ids["default"][12]).status, 200u);
  EXPECT_EQ(call(http, "GET", "/workunits/own?limit=100").body["work_units"].size(), 3u);
  EXPECT_EQ(call(http, "GET", "/workunits/exempt?limit=100").body["work_units"].size(), 20u);
  // A cursor older than what is kept resumes at the oldest kept event.
  auto events = events_after(http, "default", 0);
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.front()["seq"], 13);
  client::ws_connection ws;
  ASSERT_TRUE(ws.connect("127.0.0.1", server.port(), "/stream?context=own&since=2", {}, 10s));
  auto m = ws.read(10s);
  while (m && *m && !json::parse(**m)["type"].is_number_integer()) m = ws.read(10s);  // connected, the ack
  ASSERT_TRUE(m && *m);
  EXPECT_EQ(json::parse(**m)["seq"], 19) << **m;
  // Search forgets the removed units.
  EXPECT_TRUE(wait_until([&] { return keyword_hits(http, "kestrel").size() == 8 + 3 + 20; }, 30s))
      << keyword_hits(http, "kestrel").size();
  EXPECT_GT(metric(http, "engram_retention_removed_events_total"), 0);

  // The policy is part of the context; null returns it to the default.
  auto own = call(http, "GET", "/contexts/own");
  EXPECT_EQ(own.body["context"]["retention"], json({{"max_events", 3}}));
  ASSERT_EQ(call(http, "PATCH", "/contexts/own", R"({"retention":null})").status, 200u);
  EXPECT_FALSE(call(http, "GET", "/contexts/own").body["context"].contains("retention"));

  // Bad policies are refused and change nothing.
  for (const char* bad : {R"({"retention":5})", R"({"retention":{"max_events":-1}})",
                          R"({"retention":{"max_event":3}})", R"({"retention":{"max_age_seconds":"1d"}})"}) {
    auto r = call(http, "PATCH", "/contexts/exempt", bad);
    EXPECT_EQ(r.status, 400u) << bad;
    EXPECT_NE(r.body["error"].get<std::string>().find("retention"), std::string::npos) << r.raw;
  }
  EXPECT_EQ(call(http, "GET", "/contexts/exempt").body["context"]["retention"], json::object());
}

TEST(Retention, RemovesEventsOlderThanTheContextsMaxAge) {
  temp_dir dir;
  auto cfg = test_config(dir.str() + "/data");
  cfg.retention.interval = 50ms;
  auto clock = std::make_shared<manual_clock>();  // commit times and retention's "now"
  test_server server(cfg, clock);
  auto http = server.connect();
  ASSERT_EQ(call(http, "PATCH", "/contexts/aging", R"({"retention":{"max_age_seconds":1}})").status, 200u);
  std::vector<std::string> old;
  for (int i = 0; i < 5; ++i)
    old.push_back(call(http, "POST", "/workunit", R"({"context_id":"aging","agent_id":"a","text":"old"})")
                      .body["work_unit"]["id"]);
  clock->advance(1100ms);
  auto young = call(http, "POST", "/workunit", R"({"context_id":"aging","agent_id":"a","text":"young"})");
  ASSERT_EQ(young.status, 201u);
  ASSERT_TRUE(wait_until([&] { return call(http, "GET", "/workunit/" + old.back()).status == 404; }, 30s));
  for (const auto& id : old) EXPECT_EQ(call(http, "GET", "/workunit/" + id).status, 404u);
  EXPECT_EQ(call(http, "GET", "/workunit/" + young.body["work_unit"]["id"].get<std::string>()).status, 200u);
  // The newest event is always kept, however old. A sweep that trims "probe" (after
  // "aging" in id order) has visited "aging" since the clock moved.
  clock->advance(1100ms);
  ASSERT_EQ(call(http, "PATCH", "/contexts/probe", R"({"retention":{"max_events":1}})").status, 200u);
  ASSERT_EQ(call(http, "POST", "/workunit", R"({"context_id":"probe","agent_id":"a","text":"p"})").status, 201u);
  ASSERT_TRUE(wait_until([&] { return call(http, "GET", "/contexts/probe").body["context"].contains("first_seq"); }, 30s));
  EXPECT_EQ(call(http, "GET", "/workunit/" + young.body["work_unit"]["id"].get<std::string>()).status, 200u);
  EXPECT_EQ(call(http, "GET", "/contexts/aging").body["context"]["first_seq"], 7);
}

}  // namespace
}  // namespace engram::test
