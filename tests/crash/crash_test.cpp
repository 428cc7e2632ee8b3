// Crash safety of the real binary: SIGKILL mid-traffic, restart on the same data
// dir, and check that every acknowledged write is there, seqs are gap-free, batches
// are all-or-nothing and nothing appears twice. Also SIGTERM under load.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <atomic>
#include <fstream>
#include <map>
#include <random>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "engram/stream_connections.hpp"
#include "model/text.hpp"
#include "support/fake_embedder.hpp"
#include "support/server_process.hpp"
#include "support/test_support.hpp"

extern char** environ;

namespace engram::test {
namespace {

struct acked_unit {
  std::string context, id, text;
  uint64_t seq;
};

// Everything clients were told succeeded, recorded under a mutex.
struct ledger {
  std::mutex mu;
  std::vector<acked_unit> units;
  std::set<std::string> batch_tags;   // batches acknowledged as a whole
  std::set<std::string> agents;       // agents added by acknowledged PATCHes
  std::atomic<size_t> acks{0};
};

constexpr const char* contexts[] = {"crash/a", "crash/b", "crash/a:b"};

// Drives mixed traffic until the server goes away (transport error).
void drive(uint16_t port, int worker, int round, ledger& led) {
  client::http_connection c("127.0.0.1", port, std::chrono::seconds(10));
  for (int i = 0;; ++i) {
    const std::string ctx = contexts[(worker + i) % 3];
    const std::string tag = "r" + std::to_string(round) + "-w" + std::to_string(worker) + "-i" + std::to_string(i);
    if (worker == 0) {  // context updates
      const std::string agent = "agent-" + tag;
      auto r = c.request("PATCH", "/contexts/crash%2Fa", json({{"add_agents", {agent}}}).dump());
      if (!r) return;
      if (r->status != 200) return ADD_FAILURE() << "PATCH got " << r->status << " " << r->body;
      std::lock_guard lock(led.mu);
      led.agents.insert(agent);
    } else if (worker % 3 == 1) {  // atomic batches of 5
      json units = json::array();
      for (int k = 0; k < 5; ++k) units.push_back({{"text", tag + "-k" + std::to_string(k)}});
      auto r = c.request("POST", "/workunits", json({{"context_id", ctx}, {"agent_id", "w"}, {"work_units", units}}).dump());
      if (!r) return;
      if (r->status != 201) return ADD_FAILURE() << "batch got " << r->status << " " << r->body;
      auto body = json::parse(r->body);
      std::lock_guard lock(led.mu);
      led.batch_tags.insert(tag);
      for (auto& u : body["work_units"])
        led.units.push_back({ctx, u["id"], *model::base64_decode(u["payload"].get<std::string>()), u["seq"]});
    } else {  // single appends
      auto r = c.request("POST", "/workunit", json({{"context_id", ctx}, {"agent_id", "w"}, {"text", tag}}).dump());
      if (!r) return;
      if (r->status != 201) return ADD_FAILURE() << "append got " << r->status << " " << r->body;
      auto u = json::parse(r->body)["work_unit"];
      std::lock_guard lock(led.mu);
      led.units.push_back({ctx, u["id"], tag, u["seq"]});
    }
    led.acks++;
  }
}

// Checks the restarted server against the ledger.
void verify(uint16_t port, ledger& led) {
  client::http_connection c("127.0.0.1", port);
  std::map<std::string, std::map<uint64_t, json>> logs;  // context → seq → unit
  for (const char* ctx : contexts) {
    auto& log = logs[ctx];
    std::string cursor;
    do {
      auto r = c.request("GET", "/workunits/" + std::string(ctx) + "?limit=1000&cursor=" + cursor);
      ASSERT_TRUE(r);
      ASSERT_EQ(r->status, 200u) << r->body;
      auto body = json::parse(r->body);
      for (auto& u : body["work_units"]) log[u["seq"].get<uint64_t>()] = u;
      cursor = body["next_cursor"];
    } while (!cursor.empty());
  }
  // The PATCH events take seqs in crash/a too; fetch its head to check gap-freedom.
  // A context nobody wrote to yet is a 404: head 0, no agents.
  auto context_of = [&](const std::string& encoded_id) {
    auto r = c.request("GET", "/contexts/" + encoded_id);
    EXPECT_TRUE(r && (r->status == 200 || r->status == 404));
    return r && r->status == 200 ? json::parse(r->body)["context"] : json{{"head_seq", 0}, {"agent_ids", json::array()}};
  };
  std::set<std::string> agents_present;
  const json ctx_a = context_of("crash%2Fa");
  for (auto& a : ctx_a["agent_ids"]) agents_present.insert(a);

  std::lock_guard lock(led.mu);
  // 1. Every acknowledged unit is there, at its seq, with its id and text.
  for (const auto& a : led.units) {
    auto& log = logs[a.context];
    auto it = log.find(a.seq);
    ASSERT_NE(it, log.end()) << "acknowledged unit lost: " << a.context << " seq " << a.seq;
    EXPECT_EQ(it->second["id"], a.id);
    EXPECT_EQ(*model::base64_decode(it->second["payload"].get<std::string>()), a.text);
  }
  // 2. No text appears twice; batches are all-or-nothing.
  std::map<std::string, int> batch_parts;
  for (auto& [ctx, log] : logs) {
    std::set<std::string> texts;
    uint64_t expect = 0;
    for (auto& [seq, u] : log) {
      (void)u;
      ASSERT_GT(seq, expect);
      expect = seq;
      const auto text = *model::base64_decode(u["payload"].get<std::string>());
      EXPECT_TRUE(texts.insert(text).second) << "duplicate unit " << text << " in " << ctx;
      if (const auto k = text.rfind("-k"); k != std::string::npos) batch_parts[text.substr(0, k)]++;
    }
  }
  for (auto& [tag, n] : batch_parts) EXPECT_EQ(n, 5) << "batch " << tag << " partially stored";
  for (const auto& tag : led.batch_tags) EXPECT_EQ(batch_parts[tag], 5) << "acknowledged batch " << tag;
  // 3. Seqs are gap-free: units plus context-update events fill 1..head exactly.
  for (auto& [ctx, log] : logs) {
    const uint64_t head_seq = context_of(ctx == "crash/a:b" ? "crash%2Fa:b" : ctx)["head_seq"];
    const uint64_t updates = ctx == "crash/a" ? head_seq - log.size() : 0;
    EXPECT_EQ(log.size() + updates, head_seq) << ctx;
    if (ctx != "crash/a") {
      uint64_t expect = 1;
      for (auto& [seq, u] : log) EXPECT_EQ(seq, expect++) << ctx;
    }
  }
  // 4. Acknowledged context updates survived.
  for (const auto& a : led.agents) EXPECT_TRUE(agents_present.contains(a)) << "lost PATCH " << a;
}

class CrashTest : public ::testing::TestWithParam<std::string> {};

TEST_P(CrashTest, Sigkill_MidTraffic_LosesNothingAcknowledged) {
  temp_dir dir;
  server_process proc(dir.str() + "/data", GetParam(), dir.str());
  ledger led;
  for (int round = 0; round < 3; ++round) {
    proc.start();
    verify(proc.port(), led);
    if (HasFatalFailure()) return;
    const size_t target = led.acks + 1000;
    std::vector<std::thread> workers;
    for (int w = 0; w < 8; ++w) workers.emplace_back(drive, proc.port(), w, round, std::ref(led));
    ASSERT_TRUE(wait_until([&] { return led.acks >= target; }, std::chrono::seconds(60)));
    proc.kill9();  // mid-traffic: workers are sending as this happens
    for (auto& t : workers) t.join();
  }
  proc.start();
  verify(proc.port(), led);
  EXPECT_GT(led.units.size(), 500u);
}

TEST_P(CrashTest, Sigterm_UnderLoad_ExitsZeroAndKeepsEverything) {
  temp_dir dir;
  server_process proc(dir.str() + "/data", GetParam(), dir.str());
  ledger led;
  proc.start();
  std::vector<std::thread> workers;
  for (int w = 0; w < 6; ++w) workers.emplace_back(drive, proc.port(), w, 0, std::ref(led));
  ASSERT_TRUE(wait_until([&] { return led.acks >= 200; }, std::chrono::seconds(60)));
  EXPECT_EQ(proc.terminate(), 0);
  for (auto& t : workers) t.join();
  proc.start();
  verify(proc.port(), led);
}

// Subscribers follow a context while writers append; the server is SIGKILLed and
// restarted; each subscriber reconnects with its cursor and must end with the
// complete log, each seq exactly once, in order.
TEST_P(CrashTest, Sigkill_StreamsResumeWithTheirCursors) {
  temp_dir dir;
  server_process proc(dir.str() + "/data", GetParam(), dir.str());
  proc.start();
  std::atomic<bool> stop{false};
  std::atomic<size_t> acked{0};
  std::atomic<uint64_t> max_acked_seq{0};
  std::vector<uint64_t> ws_got, sse_got;
  std::mutex port_mu;
  auto port = [&] {
    std::lock_guard lock(port_mu);
    return proc.port();
  };
  auto writer = [&](int w) {
    while (!stop) {
      client::http_connection c("127.0.0.1", port(), std::chrono::seconds(5));
      while (!stop) {
        auto r = c.request("POST", "/workunit", json({{"context_id", "live"}, {"agent_id", "w"}, {"text", std::to_string(w)}}).dump());
        if (!r) break;  // server gone: reconnect (to the restarted one)
        if (r->status == 201) {
          ++acked;
          const uint64_t seq = json::parse(r->body)["work_unit"]["seq"];
          uint64_t prev = max_acked_seq;
          while (seq > prev && !max_acked_seq.compare_exchange_weak(prev, seq)) {}
        }
      }
    }
  };
  // WS subscriber: reconnects with ?since=<last seq> after any disconnect.
  auto ws_reader = [&] {
    while (!stop) {
      client::ws_connection ws;
      const uint64_t since = ws_got.empty() ? 0 : ws_got.back();
      if (!ws.connect("127.0.0.1", port(), "/stream?context=live&since=" + std::to_string(since))) continue;
      while (!stop) {
        auto m = ws.read(std::chrono::milliseconds(200));
        if (!m || ws.closed()) break;
        if (!*m) continue;
        auto j = json::parse(**m);
        if (j["type"].is_number_integer()) ws_got.push_back(j["seq"]);
      }
    }
  };
  auto sse_reader = [&] {
    std::string last_id;
    while (!stop) {
      client::sse_connection sse;
      client::header_list h;
      if (!last_id.empty()) h.emplace_back("Last-Event-ID", last_id);
      if (!sse.connect("127.0.0.1", port(), "/stream-sse?context=live&since=0", h) || sse.refused()) continue;
      while (!stop) {
        auto ev = sse.next(std::chrono::milliseconds(200));
        if (!ev || sse.ended()) break;
        if (!*ev || !(*ev)->event.empty()) continue;
        sse_got.push_back(json::parse((*ev)->data)["seq"]);
        last_id = (*ev)->id;
      }
    }
  };
  std::vector<std::thread> threads;
  for (int w = 0; w < 3; ++w) threads.emplace_back(writer, w);
  std::thread ws_thread(ws_reader), sse_thread(sse_reader);
  ASSERT_TRUE(wait_until([&] { return acked >= 1000; }, std::chrono::seconds(60)));
  {
    std::lock_guard lock(port_mu);
    proc.kill9();
    proc.start();
  }
  const size_t after_restart = acked + 1000;
  ASSERT_TRUE(wait_until([&] { return acked >= after_restart; }, std::chrono::seconds(60)));
  stop = true;
  for (auto& t : threads) t.join();
  // Readers catch up to the final head before stopping.
  ws_thread.join();
  sse_thread.join();
  client::http_connection c("127.0.0.1", proc.port());
  const uint64_t head = json::parse(c.request("GET", "/contexts/live")->body)["context"]["head_seq"];
  EXPECT_GE(head, max_acked_seq.load());
  // Finish reading from each reader's cursor, then compare with 1..head.
  auto finish_ws = [&] {
    client::ws_connection ws;
    const uint64_t since = ws_got.empty() ? 0 : ws_got.back();
    ASSERT_TRUE(ws.connect("127.0.0.1", proc.port(), "/stream?context=live&since=" + std::to_string(since)));
    while (ws_got.empty() || ws_got.back() < head) {
      auto m = ws.read(std::chrono::seconds(10));
      ASSERT_TRUE(m && *m) << "ws stalled at " << (ws_got.empty() ? 0 : ws_got.back());
      auto j = json::parse(**m);
      if (j["type"].is_number_integer()) ws_got.push_back(j["seq"]);
    }
  };
  finish_ws();
  std::vector<uint64_t> expect;
  for (uint64_t s = 1; s <= head; ++s) expect.push_back(s);
  EXPECT_EQ(ws_got, expect);
  // SSE: everything it received before stopping is a gap-free, duplicate-free prefix.
  ASSERT_FALSE(sse_got.empty());
  for (size_t i = 0; i < sse_got.size(); ++i) ASSERT_EQ(sse_got[i], i + 1) << "sse out of order at " << i;
}

// Leases across SIGKILL: every acknowledged grant is still held by the same agent
// with the same lock_id, token and deadline; every acknowledged release stays
// released; the next token is above every token issued before.
TEST_P(CrashTest, Sigkill_LocksKeepHoldersIdsDeadlinesAndTokens) {
  temp_dir dir;
  server_process proc(dir.str() + "/data", GetParam(), dir.str());
  proc.start();
  std::mutex mu;
  std::map<std::string, json> held;        // resource → acknowledged lease
  std::set<std::string> released, unknown;  // acknowledged releases; in flight at the kill
  std::atomic<uint64_t> max_token{0};
  std::atomic<size_t> ops{0};
  auto churn = [&](int w) {
    client::http_connection c("127.0.0.1", proc.port(), std::chrono::seconds(5));
    for (int i = 0;; ++i) {
      const std::string res = "w" + std::to_string(w) + "/r" + std::to_string(i % 16);
      const std::string agent = "agent-" + std::to_string(w);
      json lease;
      {
        std::lock_guard lock(mu);
        if (auto it = held.find(res); it != held.end()) lease = it->second;
      }
      if (lease.is_null()) {
        {
          std::lock_guard lock(mu);
          unknown.insert(res);
        }
        auto r = c.request("POST", "/locks", json({{"resource_path", res}, {"agent_id", agent}, {"ttl_seconds", 600}}).dump());
        if (!r) return;
        ASSERT_EQ(r->status, 200u) << r->body;
        auto l = json::parse(r->body)["lock"];
        uint64_t t = l["fencing_token"], prev = max_token;
        while (t > prev && !max_token.compare_exchange_weak(prev, t)) {}
        std::lock_guard lock(mu);
        unknown.erase(res);
        released.erase(res);
        held[res] = l;
      } else {
        {
          std::lock_guard lock(mu);
          unknown.insert(res);
        }
        auto r = c.request("DELETE", "/locks/" + res + "?agent_id=" + agent + "&lock_id=" + lease["lock_id"].get<std::string>());
        if (!r) return;
        ASSERT_EQ(r->status, 200u) << r->body;
        std::lock_guard lock(mu);
        unknown.erase(res);
        held.erase(res);
        released.insert(res);
      }
      ++ops;
    }
  };
  std::vector<std::thread> ts;
  for (int w = 0; w < 4; ++w) ts.emplace_back(churn, w);
  ASSERT_TRUE(wait_until([&] { return ops >= 400; }, std::chrono::seconds(60)));
  proc.kill9();
  for (auto& t : ts) t.join();
  proc.start();
  client::http_connection c("127.0.0.1", proc.port());
  for (const auto& [res, lease] : held) {
    if (unknown.contains(res)) continue;
    auto r = c.request("GET", "/locks/" + res);
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200u) << "acknowledged lease on " << res << " lost";
    auto now = json::parse(r->body)["lock"];
    EXPECT_EQ(now["holder_agent"], lease["holder_agent"]);
    EXPECT_EQ(now["lock_id"], lease["lock_id"]);
    EXPECT_EQ(now["fencing_token"], lease["fencing_token"]);
    EXPECT_EQ(now["expires_at"], lease["expires_at"]);
  }
  for (const auto& res : released) {
    if (unknown.contains(res)) continue;
    EXPECT_EQ(c.request("GET", "/locks/" + res)->status, 404u) << "acknowledged release of " << res << " undone";
  }
  auto next = c.request("POST", "/locks", json({{"resource_path", "after"}, {"agent_id", "z"}}).dump());
  ASSERT_EQ(next->status, 200u);
  EXPECT_GT(json::parse(next->body)["lock"]["fencing_token"].get<uint64_t>(), max_token.load());
  EXPECT_GT(held.size() + released.size(), 20u);
}

INSTANTIATE_TEST_SUITE_P(Durability, CrashTest, ::testing::Values("sync", "relaxed"));

// Search: SIGKILL while the indexer has a backlog and uncommitted documents (a
// 300 ms commit interval guarantees some at the moment of the kill); after the
// restart every acknowledged unit becomes searchable, exactly once. Every wait is
// a hang guard (the index settles when it settles); sanitizer builds write fewer
// batches per round instead of waiting longer.
class SearchCrashTest : public ::testing::TestWithParam<std::string> {};

TEST_P(SearchCrashTest, Sigkill_DuringHeavyIndexing_EveryAcknowledgedUnitSearchableOnce) {
  temp_dir dir;
  server_process proc(dir.str() + "/data", "sync", dir.str(),
                      {"--set", "search.commit_interval_ms=300", "--set", "search.fsync=" + GetParam(),
                       "--set", "search.recent_units=2000"});
  std::mutex mu;
  std::map<std::string, std::set<std::string>> acked;  // batch tag → unit ids
  std::atomic<size_t> acked_batches{0};
  std::atomic<int> writing{0};  // writers still running
  auto writer = [&](uint16_t port, int round, int w) {
    // A transport error ends the writer: only the SIGKILL may cause one, and it
    // resets the connection at once, so the timeout is no more than a hang guard.
    client::http_connection c("127.0.0.1", port, hang_guard);
    for (int i = 0;; ++i) {
      const std::string tag = "tag" + std::to_string(round) + "x" + std::to_string(w) + "x" + std::to_string(i);
      json units = json::array();
      for (int k = 0; k < 100; ++k)
        units.push_back({{"text", tag + " entry " + std::to_string(k) + " of a long running indexing workload"},
                         {"meta", {{"worker", std::to_string(w)}}}});
      auto r = c.request("POST", "/workunits",
                         json({{"context_id", "idx/" + std::to_string(w)}, {"agent_id", "w"}, {"work_units", units}}).dump());
      if (!r) return;
      if (r->status != 201) return ADD_FAILURE() << r->status << " " << r->body;
      std::set<std::string> ids;
      const auto body = json::parse(r->body);
      for (auto& u : body["work_units"]) ids.insert(u["id"].get<std::string>());
      std::lock_guard lock(mu);
      acked[tag] = std::move(ids);
      ++acked_batches;
    }
  };
  auto search = [&](client::http_connection& c, const json& body) {
    auto r = c.request("POST", "/search", body.dump());
    EXPECT_TRUE(r && r->status == 200) << (r ? r->body : r.error().message);
    return r ? json::parse(r->body) : json::object();
  };
  auto verify = [&] {
    client::http_connection c("127.0.0.1", proc.port(), hang_guard);
    // Merges run at low priority: on a loaded machine each may take minutes. Only
    // a status that stops changing is a hang.
    json status;
    ASSERT_TRUE(wait_while_progressing(
        [&] {
          auto r = c.request("GET", "/readyz");
          return r && r->status == 200 ? json::parse(r->body, nullptr, false) : json();
        },
        [](const json& r) {
          if (!r.is_object() || !r.contains("search")) return false;
          const auto& s = r["search"];
          // No merge pending either: a merge renumbers documents, and pages read by
          // offset across one may overlap or skip.
          return s.value("state", "") == "ready" && s.value("lag", -1) == 0 && s.value("pending_merges", -1) == 0;
        },
        &status))
        << "the search index stopped settling (a hang?): " << status.dump();
    std::set<std::string> stored;
    for (int w = 0; w < 4; ++w) {
      const std::string ctx = "idx/" + std::to_string(w);
      std::string cursor;
      do {
        auto r = c.request("GET", "/workunits/idx%2F" + std::to_string(w) + "?limit=1000&cursor=" + cursor);
        ASSERT_TRUE(r && r->status == 200);
        auto body = json::parse(r->body);
        for (auto& u : body["work_units"]) stored.insert(u["id"].get<std::string>());
        cursor = body["next_cursor"];
      } while (!cursor.empty());
    }
    // The index holds exactly the stored units: none missing, none twice.
    std::multiset<std::string> indexed;
    for (size_t offset = 0;; offset += 1000) {
      auto page = search(c, {{"context_id", "idx/*"}, {"limit", 1000}, {"offset", offset}, {"snippets", false}});
      for (auto& id : page["results"]) indexed.insert(id.get<std::string>());
      if (page["results"].size() < 1000) break;
    }
    EXPECT_EQ(indexed.size(), stored.size());
    EXPECT_TRUE(std::equal(indexed.begin(), indexed.end(), stored.begin(), stored.end()));
    std::lock_guard lock(mu);
    for (const auto& [tag, ids] : acked) {
      for (const auto& id : ids) ASSERT_TRUE(stored.contains(id)) << "acknowledged unit lost: " << id;
      auto hits = search(c, {{"query", tag}, {"limit", 1000}, {"snippets", false}});
      EXPECT_EQ(std::set<std::string>(hits["results"].begin(), hits["results"].end()), ids) << tag;
    }
  };
  // Batches of 100 units acknowledged before each kill: enough to seal and merge
  // several 2000-unit recent shards.
  constexpr size_t batches_per_round = sanitized_build ? 50 : 150;
  for (int round = 0; round < 2; ++round) {
    proc.start();
    verify();
    if (::testing::Test::HasFatalFailure()) return;
    const size_t target = acked_batches + batches_per_round;
    std::vector<std::thread> writers;
    writing = 4;
    for (int w = 0; w < 4; ++w)
      writers.emplace_back([&, port = proc.port(), round, w] {
        writer(port, round, w);
        --writing;
      });
    // A writer that stopped early (an error) never adds more: stop waiting then.
    wait_while_progressing([&] { return json{acked_batches.load(), writing.load()}; },
                           [&](const json& s) { return s[0].get<size_t>() >= target || s[1].get<int>() < 4; });
    const size_t written = acked_batches;
    proc.kill9();  // also on a failure: the writers end with the server
    for (auto& t : writers) t.join();
    ASSERT_GE(written, target) << "batches acknowledged before the kill (a writer failed, or a hang)";
  }
  proc.start();
  verify();
  EXPECT_GE(acked.size(), 2 * batches_per_round);
}

INSTANTIATE_TEST_SUITE_P(IndexFsync, SearchCrashTest, ::testing::Values("true", "false"));

// With search.fsync off, the index is trusted after a process crash in the same
// boot and after a clean shutdown, and rebuilt after a machine restart (a boot id
// from a file the test controls stands in for the kernel's).
TEST(SearchBootTest, UnsyncedIndexIsRebuiltOnlyAfterAMachineRestart) {
  temp_dir dir;
  const std::string boot_file = dir.str() + "/boot_id";
  auto set_boot = [&](const std::string& id) { std::ofstream(boot_file, std::ios::trunc) << id << "\n"; };
  set_boot("boot-1");
  server_process proc(dir.str() + "/data", "sync", dir.str(),
                      {"--set", "search.fsync=false", "--set", "search.boot_id_file=" + boot_file});
  size_t written = 0;
  auto write_and_check = [&] {
    client::http_connection c("127.0.0.1", proc.port(), std::chrono::seconds(30));
    json units = json::array();
    for (int i = 0; i < 50; ++i) units.push_back({{"text", "durable note " + std::to_string(written + size_t(i))}});
    auto w = c.request("POST", "/workunits", json({{"context_id", "boot"}, {"agent_id", "a"}, {"work_units", units}}).dump());
    ASSERT_TRUE(w && w->status == 201);
    written += 50;
    ASSERT_TRUE(wait_until([&] {
      auto r = c.request("POST", "/search", json({{"query", "durable"}, {"limit", 1000}, {"snippets", false}}).dump());
      return r && r->status == 200 && json::parse(r->body)["total_count"] == written;
    }, std::chrono::seconds(60))) << "not all " << written << " units searchable";
  };
  const std::string rebuilt = "the machine restarted";
  proc.start();
  write_and_check();
  proc.kill9();

  proc.start();  // same boot: the OS kept every write
  EXPECT_EQ(proc.log_text().find("replacing the index"), std::string::npos) << proc.log_text();
  write_and_check();
  proc.kill9();

  set_boot("boot-2");  // a machine restart after a crash: unsynced writes may be gone
  proc.start();
  EXPECT_NE(proc.log_text().find(rebuilt), std::string::npos) << proc.log_text();
  write_and_check();
  EXPECT_EQ(proc.terminate(), 0);

  set_boot("boot-3");  // a machine restart after a clean shutdown: everything was synced
  proc.start();
  EXPECT_EQ(proc.log_text().find("replacing the index"), std::string::npos) << proc.log_text();
  write_and_check();
}


// Vectors survive SIGKILL: every acknowledged client vector is stored exactly and
// found again by semantic search, and every acknowledged text unit gets its vector
// from the embedding endpoint once the server is back; none twice.
TEST(VectorCrashTest, Sigkill_WithVectorsInFlight_KeepsEveryAcknowledgedVector) {
  temp_dir dir;
  fake_embedder endpoint(16);
  server_process proc(dir.str() + "/data", "sync", dir.str(),
                      {"--set", "search.embeddings.url=" + endpoint.url(), "--set", "search.embeddings.model=bow",
                       "--set", "search.embeddings.batch_size=8"});
  constexpr size_t dim = 24;
  std::mutex mu;
  std::map<std::string, std::vector<float>> client_vectors;  // acknowledged unit → its vector
  std::map<std::string, std::string> text_units;             // acknowledged unit → its text
  auto writer = [&](uint16_t port, int round, int w) {
    // A transport error ends the writer: only the SIGKILL may cause one, and it
    // resets the connection at once, so the timeout is no more than a hang guard.
    client::http_connection c("127.0.0.1", port, hang_guard);
    std::mt19937 rng(unsigned(round * 100 + w));
    std::normal_distribution<float> n;
    for (int i = 0;; ++i) {
      json units = json::array();
      std::vector<std::vector<float>> vs;
      std::vector<std::string> texts;
      for (int k = 0; k < 20; ++k) {
        const std::string text = "round " + std::to_string(round) + " worker " + std::to_string(w) + " item " +
                                 std::to_string(i) + "-" + std::to_string(k);
        if (w < 2) {
          std::vector<float> v(dim);
          for (auto& x : v) x = n(rng);
          units.push_back({{"text", text}, {"embedding", v}, {"embedding_model", "client"}});
          vs.push_back(std::move(v));
        } else {
          units.push_back({{"text", text}});
          texts.push_back(text);
        }
      }
      auto r = c.request("POST", "/workunits",
                         json({{"context_id", "vec/" + std::to_string(w)}, {"agent_id", "w"}, {"work_units", units}}).dump());
      if (!r) return;
      if (r->status != 201) return ADD_FAILURE() << r->status << " " << r->body;
      const auto body = json::parse(r->body);
      std::lock_guard lock(mu);
      for (size_t k = 0; k < body["work_units"].size(); ++k) {
        const std::string id = body["work_units"][k]["id"];
        if (w < 2) client_vectors[id] = vs[k];
        else text_units[id] = texts[k];
      }
    }
  };
  auto verify = [&](bool final_round) {
    client::http_connection c("127.0.0.1", proc.port(), std::chrono::seconds(30));
    std::lock_guard lock(mu);
    const size_t expected = client_vectors.size() + text_units.size();
    ASSERT_TRUE(wait_until([&] {
      auto r = c.request("GET", "/readyz");
      if (!r || r->status != 200) return false;
      auto s = json::parse(r->body)["search"];
      return s["vectors"]["lag"] == 0 && s["embedder"]["backlog"] == 0 && s["vectors"]["count"] >= expected;
    }, std::chrono::seconds(sanitized_build ? 600 : 120))) << proc.log_text().substr(0, 2000);
    for (const auto& [id, v] : client_vectors) {
      auto r = c.request("GET", "/workunit/" + id + "?include=embedding");
      ASSERT_TRUE(r && r->status == 200);
      ASSERT_EQ(json::parse(r->body)["work_unit"]["embedding"].get<std::vector<float>>(), v) << id;
    }
    for (const auto& [id, text] : text_units) {
      auto r = c.request("GET", "/workunit/" + id + "?include=embedding");
      ASSERT_TRUE(r && r->status == 200);
      ASSERT_EQ(json::parse(r->body)["work_unit"]["embedding"].get<std::vector<float>>(),
                fake_embedder::embed(text, 16)) << id;
    }
    // The graph is usable: a sample of units is found by its own vector.
    size_t n = 0;
    for (const auto& [id, v] : client_vectors) {
      if (n++ % 97) continue;
      auto r = c.request("POST", "/search",
                         json({{"vector", v}, {"embedding_model", "client"}, {"limit", 1}, {"snippets", false}}).dump());
      ASSERT_TRUE(r && r->status == 200);
      EXPECT_EQ(json::parse(r->body)["results"], json::array({id}));
    }
    if (final_round) {
      // One vector per stored unit (acknowledged or not: a batch may commit just
      // before the kill, unacknowledged), none twice.
      size_t stored = 0;
      for (int w = 0; w < 3; ++w) {
        std::string cursor;
        do {
          auto r = c.request("GET", "/workunits/vec%2F" + std::to_string(w) + "?limit=1000&cursor=" + cursor);
          ASSERT_TRUE(r && r->status == 200);
          auto body = json::parse(r->body);
          stored += body["work_units"].size();
          cursor = body["next_cursor"];
        } while (!cursor.empty());
      }
      ASSERT_TRUE(wait_until([&] {
        auto r = c.request("GET", "/readyz");
        auto s = json::parse(r->body)["search"];
        return s["vectors"]["count"] == stored && s["embedder"]["backlog"] == 0;
      }, std::chrono::seconds(60))) << c.request("GET", "/readyz")->body << " stored " << stored;
    }
  };
  for (int round = 0; round < 2; ++round) {
    proc.start();
    verify(false);
    if (::testing::Test::HasFatalFailure()) return;
    // Sanitizer builds write a tenth: their graphs then stay within hnswlib's first
    // allocation (see tests/tsan.supp) and catching up fits the waits. Each kind
    // has its own target: how the three writers share the machine varies, and a
    // count of all requests let the text writer take more than its third (3,760
    // client vectors once, against the 4,000 checked at the end).
    size_t vector_target = 0, text_target = 0;
    {
      std::lock_guard lock(mu);
      vector_target = client_vectors.size() + (sanitized_build ? 100 : 2000);
      text_target = text_units.size() + (sanitized_build ? 50 : 1000);
    }
    std::vector<std::thread> writers;
    for (int w = 0; w < 3; ++w) writers.emplace_back(writer, proc.port(), round, w);
    ASSERT_TRUE(wait_until([&] {
      std::lock_guard lock(mu);
      return client_vectors.size() >= vector_target && text_units.size() >= text_target;
    }, std::chrono::seconds(120)));
    proc.kill9();
    for (auto& t : writers) t.join();
  }
  proc.start();
  verify(true);
  EXPECT_GE(client_vectors.size(), sanitized_build ? 200u : 4000u);
  EXPECT_GE(text_units.size(), sanitized_build ? 100u : 2000u);
}

}  // namespace
}  // namespace engram::test
