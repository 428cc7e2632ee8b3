// Facts through the real server: a set supersedes the active version (kept, with
// superseded_at_seq), a delete retracts it; reads on both time axes (as the log
// stood at a seq, as valid at a time); changes are log events seen by streams; bad
// input is a 400 naming the field; answers survive a restart byte for byte.
#include <gtest/gtest.h>

#include "engram/stream_connections.hpp"
#include "support/test_support.hpp"

namespace engram::test {
namespace {

using namespace std::chrono_literals;

reply put(client::http_connection& http, const std::string& key, const json& body) {
  return call(http, "PUT", "/contexts/fx/facts/" + key, body.dump());
}

std::vector<std::string> values(const json& facts) {
  std::vector<std::string> out;
  for (const auto& f : facts) out.push_back(f["key"].get<std::string>() + "=" + f["value"].dump());
  return out;
}

TEST(Facts, SupersessionOnBothTimeAxes) {
  temp_dir dir;
  auto cfg = test_config(dir.str() + "/data");
  std::string listed_before_restart;
  {
    test_server server(cfg);
    auto http = server.connect();
    client::ws_connection ws;
    ASSERT_TRUE(ws.connect("127.0.0.1", server.port(), "/stream?context=fx"));
    ASSERT_EQ(call(http, "POST", "/workunit", R"({"context_id":"fx","agent_id":"a","text":"we use trunk"})").status, 201u);
    auto first = put(http, "repo.main_branch", {{"agent_id", "a"}, {"value", "trunk"}, {"sources", {1}}, {"confidence", 0.8}});
    ASSERT_EQ(first.status, 200u) << first.raw;
    EXPECT_EQ(first.body["seq"], 2);
    EXPECT_EQ(first.body["kind"], "set");
    ASSERT_EQ(put(http, "repo.ci", {{"agent_id", "a"}, {"value", {{"provider", "gha"}}},
                                    {"valid_from", "2026-01-01T00:00:00Z"}, {"valid_to", "2026-07-01T00:00:00Z"}}).status, 200u);
    ASSERT_EQ(put(http, "repo.main_branch", {{"agent_id", "b"}, {"value", "main"}, {"status", "disputed"}}).status, 200u);  // seq 4
    ASSERT_EQ(put(http, "team.lead", {{"agent_id", "a"}, {"value", "ana"}}).status, 200u);  // seq 5
    ASSERT_EQ(call(http, "DELETE", "/contexts/fx/facts/team.lead").status, 200u);            // seq 6

    auto now = call(http, "GET", "/contexts/fx/facts");
    ASSERT_EQ(now.status, 200u);
    EXPECT_EQ(now.body["as_of_seq"], 6);
    EXPECT_EQ(values(now.body["facts"]), (std::vector<std::string>{R"(repo.ci={"provider":"gha"})", R"(repo.main_branch="main")"}));
    EXPECT_EQ(now.body["facts"][1]["status"], "disputed");
    // As the log stood at seq 3: the first main_branch, still current then; no team.lead yet.
    auto at3 = call(http, "GET", "/contexts/fx/facts?as_of_seq=3");
    EXPECT_EQ(at3.body["as_of_seq"], 3);
    EXPECT_EQ(values(at3.body["facts"]), (std::vector<std::string>{R"(repo.ci={"provider":"gha"})", R"(repo.main_branch="trunk")"}));
    EXPECT_FALSE(at3.body["facts"][1].contains("superseded_at_seq"));
    EXPECT_EQ(at3.body["facts"][1]["sources"], json::array({1}));
    // At seq 5 team.lead was active; at 6 it is retracted.
    EXPECT_EQ(values(call(http, "GET", "/contexts/fx/facts?as_of_seq=5&prefix=team.").body["facts"]),
              (std::vector<std::string>{R"(team.lead="ana")"}));
    EXPECT_TRUE(call(http, "GET", "/contexts/fx/facts?prefix=team.").body["facts"].empty());
    // Valid time: repo.ci holds in spring 2026, not in autumn.
    EXPECT_EQ(values(call(http, "GET", "/contexts/fx/facts?valid_at=2026-03-01T00:00:00Z").body["facts"]).size(), 2u);
    EXPECT_EQ(values(call(http, "GET", "/contexts/fx/facts?valid_at=2026-09-01T00:00:00Z").body["facts"]),
              (std::vector<std::string>{R"(repo.main_branch="main")"}));
    // Every version, with what ended it.
    auto history = call(http, "GET", "/contexts/fx/facts/repo.main_branch?include_superseded=true");
    ASSERT_EQ(history.body["versions"].size(), 2u) << history.raw;
    EXPECT_EQ(history.body["versions"][0]["superseded_at_seq"], 4);
    EXPECT_EQ(history.body["versions"][0]["ended_by"], "superseded");
    auto all = call(http, "GET", "/contexts/fx/facts?include_superseded=true");
    EXPECT_EQ(all.body["facts"].size(), 4u);
    EXPECT_EQ(call(http, "GET", "/contexts/fx/facts/team.lead").status, 404u);
    EXPECT_EQ(call(http, "GET", "/contexts/fx/facts/team.lead?as_of_seq=5").body["fact"]["value"], "ana");

    // Each change is an event of the log, streamed in seq order.
    std::vector<std::string> kinds;
    while (kinds.size() < 5) {
      auto m = ws.read(10s);
      ASSERT_TRUE(m && *m);
      auto j = json::parse(**m);
      if (j["type"].is_string() && j["type"].get<std::string>().starts_with("fact_")) kinds.push_back(j["type"]);
    }
    EXPECT_EQ(kinds, (std::vector<std::string>{"fact_set", "fact_set", "fact_set", "fact_set", "fact_retracted"}));
    listed_before_restart = call(http, "GET", "/contexts/fx/facts?as_of_seq=4&include_superseded=true").raw;
  }
  test_server again(cfg);
  auto http = again.connect();
  EXPECT_EQ(call(http, "GET", "/contexts/fx/facts?as_of_seq=4&include_superseded=true").raw, listed_before_restart);
}

// An export (GET …/events) imported elsewhere rebuilds the facts: the same versions,
// supersessions and retractions, byte for byte.
TEST(Facts, AnImportedExportRebuildsTheFacts) {
  temp_dir dir, other;
  test_server server(test_config(dir.str() + "/data"));
  test_server copy(test_config(other.str() + "/data"));
  auto http = server.connect();
  auto copy_http = copy.connect();
  ASSERT_EQ(call(http, "POST", "/workunit", R"({"context_id":"fx","agent_id":"a","text":"x"})").status, 201u);
  ASSERT_EQ(put(http, "k.one", {{"agent_id", "a"}, {"value", 1}, {"sources", {1}}}).status, 200u);
  ASSERT_EQ(put(http, "k.one", {{"agent_id", "b"}, {"value", 2}, {"confidence", 0.5}}).status, 200u);
  ASSERT_EQ(put(http, "k.two", {{"agent_id", "a"}, {"value", "t"}, {"valid_to", "2030-01-01T00:00:00Z"}}).status, 200u);
  ASSERT_EQ(call(http, "DELETE", "/contexts/fx/facts/k.two", "", {{"X-Agent-ID", "c"}}).status, 200u);
  ASSERT_EQ(put(http, "k.two", {{"agent_id", "a"}, {"value", "again"}}).status, 200u);
  auto events = call(http, "GET", "/contexts/fx/events?limit=1000");
  ASSERT_EQ(events.status, 200u);
  auto imported = call(copy_http, "POST", "/contexts/fx/import", json({{"events", events.body["events"]}}).dump());
  ASSERT_EQ(imported.status, 200u) << imported.raw;
  for (const char* q : {"", "?include_superseded=true", "?as_of_seq=4&include_superseded=true", "?as_of_seq=5"}) {
    auto a = call(http, "GET", std::string("/contexts/fx/facts") + q);
    auto b = call(copy_http, "GET", std::string("/contexts/fx/facts") + q);
    EXPECT_EQ(a.raw, b.raw) << q;
  }
  EXPECT_EQ(call(copy_http, "GET", "/contexts/fx/facts/k.two?include_superseded=true").body["versions"][0]["retracted_by"], "c");
  // The copy goes on from there: a set supersedes the imported active version.
  ASSERT_EQ(put(copy_http, "k.one", {{"agent_id", "a"}, {"value", 3}}).status, 200u);
  auto history = call(copy_http, "GET", "/contexts/fx/facts/k.one?include_superseded=true");
  ASSERT_EQ(history.body["versions"].size(), 3u) << history.raw;
  EXPECT_EQ(history.body["versions"][1]["ended_by"], "superseded");
  EXPECT_EQ(history.body["versions"][2]["value"], 3);
}

TEST(Facts, BadInputIsA400NamingTheField) {
  temp_dir dir;
  test_server server(test_config(dir.str() + "/data"));
  auto http = server.connect();
  ASSERT_EQ(call(http, "POST", "/workunit", R"({"context_id":"fx","agent_id":"a","text":"x"})").status, 201u);
  struct bad_case {
    std::string key;
    json body;
    unsigned status;
    std::string says;
  };
  const std::vector<bad_case> cases = {
      {"a..b", {{"value", 1}}, 400, "empty segment"},
      {"a%20b", {{"value", 1}}, 400, "letters, digits"},
      {"a.", {{"value", 1}}, 400, "ends with"},
      {"k", json::object({{"agent_id", "a"}}), 400, "value is required"},
      {"k", {{"value", 1}, {"sources", {5}}}, 400, "seq 5 is not in the context"},
      {"k", {{"value", 1}, {"sources", "1"}}, 400, "sources"},
      {"k", {{"value", 1}, {"confidence", 2}}, 400, "confidence"},
      {"k", {{"value", 1}, {"status", "maybe"}}, 400, "status"},
      {"k", {{"value", 1}, {"valid_from", "yesterday"}}, 400, "valid_from"},
      {"k", {{"value", 1}, {"valid_from", "2026-02-01T00:00:00Z"}, {"valid_to", "2026-01-01T00:00:00Z"}}, 400, "valid_to"},
      {"k", {{"value", 1}, {"vaule", 2}}, 400, "'vaule'"},
      {"k", {{"value", std::string(70'000, 'x')}}, 413, "facts.max_value_bytes"},
  };
  for (const auto& c : cases) {
    json body = c.body;
    if (!body.contains("agent_id")) body["agent_id"] = "a";
    auto r = put(http, c.key, body);
    EXPECT_EQ(r.status, c.status) << c.key << " " << body.dump().substr(0, 200) << " → " << r.raw;
    EXPECT_NE(r.raw.find(c.says), std::string::npos) << r.raw;
  }
  EXPECT_EQ(call(http, "GET", "/contexts/fx/facts?as_of_seq=x").status, 400u);
  EXPECT_EQ(call(http, "GET", "/contexts/fx/facts?valid_at=soon").status, 400u);
  EXPECT_EQ(call(http, "GET", "/contexts/fx/facts?include_superseded=perhaps").status, 400u);
  EXPECT_EQ(call(http, "GET", "/contexts/nope/facts").status, 404u);
  EXPECT_EQ(call(http, "DELETE", "/contexts/fx/facts/never.set").status, 404u);
  EXPECT_EQ(call(http, "GET", "/contexts/fx").body["context"]["head_seq"], 1) << "nothing was logged";
}

}  // namespace
}  // namespace engram::test
