// Day-two operations against the real server: backups taken while writes go on,
// restored by starting a second server on the copy.
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <thread>

#include "support/test_support.hpp"

namespace engram::test {
namespace {

using namespace std::chrono_literals;

// Every event of a context, through GET /contexts/{id}/events.
std::vector<json> all_events(client::http_connection& http, const std::string& context) {
  std::vector<json> out;
  uint64_t after = 0;
  for (;;) {
    auto r = call(http, "GET", "/contexts/" + context + "/events?limit=1000&after_seq=" + std::to_string(after));
    EXPECT_EQ(r.status, 200u) << r.raw;
    if (r.status != 200) return out;
    for (auto& e : r.body["events"]) out.push_back(std::move(e));
    after = r.body["next_after_seq"];
    if (!r.body["more"].get<bool>()) return out;
  }
}

std::vector<std::string> context_ids(client::http_connection& http) {
  std::vector<std::string> out;
  std::string cursor;
  do {
    auto r = call(http, "GET", "/contexts?limit=1000&cursor=" + cursor);
    EXPECT_EQ(r.status, 200u) << r.raw;
    for (const auto& c : r.body["contexts"]) out.push_back(c["id"]);
    cursor = r.body.value("next_cursor", "");
  } while (!cursor.empty());
  return out;
}

TEST(Backup, TakenWhileWritingRestoresEveryContextConsistently) {
  temp_dir dir;
  auto cfg = test_config(dir.str() + "/data");
  cfg.storage.backup_dir = dir.str() + "/backups";
  test_server server(cfg);
  auto http = server.connect();
  ASSERT_EQ(call(http, "PATCH", "/contexts/ops/one", R"({"display_name":"One","meta":{"k":"v"}})").status, 200u);
  ASSERT_EQ(call(http, "POST", "/locks", R"({"resource_path":"file.txt","agent_id":"a","context_id":"ops/one"})").status,
            200u);

  // Writers on three contexts while the backup is taken.
  std::atomic<bool> stop{false};
  std::atomic<int> written{0};
  std::vector<std::thread> writers;
  for (int w = 0; w < 3; ++w) {
    writers.emplace_back([&, w] {
      auto c = server.connect();
      const std::string ctx = w == 0 ? "ops/one" : "ops/" + std::to_string(w);
      for (int i = 0; !stop && i < 5000; ++i) {
        auto r = call(c, "POST", "/workunits",
                      json({{"context_id", ctx}, {"agent_id", "w"},
                            {"work_units", {{{"text", "searchable note " + std::to_string(i)}}, {{"text", "second"}}}}})
                          .dump());
        if (r.status != 201) ADD_FAILURE() << r.raw;
        ++written;
      }
    });
  }
  ASSERT_TRUE(wait_until([&] { return written >= 60; }, 60s));
  auto backup = call(http, "POST", "/admin/backup", R"({"dir":"first"})");
  ASSERT_TRUE(wait_until([&] { return written >= 120; }, 60s));  // writes went on during and after
  stop = true;
  for (auto& t : writers) t.join();
  ASSERT_EQ(backup.status, 201u) << backup.raw;
  const std::string path = backup.body["backup"]["dir"];
  EXPECT_EQ(std::filesystem::path(path), std::filesystem::weakly_canonical(dir.str() + "/backups/first"));

  // Bad requests touch nothing.
  for (const auto& [body, status] : std::vector<std::pair<std::string, unsigned>>{
           {R"({"dir":"first"})", 409u},          // exists
           {R"({"dir":"../escape"})", 400u},      // outside the backup directory
           {R"({"dir":"/tmp"})", 400u},           // absolute, outside
           {R"({"dir":""})", 400u},
           {R"({"dir":7})", 400u},
           {R"({"dri":"x"})", 400u},              // unknown field
           {"not json", 400u}}) {
    auto r = call(http, "POST", "/admin/backup", body);
    EXPECT_EQ(r.status, status) << body << " -> " << r.raw;
  }
  EXPECT_FALSE(std::filesystem::exists(dir.str() + "/escape"));
  auto slash = call(http, "POST", "/admin/backup", R"({"dir":"trailing/"})");  // a trailing separator is the same dir
  EXPECT_EQ(slash.status, 201u) << slash.raw;
  EXPECT_EQ(call(http, "POST", "/admin/backup", R"({"dir":"trailing"})").status, 409u);

  // Restore: a second server on the backup. Every context it has is a gap-free
  // prefix of the original's log (a consistent cut), and the log kept going after.
  auto restored_cfg = test_config(path);
  test_server restored(restored_cfg);
  auto rhttp = restored.connect();
  const auto ids = context_ids(rhttp);
  EXPECT_EQ(ids, context_ids(http));  // no context was created during the backup
  size_t events = 0;
  bool original_went_on = false;
  for (const auto& id : ids) {
    const auto copy = all_events(rhttp, id);
    const auto original = all_events(http, id);
    ASSERT_LE(copy.size(), original.size()) << id;
    for (size_t i = 0; i < copy.size(); ++i) {
      ASSERT_EQ(copy[i]["seq"], i + 1) << id;
      ASSERT_EQ(copy[i], original[i]) << id << " event " << i;
    }
    events += copy.size();
    original_went_on = original_went_on || original.size() > copy.size();
    EXPECT_EQ(call(rhttp, "GET", "/contexts/" + id).body["context"]["head_seq"], copy.size()) << id;
  }
  EXPECT_GT(events, 100u);
  EXPECT_TRUE(original_went_on);
  EXPECT_EQ(call(rhttp, "GET", "/contexts/ops/one").body["context"]["display_name"], "One");
  auto lock = call(rhttp, "GET", "/locks/file.txt");
  EXPECT_EQ(lock.body["lock"]["holder_agent"], "a") << lock.raw;
  EXPECT_EQ(lock.body, call(http, "GET", "/locks/file.txt").body);  // the same lease, token and all

  // The search index is rebuilt from the restored logs.
  json status;
  ASSERT_TRUE(wait_readyz(rhttp, [](const json& r) { return r.contains("search") && r["search"].value("lag", -1) == 0; },
                          &status)) << status.dump();
  auto hits = call(rhttp, "GET", "/search?q=searchable&context=ops/*&limit=1");
  EXPECT_EQ(hits.status, 200u);
  EXPECT_GT(hits.body["total_count"].get<uint64_t>(), 0u) << hits.raw;
  // The restored server takes writes of its own, after the copied heads.
  auto next = call(rhttp, "POST", "/workunit", R"({"context_id":"ops/1","agent_id":"r","text":"after restore"})");
  ASSERT_EQ(next.status, 201u) << next.raw;
  EXPECT_EQ(next.body["work_unit"]["seq"], all_events(rhttp, "ops/1").size());
}

}  // namespace
}  // namespace engram::test

namespace engram::test {
namespace {

// POST /contexts/{id}/import: events keep their seqs, ids and times; anything that
// would break a log (a gap, a foreign event, a unit id that exists) is refused and
// writes nothing.
TEST(Import, AppendsExportedEventsAsTheyWereAndRefusesWhatBreaksTheLog) {
  temp_dir dir;
  test_server server(dir);
  auto http = server.connect();
  const std::string id1 = "019a0000-0000-7000-8000-000000000001", id2 = "019a0000-0000-7000-8000-000000000002";
  auto unit = [](const std::string& id, uint64_t seq, const std::string& ctx = "imp") {
    return json{{"id", id}, {"context_id", ctx}, {"seq", seq}, {"agent_id", "a"}, {"type", 1},
                {"ts", {{"seconds", 1700000000 + seq}, {"nanos", 5}}}, {"meta", json::object()},
                {"payload", "aGk="}, {"relationships", json::array()}, {"tokens", 1}};
  };
  // A context that does not exist starts where the export starts (retention had
  // removed its first events there).
  auto r = call(http, "POST", "/contexts/imp/import", json({{"events", {unit(id1, 5)}}}).dump());
  ASSERT_EQ(r.status, 200u) << r.raw;
  EXPECT_EQ(r.body["head_seq"], 5);
  auto ctx = call(http, "GET", "/contexts/imp").body["context"];
  EXPECT_EQ(ctx["first_seq"], 5);
  EXPECT_EQ(ctx["created_at"], json({{"seconds", 1700000005}, {"nanos", 5}}));
  auto got = call(http, "GET", "/workunit/" + id1);
  EXPECT_EQ(got.body["work_unit"], unit(id1, 5));

  json untimed = unit(id2, 6);
  untimed.erase("ts");
  const std::vector<std::pair<json, unsigned>> refused = {
      {json{{"events", {unit(id2, 5)}}}, 409u},                         // does not continue the log
      {json{{"events", {unit(id1, 6)}}}, 409u},                         // the unit id exists
      {json{{"events", {unit(id2, 6), unit(id2, 7)}}}, 409u},           // twice in one import
      {json{{"events", {unit(id2, 6), unit(id1, 8)}}}, 400u},           // a gap
      {json{{"events", {unit(id2, 6, "other")}}}, 400u},                // another context's event
      {json{{"events", json::array()}}, 400u},
      {json{{"events", {{{"type", "mystery"}, {"seq", 6}}}}}, 400u},
      {json{{"events", {untimed}}}, 400u},                              // a unit without its time
      {json{{"events", {0}}}, 400u},
      {json{{"events", {unit(id2, uint64_t(1) << 60)}}}, 400u},        // a seq no log reaches
      {json{{"event", {unit(id2, 6)}}}, 400u},                          // unknown field
  };
  for (const auto& [body, status] : refused) {
    auto bad = call(http, "POST", "/contexts/imp/import", body.dump());
    EXPECT_EQ(bad.status, status) << body.dump() << " → " << bad.raw;
  }
  EXPECT_EQ(call(http, "GET", "/contexts/imp").body["context"]["head_seq"], 5) << "a refused import wrote something";
  EXPECT_EQ(call(http, "GET", "/workunit/" + id2).status, 404u);

  // Control events too; the context takes the state of the last context_updated.
  json updated{{"type", "context_updated"}, {"context_id", "imp"}, {"seq", 6},
               {"context", {{"id", "imp"}, {"display_name", "From elsewhere"}, {"meta", {{"k", "v"}}}}}};
  json lock{{"type", "lock_released"}, {"context_id", "imp"}, {"seq", 7},
            {"ts", {{"seconds", 1700000009}, {"nanos", 0}}},
            {"lock", {{"resource_path", "f"}, {"holder_agent", "a"}, {"lock_id", "l"}, {"fencing_token", 3}}}};
  r = call(http, "POST", "/contexts/imp/import", json({{"events", {updated, lock, unit(id2, 8)}}}).dump());
  ASSERT_EQ(r.status, 200u) << r.raw;
  ctx = call(http, "GET", "/contexts/imp").body["context"];
  EXPECT_EQ(ctx["display_name"], "From elsewhere");
  EXPECT_EQ(ctx["head_seq"], 8);
  EXPECT_EQ(ctx["first_seq"], 5);
  auto events = call(http, "GET", "/contexts/imp/events").body["events"];
  ASSERT_EQ(events.size(), 4u);
  EXPECT_EQ(events[1]["type"], "context_updated");
  EXPECT_EQ(events[2]["lock"]["fencing_token"], 3);
  EXPECT_EQ(events[2]["ts"], json({{"seconds", 1700000009}, {"nanos", 0}}));
  // Appends go on after the imported head, and search found the imported units.
  auto next = call(http, "POST", "/workunit", R"({"context_id":"imp","agent_id":"a","text":"local"})");
  EXPECT_EQ(next.body["work_unit"]["seq"], 9);
}

}  // namespace
}  // namespace engram::test
