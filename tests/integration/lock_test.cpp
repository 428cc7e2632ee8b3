// Leases over real HTTP against the real server.
#include <gtest/gtest.h>

#include <random>
#include <set>
#include <thread>

#include "engram/stream_connections.hpp"
#include "support/test_support.hpp"

namespace engram::test {
namespace {

using namespace std::chrono_literals;

class LockTest : public ::testing::Test {
 protected:
  void SetUp() override { start(); }
  void start(const std::function<void(config::config&)>& tweak = {}) {
    auto cfg = test_config(dir_.str() + "/data");
    if (tweak) tweak(cfg);
    server_ = std::make_unique<test_server>(cfg);
    http_ = std::make_unique<client::http_connection>(server_->connect());
  }
  reply acquire(client::http_connection& c, const json& body) { return call(c, "POST", "/locks", body.dump()); }
  reply acquire(const json& body) { return acquire(*http_, body); }
  reply release(const std::string& encoded_resource, const std::string& agent, const std::string& lock_id) {
    return call(*http_, "DELETE", "/locks/" + encoded_resource + "?agent_id=" + agent + "&lock_id=" + lock_id);
  }
  double metric(const std::string& name) { return test::metric(*http_, name); }

  temp_dir dir_;
  std::unique_ptr<test_server> server_;
  std::unique_ptr<client::http_connection> http_;
};

TEST_F(LockTest, V3AcquireConflictExtendGetRelease) {
  auto a = acquire({{"resource_path", "doc/plan.md"}, {"agent_id", "alice"}, {"ttl_seconds", 30}});
  ASSERT_EQ(a.status, 200u) << a.raw;
  const auto& l = a.body["lock"];
  EXPECT_EQ(l["resource_path"], "doc/plan.md");
  EXPECT_EQ(l["holder_agent"], "alice");
  EXPECT_TRUE(l["expires_at"]["seconds"].is_number_integer());
  EXPECT_GE(l["fencing_token"].get<uint64_t>(), 1u);
  const std::string id = l["lock_id"];

  auto b = acquire({{"resource_path", "doc/plan.md"}, {"agent_id", "bob"}});
  EXPECT_EQ(b.status, 409u);
  EXPECT_NE(b.body["error"].get<std::string>().find("is locked by agent 'alice' until "), std::string::npos) << b.raw;

  auto again = call(*http_, "POST", "/locks", json({{"resource_path", "doc/plan.md"}, {"ttl_seconds", 0}}).dump(),
                    {{"X-Agent-ID", "alice"}});
  ASSERT_EQ(again.status, 200u);
  EXPECT_EQ(again.body["lock"]["lock_id"], id);  // extended, same lease
  EXPECT_EQ(again.body["lock"]["fencing_token"], l["fencing_token"]);

  EXPECT_EQ(call(*http_, "GET", "/locks/doc/plan.md").body["lock"]["lock_id"], id);
  EXPECT_EQ(call(*http_, "GET", "/locks/missing").status, 404u);
  EXPECT_EQ(release("doc/plan.md", "bob", id).status, 400u);
  EXPECT_EQ(release("doc/plan.md", "alice", "wrong").status, 400u);
  auto ok = release("doc/plan.md", "alice", id);
  EXPECT_EQ(ok.status, 200u);
  EXPECT_EQ(ok.body, json({{"released", true}}));
  EXPECT_EQ(release("doc/plan.md", "alice", id).status, 404u);
  EXPECT_EQ(acquire({{"resource_path", "doc/plan.md"}, {"agent_id", "bob"}}).status, 200u);
}

TEST_F(LockTest, BadRequestsAre400) {
  for (const char* body : {R"({"resource_path":"","agent_id":"a"})", R"({"resource_path":"r"})",
                           R"({"agent_id":"a"})", R"({"resource_path":5,"agent_id":"a"})",
                           R"({"resource_paths":[],"agent_id":"a"})", R"({"resource_paths":[1],"agent_id":"a"})",
                           R"({"resource_path":"r","agent_id":"a","ttl_seconds":"x"})", "nope", "[]"}) {
    auto r = call(*http_, "POST", "/locks", body);
    EXPECT_EQ(r.status, 400u) << body << " " << r.raw;
  }
  EXPECT_EQ(acquire({{"resource_path", std::string(2000, 'r')}, {"agent_id", "a"}}).status, 400u);
  EXPECT_EQ(call(*http_, "POST", "/locks/x/renew", R"({"agent_id":"a"})").status, 400u);  // no lock_id
  EXPECT_EQ(call(*http_, "DELETE", "/locks/x?agent_id=a").status, 400u);
  EXPECT_EQ(call(*http_, "PUT", "/locks/x", "{}").status, 405u);
}

TEST_F(LockTest, EncodedAndRawPathsAddressTheSameLock) {
  auto a = acquire({{"resource_path", "repo/src/main.cpp"}, {"agent_id", "a"}});
  ASSERT_EQ(a.status, 200u);
  const std::string id = a.body["lock"]["lock_id"];
  EXPECT_EQ(call(*http_, "GET", "/locks/repo%2Fsrc%2Fmain.cpp").body["lock"]["lock_id"], id);
  EXPECT_EQ(call(*http_, "GET", "/locks/repo/src/main.cpp").body["lock"]["lock_id"], id);
  EXPECT_EQ(call(*http_, "POST", "/locks/repo%2Fsrc%2Fmain.cpp/renew", json({{"agent_id", "a"}, {"lock_id", id}}).dump()).status, 200u);
  EXPECT_EQ(release("repo%2Fsrc/main.cpp", "a", id).status, 200u);
  EXPECT_EQ(call(*http_, "GET", "/locks/repo/src/main.cpp").status, 404u);
}

TEST_F(LockTest, ThirtyTwoClientsRaceExactlyOneWins) {
  std::atomic<int> wins{0}, conflicts{0};
  std::vector<std::thread> ts;
  for (int i = 0; i < 32; ++i)
    ts.emplace_back([&, i] {
      auto c = server_->connect();
      auto r = acquire(c, {{"resource_path", "hot"}, {"agent_id", "agent-" + std::to_string(i)}});
      if (r.status == 200) ++wins;
      if (r.status == 409) ++conflicts;
    });
  for (auto& t : ts) t.join();
  EXPECT_EQ(wins, 1);
  EXPECT_EQ(conflicts, 31);
}

TEST_F(LockTest, WaitersAreServedOneAtATimeInFifoOrder) {
  auto first = acquire({{"resource_path", "q"}, {"agent_id", "holder"}});
  ASSERT_EQ(first.status, 200u);
  constexpr int waiters = 8;
  std::vector<std::thread> ts;
  std::mutex mu;
  std::vector<std::pair<std::string, std::string>> granted;  // agent, lock_id, in grant order
  for (int i = 0; i < waiters; ++i) {
    ts.emplace_back([&, i] {
      auto c = server_->connect();
      auto r = acquire(c, {{"resource_path", "q"}, {"agent_id", "w" + std::to_string(i)}, {"wait_ms", 20000}});
      ASSERT_EQ(r.status, 200u) << r.raw;
      std::lock_guard lock(mu);
      granted.emplace_back(r.body["lock"]["holder_agent"], r.body["lock"]["lock_id"]);
    });
    // Queue strictly one after another.
    ASSERT_TRUE(wait_until([&] { return metric("engram_locks_waiting") == i + 1; }));
  }
  std::string holder = "holder", id = first.body["lock"]["lock_id"];
  for (int i = 0; i < waiters; ++i) {
    ASSERT_EQ(release("q", holder, id).status, 200u);
    ASSERT_TRUE(wait_until([&] {
      std::lock_guard lock(mu);
      return granted.size() == size_t(i + 1);
    }));
    std::lock_guard lock(mu);
    EXPECT_EQ(granted[i].first, "w" + std::to_string(i));  // FIFO
    holder = granted[i].first;
    id = granted[i].second;
    EXPECT_EQ(metric("engram_locks_waiting"), waiters - i - 1);  // exactly one got it
  }
  for (auto& t : ts) t.join();
}

TEST_F(LockTest, RandomMultiResourceWorkloadsNeverOverlapNorDeadlock) {
  constexpr int threads = 8, rounds = 25, resources = 6;
  std::array<std::atomic<int>, resources> holders{};
  std::atomic<int> overlaps{0}, done{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&, t] {
      std::mt19937 rng(t);
      auto c = server_->connect();
      for (int r = 0; r < rounds; ++r) {
        std::vector<int> set;
        for (int k = 0; k < resources; ++k)
          if (rng() % 3 == 0) set.push_back(k);
        if (set.empty()) set.push_back(int(rng() % resources));
        std::shuffle(set.begin(), set.end(), rng);  // the server orders them canonically
        json paths = json::array();
        for (int k : set) paths.push_back("res-" + std::to_string(k));
        const std::string agent = "t" + std::to_string(t);
        auto g = acquire(c, {{"resource_paths", paths}, {"agent_id", agent}, {"wait_ms", 20000}});
        ASSERT_EQ(g.status, 200u) << g.raw;
        // While held: nobody else holds any of them, here or according to the server.
        for (int k : set)
          if (holders[k].fetch_add(1) != 0) ++overlaps;
        for (int k : set)
          EXPECT_EQ(call(c, "GET", "/locks/res-" + std::to_string(k)).body["lock"]["holder_agent"], agent);
        for (int k : set) holders[k].fetch_sub(1);  // before releasing: a successor may follow at once
        for (const auto& l : g.body["locks"])
          ASSERT_EQ(call(c, "DELETE", "/locks/" + l["resource_path"].get<std::string>() + "?agent_id=" + agent +
                                          "&lock_id=" + l["lock_id"].get<std::string>()).status, 200u);
      }
      ++done;
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(done, threads);
  EXPECT_EQ(overlaps, 0);
  EXPECT_EQ(call(*http_, "GET", "/locks").body["locks"].size(), 0u);
}

// Lease timing itself runs on a manual clock in unit/lock_manager_test.cpp; this is
// the same over HTTP on real time, with margins wide enough that only the outcome,
// never a pause, is observed.
TEST_F(LockTest, ExpiryRenewalAndHandOverToAWaiter) {
  auto a = acquire({{"resource_path", "short"}, {"agent_id", "a"}, {"ttl_ms", 60000}});
  ASSERT_EQ(a.status, 200u);
  const std::string id = a.body["lock"]["lock_id"];
  // Renewing with a short TTL: the holder then stops renewing.
  auto r = call(*http_, "POST", "/locks/short/renew", json({{"agent_id", "a"}, {"lock_id", id}, {"ttl_ms", 200}}).dump());
  ASSERT_EQ(r.status, 200u) << r.raw;
  EXPECT_EQ(r.body["lock"]["lock_id"], id);
  // A waiter gets it when the lease expires.
  auto w = acquire({{"resource_path", "short"}, {"agent_id", "b"}, {"wait_ms", 10000}});
  ASSERT_EQ(w.status, 200u) << w.raw;
  EXPECT_EQ(w.body["lock"]["holder_agent"], "b");
  EXPECT_GT(w.body["lock"]["fencing_token"].get<uint64_t>(), a.body["lock"]["fencing_token"].get<uint64_t>());
  // The old holder learns it lost the lease.
  auto late = call(*http_, "POST", "/locks/short/renew", json({{"agent_id", "a"}, {"lock_id", id}}).dump());
  EXPECT_EQ(late.status, 409u);
  // And a lease nobody renews disappears by itself (timer, not only lazily).
  ASSERT_EQ(acquire({{"resource_path", "gone"}, {"agent_id", "c"}, {"ttl_ms", 200}}).status, 200u);
  EXPECT_TRUE(wait_until([&] { return metric("engram_locks_expiries_total") >= 2; }, 10s));
  EXPECT_EQ(call(*http_, "GET", "/locks/gone").status, 404u);
  // A waiter that runs out of time gets 409.
  ASSERT_EQ(acquire({{"resource_path", "held"}, {"agent_id", "x"}, {"ttl_seconds", 60}}).status, 200u);
  auto timeout = acquire({{"resource_path", "held"}, {"agent_id", "y"}, {"wait_ms", 200}});
  EXPECT_EQ(timeout.status, 409u);
  EXPECT_NE(timeout.body["error"].get<std::string>().find("timed out waiting"), std::string::npos);
}

TEST_F(LockTest, StaleFencingTokensAreRejected) {
  auto a = acquire({{"resource_path", "file"}, {"agent_id", "a"}});
  ASSERT_EQ(a.status, 200u);
  const uint64_t t1 = a.body["lock"]["fencing_token"];
  auto fenced = [&](uint64_t token) {
    return call(*http_, "POST", "/workunit",
                json({{"context_id", "work"}, {"agent_id", "a"}, {"text", "edit"},
                      {"fence", {{"resource", "file"}, {"token", token}}}}).dump());
  };
  EXPECT_EQ(fenced(t1).status, 201u);
  ASSERT_EQ(release("file", "a", a.body["lock"]["lock_id"]).status, 200u);
  auto b = acquire({{"resource_path", "file"}, {"agent_id", "b"}});
  const uint64_t t2 = b.body["lock"]["fencing_token"];
  EXPECT_GT(t2, t1);
  auto stale = fenced(t1);
  EXPECT_EQ(stale.status, 409u);
  EXPECT_NE(stale.body["error"].get<std::string>().find("stale fencing token"), std::string::npos) << stale.raw;
  EXPECT_EQ(fenced(t2).status, 201u);
  // Batches are fenced all or nothing.
  auto batch = call(*http_, "POST", "/workunits",
                    json({{"context_id", "work"}, {"agent_id", "a"}, {"fence", {{"resource", "file"}, {"token", t1}}},
                          {"work_units", {{{"text", "1"}}, {{"text", "2"}}}}}).dump());
  EXPECT_EQ(batch.status, 409u);
  EXPECT_EQ(call(*http_, "GET", "/workunits/work").body["work_units"].size(), 2u);
  EXPECT_EQ(call(*http_, "POST", "/workunit",
                 json({{"context_id", "w"}, {"agent_id", "a"}, {"fence", {{"resource", "file"}}}}).dump()).status, 400u);
}

TEST_F(LockTest, TransitionsEnterTheContextLogAndReachStarSubscribers) {
  client::sse_connection all;
  ASSERT_TRUE(all.connect("127.0.0.1", server_->port(), "/stream-sse?context=*"));
  ASSERT_TRUE(all.next(5s).value_or(std::nullopt));  // subscribed
  auto a = acquire({{"resource_path", "r"}, {"agent_id", "a"}, {"context_id", "team"}});
  ASSERT_EQ(a.status, 200u);
  ASSERT_EQ(release("r", "a", a.body["lock"]["lock_id"]).status, 200u);
  std::vector<std::string> kinds;
  while (kinds.size() < 2) {
    auto ev = all.next(5s);
    ASSERT_TRUE(ev && *ev);
    kinds.push_back((*ev)->event);
    EXPECT_EQ(json::parse((*ev)->data)["lock"]["resource_path"], "r");
  }
  EXPECT_EQ(kinds, (std::vector<std::string>{"lock_acquired", "lock_released"}));
  auto ctx = call(*http_, "GET", "/contexts/team");
  EXPECT_EQ(ctx.body["context"]["head_seq"], 2);  // both transitions are in the log
  // A lease without a context: its transitions go to the reserved _locks context.
  ASSERT_EQ(acquire({{"resource_path", "free"}, {"agent_id", "b"}}).status, 200u);
  auto ev = all.next(5s);
  ASSERT_TRUE(ev && *ev);
  EXPECT_EQ((*ev)->event, "lock_acquired");
  EXPECT_EQ(json::parse((*ev)->data)["context_id"], "_locks");
}

TEST_F(LockTest, PerAgentLimit) {
  server_.reset();
  start([](config::config& c) { c.locks.max_locks_per_agent = 2; });
  EXPECT_EQ(acquire({{"resource_path", "1"}, {"agent_id", "a"}}).status, 200u);
  EXPECT_EQ(acquire({{"resource_path", "2"}, {"agent_id", "a"}}).status, 200u);
  EXPECT_EQ(acquire({{"resource_path", "3"}, {"agent_id", "a"}}).status, 409u);
  EXPECT_EQ(acquire({{"resource_path", "3"}, {"agent_id", "b"}}).status, 200u);
}

}  // namespace
}  // namespace engram::test
