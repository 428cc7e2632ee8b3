// Appends over the WebSocket under SIGKILL: a client pipelines keyed appends on one
// socket while the server is killed. After the restart every acknowledged unit is
// stored; resending every unacknowledged one with its key stores it exactly once
// (replayed when it had committed unanswered), so each context holds each text once.
#include <gtest/gtest.h>

#include <map>
#include <set>

#include "engram/stream_connections.hpp"
#include "support/server_process.hpp"
#include "support/test_support.hpp"

namespace engram::test {
namespace {

using namespace std::chrono_literals;

std::string append_message(int i) {
  return json({{"type", "append"},
               {"request_id", std::to_string(i)},
               {"idempotency_key", "k-" + std::to_string(i)},
               {"work_unit", {{"context_id", "wsc/" + std::to_string(i % 4)}, {"agent_id", "a"}, {"text", "t" + std::to_string(i)}}}})
      .dump();
}

// Sends [from, to) pipelined (at most `window` unanswered) and collects the acks
// until the socket fails or all are answered. Returns request id → unit id.
std::map<int, std::string> pump(client::ws_connection& ws, int from, int to, size_t window, std::set<int>* sent) {
  std::map<int, std::string> acked;
  int next = from;
  size_t waiting = 0;
  while (acked.size() < size_t(to - from)) {
    while (next < to && waiting < window) {
      if (!ws.send(append_message(next))) return acked;
      if (sent) sent->insert(next);
      ++next, ++waiting;
    }
    auto m = ws.read(5s);
    if (!m || ws.closed()) return acked;
    if (!*m) continue;
    auto j = json::parse(**m);
    if (!j["type"].is_string()) continue;
    if (j["type"] == "append_ack") {
      acked[std::stoi(j["request_id"].get<std::string>())] = j["work_unit"]["id"];
      --waiting;
    } else if (j["type"] == "append_error") {
      ADD_FAILURE() << j.dump();
      return acked;
    }
  }
  return acked;
}

TEST(WsAppendCrashTest, Sigkill_MidStream_AckedStoredAndRetriesStoreOnce) {
  temp_dir dir;
  server_process proc(dir.str() + "/data", "sync", dir.str());
  proc.start();
  const int total = 3000;
  std::set<int> sent;
  std::map<int, std::string> acked;
  std::thread client([&] {
    client::ws_connection ws;
    if (!ws.connect("127.0.0.1", proc.port(), "/stream?context=none")) return;
    acked = pump(ws, 0, total, 64, &sent);
  });
  ASSERT_TRUE(wait_until([&] {
    client::http_connection c("127.0.0.1", proc.port(), 5s);
    auto r = c.request("GET", "/contexts/wsc/0");
    return r && r->status == 200 && json::parse(r->body)["context"]["head_seq"].get<uint64_t>() >= 100;
  }, 60s));
  proc.kill9();
  client.join();
  ASSERT_LT(acked.size(), size_t(total)) << "the kill came too late to cut the stream";
  proc.restart();
  client::http_connection c("127.0.0.1", proc.port(), 30s);
  for (const auto& [i, id] : acked) {
    auto r = c.request("GET", "/workunit/" + id);
    ASSERT_TRUE(r && r->status == 200) << "acked unit " << i << " lost";
  }
  // Resend everything sent but not acknowledged, with the same keys.
  client::ws_connection ws;
  ASSERT_TRUE(ws.connect("127.0.0.1", proc.port(), "/stream?context=none"));
  std::vector<int> retry;
  for (int i : sent)
    if (!acked.contains(i)) retry.push_back(i);
  for (int i : retry) {
    ASSERT_TRUE(ws.send(append_message(i)));
    bool answered = false;
    while (!answered) {
      auto m = ws.read(30s);
      ASSERT_TRUE(m && *m) << "no answer to the retry of " << i;
      auto j = json::parse(**m);
      if (!j["type"].is_string()) continue;
      if (j["type"] != "append_ack" && j["type"] != "append_error") continue;  // connected, subscribe_ack, heartbeats
      ASSERT_EQ(j["type"], "append_ack") << j.dump();
      answered = true;
    }
  }
  // Each context holds each sent text exactly once, in a gap-free log.
  std::map<std::string, int> seen;
  size_t units = 0;
  for (int k = 0; k < 4; ++k) {
    auto r = c.request("GET", "/workunits/wsc%2F" + std::to_string(k) + "?limit=1000&text=1");
    ASSERT_TRUE(r && r->status == 200);
    const auto body = json::parse(r->body);
    uint64_t expect_seq = 1;
    for (const auto& u : body["work_units"]) {
      EXPECT_EQ(u["seq"], expect_seq++);
      ++seen[u["text"].get<std::string>()];
      ++units;
    }
  }
  EXPECT_EQ(units, sent.size());
  for (const auto& [text, count] : seen) EXPECT_EQ(count, 1) << text << " stored " << count << " times";
}

}  // namespace
}  // namespace engram::test
