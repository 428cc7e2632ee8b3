// gateway::server::post: storage answers go to the I/O thread that asked.
#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <set>

#include "gateway/server.hpp"
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

}  // namespace
}  // namespace engram::gateway
