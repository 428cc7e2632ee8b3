// Presence under SIGKILL: agents heartbeat into contexts while the server is killed.
// After the restart every agent whose join was acknowledged is present, and each
// context's log alternates joined/left per agent (never two joins in a row); silent
// agents then leave by timeout.
#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <thread>

#include "support/server_process.hpp"
#include "support/test_support.hpp"

namespace engram::test {
namespace {

using namespace std::chrono_literals;

TEST(PresenceCrashTest, Sigkill_DuringHeartbeats_NeitherLosesNorInventsPresence) {
  temp_dir dir;
  server_process proc(dir.str() + "/data", "sync", dir.str(), {"--set", "presence.ttl_ms=1000"});
  proc.start();
  std::atomic<int> beats{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> agents;
  for (int a = 0; a < 4; ++a)
    agents.emplace_back([&, a] {
      client::http_connection c("127.0.0.1", proc.port(), hang_guard);
      for (int i = 0; !stop; ++i) {
        // Agents 0-1 beat steadily; 2-3 hop between contexts, joining new ones.
        const std::string ctx = a < 2 ? "room/0" : "room/" + std::to_string(1 + i % 20);
        auto r = c.request("POST", "/agents/agent-" + std::to_string(a) + "/heartbeat", json({{"contexts", {ctx}}}).dump());
        if (!r) return;
        if (r->status != 200) return ADD_FAILURE() << r->body;
        ++beats;
      }
    });
  ASSERT_TRUE(wait_until([&] { return beats >= 300; }, 60s));
  proc.kill9();
  stop = true;
  for (auto& t : agents) t.join();
  proc.restart();
  client::http_connection c("127.0.0.1", proc.port(), 30s);
  auto present = [&](const std::string& ctx) {
    std::vector<std::string> out;
    auto r = c.request("GET", "/contexts/" + ctx + "/presence");
    EXPECT_TRUE(r && r->status == 200) << (r ? r->body : r.error().message);
    if (!r || r->status != 200) return out;
    const auto body = json::parse(r->body);
    for (const auto& a : body["agents"]) out.push_back(a["agent_id"]);
    return out;
  };
  EXPECT_EQ(present("room/0"), (std::vector<std::string>{"agent-0", "agent-1"})) << proc.log_text().substr(0, 3000);
  auto check_log = [&](const std::string& ctx) {
    std::map<std::string, bool> in;
    auto r = c.request("GET", "/contexts/" + ctx + "/events?limit=1000");
    if (!r || r->status != 200) return;  // never joined
    const auto body = json::parse(r->body);
    ASSERT_FALSE(body["events"].empty());
    for (const auto& e : body["events"]) {
      const bool join = e["type"] == "agent_joined";
      if (!join && e["type"] != "agent_left") continue;
      EXPECT_NE(in[e["agent_id"]], join) << ctx << " seq " << e["seq"] << ": " << e.dump();
      in[e["agent_id"]] = join;
    }
  };
  for (int k = 0; k <= 20; ++k) check_log("room/" + std::to_string(k));
  // Nobody beats any more: everyone leaves by timeout, and the logs stay well-formed.
  ASSERT_TRUE(wait_until([&] {
    for (int k = 0; k <= 20; ++k)
      if (!present("room/" + std::to_string(k)).empty()) return false;
    return true;
  }, 30s));
  for (int k = 0; k <= 20; ++k) check_log("room/" + std::to_string(k));
}

}  // namespace
}  // namespace engram::test
