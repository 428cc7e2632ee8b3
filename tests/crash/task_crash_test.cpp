// Tasks under SIGKILL: agents create, claim, heartbeat with progress and complete
// tasks while the server is killed. After the restart every acknowledged transition
// is there (a completed task is done, a claimed one is still claimed by the same
// agent with the same token and its last acknowledged progress, or stranded), and a
// claim left behind by the kill strands on time and can be claimed again with a
// newer token and that progress.
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

struct acked {
  std::string holder;
  uint64_t fence = 0;
  int progress = 0;         // the last heartbeat acknowledged with this progress
  bool completing = false;  // a complete was sent (it may have committed unanswered)
  bool done = false;
};

TEST(TaskCrashTest, Sigkill_BetweenClaimAndComplete_KeepsClaimTokenAndProgress) {
  temp_dir dir;
  server_process proc(dir.str() + "/data", "sync", dir.str());
  proc.start();
  std::mutex mu;
  std::map<std::string, acked> tasks;  // what the server acknowledged
  std::atomic<int> steps{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> agents;
  for (int a = 0; a < 3; ++a)
    agents.emplace_back([&, a] {
      client::http_connection c("127.0.0.1", proc.port(), hang_guard);
      const std::string agent = "worker-" + std::to_string(a);
      for (int i = 0; !stop; ++i) {
        const std::string id = "job-" + std::to_string(a) + "-" + std::to_string(i);
        auto r = c.request("POST", "/contexts/jobs/tasks", json({{"task_id", id}, {"title", "job"}}).dump());
        if (!r || r->status != 201) return;
        r = c.request("POST", "/tasks/" + id + "/claim", json({{"agent_id", agent}, {"ttl_ms", 15'000}}).dump());
        if (!r || r->status != 200) return;
        const uint64_t fence = json::parse(r->body)["lock"]["fencing_token"];
        {
          std::lock_guard lock(mu);
          tasks[id] = acked{agent, fence, 0, false};
        }
        for (int p = 1; p <= 3 && !stop; ++p) {
          r = c.request("POST", "/agents/" + agent + "/heartbeat",
                        json({{"task_id", id}, {"progress", {{"step", p}}}}).dump());
          if (!r || r->status != 200) return;
          std::lock_guard lock(mu);
          tasks[id].progress = p;
        }
        // Every other task is left claimed, as if its worker died.
        if (i % 2 == 0) continue;
        {
          std::lock_guard lock(mu);
          tasks[id].completing = true;
        }
        r = c.request("POST", "/tasks/" + id + "/complete", json({{"agent_id", agent}, {"fence", fence}}).dump());
        if (!r || r->status != 200) return;
        std::lock_guard lock(mu);
        tasks[id].done = true;
        ++steps;
      }
    });
  ASSERT_TRUE(wait_until([&] { return steps >= 60; }, 120s));
  proc.kill9();
  stop = true;
  for (auto& t : agents) t.join();
  proc.restart();
  client::http_connection c("127.0.0.1", proc.port(), 30s);
  auto get = [&](const std::string& id) {
    auto r = c.request("GET", "/tasks/" + id);
    EXPECT_TRUE(r && r->status == 200) << id << ": " << (r ? r->body : r.error().message);
    return r && r->status == 200 ? json::parse(r->body)["task"] : json();
  };
  std::string left_claimed;
  for (const auto& [id, want] : tasks) {
    const auto t = get(id);
    if (want.done || (want.completing && t["status"] == "done")) {
      EXPECT_EQ(t["status"], "done") << id;
      continue;
    }
    // Claimed before the kill (and not completed by a complete whose answer the kill
    // lost): still claimed with the same token (or, if its ttl ran out meanwhile,
    // stranded), never open, with at least the acknowledged progress.
    if (t["status"] == "claimed") {
      EXPECT_EQ(t["holder_agent"], want.holder) << id;
      EXPECT_EQ(t["fencing_token"], want.fence) << id;
      left_claimed = id;
    } else {
      EXPECT_EQ(t["status"], "stranded") << id << ": " << t.dump();
      EXPECT_EQ(t["last_holder"], want.holder) << id;
    }
    if (want.progress) {
      EXPECT_GE(t["progress"]["step"].get<int>(), want.progress) << id;
    }
  }
  ASSERT_FALSE(left_claimed.empty()) << "no claim survived to strand after the restart";
  // Nobody heartbeats any more: the claims strand, and another agent resumes one.
  ASSERT_TRUE(wait_until([&] { return get(left_claimed)["status"] == "stranded"; }, 60s));
  const auto old = tasks[left_claimed];
  auto r = c.request("POST", "/tasks/" + left_claimed + "/claim", R"({"agent_id":"rescuer"})");
  ASSERT_TRUE(r && r->status == 200) << (r ? r->body : r.error().message);
  const auto claim = json::parse(r->body);
  EXPECT_GT(claim["lock"]["fencing_token"].get<uint64_t>(), old.fence);
  EXPECT_GE(claim["task"]["progress"]["step"].get<int>(), old.progress);
  EXPECT_EQ(claim["task"]["attempts"], 2);
  r = c.request("POST", "/tasks/" + left_claimed + "/complete",
                json({{"agent_id", old.holder}, {"fence", old.fence}}).dump());
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 409u) << r->body;
}

}  // namespace
}  // namespace engram::test
