// The SDK across real crashes: the engram binary is SIGKILLed twice and restarted
// on the same port while an SDK writer appends (riding out the outages with its
// keyed retries) and an SDK subscriber follows. The subscriber must end with the
// complete log, in order, with no duplicates, and every acknowledged append must be
// in it exactly once.
#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <set>

#include "engram/client.hpp"
#include "support/server_process.hpp"
#include "support/test_support.hpp"

namespace engram::test {
namespace {

namespace sdk = engram::client;
using namespace std::chrono_literals;

TEST(ClientCrashTest, SubscriptionAndRetriedAppendsSurviveSigkill) {
  temp_dir dir;
  server_process proc(dir.str() + "/data", "sync", dir.str());
  proc.start();
  sdk::client_options opts;
  opts.url = "http://127.0.0.1:" + std::to_string(proc.port());
  opts.agent_id = "crash-writer";
  opts.timeout = 5s;
  opts.retry.max_attempts = 1000;  // ride out each restart; bounded by max_elapsed
  opts.retry.max_elapsed = 60s;
  opts.retry.max_backoff = 200ms;
  auto c = sdk::client::create(opts);
  ASSERT_TRUE(c);

  std::mutex mu;
  std::vector<sdk::event> seen;
  std::atomic<int> disconnects{0};
  sdk::subscribe_options sopts;
  sopts.min_backoff = 20ms;
  sopts.max_backoff = 200ms;
  sopts.on_disconnected = [&](const sdk::error&) { ++disconnects; };
  auto sub = c->subscribe({"crash/sdk"}, 0, [&](const sdk::event& ev) {
    std::lock_guard lock(mu);
    seen.push_back(ev);
  }, sopts);

  constexpr int total = 400;
  std::mutex acked_mu;
  std::vector<std::string> acked;  // ids the writer was told are committed
  std::atomic<int> failures{0};
  std::thread writer([&] {
    for (int i = 0; i < total; ++i) {
      sdk::unit_input u;
      u.context_id = "crash/sdk";
      u.payload = "unit " + std::to_string(i);
      auto r = c->append(u);
      if (!r) {
        ++failures;
        continue;
      }
      std::lock_guard lock(acked_mu);
      acked.push_back(r->id);
    }
  });
  auto acked_count = [&] {
    std::lock_guard lock(acked_mu);
    return acked.size();
  };
  for (size_t threshold : {size_t(total / 4), size_t(total / 2)}) {
    ASSERT_TRUE(wait_until([&] { return acked_count() >= threshold; }, 60s));
    proc.kill9();  // mid-traffic: appends and deliveries are in flight
    proc.restart();
  }
  writer.join();
  EXPECT_EQ(failures, 0) << "keyed retries should carry every append across the restarts";

  // The log as stored, and what the subscriber delivered.
  std::vector<sdk::work_unit> log;
  for (const auto& u : c->units("crash/sdk", {.limit = 1000})) {
    ASSERT_TRUE(u) << u.error().describe();
    log.push_back(*u);
  }
  ASSERT_TRUE(wait_until([&] {
    std::lock_guard lock(mu);
    return seen.size() >= log.size();
  }, 30s)) << "delivered " << seen.size() << " of " << log.size();
  sub.stop();

  std::lock_guard lock(mu);
  ASSERT_EQ(seen.size(), log.size()) << "nothing extra delivered";
  for (size_t i = 0; i < log.size(); ++i) {
    EXPECT_EQ(seen[i].seq, i + 1) << "in order, no gap, no duplicate";
    ASSERT_TRUE(seen[i].unit);
    EXPECT_EQ(seen[i].unit->id, log[i].id);
  }
  // Every acknowledged append is stored exactly once, and nothing else was stored.
  std::set<std::string> stored;
  for (const auto& u : log) EXPECT_TRUE(stored.insert(u.id).second);
  std::lock_guard alock(acked_mu);
  EXPECT_EQ(acked.size(), size_t(total));
  for (const auto& id : acked) EXPECT_TRUE(stored.contains(id)) << id;
  EXPECT_EQ(log.size(), size_t(total)) << "a retried append committed twice, or one was lost";
  std::set<std::string> payloads;
  for (const auto& u : log) payloads.insert(u.payload);
  EXPECT_EQ(payloads.size(), size_t(total));
  EXPECT_GE(disconnects, 2) << "the subscriber should have seen both crashes";
}

}  // namespace
}  // namespace engram::test
