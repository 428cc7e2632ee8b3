// gateway::server::post: storage answers go to the I/O thread that asked; and
// gateway::wake_service: stream wake-ups batched per I/O thread.
#include <gtest/gtest.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <future>
#include <numeric>
#include <set>
#include <thread>
#include <vector>

#include "gateway/server.hpp"
#include "gateway/wake_service.hpp"
#include "model/io_thread.hpp"

namespace engram::gateway {
namespace {

using namespace std::chrono_literals;

// Runs post(home, …) and returns model::this_io_thread where it ran (-2: it did not run).
int where_it_runs(server& s, int home) {
  auto ran = std::make_shared<std::promise<int>>();
  auto on = ran->get_future();
  s.post(home, [ran] { ran->set_value(model::this_io_thread); });
  return on.wait_for(10s) == std::future_status::ready ? on.get() : -2;
}

TEST(ServerPost, RunsOnTheNamedIOThreadAndSpreadsTheRest) {
  options o;
  o.port = 0;
  o.threads = 2;
  server s(o, [](request, responder respond) { respond(response{}); }, nullptr, nullptr);
  ASSERT_TRUE(s.start());
  EXPECT_EQ(where_it_runs(s, 0), 0);
  EXPECT_EQ(where_it_runs(s, 1), 1);
  EXPECT_EQ(where_it_runs(s, 1), 1);
  // No home (-1), or one that is not an I/O thread of this server: the threads in turn.
  std::set<int> ran_on;
  for (const int home : {-1, -1, 7, 7}) ran_on.insert(where_it_runs(s, home));
  EXPECT_EQ(ran_on, (std::set<int>{0, 1}));
  EXPECT_EQ(model::this_io_thread, -1) << "the test's own thread is no I/O thread";
  s.stop(1s);
}


// --- wake_service: wake-ups from other threads, one handler per round ------------

// Records each wake() and the thread it ran on.
struct woken final : wakeable {
  explicit woken(std::vector<int>& log, int id) : log(log), id(id) {}
  void wake() override {
    log.push_back(id);
    thread = std::this_thread::get_id();
  }
  std::vector<int>& log;
  int id;
  std::thread::id thread;
};

TEST(WakeService, WakesFromAnotherThreadRunInOneHandlerInOrder) {
  boost::asio::io_context ioc(1);
  auto& svc = boost::asio::use_service<wake_service>(ioc);
  EXPECT_EQ(&svc, &boost::asio::use_service<wake_service>(ioc)) << "one per io_context";
  std::vector<int> log;
  std::vector<std::shared_ptr<woken>> sessions;
  for (int i = 0; i < 100; ++i) sessions.push_back(std::make_shared<woken>(log, i));
  auto gone = std::make_shared<woken>(log, -1);
  std::thread([&] {
    for (int i = 0; i < 50; ++i) svc.wake(sessions[size_t(i)]);
    svc.wake(gone);
    for (int i = 50; i < 100; ++i) svc.wake(sessions[size_t(i)]);
  }).join();
  gone.reset();  // destroyed before its turn: skipped
  EXPECT_EQ(ioc.poll(), 1u) << "101 wake-ups, one handler";
  std::vector<int> in_order(100);
  std::iota(in_order.begin(), in_order.end(), 0);
  EXPECT_EQ(log, in_order);
  EXPECT_EQ(sessions.front()->thread, std::this_thread::get_id()) << "woken on the io_context's thread";
}

// A session woken again while its round runs (its pump left more queued) goes in
// the next round, in a handler of its own: never lost, never run re-entrantly.
struct wakes_again final : wakeable {
  wake_service& svc;
  std::weak_ptr<wakeable> self;
  int runs = 0, depth = 0;
  explicit wakes_again(wake_service& s) : svc(s) {}
  void wake() override {
    EXPECT_EQ(++depth, 1) << "woken inside its own wake()";
    if (++runs == 1) svc.wake(self);
    --depth;
  }
};

TEST(WakeService, AWakeDuringARoundRunsInTheNext) {
  boost::asio::io_context ioc(1);
  auto& svc = boost::asio::use_service<wake_service>(ioc);
  auto s = std::make_shared<wakes_again>(svc);
  s->self = s;
  svc.wake(s);
  EXPECT_EQ(ioc.run_one(), 1u);
  EXPECT_EQ(s->runs, 1);
  EXPECT_EQ(ioc.poll(), 1u);
  EXPECT_EQ(s->runs, 2);
  EXPECT_EQ(ioc.poll(), 0u) << "nothing left queued";
}

// Wakes racing the rounds that run them, made as streams make them: a session is
// queued at most once until its wake() runs (engine::stream's notified flag), so a
// wake lost between a push and a round would leave that session stale for good.
struct rearming final : wakeable {
  std::atomic<bool> notified{false};
  std::atomic<uint64_t> published{0}, seen{0};
  void wake() override {
    notified = false;  // as stream::poll does: clear, then take what is there
    seen = published.load();
  }
};

TEST(WakeService, WakesRacingTheRoundsAreNeverLost) {
  boost::asio::io_context ioc(1);
  auto& svc = boost::asio::use_service<wake_service>(ioc);
  auto work = boost::asio::make_work_guard(ioc);
  std::thread io([&] { ioc.run(); });
  std::vector<std::shared_ptr<rearming>> sessions;
  for (int i = 0; i < 64; ++i) sessions.push_back(std::make_shared<rearming>());
  for (uint64_t n = 1; n <= 200'000; ++n) {
    const auto& s = sessions[n % sessions.size()];
    s->published = n;
    if (!s->notified.exchange(true)) svc.wake(s);
  }
  auto caught_up = [&] {
    return std::ranges::all_of(sessions, [](const auto& s) { return s->seen == s->published; });
  };
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (!caught_up() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(1ms);  // polling an observable state, not a sync
  work.reset();
  ioc.stop();
  io.join();
  EXPECT_TRUE(caught_up());
}

}  // namespace
}  // namespace engram::gateway
