// The memory packet through the real server, on a scripted multi-agent history with
// known answers: what must be in, what must be out and why; byte-identical answers
// at the same as_of_seq after more writes and after a restart; If-None-Match; budgets
// never exceeded; since_seq; the text rendering; bad input.
#include <gtest/gtest.h>

#include <map>

#include "support/test_support.hpp"

namespace engram::test {
namespace {

// Equal bytes; else where they first differ, with some context on both sides.
void expect_same_bytes(const std::string& got, const std::string& want) {
  if (got == want) return;
  size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  const size_t from = i > 200 ? i - 200 : 0;
  ADD_FAILURE() << "the packets differ at byte " << i << ":\n" << want.substr(from, 400) << "\n---\n"
                << got.substr(from, 400);
}

class PacketTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = std::make_unique<test_server>(test_config(dir_.str() + "/data"));
    http_ = std::make_unique<client::http_connection>(server_->connect());
  }

  reply post(const std::string& target, const json& body, client::header_list headers = {}) {
    return call(*http_, "POST", target, body.dump(), headers);
  }
  uint64_t unit(const json& body) {
    json b = body;
    b["context_id"] = "proj";
    if (!b.contains("type")) b["type"] = "MESSAGE";
    auto r = post("/workunit", b);
    EXPECT_EQ(r.status, 201u) << r.raw;
    return r.body["work_unit"]["seq"].get<uint64_t>();
  }
  reply packet(json body) { return post("/contexts/proj/packet", body); }

  void wait_indexed() { test::wait_indexed(*http_); }

  // The scripted history (seqs in comments). Bob asks.
  void script() {
    pinned_ = unit({{"agent_id", "alice"}, {"text", "Deploys are blue-green; the rollback plan is in runbook.md"}});  // 1
    unit({{"agent_id", "bob"}, {"text", "Staging is green after the schema change"}});                                 // 2
    old_rollback_ = unit({{"agent_id", "carol"}, {"text", "Last rollback took four minutes"}});                        // 3
    unit({{"agent_id", "bob"}, {"text", "Metrics look normal"}});                                                      // 4
    unit({{"agent_id", "alice"}, {"text", "Release notes drafted"}});                                                  // 5
    ASSERT_EQ(call(*http_, "GET", "/workunit/" + id_of(pinned_)).status, 200u);
    ASSERT_EQ(call(*http_, "PATCH", "/contexts/proj", json{{"pin_units", {id_of(pinned_)}}}.dump()).status, 200u);  // 6
    put_fact("repo.main_branch", "main", "alice");   // 7
    put_fact("repo.main_branch", "trunk", "bob");    // 8, supersedes 7
    open_call_ = unit({{"agent_id", "bob"}, {"type", "TOOL_CALL"}, {"call_id", "c1"}, {"text", "run the test suite"}});  // 9
    closed_call_ = unit({{"agent_id", "bob"}, {"type", "TOOL_CALL"}, {"call_id", "c2"}, {"text", "lint"}});            // 10
    unit({{"agent_id", "bob"}, {"type", "TOOL_RESULT"}, {"call_id", "c2"}, {"text", "clean"}});                        // 11
    to_bob_ = unit({{"agent_id", "carol"}, {"text", "please review the migration"}, {"meta", {{"to", "bob"}}}});        // 12
    summary_ = unit({{"agent_id", "alice"}, {"type", "SUMMARY"}, {"text", "2-5: staging fine, rollback slow, notes drafted"},
                     {"meta", {{"covers_from_seq", "2"}, {"covers_to_seq", "5"}}}});                                  // 13
    ASSERT_EQ(post("/contexts/proj/tasks", {{"task_id", "t1"}, {"title", "Write the release notes"}, {"agent_id", "alice"}}).status,
              201u);  // 14
    ASSERT_EQ(post("/locks", {{"resource_path", "file:schema.sql"}, {"agent_id", "carol"}, {"ttl_seconds", 600},
                              {"context_id", "proj"}}).status, 200u);  // 15
    ASSERT_EQ(post("/locks", {{"resource_path", "file:notes.md"}, {"agent_id", "bob"}, {"ttl_seconds", 600},
                              {"context_id", "proj"}}).status, 200u);  // 16
    const std::string cp = "/contexts/proj/agents/bob/checkpoint";
    ASSERT_EQ(call(*http_, "PUT", cp, R"({"cursor_seq":5,"state":{"step":"review"}})").status, 200u);                    // 17
    ASSERT_EQ(call(*http_, "PUT", cp, R"({"cursor_seq":12,"state":{"step":"migrate"}})", {{"If-Match", "1"}}).status, 200u);  // 18
    head_ = call(*http_, "GET", "/contexts/proj").body["context"]["head_seq"].get<uint64_t>();
    wait_indexed();
  }

  std::string id_of(uint64_t seq) {
    auto page = call(*http_, "GET", "/workunits/proj?after_seq=" + std::to_string(seq - 1) + "&limit=1");
    return page.body["work_units"][0]["id"];
  }
  void put_fact(const std::string& key, const std::string& value, const std::string& agent) {
    auto r = call(*http_, "PUT", "/contexts/proj/facts/" + key, json{{"value", value}, {"agent_id", agent}}.dump());
    ASSERT_EQ(r.status, 200u) << r.raw;
  }

  // "unit 12" → section, "fact repo.main_branch@7" → reason.
  static std::map<std::string, json> by_name(const json& list) {
    std::map<std::string, json> out;
    for (const auto& i : list) {
      std::string name = i["kind"].get<std::string>() + " ";
      if (i["kind"] == "unit") name += std::to_string(i["seq"].get<uint64_t>());
      else name += i["key"].get<std::string>() + (i.contains("seq") ? "@" + std::to_string(i["seq"].get<uint64_t>()) : "");
      out[name] = i;
    }
    return out;
  }

  temp_dir dir_;
  std::unique_ptr<test_server> server_;
  std::unique_ptr<client::http_connection> http_;
  uint64_t pinned_ = 0, old_rollback_ = 0, open_call_ = 0, closed_call_ = 0, to_bob_ = 0, summary_ = 0, head_ = 0;
};

TEST_F(PacketTest, AScriptedHistoryGivesTheKnownItemsAndOmissions) {
  script();
  auto r = packet({{"agent_id", "bob"}, {"query", "rollback"}, {"budget", {{"max_tokens", 8000}}}});
  ASSERT_EQ(r.status, 200u) << r.raw;
  auto in = by_name(r.body["items"]);
  auto out = by_name(r.body["budget_report"]["omitted"]);
  EXPECT_EQ(r.body["meta"]["as_of_seq"], head_);
  // Pinned, and found by the query too.
  ASSERT_TRUE(in.contains("unit 1")) << r.raw;
  EXPECT_EQ(in["unit 1"]["section"], "pinned");
  EXPECT_EQ(in["unit 1"]["why"]["also_in"], json::array({"retrieved", "recent"}));
  EXPECT_GT(in["unit 1"]["why"]["signals"].value("keyword_rank", 0.0), 0);
  // The old unit the query found, any age.
  EXPECT_EQ(in["unit 3"]["section"], "retrieved");
  EXPECT_EQ(in["unit 3"]["unit"]["text"], "Last rollback took four minutes");
  // Facts: the active version in, the superseded one out, saying by what.
  EXPECT_EQ(in["fact repo.main_branch@8"]["fact"]["value"], "trunk");
  EXPECT_EQ(out["fact repo.main_branch@7"]["reason"], "superseded");
  EXPECT_EQ(out["fact repo.main_branch@7"]["by_seq"], 8);
  // The open tool call is marked open; the answered one is not.
  EXPECT_EQ(in["unit 9"]["why"]["signals"].value("open", 0.0), 1.0);
  EXPECT_EQ(in["unit 10"]["why"]["signals"].value("open", 0.0), 0.0);
  EXPECT_EQ(in["unit 12"]["why"]["signals"].value("addressed", 0.0), 1.0);
  EXPECT_EQ(in["unit 2"]["why"]["signals"].value("authored", 0.0), 1.0);
  EXPECT_EQ(in["unit 13"]["section"], "summaries");
  // The task board, the lease held by carol (not bob's own), bob's last checkpoint.
  EXPECT_EQ(in["task t1"]["task"]["status"], "open");
  EXPECT_TRUE(in.contains("lease file:schema.sql"));
  EXPECT_FALSE(in.contains("lease file:notes.md"));
  EXPECT_FALSE(out.contains("lease file:notes.md"));
  ASSERT_TRUE(in.contains("checkpoint 2@18")) << r.raw;
  EXPECT_EQ(in["checkpoint 2@18"]["checkpoint"]["state"], json({{"step", "migrate"}}));
  EXPECT_EQ(out["checkpoint 1@17"]["reason"], "superseded");
  EXPECT_EQ(out.size(), 2u) << r.body["budget_report"]["omitted"].dump();
  // Stored token counts, not re-counted: a unit's tokens are its own.
  EXPECT_EQ(in["unit 3"]["tokens"], in["unit 3"]["unit"]["tokens"]);
  EXPECT_EQ(r.body["meta"]["search"]["mode"], "keyword");
  EXPECT_FALSE(r.body["budget_report"]["tight"]);
}

TEST_F(PacketTest, WhenTightTheSummaryStandsInForWhatItCovers) {
  script();
  // Room for the pinned unit, the facts and a little more: the recent window is cut.
  auto r = packet({{"agent_id", "bob"}, {"query", "rollback"}, {"budget", {{"max_tokens", 90}}}});
  ASSERT_EQ(r.status, 200u) << r.raw;
  EXPECT_TRUE(r.body["budget_report"]["tight"]);
  auto in = by_name(r.body["items"]);
  auto out = by_name(r.body["budget_report"]["omitted"]);
  ASSERT_TRUE(in.contains("unit 13")) << r.raw;
  // Unit 3 (rollback, retrieved) lies in 2–5: the summary stands in for it.
  EXPECT_EQ(out["unit 3"]["reason"], "summarized") << r.raw;
  EXPECT_EQ(out["unit 3"]["by_seq"], summary_);
  EXPECT_LE(r.body["budget_report"]["used_tokens"].get<uint64_t>(), 90u);
}

TEST_F(PacketTest, TheSameAsOfSeqGivesTheSameBytesAfterMoreWritesAndARestart) {
  script();
  const json ask{{"agent_id", "bob"}, {"query", "rollback"}, {"as_of_seq", head_}, {"now", "2026-12-01T12:00:00Z"},
                 {"budget", {{"max_tokens", 500}}}};
  auto first = packet(ask);
  ASSERT_EQ(first.status, 200u) << first.raw;
  const auto etag = first.http.header("etag");
  ASSERT_FALSE(etag.empty());
  // Without `now`, only generated_at differs, and the ETag is the same.
  json unpinned = ask;
  unpinned.erase("now");
  EXPECT_EQ(packet(unpinned).http.header("etag"), etag);
  // If-None-Match: 304 with no body.
  auto cached = post("/contexts/proj/packet", ask, {{"If-None-Match", etag}});
  EXPECT_EQ(cached.status, 304u);
  EXPECT_TRUE(cached.raw.empty());
  EXPECT_EQ(post("/contexts/proj/packet", ask, {{"If-None-Match", "W/\"0000\""}}).status, 200u);

  // More history, a new fact version, another rollback unit: not seen at head_.
  unit({{"agent_id", "dave"}, {"text", "rollback rehearsal went fine"}});
  put_fact("repo.main_branch", "release", "dave");
  wait_indexed();
  expect_same_bytes(packet(ask).raw, first.raw);
  json now_ask = ask;
  now_ask.erase("as_of_seq");
  auto at_head = packet(now_ask);
  EXPECT_NE(at_head.raw, first.raw);
  EXPECT_EQ(at_head.body["meta"]["as_of_seq"], head_ + 2);

  server_->restart();
  http_ = std::make_unique<client::http_connection>(server_->connect());
  wait_indexed();
  auto restarted = packet(ask);
  expect_same_bytes(restarted.raw, first.raw);
  EXPECT_EQ(restarted.http.header("etag"), etag);
}

TEST_F(PacketTest, AsOfSeqSeesTheLogAsItStoodThen) {
  script();
  auto r = packet({{"agent_id", "bob"}, {"as_of_seq", 7}});
  ASSERT_EQ(r.status, 200u) << r.raw;
  auto in = by_name(r.body["items"]);
  EXPECT_EQ(in["fact repo.main_branch@7"]["fact"]["value"], "main");  // not yet superseded then
  EXPECT_FALSE(in.contains("unit 9"));
  EXPECT_FALSE(in.contains("checkpoint 2@18"));
  EXPECT_EQ(r.body["meta"]["as_of_seq"], 7);
  // Beyond the head: the head.
  EXPECT_EQ(packet({{"as_of_seq", 1'000'000}}).body["meta"]["as_of_seq"], head_);
}

TEST_F(PacketTest, SinceSeqShowsOnlyWhatChanged) {
  script();
  auto r = packet({{"agent_id", "bob"}, {"since_seq", 11}, {"query", "rollback"}});
  ASSERT_EQ(r.status, 200u) << r.raw;
  auto in = by_name(r.body["items"]);
  auto out = by_name(r.body["budget_report"]["omitted"]);
  EXPECT_TRUE(in.contains("unit 12"));
  EXPECT_TRUE(in.contains("unit 13"));
  for (auto name : {"unit 1", "unit 3", "fact repo.main_branch@8"})
    EXPECT_EQ(out[name]["reason"], "outside_window") << name << " " << r.raw;
  for (const auto& [name, item] : in) {
    if (item.contains("seq")) {
      EXPECT_GT(item["seq"].get<uint64_t>(), 11u) << name;
    }
  }
}

TEST_F(PacketTest, BudgetsAreNeverExceededAndTheReportAddsUp) {
  script();
  for (uint32_t max : {1u, 7u, 20u, 45u, 90u, 200u, 4000u}) {
    auto r = packet({{"agent_id", "bob"}, {"query", "rollback"}, {"budget", {{"max_tokens", max}, {"sections", {{"recent", 15}}}}}});
    ASSERT_EQ(r.status, 200u) << r.raw;
    uint64_t total = 0, recent = 0;
    for (const auto& item : r.body["items"]) {
      total += item["tokens"].get<uint64_t>();
      if (item["section"] == "recent") recent += item["tokens"].get<uint64_t>();
    }
    EXPECT_LE(total, max);
    EXPECT_LE(recent, 15u);
    EXPECT_EQ(r.body["budget_report"]["used_tokens"], total);
    uint64_t sum = 0;
    for (const auto& [name, s] : r.body["budget_report"]["sections"].items()) sum += s["used"].get<uint64_t>();
    EXPECT_EQ(sum, total) << max;
  }
}

TEST_F(PacketTest, TextIsAPromptBlockWithTheTimeFirst) {
  script();
  auto r = packet({{"agent_id", "bob"}, {"format", "text"}, {"now", "2026-12-01T12:00:00Z"}, {"purpose", "catch_up"}});
  ASSERT_EQ(r.status, 200u) << r.raw;
  EXPECT_EQ(r.http.header("content-type"), "text/plain; charset=utf-8");
  EXPECT_TRUE(r.raw.starts_with("Current time: 2026-12-01T12:00:00Z\nContext: proj, as of seq ")) << r.raw;
  EXPECT_NE(r.raw.find("You are: bob\nPurpose: catch_up\n"), std::string::npos) << r.raw;
  EXPECT_NE(r.raw.find("## Pinned\n["), std::string::npos) << r.raw;
  EXPECT_NE(r.raw.find("] alice (MESSAGE): Deploys are blue-green"), std::string::npos) << r.raw;
  EXPECT_NE(r.raw.find("- repo.main_branch = \"trunk\" (set by bob at #8"), std::string::npos) << r.raw;
  EXPECT_NE(r.raw.find("- [open] t1: Write the release notes"), std::string::npos) << r.raw;
  EXPECT_NE(r.raw.find("- file:schema.sql: held by carol until "), std::string::npos) << r.raw;
}

TEST_F(PacketTest, BadInputIsA400NamingTheField) {
  script();
  EXPECT_EQ(packet({{"budget", {{"max_tokens", -1}}}}).body["error"], "budget.max_tokens must be an integer from 1 to 1000000");
  EXPECT_EQ(packet({{"budget", {{"sections", {{"inbox", 1}}}}}}).status, 400u);
  EXPECT_EQ(packet({{"policy", "turbo"}}).body["error"],
            "policy.name: unknown policy 'turbo'; the named policies are default, catch_up, answer, resume");
  EXPECT_EQ(packet({{"budgt", 1}}).body["error"], "unknown field 'budgt' in the packet request; did you mean 'budget'?");
  EXPECT_EQ(packet({{"agent_id", std::string(300, 'a')}}).status, 400u);
  EXPECT_EQ(packet({{"agent_id", 7}}).body["error"], "agent_id must be a string");
  EXPECT_EQ(post("/contexts/proj/packet", json::array()).status, 400u);
  EXPECT_EQ(call(*http_, "POST", "/contexts/proj/packet", "{\"query\":").status, 400u);
  EXPECT_EQ(post("/contexts/nowhere/packet", json::object()).status, 404u);
}

}  // namespace
}  // namespace engram::test
