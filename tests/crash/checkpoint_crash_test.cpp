// Checkpoints under SIGKILL: agents save new versions with compare-and-set while the
// server is killed; after a restart each agent's latest version is its last
// acknowledged one (or the one just after it, committed but not acknowledged), with
// that save's state, and saving goes on from there.
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

TEST(CheckpointCrashTest, Sigkill_DuringSaves_KeepsEveryAcknowledgedVersion) {
  temp_dir dir;
  server_process proc(dir.str() + "/data", "sync", dir.str());
  proc.start();
  {
    client::http_connection c("127.0.0.1", proc.port(), 30s);
    ASSERT_EQ(c.request("POST", "/workunit", R"({"context_id":"cp","agent_id":"a","text":"x"})")->status, 201u);
  }
  constexpr int agents = 4;
  std::mutex mu;
  std::map<int, uint64_t> acked;  // agent → last acknowledged version
  std::atomic<int> saves{0};
  auto agent = [&](int a) {
    client::http_connection c("127.0.0.1", proc.port(), hang_guard);
    const std::string path = "/contexts/cp/agents/agent-" + std::to_string(a) + "/checkpoint";
    uint64_t version = 0;
    for (;;) {
      const auto r = c.request("PUT", path, json({{"cursor_seq", 1}, {"state", {{"n", version + 1}}}}).dump(),
                               {{"If-Match", "\"" + std::to_string(version) + "\""}});
      if (!r) return;
      if (r->status != 200) return ADD_FAILURE() << r->status << " " << r->body;
      version = json::parse(r->body)["checkpoint"]["version"];
      std::lock_guard lock(mu);
      acked[a] = version;
      ++saves;
    }
  };
  std::vector<std::thread> threads;
  for (int a = 0; a < agents; ++a) threads.emplace_back(agent, a);
  ASSERT_TRUE(wait_until([&] { return saves >= 400; }, 120s));
  proc.kill9();
  for (auto& t : threads) t.join();
  proc.restart();
  client::http_connection c("127.0.0.1", proc.port(), 30s);
  for (const auto& [a, version] : acked) {
    const std::string path = "/contexts/cp/agents/agent-" + std::to_string(a) + "/checkpoint";
    auto r = c.request("GET", path);
    ASSERT_TRUE(r && r->status == 200) << a;
    const auto cp = json::parse(r->body)["checkpoint"];
    const uint64_t latest = cp["version"];
    EXPECT_TRUE(latest == version || latest == version + 1) << "agent " << a << ": acked " << version << ", latest " << latest;
    EXPECT_EQ(cp["state"], json({{"n", latest}}));
    auto next = c.request("PUT", path, R"({"cursor_seq":1,"state":{}})", {{"If-Match", std::to_string(latest)}});
    ASSERT_TRUE(next);
    EXPECT_EQ(next->status, 200u) << next->body;
  }
}

}  // namespace
}  // namespace engram::test
