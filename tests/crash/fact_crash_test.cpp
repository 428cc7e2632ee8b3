// Facts under SIGKILL: agents keep setting and retracting keys while the server is
// killed. After the restart each key's active value is the last acknowledged change
// (or the one change in flight at the kill, which may have committed unanswered),
// every version but the active one was ended (by the next set, or retracted before
// it), and the log holds one fact event per stored change. A packet taken mid-run
// at an as_of_seq is the same bytes after the kill and restart.
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

struct key_state {
  std::optional<int> acked;      // the last value acknowledged (nullopt: retracted or never set)
  std::optional<int> in_flight;  // a set sent without an answer (-1: a retract)
};

TEST(FactCrashTest, Sigkill_WhileFactsChange_KeepsEveryAcknowledgedVersion) {
  temp_dir dir;
  server_process proc(dir.str() + "/data", "sync", dir.str());
  proc.start();
  std::mutex mu;
  std::map<std::string, key_state> keys;
  std::atomic<int> steps{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> agents;
  for (int a = 0; a < 3; ++a)
    agents.emplace_back([&, a] {
      client::http_connection c("127.0.0.1", proc.port(), hang_guard);
      for (int i = 1; !stop; ++i) {
        const std::string key = "agent" + std::to_string(a) + ".k" + std::to_string(i % 4);
        const bool retract = i % 7 == 0;
        {
          std::lock_guard lock(mu);
          if (retract && !keys[key].acked) continue;  // nothing to retract
          keys[key].in_flight = retract ? -1 : i;
        }
        auto r = retract ? c.request("DELETE", "/contexts/facts/facts/" + key)
                         : c.request("PUT", "/contexts/facts/facts/" + key,
                                     json({{"agent_id", "a" + std::to_string(a)}, {"value", i}}).dump());
        if (!r || r->status != 200) return;
        std::lock_guard lock(mu);
        keys[key].acked = retract ? std::nullopt : std::optional<int>(i);
        keys[key].in_flight.reset();
        ++steps;
      }
    });
  ASSERT_TRUE(wait_until([&] { return steps >= 75; }, 120s));
  // Mid-run: a packet pinned at the head then (acknowledged history only).
  client::http_connection pc("127.0.0.1", proc.port(), hang_guard);
  const json ask{{"agent_id", "a1"}, {"now", "2026-12-01T12:00:00Z"}, {"budget", {{"max_tokens", 300}}}};
  auto mid = pc.request("POST", "/contexts/facts/packet", ask.dump());
  ASSERT_TRUE(mid && mid->status == 200) << (mid ? mid->body : mid.error().message);
  json pinned = ask;
  pinned["as_of_seq"] = json::parse(mid->body)["meta"]["as_of_seq"];
  ASSERT_TRUE(wait_until([&] { return steps >= 150; }, 120s));
  proc.kill9();
  stop = true;
  for (auto& t : agents) t.join();
  proc.restart();
  client::http_connection c("127.0.0.1", proc.port(), 30s);
  auto again = c.request("POST", "/contexts/facts/packet", pinned.dump());
  ASSERT_TRUE(again && again->status == 200);
  EXPECT_EQ(again->body, mid->body);
  for (const auto& [key, want] : keys) {
    auto r = c.request("GET", "/contexts/facts/facts/" + key + "?include_superseded=true");
    ASSERT_TRUE(r && r->status == 200) << key;
    const auto versions = json::parse(r->body)["versions"];
    std::optional<int> active;
    for (size_t i = 0; i < versions.size(); ++i) {
      const auto& v = versions[i];
      if (i + 1 < versions.size()) {  // every older version was ended: by the next, or retracted before it
        const uint64_t ended = v["superseded_at_seq"], next = versions[i + 1]["set_at_seq"];
        if (v["ended_by"] == "superseded") EXPECT_EQ(ended, next) << key << ": " << versions.dump();
        else EXPECT_LT(ended, next) << key << ": " << versions.dump();
      } else if (!v.contains("superseded_at_seq")) {
        active = v["value"].get<int>();
      } else {
        EXPECT_EQ(v["ended_by"], "retracted") << key;
      }
    }
    if (active == want.acked) continue;
    // Only the change in flight at the kill may differ from the last acknowledged.
    ASSERT_TRUE(want.in_flight.has_value()) << key << ": stored " << versions.dump();
    if (*want.in_flight == -1) EXPECT_FALSE(active) << key;
    else EXPECT_EQ(active, want.in_flight) << key;
  }
  // The log has an event per change, the set/retract kinds matching the versions.
  auto r = c.request("GET", "/contexts/facts/events?limit=1000");
  ASSERT_TRUE(r && r->status == 200);
  size_t sets = 0, retracts = 0;
  const auto log = json::parse(r->body);
  for (const auto& ev : log["events"]) {
    if (ev["type"] == "fact_set") ++sets;
    if (ev["type"] == "fact_retracted") ++retracts;
  }
  size_t versions = 0, retracted = 0;
  for (const auto& [key, want] : keys) {
    auto v = json::parse(c.request("GET", "/contexts/facts/facts/" + key + "?include_superseded=true")->body)["versions"];
    versions += v.size();
    for (const auto& x : v) retracted += x.value("ended_by", "") == "retracted";
  }
  EXPECT_EQ(sets, versions);
  EXPECT_EQ(retracts, retracted);
  EXPECT_GE(sets, 100u);
}

}  // namespace
}  // namespace engram::test
