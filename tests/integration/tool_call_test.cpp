// The tool-call ledger against the real server: a call id once per context, at most
// one result per call, identical retries replayed, checks atomic with the append.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "support/test_support.hpp"

namespace engram::test {
namespace {

using namespace std::chrono_literals;

json tool_unit(const std::string& type, const std::string& call_id, const std::string& text) {
  return {{"context_id", "tc"}, {"agent_id", "a"}, {"type", type}, {"call_id", call_id}, {"text", text}};
}

TEST(ToolCalls, OneCallAndAtMostOneResultPerCallId) {
  temp_dir dir;
  test_server server(dir);
  auto http = server.connect();
  auto call = [&](const json& body) { return test::call(http, "POST", "/workunit", body.dump()); };

  auto first = call(tool_unit("TOOL_CALL", "c1", "search(zebra)"));
  ASSERT_EQ(first.status, 201u) << first.raw;
  EXPECT_EQ(first.body["work_unit"]["call_id"], "c1");
  const std::string call_unit = first.body["work_unit"]["id"];
  // An identical retry is the original; another call with the id is refused.
  auto retry = call(tool_unit("TOOL_CALL", "c1", "search(zebra)"));
  EXPECT_EQ(retry.status, 201u);
  EXPECT_EQ(retry.body["work_unit"]["id"], call_unit);
  auto other = call(tool_unit("TOOL_CALL", "c1", "search(horse)"));
  EXPECT_EQ(other.status, 409u);
  EXPECT_NE(other.body.value("error", "").find(call_unit), std::string::npos) << other.raw;
  // A result needs its call; call_id belongs to tool units only.
  auto orphan = call(tool_unit("TOOL_RESULT", "c2", "42"));
  EXPECT_EQ(orphan.status, 409u);
  EXPECT_NE(orphan.body.value("error", "").find("no tool call 'c2'"), std::string::npos) << orphan.raw;
  auto message = call(tool_unit("MESSAGE", "c1", "hi"));
  EXPECT_EQ(message.status, 400u);
  EXPECT_NE(message.body.value("error", "").find("call_id"), std::string::npos) << message.raw;

  auto pending = test::call(http, "GET", "/contexts/tc/tool-calls/c1");
  ASSERT_EQ(pending.status, 200u) << pending.raw;
  EXPECT_EQ(pending.body["status"], "pending");
  EXPECT_EQ(pending.body["call"]["id"], call_unit);
  EXPECT_TRUE(pending.body["result"].is_null());
  EXPECT_FALSE(pending.body.contains("claimed_by"));
  // Whoever runs it holds the lease call:<context>/<call_id> (README, Tool calls);
  // the same call id in another context is another lease.
  ASSERT_EQ(test::call(http, "POST", "/locks", R"({"resource_path":"call:other/c1","agent_id":"elsewhere"})").status, 200u);
  EXPECT_FALSE(test::call(http, "GET", "/contexts/tc/tool-calls/c1").body.contains("claimed_by"));
  ASSERT_EQ(test::call(http, "POST", "/locks", R"({"resource_path":"call:tc/c1","agent_id":"runner"})").status, 200u);
  EXPECT_EQ(test::call(http, "GET", "/contexts/tc/tool-calls/c1").body["claimed_by"], "runner");

  // Racing results: exactly one is stored; the others are told which.
  constexpr int racers = 8;
  std::vector<reply> answers(racers);
  std::vector<std::thread> threads;
  for (int i = 0; i < racers; ++i)
    threads.emplace_back([&, i] {
      auto c = server.connect();
      answers[i] = test::call(c, "POST", "/workunit", tool_unit("TOOL_RESULT", "c1", "answer " + std::to_string(i)).dump());
    });
  for (auto& t : threads) t.join();
  int won = -1;
  for (int i = 0; i < racers; ++i) {
    if (answers[i].status == 201u) {
      EXPECT_EQ(won, -1) << "two results stored";
      won = i;
    } else {
      EXPECT_EQ(answers[i].status, 409u) << answers[i].raw;
    }
  }
  ASSERT_NE(won, -1);
  const std::string result_unit = answers[won].body["work_unit"]["id"];
  for (int i = 0; i < racers; ++i) {
    if (i == won) continue;
    EXPECT_NE(answers[i].body.value("error", "").find(result_unit), std::string::npos) << answers[i].raw;
  }
  auto done = test::call(http, "GET", "/contexts/tc/tool-calls/c1");
  EXPECT_EQ(done.body["status"], "done");
  EXPECT_EQ(done.body["result"]["id"], result_unit);
  EXPECT_EQ(call(tool_unit("TOOL_RESULT", "c1", "answer " + std::to_string(won))).body["work_unit"]["id"], result_unit);

  // A batch may hold a call and its result; a batch with a used call id writes nothing.
  auto batch = test::call(http, "POST", "/workunits",
                          json({{"context_id", "tc"}, {"agent_id", "a"},
                                {"work_units", {{{"type", "TOOL_CALL"}, {"call_id", "c3"}, {"text", "x"}},
                                                {{"type", "TOOL_RESULT"}, {"call_id", "c3"}, {"text", "y"}}}}})
                              .dump());
  ASSERT_EQ(batch.status, 201u) << batch.raw;
  EXPECT_EQ(test::call(http, "GET", "/contexts/tc/tool-calls/c3").body["status"], "done");
  const uint64_t head = test::call(http, "GET", "/contexts/tc").body["context"]["head_seq"];
  auto refused = test::call(http, "POST", "/workunits",
                            json({{"context_id", "tc"}, {"agent_id", "a"},
                                  {"work_units", {{{"text", "fine"}}, {{"type", "TOOL_CALL"}, {"call_id", "c1"}, {"text", "z"}}}}})
                                .dump());
  EXPECT_EQ(refused.status, 409u) << refused.raw;
  EXPECT_EQ(test::call(http, "GET", "/contexts/tc").body["context"]["head_seq"], head);
  for (const char* twice : {R"([{"type":"TOOL_CALL","call_id":"d","text":"1"},{"type":"TOOL_CALL","call_id":"d","text":"2"}])",
                            R"([{"type":"TOOL_CALL","call_id":"e","text":"1"},{"type":"TOOL_RESULT","call_id":"e","text":"a"},
                                {"type":"TOOL_RESULT","call_id":"e","text":"b"}])"}) {
    auto r = test::call(http, "POST", "/workunits",
                        json({{"context_id", "tc"}, {"agent_id", "a"}, {"work_units", json::parse(twice)}}).dump());
    EXPECT_EQ(r.status, 409u) << r.raw;
    EXPECT_NE(r.body.value("error", "").find("twice in this request"), std::string::npos) << r.raw;
  }
  EXPECT_EQ(test::call(http, "GET", "/contexts/tc").body["context"]["head_seq"], head);
  EXPECT_EQ(test::call(http, "GET", "/contexts/tc/tool-calls/nope").status, 404u);
  EXPECT_EQ(test::call(http, "GET", "/contexts/elsewhere/tool-calls/c1").status, 404u);

  // The ledger is durable, and goes with its context.
  server.restart();
  http = server.connect();
  EXPECT_EQ(test::call(http, "GET", "/contexts/tc/tool-calls/c1").body["result"]["id"], result_unit);
  EXPECT_EQ(call(tool_unit("TOOL_RESULT", "c1", "late")).status, 409u);
  ASSERT_EQ(test::call(http, "DELETE", "/contexts/tc").status, 200u);
  EXPECT_EQ(test::call(http, "GET", "/contexts/tc/tool-calls/c1").status, 404u);
  EXPECT_EQ(call(tool_unit("TOOL_CALL", "c1", "again")).status, 201u);
}

TEST(ToolCalls, RetentionRemovesTheCallsItRemoves) {
  temp_dir dir;
  auto cfg = test_config(dir.str() + "/data");
  cfg.retention.interval = 50ms;
  test_server server(cfg);
  auto http = server.connect();
  ASSERT_EQ(call(http, "PATCH", "/contexts/tc", R"({"retention":{"max_events":2}})").status, 200u);
  ASSERT_EQ(call(http, "POST", "/workunit", tool_unit("TOOL_CALL", "old", "x").dump()).status, 201u);
  for (int i = 0; i < 3; ++i)
    ASSERT_EQ(call(http, "POST", "/workunit", R"({"context_id":"tc","agent_id":"a","text":"filler"})").status, 201u);
  ASSERT_TRUE(wait_until([&] { return call(http, "GET", "/contexts/tc/tool-calls/old").status == 404; }, 30s));
  // A late result for the removed call is refused.
  EXPECT_EQ(call(http, "POST", "/workunit", tool_unit("TOOL_RESULT", "old", "late").dump()).status, 409u);
}

}  // namespace
}  // namespace engram::test
