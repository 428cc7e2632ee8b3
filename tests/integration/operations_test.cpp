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
