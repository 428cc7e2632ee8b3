// A complete tour of the Engram C++ SDK against a running server:
//
//   make run                                   # in one terminal
//   build/bin/engram-client-example [URL]      # in another (default http://127.0.0.1:8080)
//
// It follows a context live, appends to it, pages through it, searches it, and
// edits a shared file under a lease whose fencing token guards the write.
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cstdio>
#include <iostream>
#include <latch>

#include "engram/async.hpp"
#include "engram/client.hpp"

namespace ec = engram::client;
namespace asio = boost::asio;

int main(int argc, char** argv) {
  auto made = ec::client::create({.url = argc > 1 ? argv[1] : "http://127.0.0.1:8080", .agent_id = "example-agent"});
  if (!made) {
    std::cerr << made.error().describe() << "\n";
    return 2;
  }
  ec::client& c = *made;
  const std::string ctx = "examples/quickstart";

  auto health = c.health();
  if (!health) {
    std::cerr << "cannot reach the server: " << health.error().describe() << "\n";
    return 3;
  }
  std::cout << "server " << health->status << "\n";

  // 1. Follow the context live; the handler runs on the subscription's thread.
  std::latch seen(3);
  auto sub = c.subscribe({ctx}, std::nullopt, [&](const ec::event& ev) {
    if (ev.unit) {
      std::cout << "  live #" << ev.seq << " " << ec::to_string(ev.unit->type) << ": " << ev.unit->payload << "\n";
      seen.count_down();
    }
  });
  // Live from now: units committed before the server acknowledges the subscription
  // are not part of it, so wait for that before appending.
  if (!sub.wait_live(std::chrono::seconds(10))) {
    const auto why = sub.running() ? std::nullopt : sub.wait();
    std::cerr << "subscribe: not live after 10 s" << (why ? ": " + why->describe() : "") << "\n";
    return 1;
  }

  // 2. Append: retried on transient failures under one Idempotency-Key.
  auto first = c.append({.context_id = ctx, .payload = "hello from the C++ SDK", .meta = {{"lang", "c++"}}});
  if (!first) {
    std::cerr << "append: " << first.error().describe() << "\n";
    return 1;
  }
  std::vector<ec::unit_input> batch = {{.type = ec::unit_type::reasoning, .payload = "thinking about it"},
                                       {.type = ec::unit_type::task_status, .payload = "done"}};
  if (auto b = c.append_batch(ctx, batch); !b) std::cerr << "batch: " << b.error().describe() << "\n";
  seen.wait();
  sub.stop();

  // 3. Page through the whole log (newest first).
  for (const auto& u : c.units(ctx, {.limit = 2, .reverse = true})) {
    if (!u) {
      std::cerr << "list: " << u.error().describe() << "\n";
      break;
    }
    std::cout << "  #" << u->seq << " by " << u->agent_id << "\n";
  }

  // 4. Edit a shared artifact under a lease; the fencing token guards the write.
  auto edited = c.with_lock("examples/notes.md", std::chrono::seconds(10), [&](ec::lease& lease) {
    if (lease.lost()) return false;
    ec::unit_input change{.context_id = ctx, .type = ec::unit_type::file_change, .payload = "notes.md: +1 line",
                          .fence = lease.fence()};
    return c.append(change).has_value();
  });
  std::cout << "edited under lease: " << (edited && *edited ? "yes" : "no") << "\n";

  // 5. From an Asio coroutine: the call runs on the SDK's threads, not the io_context's.
  asio::io_context io;
  asio::co_spawn(io, [&]() -> asio::awaitable<void> {
    auto found = co_await ec::async_call(
        c, [&](ec::client& c) { return c.search({.query = "hello", .context_id = ctx}); }, asio::use_awaitable);
    if (found) std::cout << "search 'hello': " << found->total_count << " hit(s)\n";
    else std::cerr << "search: " << found.error().describe() << "\n";
  }, asio::detached);
  io.run();
  return 0;
}
