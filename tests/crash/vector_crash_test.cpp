// Vector snapshots under SIGKILL: the real binary saves its HNSW graphs, more vectors
// are written and a context is deleted after the save, and it is killed. On restart
// it loads the snapshot and inserts only the vectors stored after it (the
// insert counter says so), the deleted context's vectors are gone, and every kept
// vector is found by its own embedding. A graceful stop saves what is new; a
// damaged snapshot is not used (every vector is inserted again, nothing is lost).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <set>

#include "support/server_process.hpp"
#include "support/test_support.hpp"

namespace engram::test {
namespace {

using namespace std::chrono_literals;

constexpr int dim = 16;

struct stored {
  std::string id;
  std::vector<float> vector;
};

std::vector<float> random_vector(std::mt19937& rng) {
  std::normal_distribution<float> n;
  std::vector<float> v(dim);
  for (auto& x : v) x = n(rng);
  return v;
}

// One request, so that the vectors commit (and are read back by the index) together.
std::vector<stored> append(client::http_connection& c, const std::string& context, int n, std::mt19937& rng) {
  std::vector<stored> out;
  json units = json::array();
  for (int i = 0; i < n; ++i) {
    out.push_back({"", random_vector(rng)});
    units.push_back({{"text", context + " " + std::to_string(i)}, {"embedding", out.back().vector}});
  }
  auto r = call(c, "POST", "/workunits", json({{"context_id", context}, {"agent_id", "a"}, {"work_units", units}}).dump());
  EXPECT_EQ(r.status, 201u) << r.raw;
  for (size_t i = 0; i < out.size() && i < r.body["work_units"].size(); ++i) out[i].id = r.body["work_units"][i]["id"];
  return out;
}

json vectors_status(client::http_connection& c) { return call(c, "GET", "/readyz").body["search"]["vectors"]; }

void wait_loaded(client::http_connection& c, uint64_t count) {
  ASSERT_TRUE(wait_until([&] {
    const auto v = vectors_status(c);
    return v["state"] == "ready" && v["lag"] == 0 && v["count"] == count;
  }, 60s)) << vectors_status(c).dump();
}

// Each kept unit is the nearest neighbour of its own vector; no removed unit is
// ever returned.
void check_search(client::http_connection& c, const std::vector<stored>& kept, const std::set<std::string>& removed) {
  for (const auto& u : kept) {
    auto r = call(c, "POST", "/search", json({{"vector", u.vector}, {"mode", "semantic"}, {"limit", 10}}).dump());
    ASSERT_EQ(r.status, 200u) << r.raw;
    ASSERT_FALSE(r.body["hits"].empty()) << r.raw;
    EXPECT_EQ(r.body["hits"][0]["id"], u.id);
    for (const auto& h : r.body["hits"]) EXPECT_FALSE(removed.contains(h["id"])) << "a removed vector came back";
  }
}

TEST(VectorCrashTest, Sigkill_AfterASnapshot_LoadsItAndInsertsOnlyWhatCameAfter) {
  temp_dir dir;
  const std::string data = dir.str() + "/data";
  // A snapshot after every 50 new vectors, without waiting an interval.
  server_process proc(data, "sync", dir.str(),
                      {"--set", "search.vectors.snapshot_interval_seconds=0", "--set",
                       "search.vectors.snapshot_min_vectors=50"});
  proc.start();
  std::mt19937 rng(7);
  std::vector<stored> kept, removed_units;
  {
    client::http_connection c("127.0.0.1", proc.port(), 30s);
    kept = append(c, "keep", 200, rng);
    removed_units = append(c, "gone", 100, rng);
    wait_loaded(c, 300);
    const std::string current = data + "/vectors/CURRENT";
    ASSERT_TRUE(wait_until([&] {
      std::ifstream in(current);
      std::string name;
      std::getline(in, name);
      return name == "snap-300";
    }, 30s)) << "no snapshot of all 300 vectors";
    // After the snapshot: a deleted context and 30 new vectors (fewer than 50: not saved).
    ASSERT_EQ(call(c, "DELETE", "/contexts/gone").status, 200u);
    auto late = append(c, "keep", 30, rng);
    kept.insert(kept.end(), late.begin(), late.end());
    wait_loaded(c, 230);
  }
  proc.kill9();
  proc.restart();
  std::set<std::string> removed;
  for (const auto& u : removed_units) removed.insert(u.id);
  {
    client::http_connection c("127.0.0.1", proc.port(), 30s);
    wait_loaded(c, 230);
    EXPECT_EQ(metric(c, "engram_search_vectors_inserted_total"), 30) << "the snapshot was not used";
    check_search(c, kept, removed);
    auto more = append(c, "keep", 10, rng);
    kept.insert(kept.end(), more.begin(), more.end());
    wait_loaded(c, 240);
  }
  // A graceful stop saves the 40 vectors inserted since: nothing to insert next time.
  ASSERT_EQ(proc.terminate(), 0);
  proc.restart();
  {
    client::http_connection c("127.0.0.1", proc.port(), 30s);
    wait_loaded(c, 240);
    EXPECT_EQ(metric(c, "engram_search_vectors_inserted_total"), 0);
    check_search(c, kept, removed);
  }
  proc.kill9();
  // A damaged graph file: the snapshot is not used; every vector is inserted again.
  std::string name;
  std::getline(std::ifstream(data + "/vectors/CURRENT"), name);
  {
    std::fstream graph(data + "/vectors/" + name + "/0.hnsw", std::ios::in | std::ios::out | std::ios::binary);
    ASSERT_TRUE(graph);
    graph.seekg(200);
    const char was = char(graph.get());
    graph.seekp(200);
    graph.put(char(~was));
  }
  proc.restart();
  client::http_connection c("127.0.0.1", proc.port(), 30s);
  wait_loaded(c, 240);
  EXPECT_EQ(metric(c, "engram_search_vectors_inserted_total"), 240);
  check_search(c, kept, removed);
  EXPECT_NE(proc.log_text().find("not using the vector snapshot"), std::string::npos);
}

// The newest vectors removed, then restarts: storage never hands their vseqs out
// again, so the snapshot that covered them stays in use (before vseqs were counted,
// it had to be dropped: the next vectors were stored under the same vseqs), and
// the vectors stored after it come after it.
TEST(VectorCrashTest, Sigkill_AfterTheNewestVectorsWereRemoved_KeepsTheSnapshotAndHandsOutNewVseqs) {
  temp_dir dir;
  const std::string data = dir.str() + "/data";
  std::mt19937 rng(11);
  std::vector<stored> a, b, c;
  {
    server_process proc(data, "sync", dir.str(),
                        {"--set", "search.vectors.snapshot_interval_seconds=0", "--set",
                         "search.vectors.snapshot_min_vectors=50"});
    proc.start();
    client::http_connection http("127.0.0.1", proc.port(), 30s);
    a = append(http, "a", 100, rng);
    b = append(http, "b", 100, rng);  // vseqs 101-200, the newest
    wait_loaded(http, 200);
    ASSERT_TRUE(wait_until([&] {
      std::string name;
      std::getline(std::ifstream(data + "/vectors/CURRENT"), name);
      return name == "snap-200";
    }, 30s));
    ASSERT_EQ(call(http, "DELETE", "/contexts/b").status, 200u);
    wait_loaded(http, 100);
    ASSERT_EQ(proc.terminate(), 0);
  }
  // No snapshot is written from here on (min_vectors is out of reach).
  server_process proc(data, "sync", dir.str(), {"--set", "search.vectors.snapshot_min_vectors=100000"});
  proc.start();
  {
    client::http_connection http("127.0.0.1", proc.port(), 30s);
    wait_loaded(http, 100);
    EXPECT_EQ(metric(http, "engram_search_vectors_inserted_total"), 0) << "the snapshot was not used";
    c = append(http, "c", 100, rng);  // vseqs 201-300
    wait_loaded(http, 200);
  }
  proc.kill9();
  proc.restart();
  client::http_connection http("127.0.0.1", proc.port(), 30s);
  wait_loaded(http, 200);
  EXPECT_EQ(metric(http, "engram_search_vectors_inserted_total"), 100) << "only c's vectors come after the snapshot";
  EXPECT_EQ(proc.log_text().find("not using the vector snapshot"), std::string::npos);
  std::set<std::string> removed;
  for (const auto& u : b) removed.insert(u.id);
  std::vector<stored> kept = a;
  kept.insert(kept.end(), c.begin(), c.end());
  check_search(http, kept, removed);
}

// The newest vectors removed, SIGKILL, and a restart without a snapshot: the index
// reads the vectors that are left and becomes ready, though storage's newest vseq
// is a removed vector's (nothing is stored under it for the follower to read).
TEST(VectorCrashTest, Sigkill_AfterTheNewestVectorsWereRemoved_WithoutASnapshot_LoadsWhatIsLeft) {
  temp_dir dir;
  const std::string data = dir.str() + "/data";
  std::mt19937 rng(13);
  server_process proc(data, "sync", dir.str(), {"--set", "search.vectors.snapshot_min_vectors=100000"});
  proc.start();
  std::vector<stored> a, b;
  {
    client::http_connection http("127.0.0.1", proc.port(), 30s);
    a = append(http, "a", 100, rng);
    b = append(http, "b", 100, rng);  // vseqs 101-200, the newest
    wait_loaded(http, 200);
    ASSERT_EQ(call(http, "DELETE", "/contexts/b").status, 200u);
    wait_loaded(http, 100);
  }
  proc.kill9();
  proc.restart();
  client::http_connection http("127.0.0.1", proc.port(), 30s);
  wait_loaded(http, 100);
  EXPECT_EQ(metric(http, "engram_search_vectors_inserted_total"), 100);
  std::set<std::string> removed;
  for (const auto& u : b) removed.insert(u.id);
  check_search(http, a, removed);
}

}  // namespace
}  // namespace engram::test
