// Agents' checkpoints against the real server: versions with compare-and-set,
// reads of the latest or an older version, the kept window, limits, auth, and the
// checkpoint_saved events in the log.
#include <gtest/gtest.h>

#include "support/test_support.hpp"

namespace engram::test {
namespace {

using namespace std::chrono_literals;

TEST(Checkpoints, VersionsWithCompareAndSet) {
  temp_dir dir;
  auto cfg = test_config(dir.str() + "/data");
  cfg.engine.checkpoints.keep = 3;
  cfg.engine.checkpoints.max_bytes = 1024;
  test_server server(cfg);
  auto http = server.connect();
  const std::string path = "/contexts/cp/agents/alice/checkpoint";
  ASSERT_EQ(call(http, "POST", "/workunit", R"({"context_id":"cp","agent_id":"a","text":"one"})").status, 201u);
  EXPECT_EQ(call(http, "GET", path).status, 404u);

  auto v1 = call(http, "PUT", path, R"({"cursor_seq":1,"state":{"step":"read"}})");
  ASSERT_EQ(v1.status, 200u) << v1.raw;
  EXPECT_EQ(v1.body["checkpoint"]["version"], 1);
  EXPECT_EQ(v1.body["checkpoint"]["type"], "checkpoint_saved");
  EXPECT_EQ(v1.body["checkpoint"]["state"], json({{"step", "read"}}));
  // A version exists: a save must say which one it replaces.
  auto blind = call(http, "PUT", path, R"({"cursor_seq":1,"state":{}})");
  EXPECT_EQ(blind.status, 428u) << blind.raw;
  auto stale = call(http, "PUT", path, R"({"cursor_seq":1,"state":{}})", {{"If-Match", "\"7\""}});
  EXPECT_EQ(stale.status, 412u) << stale.raw;
  auto v2 = call(http, "PUT", path, R"({"cursor_seq":2,"state":{"step":"plan"}})", {{"If-Match", "\"1\""}});
  ASSERT_EQ(v2.status, 200u) << v2.raw;
  EXPECT_EQ(v2.body["checkpoint"]["version"], 2);
  EXPECT_EQ(v2.http.header("etag"), "\"2\"");
  // Two writers with the same If-Match: one wins.
  EXPECT_EQ(call(http, "PUT", path, R"({"cursor_seq":2,"state":{"w":1}})", {{"If-Match", "2"}}).status, 200u);
  EXPECT_EQ(call(http, "PUT", path, R"({"cursor_seq":2,"state":{"w":2}})", {{"If-Match", "2"}}).status, 412u);

  auto latest = call(http, "GET", path);
  EXPECT_EQ(latest.body["checkpoint"]["version"], 3);
  EXPECT_EQ(latest.body["checkpoint"]["state"], json({{"w", 1}}));
  EXPECT_EQ(call(http, "GET", path + "?version=2").body["checkpoint"]["state"], json({{"step", "plan"}}));
  // Only the newest `keep` (3) stay readable.
  ASSERT_EQ(call(http, "PUT", path, R"({"cursor_seq":2,"state":{"w":3}})", {{"If-Match", "3"}}).status, 200u);
  EXPECT_EQ(call(http, "GET", path + "?version=1").status, 404u);
  auto list = call(http, "GET", "/contexts/cp/agents/alice/checkpoints");
  ASSERT_EQ(list.status, 200u);
  std::vector<int> versions;
  for (const auto& c : list.body["checkpoints"]) versions.push_back(c["version"]);
  EXPECT_EQ(versions, (std::vector<int>{4, 3, 2}));
  // Other agents and contexts have their own.
  EXPECT_EQ(call(http, "PUT", "/contexts/cp/agents/bob/checkpoint", R"({"cursor_seq":0})").body["checkpoint"]["version"], 1);

  // Bad input changes nothing.
  for (const auto& [body, status] : std::vector<std::pair<std::string, unsigned>>{
           {R"({"cursor_seq":99,"state":{}})", 400u},  // beyond the head
           {R"({"cursor_seq":-1})", 400u},
           {R"({"state":{}})", 400u},
           {R"({"cursor_seq":1,"state":[1]})", 400u},
           {R"({"cursor_seq":1,"stat":{}})", 400u},
           {R"({"cursor_seq":1,"state":{"big":")" + std::string(2000, 'x') + R"("}})", 413u}}) {
    auto r = call(http, "PUT", path, body, {{"If-Match", "4"}});
    EXPECT_EQ(r.status, status) << body.substr(0, 80) << " → " << r.raw;
  }
  EXPECT_EQ(call(http, "PUT", path, R"({"cursor_seq":1})", {{"If-Match", "four"}}).status, 400u);
  EXPECT_EQ(call(http, "GET", path).body["checkpoint"]["version"], 4);

  // Saves are events of the log, and survive a restart.
  auto events = call(http, "GET", "/contexts/cp/events?limit=100").body["events"];
  size_t saved = 0;
  for (const auto& e : events) saved += e["type"] == "checkpoint_saved";
  EXPECT_EQ(saved, 5u);
  server.restart();
  http = server.connect();
  EXPECT_EQ(call(http, "GET", path).body["checkpoint"]["state"], json({{"w", 3}}));
  EXPECT_EQ(call(http, "PUT", path, R"({"cursor_seq":1})", {{"If-Match", "4"}}).body["checkpoint"]["version"], 5);
}

// Retention removes old checkpoint events, but versions go on from the last one, so
// a stale copy of the agent can never start over at version 1; an export of the
// context imports with its checkpoints.
TEST(Checkpoints, VersionsOutliveRetentionAndTravelWithAnExport) {
  temp_dir dir;
  auto cfg = test_config(dir.str() + "/data");
  cfg.retention.interval = 50ms;
  test_server server(cfg);
  auto http = server.connect();
  const std::string path = "/contexts/cp/agents/alice/checkpoint";
  ASSERT_EQ(call(http, "PATCH", "/contexts/cp", R"({"retention":{"max_events":2}})").status, 200u);
  ASSERT_EQ(call(http, "PUT", path, R"({"cursor_seq":1,"state":{"n":1}})").status, 200u);
  ASSERT_EQ(call(http, "PUT", path, R"({"cursor_seq":1,"state":{"n":2}})", {{"If-Match", "1"}}).status, 200u);
  for (int i = 0; i < 3; ++i)
    ASSERT_EQ(call(http, "POST", "/workunit", R"({"context_id":"cp","agent_id":"a","text":"x"})").status, 201u);
  ASSERT_TRUE(wait_until([&] { return call(http, "GET", path).status == 404; }, 30s));
  EXPECT_EQ(call(http, "PUT", path, R"({"cursor_seq":1,"state":{}})").status, 428u);
  EXPECT_EQ(call(http, "PUT", path, R"({"cursor_seq":1,"state":{}})", {{"If-Match", "0"}}).status, 412u);
  auto v3 = call(http, "PUT", path, R"({"cursor_seq":5,"state":{"n":3}})", {{"If-Match", "2"}});
  ASSERT_EQ(v3.status, 200u) << v3.raw;
  EXPECT_EQ(v3.body["checkpoint"]["version"], 3);

  // Export → import into another server: the checkpoint is readable there.
  const auto exported = call(http, "GET", "/contexts/cp/events?limit=100");
  const json events = exported.body["events"];
  temp_dir other;
  test_server copy(other);
  auto copy_http = copy.connect();
  auto imported = call(copy_http, "POST", "/contexts/cp/import", json({{"events", events}}).dump());
  ASSERT_EQ(imported.status, 200u) << imported.raw;
  EXPECT_EQ(call(copy_http, "GET", path).body["checkpoint"], call(http, "GET", path).body["checkpoint"]);
  EXPECT_EQ(call(copy_http, "PUT", path, R"({"cursor_seq":5})", {{"If-Match", "3"}}).body["checkpoint"]["version"], 4);
}

}  // namespace
}  // namespace engram::test
