// Tasks against the real server: create, claim through the task:<id> lease, renew
// by heartbeat with progress, complete or fail with the fencing token, stranding
// when a claim expires, dependencies, and racing claimers.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "support/test_support.hpp"

namespace engram::test {
namespace {

using namespace std::chrono_literals;

std::vector<json> task_events(client::http_connection& http, const std::string& ctx) {
  std::vector<json> out;
  const auto r = call(http, "GET", "/contexts/" + ctx + "/events?limit=1000");
  EXPECT_EQ(r.status, 200u) << r.raw;
  for (const auto& e : r.body["events"])
    if (e["type"].is_string() && e["type"].get<std::string>().starts_with("task_")) out.push_back(e);
  return out;
}

json task(client::http_connection& http, const std::string& id) {
  const auto r = call(http, "GET", "/tasks/" + id);
  EXPECT_EQ(r.status, 200u) << r.raw;
  return r.body["task"];
}

TEST(Tasks, CreateClaimCompleteWithFencing) {
  temp_dir dir;
  test_server server(test_config(dir.str() + "/data"));
  auto http = server.connect();
  auto created = call(http, "POST", "/contexts/build/tasks",
                      R"({"task_id":"compile","title":"Compile the tree","spec":{"target":"all"},"agent_id":"lead"})");
  ASSERT_EQ(created.status, 201u) << created.raw;
  EXPECT_EQ(created.body["task"]["status"], "open");
  EXPECT_EQ(created.body["task"]["spec"]["target"], "all");
  EXPECT_EQ(created.body["task"]["created_by"], "lead");
  EXPECT_EQ(call(http, "POST", "/contexts/build/tasks", R"({"task_id":"compile","title":"again"})").status, 409u);

  auto claim = call(http, "POST", "/tasks/compile/claim", R"({"agent_id":"w1","ttl_seconds":30})");
  ASSERT_EQ(claim.status, 200u) << claim.raw;
  EXPECT_EQ(claim.body["task"]["status"], "claimed");
  EXPECT_EQ(claim.body["task"]["holder_agent"], "w1");
  EXPECT_EQ(claim.body["task"]["attempts"], 1);
  EXPECT_EQ(claim.body["lock"]["resource_path"], "task:compile");
  const uint64_t fence = claim.body["lock"]["fencing_token"];
  EXPECT_EQ(claim.body["task"]["fencing_token"], fence);

  // Held: another agent is refused with the holder named.
  auto other = call(http, "POST", "/tasks/compile/claim", R"({"agent_id":"w2"})");
  EXPECT_EQ(other.status, 409u);
  EXPECT_NE(other.body["error"].get<std::string>().find("'w1'"), std::string::npos) << other.raw;
  // The task's lease is taken only through the task.
  auto direct = call(http, "POST", "/locks", R"({"resource_path":"task:compile","agent_id":"w2"})");
  EXPECT_EQ(direct.status, 400u);
  EXPECT_NE(direct.body["error"].get<std::string>().find("POST /tasks/compile/claim"), std::string::npos) << direct.raw;
  // The holder claiming again keeps its token.
  auto again = call(http, "POST", "/tasks/compile/claim", R"({"agent_id":"w1"})");
  ASSERT_EQ(again.status, 200u) << again.raw;
  EXPECT_EQ(again.body["lock"]["fencing_token"], fence);

  // Writes fenced by the claim's token are accepted while it is held.
  auto fenced = call(http, "POST", "/workunit",
                     json({{"context_id", "build"}, {"agent_id", "w1"}, {"type", "TASK_STATUS"}, {"text", "compiling"},
                           {"fence", {{"resource", "task:compile"}, {"token", fence}}}})
                         .dump());
  EXPECT_EQ(fenced.status, 201u) << fenced.raw;

  // Only the holder with the current token ends it.
  auto stale = call(http, "POST", "/tasks/compile/complete", json({{"agent_id", "w1"}, {"fence", fence + 7}}).dump());
  EXPECT_EQ(stale.status, 409u);
  EXPECT_NE(stale.body["error"].get<std::string>().find("stale fencing token"), std::string::npos) << stale.raw;
  EXPECT_EQ(call(http, "POST", "/tasks/compile/complete", json({{"agent_id", "w2"}, {"fence", fence}}).dump()).status,
            409u);
  auto done = call(http, "POST", "/tasks/compile/complete",
                   json({{"agent_id", "w1"}, {"fence", fence}, {"result", {{"artifacts", 3}}}}).dump());
  ASSERT_EQ(done.status, 200u) << done.raw;
  EXPECT_EQ(done.body["task"]["status"], "done");
  EXPECT_EQ(done.body["task"]["result"]["artifacts"], 3);
  EXPECT_EQ(done.body["task"]["last_holder"], "w1");
  EXPECT_FALSE(done.body["task"].contains("holder_agent"));
  EXPECT_EQ(call(http, "GET", "/locks/task:compile").status, 404u);  // the lease went with it
  // Done is final.
  EXPECT_EQ(call(http, "POST", "/tasks/compile/claim", R"({"agent_id":"w2"})").status, 409u);
  EXPECT_EQ(call(http, "POST", "/tasks/compile/complete", json({{"agent_id", "w1"}, {"fence", fence}}).dump()).status,
            409u);
  // A fenced write with the ended claim's token is refused.
  fenced = call(http, "POST", "/workunit",
                json({{"context_id", "build"}, {"agent_id", "w1"}, {"type", "TASK_STATUS"}, {"text", "late"},
                      {"fence", {{"resource", "task:compile"}, {"token", fence}}}})
                    .dump());
  EXPECT_EQ(fenced.status, 409u) << fenced.raw;

  // Every transition is an event of the context's log, in order.
  auto events = task_events(http, "build");
  std::vector<std::string> kinds;
  for (const auto& e : events) kinds.push_back(e["type"]);
  EXPECT_EQ(kinds, (std::vector<std::string>{"task_created", "task_claimed", "task_completed"}));
  EXPECT_EQ(events[2]["task"]["status"], "done");

  // Listing with a status filter.
  ASSERT_EQ(call(http, "POST", "/contexts/build/tasks", R"({"task_id":"test","title":"Run the tests"})").status, 201u);
  auto open = call(http, "GET", "/contexts/build/tasks?status=open");
  ASSERT_EQ(open.body["tasks"].size(), 1u) << open.raw;
  EXPECT_EQ(open.body["tasks"][0]["task_id"], "test");
  EXPECT_EQ(call(http, "GET", "/contexts/build/tasks").body["tasks"].size(), 2u);
  EXPECT_EQ(call(http, "GET", "/contexts/build/tasks?status=done").body["tasks"][0]["task_id"], "compile");
  // An id is made when none is given.
  auto anon = call(http, "POST", "/contexts/build/tasks", R"({"title":"Anything"})");
  ASSERT_EQ(anon.status, 201u);
  EXPECT_EQ(anon.body["task"]["task_id"].get<std::string>().size(), 36u);
}

TEST(Tasks, DependenciesFailureAndRelease) {
  temp_dir dir;
  test_server server(test_config(dir.str() + "/data"));
  auto http = server.connect();
  ASSERT_EQ(call(http, "POST", "/contexts/d/tasks", R"({"task_id":"a","title":"A"})").status, 201u);
  ASSERT_EQ(call(http, "POST", "/contexts/d/tasks", R"({"task_id":"b","title":"B","depends_on":["a"]})").status, 201u);
  EXPECT_EQ(call(http, "POST", "/contexts/d/tasks", R"({"task_id":"c","title":"C","depends_on":["nope"]})").status,
            400u);
  auto blocked = call(http, "POST", "/tasks/b/claim", R"({"agent_id":"w"})");
  EXPECT_EQ(blocked.status, 409u);
  EXPECT_NE(blocked.body["error"].get<std::string>().find("'a', which is open"), std::string::npos) << blocked.raw;

  // Released without ending (DELETE on its lease): open again.
  auto claim = call(http, "POST", "/tasks/a/claim", R"({"agent_id":"w"})");
  ASSERT_EQ(claim.status, 200u) << claim.raw;
  const std::string lock_id = claim.body["lock"]["lock_id"];
  ASSERT_EQ(call(http, "DELETE", "/locks/task:a?agent_id=w&lock_id=" + lock_id).status, 200u);
  EXPECT_EQ(task(http, "a")["status"], "open");
  EXPECT_EQ(task_events(http, "d").back()["type"], "task_released");

  // Failing is final and keeps the error; a dependant of a failed task stays blocked.
  claim = call(http, "POST", "/tasks/a/claim", R"({"agent_id":"w"})");
  ASSERT_EQ(claim.status, 200u);
  EXPECT_EQ(claim.body["task"]["attempts"], 2);
  const uint64_t fence = claim.body["lock"]["fencing_token"];
  EXPECT_EQ(call(http, "POST", "/tasks/a/fail", json({{"agent_id", "w"}, {"fence", fence}}).dump()).status, 400u);
  auto failed = call(http, "POST", "/tasks/a/fail", json({{"agent_id", "w"}, {"fence", fence}, {"error", "disk full"}}).dump());
  ASSERT_EQ(failed.status, 200u) << failed.raw;
  EXPECT_EQ(failed.body["task"]["status"], "failed");
  EXPECT_EQ(failed.body["task"]["error"], "disk full");
  EXPECT_EQ(task_events(http, "d").back()["type"], "task_failed");
  EXPECT_EQ(call(http, "POST", "/tasks/b/claim", R"({"agent_id":"w"})").status, 409u);
  EXPECT_EQ(call(http, "GET", "/contexts/d/tasks?status=failed").body["tasks"].size(), 1u);
}

TEST(Tasks, BadInputIsRefusedAndNamesTheField) {
  temp_dir dir;
  test_server server(test_config(dir.str() + "/data"));
  auto http = server.connect();
  for (const char* bad : {R"({})", R"({"title":""})", R"({"title":5})", R"({"title":"t","spec":[1]})",
                          R"({"title":"t","depends_on":"x"})", R"({"title":"t","depends_on":[1]})",
                          R"({"title":"t","task_id":""})", R"({"title":"t","max_attempts":0})",
                          R"({"title":"t","titel":"x"})", R"({"title":"t","agent_id":7})", R"([1])", "not json"}) {
    auto r = call(http, "POST", "/contexts/x/tasks", bad);
    EXPECT_EQ(r.status, 400u) << bad << " → " << r.raw;
  }
  const std::string big = R"({"title":"t","spec":{"k":")" + std::string(70'000, 'a') + R"("}})";
  EXPECT_EQ(call(http, "POST", "/contexts/x/tasks", big).status, 413u);
  EXPECT_EQ(call(http, "GET", "/tasks/none").status, 404u);
  EXPECT_EQ(call(http, "POST", "/tasks/none/claim", R"({"agent_id":"w"})").status, 404u);
  ASSERT_EQ(call(http, "POST", "/contexts/x/tasks", R"({"task_id":"t","title":"t"})").status, 201u);
  for (const char* bad : {R"({})", R"({"agent_id":5})", R"({"agent_id":"w","ttl_seconds":"long"})",
                          R"({"agent_id":"w","tll_seconds":1})"}) {
    auto r = call(http, "POST", "/tasks/t/claim", bad);
    EXPECT_EQ(r.status, 400u) << bad << " → " << r.raw;
  }
  for (const char* bad : {R"({"agent_id":"w"})", R"({"agent_id":"w","fence":-1})", R"({"agent_id":"w","fence":"1"})",
                          R"({"agent_id":"w","fence":1,"result":"ok"})"}) {
    auto r = call(http, "POST", "/tasks/t/complete", bad);
    EXPECT_EQ(r.status, 400u) << bad << " → " << r.raw;
  }
  EXPECT_EQ(call(http, "GET", "/contexts/x/tasks?status=busy").status, 400u);
  EXPECT_EQ(call(http, "POST", "/agents/w/heartbeat", R"({"progress":5})").status, 400u);
  EXPECT_EQ(task(http, "t")["status"], "open");
}

// Heartbeats renew a claim and store progress; silence strands it, with the last
// holder and progress; the next claimer gets a new token and that progress, and the
// old holder's token is stale. A claim that expires on its last attempt fails the task.
TEST(Tasks, HeartbeatsRenewAndSilenceStrands) {
  temp_dir dir;
  test_server server(test_config(dir.str() + "/data"));
  auto http = server.connect();
  ASSERT_EQ(call(http, "POST", "/contexts/s/tasks", R"({"task_id":"index","title":"Index","max_attempts":2})").status,
            201u);
  // A ttl long enough that a slow machine's stalls cannot expire it between beats.
  auto claim = call(http, "POST", "/tasks/index/claim", R"({"agent_id":"w1","ttl_ms":2000})");
  ASSERT_EQ(claim.status, 200u) << claim.raw;
  const uint64_t first = claim.body["lock"]["fencing_token"];
  // Beating for two and a half ttls keeps the claim.
  const auto until = std::chrono::steady_clock::now() + 5000ms;
  int step = 0;
  while (std::chrono::steady_clock::now() < until) {
    auto beat = call(http, "POST", "/agents/w1/heartbeat", json({{"progress", {{"done", ++step}}}}).dump());
    ASSERT_EQ(beat.status, 200u) << beat.raw;
    ASSERT_EQ(beat.body["claims"].size(), 1u) << beat.raw;
    ASSERT_EQ(beat.body["claims"][0]["renewed"], true) << beat.raw;
    std::this_thread::sleep_for(250ms);  // the agent's heartbeat interval, not synchronisation
  }
  auto held = task(http, "index");
  EXPECT_EQ(held["status"], "claimed");
  EXPECT_EQ(held["progress"]["done"], step);
  // Silence: stranded, with who held it and how far it got.
  // (A task's state changes as the lease's does, before its event commits: wait for
  // the event.)
  ASSERT_TRUE(wait_until([&] { return task_events(http, "s").back()["type"] == "task_stranded"; }, 30s));
  EXPECT_EQ(task(http, "index")["status"], "stranded");
  auto stranded = task_events(http, "s").back();
  EXPECT_EQ(stranded["type"], "task_stranded");
  EXPECT_EQ(stranded["task"]["last_holder"], "w1");
  EXPECT_EQ(stranded["task"]["progress"]["done"], step);
  // The old holder's heartbeat says the claim is gone.
  auto lost = call(http, "POST", "/agents/w1/heartbeat", R"({"task_id":"index"})");
  EXPECT_EQ(lost.status, 409u) << lost.raw;

  auto second = call(http, "POST", "/tasks/index/claim", R"({"agent_id":"w2","ttl_ms":400})");
  ASSERT_EQ(second.status, 200u) << second.raw;
  EXPECT_GT(second.body["lock"]["fencing_token"].get<uint64_t>(), first);
  EXPECT_EQ(second.body["task"]["progress"]["done"], step);
  EXPECT_EQ(second.body["task"]["attempts"], 2);
  auto late = call(http, "POST", "/tasks/index/complete", json({{"agent_id", "w1"}, {"fence", first}}).dump());
  EXPECT_EQ(late.status, 409u);
  EXPECT_NE(late.body["error"].get<std::string>().find("stale fencing token"), std::string::npos) << late.raw;
  // The second claim expires too: that was the last attempt.
  ASSERT_TRUE(wait_until([&] { return task(http, "index")["status"] != "claimed"; }, 30s));
  auto t = task(http, "index");
  EXPECT_EQ(t["status"], "failed");
  EXPECT_NE(t["error"].get<std::string>().find("attempt 2 of 2"), std::string::npos) << t.dump();
  ASSERT_TRUE(wait_until([&] { return task_events(http, "s").back()["type"] == "task_failed"; }, 30s));
  EXPECT_EQ(call(http, "POST", "/tasks/index/claim", R"({"agent_id":"w3"})").status, 409u);
}

// An export of a context with task and presence events imports into another server
// as the same log (history only: the tasks and who is present are not recreated).
TEST(Tasks, TaskAndPresenceEventsExportAndImport) {
  temp_dir dir;
  test_server server(test_config(dir.str() + "/data"));
  auto http = server.connect();
  ASSERT_EQ(call(http, "POST", "/agents/w/heartbeat", R"({"contexts":["ex"],"status":"on it"})").status, 200u);
  ASSERT_EQ(call(http, "POST", "/contexts/ex/tasks", R"({"task_id":"ex-1","title":"T","spec":{"a":1}})").status, 201u);
  auto claim = call(http, "POST", "/tasks/ex-1/claim", R"({"agent_id":"w"})");
  ASSERT_EQ(claim.status, 200u);
  ASSERT_EQ(call(http, "POST", "/agents/w/heartbeat", R"({"progress":{"p":1}})").status, 200u);
  ASSERT_EQ(call(http, "POST", "/tasks/ex-1/complete",
                 json({{"agent_id", "w"}, {"fence", claim.body["lock"]["fencing_token"]}, {"result", {{"ok", true}}}}).dump())
                .status,
            200u);
  ASSERT_EQ(call(http, "DELETE", "/agents/w/presence?context=ex").status, 200u);
  const json events = call(http, "GET", "/contexts/ex/events?limit=100").body["events"];
  std::vector<std::string> kinds;
  for (const auto& e : events) kinds.push_back(e["type"]);
  EXPECT_EQ(kinds, (std::vector<std::string>{"agent_joined", "task_created", "task_claimed", "task_progress",
                                             "task_completed", "agent_left"}));
  temp_dir other;
  test_server copy(other);
  auto copy_http = copy.connect();
  auto imported = call(copy_http, "POST", "/contexts/ex/import", json({{"events", events}}).dump());
  ASSERT_EQ(imported.status, 200u) << imported.raw;
  EXPECT_EQ(call(copy_http, "GET", "/contexts/ex/events?limit=100").body["events"], events);
  EXPECT_EQ(call(copy_http, "GET", "/tasks/ex-1").status, 404u);  // history, not a live task
  // A task event that is not one is refused, naming the field.
  json bad = events[1];
  bad["task"]["task_id"] = 5;
  bad["seq"] = events.size() + 1;
  auto refused = call(copy_http, "POST", "/contexts/ex/import", json({{"events", {bad}}}).dump());
  EXPECT_EQ(refused.status, 400u);
  EXPECT_NE(refused.body["error"].get<std::string>().find("task_id must be a string"), std::string::npos) << refused.raw;
}

// Two agents race for each of 1000 tasks: exactly one wins each, and the task names
// the winner with the winner's token.
TEST(Tasks, RacingClaimersHaveExactlyOneWinner) {
  temp_dir dir;
  test_server server(test_config(dir.str() + "/data"));
  auto http = server.connect();
  const int n = sanitized_build ? 200 : 1000;
  for (int i = 0; i < n; ++i)
    ASSERT_EQ(call(http, "POST", "/contexts/race/tasks", json({{"task_id", "t" + std::to_string(i)}, {"title", "x"}}).dump())
                  .status,
              201u);
  std::vector<std::array<uint64_t, 2>> tokens(n, {0, 0});
  std::vector<std::array<unsigned, 2>> statuses(n, {0, 0});
  std::atomic<int> ready{0};
  auto racer = [&](int who) {
    auto c = server.connect();
    const std::string agent = "racer-" + std::to_string(who);
    ++ready;
    while (ready < 2) std::this_thread::yield();
    for (int i = 0; i < n; ++i) {
      // A ttl far beyond the test, so that no claim expires before it is checked.
      auto r = call(c, "POST", "/tasks/t" + std::to_string(i) + "/claim",
                    json({{"agent_id", agent}, {"ttl_ms", 3'600'000}}).dump());
      statuses[i][who] = r.status;
      if (r.status == 200) tokens[i][who] = r.body["lock"]["fencing_token"];
    }
  };
  std::thread a(racer, 0), b(racer, 1);
  a.join();
  b.join();
  for (int i = 0; i < n; ++i) {
    const int winners = (statuses[i][0] == 200) + (statuses[i][1] == 200);
    ASSERT_EQ(winners, 1) << "task t" << i << ": " << statuses[i][0] << " / " << statuses[i][1];
    const int w = statuses[i][0] == 200 ? 0 : 1;
    EXPECT_EQ(statuses[i][1 - w], 409u);
    auto t = task(http, "t" + std::to_string(i));
    EXPECT_EQ(t["holder_agent"], "racer-" + std::to_string(w));
    EXPECT_EQ(t["fencing_token"], tokens[i][w]);
  }
  // One task_claimed per task in the log.
  const auto events = call(http, "GET", "/contexts/race/events?limit=1000&after_seq=" + std::to_string(n));
  size_t claimed = 0;
  for (const auto& e : events.body["events"]) claimed += e["type"] == "task_claimed";
  EXPECT_EQ(claimed, std::min<size_t>(n, 1000));
}

}  // namespace
}  // namespace engram::test
