// The tool-call ledger under SIGKILL: workers record calls, results and duplicate
// results (refused); after a kill and restart every acknowledged call and result is in the
// ledger, and no call has two calls or two results in the log.
#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <mutex>
#include <thread>

#include "support/server_process.hpp"
#include "support/test_support.hpp"

namespace engram::test {
namespace {

using namespace std::chrono_literals;

TEST(ToolCallCrashTest, Sigkill_WithDuplicateResults_KeepsOneResultPerCall) {
  temp_dir dir;
  server_process proc(dir.str() + "/data", "sync", dir.str());
  proc.start();
  std::mutex mu;
  std::map<std::string, std::string> calls, results;  // acknowledged: call id → unit id
  std::atomic<int> acked{0};
  auto worker = [&](int w) {
    client::http_connection c("127.0.0.1", proc.port(), hang_guard);
    for (int i = 0;; ++i) {
      const std::string id = "w" + std::to_string(w) + "-" + std::to_string(i);
      auto r = c.request("POST", "/workunit",
                         json({{"context_id", "ledger"}, {"agent_id", "a"}, {"type", "TOOL_CALL"}, {"call_id", id}, {"text", "run"}}).dump());
      if (!r) return;
      if (r->status != 201) return ADD_FAILURE() << r->body;
      {
        std::lock_guard lock(mu);
        calls[id] = json::parse(r->body)["work_unit"]["id"];
      }
      for (int k = 0; k < 2; ++k) {  // the second is a duplicate: refused
        auto res = c.request("POST", "/workunit",
                             json({{"context_id", "ledger"}, {"agent_id", "a"}, {"type", "TOOL_RESULT"}, {"call_id", id},
                                   {"text", "result " + std::to_string(k)}}).dump());
        if (!res) return;
        if (k == 0 && res->status == 201) {
          std::lock_guard lock(mu);
          results[id] = json::parse(res->body)["work_unit"]["id"];
        } else if (k == 1) {
          EXPECT_EQ(res->status, 409u) << res->body;
        } else {
          return ADD_FAILURE() << res->status << " " << res->body;
        }
      }
      ++acked;
    }
  };
  for (int round = 0; round < 2; ++round) {
    std::vector<std::thread> workers;
    for (int w = 0; w < 4; ++w) workers.emplace_back(worker, round * 10 + w);
    ASSERT_TRUE(wait_until([&] { return acked >= 200 * (round + 1); }, 120s));
    proc.kill9();
    for (auto& t : workers) t.join();
    proc.restart();
    client::http_connection c("127.0.0.1", proc.port(), 30s);
    std::lock_guard lock(mu);
    for (const auto& [id, unit] : calls) {
      auto r = c.request("GET", "/contexts/ledger/tool-calls/" + id);
      ASSERT_TRUE(r && r->status == 200) << id;
      auto body = json::parse(r->body);
      EXPECT_EQ(body["call"]["id"], unit);
      if (auto it = results.find(id); it != results.end()) {
        EXPECT_EQ(body["result"]["id"], it->second) << id;
      }
    }
    // The log itself: one call and at most one result per call id.
    std::map<std::string, int> seen_calls, seen_results;
    for (uint64_t after = 0;;) {
      auto r = c.request("GET", "/contexts/ledger/events?limit=1000&after_seq=" + std::to_string(after));
      ASSERT_TRUE(r && r->status == 200);
      auto body = json::parse(r->body);
      for (const auto& e : body["events"]) {
        if (e.contains("call_id")) ++(e["type"] == 3 ? seen_calls : seen_results)[e["call_id"]];
      }
      after = body["next_after_seq"];
      if (!body["more"].get<bool>()) break;
    }
    for (const auto& [id, n] : seen_calls) EXPECT_EQ(n, 1) << id;
    for (const auto& [id, n] : seen_results) EXPECT_EQ(n, 1) << id;
    EXPECT_GE(seen_calls.size(), calls.size());
  }
}

}  // namespace
}  // namespace engram::test
