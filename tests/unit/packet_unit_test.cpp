// The memory packet's assembly (engine/packet.hpp) on a scripted history with known
// answers, and its request decoding (gateway/packet_params.hpp): no server, no I/O.
#include <gtest/gtest.h>

#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "engine/packet.hpp"
#include "gateway/packet_params.hpp"

namespace engram::engine {
namespace {

using model::json;

constexpr int64_t T = 1'800'000'000'000'000'000;  // the log's time at as_of_seq (ns)

api::WorkUnit unit(uint64_t seq, const std::string& agent, api::WorkUnitType type = api::WORK_UNIT_TYPE_MESSAGE,
                   uint32_t tokens = 10) {
  api::WorkUnit u;
  u.set_id("u" + std::to_string(seq));
  u.set_context_id("c");
  u.set_seq(seq);
  u.set_agent_id(agent);
  u.set_type(type);
  u.set_ts_ns(T - int64_t(20 - seq) * 1'000'000'000);
  u.set_payload("unit " + std::to_string(seq));
  u.set_tokens(tokens);
  return u;
}

// The history every test starts from: bob asks for his packet at seq 20.
//   2 pinned (alice)         3 found by the query (rank 1)   10 SUMMARY of 1–9
//   11–20 recent: 15 bob's open tool call, 17 by bob, 18 addressed to bob,
//         19 also found by the query (rank 2)
//   facts: repo.branch (seq 6), team.lead set at 7 then superseded at 12 by seq 12's
//   task t1 open; lease on file:a held by carol; bob's checkpoints at 5 (v1) and 16 (v2)
packet_inputs history() {
  packet_inputs in;
  in.context.set_id("c");
  in.context.set_head_seq(20);
  in.as_of_seq = 20;
  in.log_time_ns = T;
  in.generated_at_ns = T + 5'000'000'000;
  in.pinned.push_back(unit(2, "alice"));
  auto summary = unit(10, "alice", api::WORK_UNIT_TYPE_SUMMARY, 8);
  (*summary.mutable_meta())["covers_from_seq"] = "1";
  (*summary.mutable_meta())["covers_to_seq"] = "9";
  in.summaries.push_back(summary);
  in.retrieved.push_back({unit(3, "alice"), 1, std::nullopt});
  in.retrieved.push_back({unit(19, "alice"), 2, std::nullopt});
  for (uint64_t seq = 20; seq >= 11; --seq) {
    auto u = unit(seq, seq == 17 ? "bob" : "alice", seq == 15 ? api::WORK_UNIT_TYPE_TOOL_CALL : api::WORK_UNIT_TYPE_MESSAGE);
    if (seq == 15) u.set_call_id("k1");
    if (seq == 18) (*u.mutable_meta())["to"] = "dave, bob";
    in.recent.push_back(u);
  }
  in.open_calls.insert("k1");
  auto fact = [](std::string key, uint64_t seq, uint64_t superseded) {
    api::Fact f;
    f.set_key(std::move(key));
    f.set_value_json("\"v" + std::to_string(seq) + "\"");
    f.set_agent_id("alice");
    f.set_set_at_seq(seq);
    f.set_set_at_ns(T - 1'000'000'000);
    f.set_superseded_at_seq(superseded);
    f.set_status("active");
    return f;
  };
  in.facts = {fact("repo.branch", 6, 0), fact("team.lead", 7, 12), fact("team.lead", 12, 0)};
  api::Task t;
  t.set_task_id("t1");
  t.set_title("write the report");
  t.set_status("open");
  t.set_created_by("alice");
  in.tasks.push_back(t);
  api::Lock l;
  l.set_resource_path("file:a");
  l.set_holder_agent("carol");
  l.set_context_id("c");
  l.set_expires_at_ns(T + 60'000'000'000);
  in.leases.push_back(l);
  for (auto [seq, version] : {std::pair<uint64_t, uint64_t>{5, 1}, {16, 2}}) {
    api::Event e;
    e.set_context_id("c");
    e.set_seq(seq);
    e.set_ts_ns(T);
    e.mutable_checkpoint()->set_agent_id("bob");
    e.mutable_checkpoint()->set_version(version);
    e.mutable_checkpoint()->set_state_json(R"({"step":)" + std::to_string(version) + "}");
    in.checkpoints.push_back(e);
  }
  in.search = "keyword";
  return in;
}

packet_request request(uint32_t max_tokens) {
  packet_request r;
  r.context_id = "c";
  r.agent_id = "bob";
  r.max_tokens = max_tokens;
  r.policy = *named_packet_policy("default");
  r.query_text = "report";
  return r;
}

struct shown {
  std::map<std::string, std::string> in;   // "unit 18" → section
  std::map<std::string, std::string> out;  // "unit 3" → reason
  json body;
};

std::string name_of(const json& item) {
  if (item["kind"] == "unit") return "unit " + std::to_string(item["seq"].get<uint64_t>());
  return item["kind"].get<std::string>() + " " + item["key"].get<std::string>() +
         (item.contains("seq") ? "@" + std::to_string(item["seq"].get<uint64_t>()) : "");
}

shown run(const packet_request& r, const packet_inputs& in) {
  auto out = assemble_packet(r, in);
  shown s;
  s.body = json::parse(out.body);
  for (const auto& item : s.body["items"]) s.in[name_of(item)] = item["section"];
  for (const auto& o : s.body["budget_report"]["omitted"]) s.out[name_of(o)] = o["reason"];
  return s;
}

TEST(Packet, AnAmpleBudgetShowsEveryCandidateOnceAndOmitsOnlyTheSuperseded) {
  auto s = run(request(10'000), history());
  EXPECT_EQ(s.out, (std::map<std::string, std::string>{{"checkpoint 1@5", "superseded"}, {"fact team.lead@7", "superseded"}}));
  EXPECT_EQ(s.in.size(), 1u + 1 + 1 + 10 + 2 + 1 + 1 + 1);  // pinned, summary, 3, 11–20, 2 facts, task, lease, checkpoint
  EXPECT_EQ(s.in["unit 2"], "pinned");
  EXPECT_EQ(s.in["unit 3"], "retrieved");
  EXPECT_EQ(s.in["unit 19"], "retrieved");  // the query found it first; recent proposed it too
  EXPECT_EQ(s.in["unit 10"], "summaries");
  EXPECT_EQ(s.in["checkpoint 2@16"], "checkpoint");
  EXPECT_EQ(s.in["lease file:a"], "leases");
  EXPECT_FALSE(s.body["budget_report"]["tight"]);
  // Items by section, then seq.
  std::vector<std::string> order;
  for (const auto& item : s.body["items"]) order.push_back(name_of(item));
  EXPECT_EQ(order.front(), "unit 2");
  EXPECT_EQ(order.back(), "unit 20");
  // The why of the open tool call and of the unit addressed to bob.
  for (const auto& item : s.body["items"]) {
    if (item["kind"] != "unit") continue;
    const auto& sig = item["why"]["signals"];
    const auto seq = item["seq"].get<uint64_t>();
    EXPECT_EQ(sig.value("open", 0.0), seq == 15 ? 1.0 : 0.0) << seq;
    EXPECT_EQ(sig.value("addressed", 0.0), seq == 18 ? 1.0 : 0.0) << seq;
    EXPECT_EQ(sig.value("authored", 0.0), seq == 17 ? 1.0 : 0.0) << seq;
    EXPECT_EQ(sig.value("keyword_rank", 0.0), seq == 3 ? 1.0 : seq == 19 ? 0.5 : 0.0) << seq;
    if (seq == 19) {
      EXPECT_EQ(item["why"]["also_in"], json::array({"recent"}));
    }
  }
}

TEST(Packet, ASectionBudgetKeepsTheBestScoredAndSaysWhyTheRestAreOut) {
  auto r = request(10'000);
  r.section_budget[size_t(packet_section::recent)] = 30;  // three units of 10
  auto s = run(r, history());
  // Recent by score: the open tool call (15), the unit addressed to bob (18), bob's
  // own (17); 19 stays in retrieved.
  for (uint64_t seq : {15, 18, 17}) EXPECT_EQ(s.in["unit " + std::to_string(seq)], "recent") << seq;
  for (uint64_t seq : {11, 12, 13, 14, 16, 20}) EXPECT_EQ(s.out["unit " + std::to_string(seq)], "section_budget") << seq;
  EXPECT_EQ(s.in["unit 19"], "retrieved");
  EXPECT_EQ(s.body["budget_report"]["sections"]["recent"]["used"], 30);
  EXPECT_EQ(s.body["budget_report"]["sections"]["recent"]["budget"], 30);
}

TEST(Packet, WhenTightASummaryStandsInForTheUnitsItCovers) {
  auto r = request(60);
  auto s = run(r, history());
  EXPECT_TRUE(s.body["budget_report"]["tight"]);
  EXPECT_EQ(s.in["unit 10"], "summaries");
  EXPECT_EQ(s.out["unit 3"], "summarized");  // retrieved, but inside 1–9
  for (const auto& o : s.body["budget_report"]["omitted"])
    if (o["reason"] == "summarized") {
      EXPECT_EQ(o["by_seq"], 10);
    }
  EXPECT_LE(s.body["budget_report"]["used_tokens"].get<uint64_t>(), 60u);
  // Pinned is never replaced, even inside a summary's span.
  EXPECT_EQ(s.in["unit 2"], "pinned");
}

TEST(Packet, SinceSeqShowsOnlyWhatChangedAfterIt) {
  auto r = request(10'000);
  r.since_seq = 16;
  auto in = history();
  auto s = run(r, in);
  for (auto name : {"unit 2", "unit 3", "unit 10", "fact repo.branch@6", "fact team.lead@12", "checkpoint 2@16"})
    EXPECT_EQ(s.out[name], "outside_window") << name;
  for (auto name : {"unit 17", "unit 18", "unit 19", "unit 20"}) EXPECT_TRUE(s.in.contains(name)) << name;
  EXPECT_EQ(s.in["task t1"], "tasks");  // state, not a change: always shown
  EXPECT_EQ(s.body["meta"]["since_seq"], 16);
}

TEST(Packet, PolicyTypesLeaveOtherTypesOut) {
  auto r = request(10'000);
  r.policy.types = {api::WORK_UNIT_TYPE_TOOL_CALL};
  auto s = run(r, history());
  EXPECT_EQ(s.in["unit 15"], "recent");
  EXPECT_EQ(s.out["unit 16"], "policy_limit");
  EXPECT_EQ(s.out["unit 2"], "policy_limit");
}

TEST(Packet, FactsNotValidAtTheLogsTimeAreOutsideTheWindow) {
  auto in = history();
  in.facts[0].set_valid_to_ns(T - 1);
  auto s = run(request(10'000), in);
  EXPECT_EQ(s.out["fact repo.branch@6"], "outside_window");
}

TEST(Packet, TheSameInputsGiveTheSameBytesAndGeneratedAtIsOutsideTheETag) {
  const auto in = history();
  auto r = request(75);
  auto a = assemble_packet(r, in);
  auto b = assemble_packet(r, in);
  EXPECT_EQ(a.body, b.body);
  EXPECT_EQ(a.etag, b.etag);
  auto later = in;
  later.generated_at_ns += 3'600'000'000'000;
  auto c = assemble_packet(r, later);
  EXPECT_NE(a.body, c.body);
  EXPECT_EQ(a.etag, c.etag);
  r.max_tokens = 76;
  EXPECT_NE(assemble_packet(r, in).etag, a.etag);
  r.text = true;
  auto text = assemble_packet(r, in);
  EXPECT_EQ(text.etag, assemble_packet(r, later).etag);
  EXPECT_TRUE(text.body.starts_with("Current time: 2027-01-15T08:00:05Z\n")) << text.body;
}

TEST(Packet, TextRendersEachItemWithItsTimeAndAuthor) {
  auto r = request(10'000);
  r.text = true;
  auto out = assemble_packet(r, history());
  EXPECT_TRUE(out.text);
  EXPECT_NE(out.body.find("\n## Pinned\n[2027-01-15T07:59:42Z #2] alice (MESSAGE): unit 2\n"), std::string::npos) << out.body;
  EXPECT_NE(out.body.find("- team.lead = \"v12\" (set by alice at #12"), std::string::npos);
  EXPECT_NE(out.body.find("- [open] t1: write the report"), std::string::npos);
  EXPECT_NE(out.body.find("- file:a: held by carol until 2027-01-15T08:01:00Z"), std::string::npos);
  EXPECT_NE(out.body.find("version 2, up to #0: {\"step\":2}"), std::string::npos);
  EXPECT_NE(out.body.find("#15] alice (TOOL_CALL): unit 15"), std::string::npos);
  EXPECT_EQ(out.body.find("team.lead = \"v7\""), std::string::npos);  // superseded
}

// Random budgets, section budgets and weights: the tokens shown never exceed either
// budget, and every candidate is either shown or omitted, never both.
TEST(Packet, BudgetsAreNeverExceeded) {
  std::mt19937 rng(7);
  const auto in = history();
  for (int round = 0; round < 300; ++round) {
    auto r = request(std::uniform_int_distribution<uint32_t>(1, 200)(rng));
    std::array<std::optional<uint32_t>, packet_section_count> explicit_budget{};
    for (size_t i = 0; i < packet_section_count; ++i)
      if (rng() % 3 == 0) explicit_budget[i] = r.section_budget[i] = std::uniform_int_distribution<uint32_t>(0, 60)(rng);
    for (auto& w : r.policy.weights) w = std::uniform_real_distribution<double>(-2, 5)(rng);
    auto s = assemble_packet(r, in);
    auto body = json::parse(s.body);
    uint64_t total = 0;
    std::map<std::string, uint64_t> per_section;
    std::set<std::string> seen;
    for (const auto& item : body["items"]) {
      total += item["tokens"].get<uint64_t>();
      per_section[item["section"]] += item["tokens"].get<uint64_t>();
      EXPECT_TRUE(seen.insert(name_of(item)).second) << name_of(item);
    }
    for (const auto& o : body["budget_report"]["omitted"]) EXPECT_TRUE(seen.insert(name_of(o)).second) << name_of(o);
    EXPECT_EQ(seen.size(), 20u);  // every candidate accounted for once
    // When tight, the summary (unit 10, of 1–9) and a recent or retrieved unit of
    // its span are never shown together.
    if (body["budget_report"]["tight"] == true && seen.contains("unit 10")) {
      bool summary_shown = false, raw_in_span = false;
      for (const auto& item : body["items"]) {
        if (item["kind"] != "unit") continue;
        const auto seq = item["seq"].get<uint64_t>();
        summary_shown |= seq == 10;
        raw_in_span |= seq < 10 && (item["section"] == "recent" || item["section"] == "retrieved");
      }
      EXPECT_FALSE(summary_shown && raw_in_span) << s.body;
    }
    EXPECT_LE(total, r.max_tokens) << s.body;
    EXPECT_EQ(body["budget_report"]["used_tokens"], total);
    for (size_t i = 0; i < packet_section_count; ++i)
      if (explicit_budget[i]) {
        EXPECT_LE(per_section[std::string(to_string(packet_section(i)))], *explicit_budget[i]);
      }
  }
}

}  // namespace
}  // namespace engram::engine

namespace engram::gateway {
namespace {

using model::json;

std::string error_of(const std::string& body) {
  auto r = parse_packet_body(json::parse(body), true);
  return r ? "" : r.error().message;
}

TEST(PacketParams, ReadsEveryField) {
  auto r = parse_packet_body(json::parse(R"({"purpose":"catch_up","query":{"text":"deploy","vector":[0.1,0.2]},
      "budget":{"max_tokens":8000,"sections":{"recent":3000,"facts":0}},
      "policy":{"recent_window":7,"types":["MESSAGE",3],"half_life_s":60,"weights":{"recency":2.5}},
      "as_of_seq":42,"since_seq":40,"now":"2026-12-01T00:00:00Z","format":"text"})"),
                             true);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->policy.name, "catch_up");  // the purpose names a policy
  EXPECT_EQ(r->policy.recent_window, 7u);
  EXPECT_EQ(r->policy.types, (std::vector<int>{1, 3}));
  EXPECT_EQ(r->policy.half_life_s, 60);
  EXPECT_EQ(r->policy.weights[size_t(engine::packet_signal::recency)], 2.5);
  EXPECT_EQ(r->query_text, "deploy");
  EXPECT_EQ(r->query_vector.size(), 2u);
  EXPECT_EQ(r->max_tokens, 8000u);
  EXPECT_EQ(r->section_budget[size_t(engine::packet_section::recent)], 3000u);
  EXPECT_EQ(r->section_budget[size_t(engine::packet_section::facts)], 0u);
  EXPECT_FALSE(r->section_budget[size_t(engine::packet_section::pinned)]);
  EXPECT_EQ(r->as_of_seq, 42u);
  EXPECT_EQ(r->since_seq, 40u);
  EXPECT_EQ(r->now_ns, 1'796'083'200'000'000'000);
  EXPECT_TRUE(r->text);
  auto plain = parse_packet_body(json::parse(R"({"purpose":"what did we decide?","query":"deploy"})"), true);
  ASSERT_TRUE(plain);
  EXPECT_EQ(plain->policy.name, "default");
  EXPECT_EQ(plain->query_text, "deploy");
  EXPECT_EQ(plain->max_tokens, 4000u);
  EXPECT_EQ(parse_packet_body(json::parse(R"({"policy":"answer"})"), true)->policy.name, "answer");
}

TEST(PacketParams, BadInputIsRefusedNamingTheField) {
  EXPECT_EQ(error_of(R"({"budget":{"max_tokens":-5}})"), "budget.max_tokens must be an integer from 1 to 1000000");
  EXPECT_EQ(error_of(R"({"budget":{"max_tokens":0}})"), "budget.max_tokens must be an integer from 1 to 1000000");
  EXPECT_EQ(error_of(R"({"budget":{"sections":{"recent":-1}}})"), "budget.sections.recent must be an integer from 0 to 1000000");
  EXPECT_EQ(error_of(R"({"budget":{"sections":{"recnt":10}}})"),
            "budget.sections.recnt: unknown section; the sections are pinned, facts, tasks, leases, checkpoint, "
            "summaries, retrieved, recent");
  EXPECT_EQ(error_of(R"({"policy":{"name":"fast"}})"),
            "policy.name: unknown policy 'fast'; the named policies are default, catch_up, answer, resume");
  EXPECT_EQ(error_of(R"({"policy":"fast"})"),
            "policy.name: unknown policy 'fast'; the named policies are default, catch_up, answer, resume");
  EXPECT_EQ(error_of(R"({"policy":{"weights":{"freshness":1}}})").substr(0, 41), "policy.weights.freshness: unknown signal;");
  EXPECT_EQ(error_of(R"({"policy":{"weights":{"recency":"high"}}})"), "policy.weights.recency must be a number from -1000 to 1000");
  EXPECT_EQ(error_of(R"({"policy":{"recent_window":5000}})"), "policy.recent_window must be an integer from 0 to 1000");
  EXPECT_EQ(error_of(R"({"policy":{"types":["NOTE"]}})").substr(0, 12), "policy.types");
  EXPECT_EQ(error_of(R"({"policy":{"half_life_s":0}})"), "policy.half_life_s must be a number of seconds above 0");
  EXPECT_TRUE(error_of(R"({"policy":{"windw":3}})").starts_with("unknown field 'windw' in policy"));
  EXPECT_EQ(error_of(R"({"budget":{"max_token":3}})"), "unknown field 'max_token' in budget; did you mean 'max_tokens'?");
  EXPECT_EQ(error_of(R"({"query":7})"), "query must be a string or an object {\"text\", \"vector\", \"model\"}");
  EXPECT_EQ(error_of(R"({"query":{"vector":[0,0]}})").substr(0, 12), "query.vector");
  EXPECT_EQ(error_of(R"({"format":"xml"})"), "format must be \"json\" or \"text\"");
  EXPECT_EQ(error_of(R"({"since_seq":"3"})").substr(0, 9), "since_seq");
  EXPECT_EQ(error_of(R"({"now":"yesterday"})").substr(0, 3), "now");
  EXPECT_EQ(error_of(R"({"purpose":3})"), "purpose must be a string of at most 1024 bytes");
}

}  // namespace
}  // namespace engram::gateway
