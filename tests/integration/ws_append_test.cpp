// Appends over the WebSocket: the same request as POST /workunit(s) through the same
// route, acknowledged once committed, many in flight on one connection.
#include <gtest/gtest.h>

#include <map>
#include <set>

#include "engram/stream_connections.hpp"
#include "support/test_support.hpp"

namespace engram::test {
namespace {

using namespace std::chrono_literals;

// Reads messages until `want` answers (acks or errors) have arrived; by request_id.
std::map<std::string, json> answers(client::ws_connection& ws, size_t want) {
  std::map<std::string, json> out;
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  while (out.size() < want && std::chrono::steady_clock::now() < deadline) {
    auto m = ws.read(1s);
    if (!m) ADD_FAILURE() << m.error().message;
    if (!m || !*m) continue;
    auto j = json::parse(**m);
    if (!j["type"].is_string()) continue;  // a unit (integer type)
    const auto type = j["type"].get<std::string>();
    if (type == "append_ack" || type == "append_error") out[j.value("request_id", "")] = j;
  }
  return out;
}

TEST(WsAppend, AcksAfterCommitWithTheSameRulesAsRest) {
  temp_dir dir;
  test_server server(test_config(dir.str() + "/data"));
  auto http = server.connect();
  client::ws_connection ws;
  ASSERT_TRUE(ws.connect("127.0.0.1", server.port(), "/stream?context=wa"));

  ASSERT_TRUE(ws.send(R"({"type":"append","request_id":"one","work_unit":{"context_id":"wa","agent_id":"a","text":"hi"}})"));
  ASSERT_TRUE(ws.send(R"({"type":"append","request_id":"batch","context_id":"wa","agent_id":"a",
                          "work_units":[{"text":"x"},{"text":"y","type":"REASONING"}]})"));
  ASSERT_TRUE(ws.send(R"({"type":"append","request_id":"bad","work_unit":{"context_id":"wa","agent_id":"a","text":5}})"));
  ASSERT_TRUE(ws.send(R"({"type":"append","request_id":"neither"})"));
  ASSERT_TRUE(ws.send(R"({"type":"append","request_id":"typo","work_unit":{"context_id":"wa","agent_id":"a","txt":"x"}})"));
  ASSERT_TRUE(ws.send(R"({"type":"append","request_id":"fenced","work_unit":{"context_id":"wa","agent_id":"a","text":"f"},
                          "fence":{"resource":"nothing-held","token":3}})"));
  auto got = answers(ws, 6);
  ASSERT_EQ(got.size(), 6u);
  EXPECT_EQ(got["one"]["type"], "append_ack");
  EXPECT_EQ(got["one"]["work_unit"]["seq"], 1);
  const std::string id = got["one"]["work_unit"]["id"];
  EXPECT_EQ(call(http, "GET", "/workunit/" + id).status, 200u);  // acknowledged means stored
  EXPECT_EQ(got["batch"]["type"], "append_ack");
  EXPECT_EQ(got["batch"]["work_units"].size(), 2u);
  EXPECT_EQ(got["batch"]["work_units"][1]["seq"], 3);
  for (const char* bad : {"bad", "neither", "typo"}) {
    EXPECT_EQ(got[bad]["type"], "append_error") << bad;
    EXPECT_EQ(got[bad]["status"], 400) << got[bad].dump();
    EXPECT_FALSE(got[bad].value("error", "").empty()) << got[bad].dump();
  }
  EXPECT_NE(got["typo"]["error"].get<std::string>().find("'txt'"), std::string::npos) << got["typo"].dump();
  EXPECT_EQ(got["fenced"]["status"], 409) << got["fenced"].dump();

  // Idempotency: the same key twice stores once and answers the same unit.
  const std::string keyed =
      R"({"type":"append","request_id":"k","idempotency_key":"key-1","work_unit":{"context_id":"wa","agent_id":"a","text":"once"}})";
  ASSERT_TRUE(ws.send(keyed));
  auto first = answers(ws, 1)["k"];
  ASSERT_TRUE(ws.send(keyed));
  auto second = answers(ws, 1)["k"];
  EXPECT_EQ(first["work_unit"]["id"], second["work_unit"]["id"]);
  EXPECT_EQ(call(http, "GET", "/contexts/wa").body["context"]["head_seq"], 4);
}

// The same rate limit as REST; a refused append says when to retry.
TEST(WsAppend, RateLimitedAppendsSayWhenToRetry) {
  temp_dir dir;
  auto cfg = test_config(dir.str() + "/data");
  cfg.server.limits.writes = {1, 2};  // 1/s, burst 2
  test_server server(cfg);
  client::ws_connection ws;
  ASSERT_TRUE(ws.connect("127.0.0.1", server.port(), "/stream?context=rl"));
  for (int i = 0; i < 4; ++i)
    ASSERT_TRUE(ws.send(json({{"type", "append"}, {"request_id", "r" + std::to_string(i)},
                              {"work_unit", {{"context_id", "rl"}, {"agent_id", "a"}, {"text", "x"}}}})
                            .dump()));
  auto got = answers(ws, 4);
  ASSERT_EQ(got.size(), 4u);
  int refused = 0;
  for (const auto& [id, a] : got) {
    if (a["type"] != "append_error") continue;
    ++refused;
    EXPECT_EQ(a["status"], 429) << a.dump();
    ASSERT_TRUE(a.contains("retry_after_s")) << a.dump();
    EXPECT_GE(a["retry_after_s"].get<int>(), 1);
  }
  EXPECT_EQ(refused, 2);
}

// 300 appends sent without waiting, from one connection into three contexts: every
// one is acknowledged once, the acks carry distinct seqs that make each context's
// log gap-free, and the subscriber on the same socket receives every unit.
TEST(WsAppend, PipelinedAppendsAreEachAckedOnce) {
  temp_dir dir;
  test_server server(test_config(dir.str() + "/data"));
  auto http = server.connect();
  client::ws_connection ws;
  ASSERT_TRUE(ws.connect("127.0.0.1", server.port(), "/stream?context=pipe/*"));
  const int n = 300;
  for (int i = 0; i < n; ++i)
    ASSERT_TRUE(ws.send(json({{"type", "append"},
                              {"request_id", "r" + std::to_string(i)},
                              {"work_unit", {{"context_id", "pipe/" + std::to_string(i % 3)}, {"agent_id", "a"},
                                             {"text", std::to_string(i)}}}})
                            .dump()));
  std::map<std::string, json> acks;
  std::set<std::string> delivered;
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  while ((acks.size() < size_t(n) || delivered.size() < size_t(n)) && std::chrono::steady_clock::now() < deadline) {
    auto m = ws.read(1s);
    ASSERT_TRUE(m) << m.error().message;
    if (!*m) continue;
    auto j = json::parse(**m);
    if (j["type"].is_string() && j["type"] == "append_ack") {
      EXPECT_TRUE(acks.emplace(j["request_id"], j).second) << "acked twice: " << j.dump();
    } else if (j.contains("seq") && j.contains("id")) {
      delivered.insert(j["id"].get<std::string>());
    }
  }
  ASSERT_EQ(acks.size(), size_t(n));
  std::map<std::string, std::set<uint64_t>> seqs;
  for (const auto& [rid, ack] : acks) {
    EXPECT_TRUE(delivered.contains(ack["work_unit"]["id"].get<std::string>())) << rid;
    seqs[ack["work_unit"]["context_id"]].insert(ack["work_unit"]["seq"].get<uint64_t>());
  }
  for (const auto& [ctx, s] : seqs) {
    EXPECT_EQ(s.size(), size_t(n / 3)) << ctx;
    EXPECT_EQ(*s.begin(), 1u) << ctx;
    EXPECT_EQ(*s.rbegin(), uint64_t(n / 3)) << ctx;
  }
}

}  // namespace
}  // namespace engram::test
