// engram-agents: the agent runtime (tasks, presence) against a running server over
// loopback. Latencies are exact samples, sorted.
//
//   engram-agents tasks      --port P --connections 1 --seconds 10
//       claim + complete of a fresh task per operation (two durable commits); the
//       create before it is not timed.
//   engram-agents stranding  --port P --tasks 40 --ttl-ms 1000
//       claims tasks that are never renewed and times, for each, from its claim's
//       expiry (claim_expires_at) to the task_stranded event arriving at a WebSocket
//       subscriber of the context.
//   engram-agents heartbeats --port P --pid PID --agents 1000 --interval-ms 5000 --seconds 30
//       agents heartbeating into contexts (each also holding a task claim it
//       renews); reports heartbeat latency and the server's CPU and RSS from /proc.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

#include "bench_common.hpp"
#include "engram/http_connection.hpp"
#include "engram/stream_connections.hpp"

namespace {

using json = nlohmann::json;
using steady = std::chrono::steady_clock;
using engram::bench::expect;
using engram::bench::percentile;

struct settings {
  std::string host = "127.0.0.1";
  uint16_t port = 8080;
  unsigned connections = 1;
  double seconds = 10;
  unsigned tasks = 40;
  unsigned ttl_ms = 1000;
  unsigned agents = 1000;
  unsigned interval_ms = 5000;
  unsigned contexts = 10;
  int pid = 0;
  std::string run = std::to_string(::getpid());  // keeps task ids unique across runs on one server
};

void print_latencies(const char* what, std::vector<uint64_t> ns, size_t errors, double elapsed,
                     const std::string& first_error) {
  std::sort(ns.begin(), ns.end());
  auto us = [&](double p) { return percentile(ns, p) / 1000.0; };
  std::printf("%s ops=%zu errors=%zu ops/s=%.0f p50=%.0fus p99=%.0fus p999=%.0fus max=%.0fus\n", what, ns.size(), errors,
              elapsed > 0 ? double(ns.size()) / elapsed : 0.0, us(0.5), us(0.99), us(0.999),
              ns.empty() ? 0.0 : double(ns.back()) / 1000.0);
  if (errors) std::printf("  first error: %s\n", first_error.c_str());
}

uint64_t since_ns(steady::time_point t0) {
  return uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(steady::now() - t0).count());
}

int64_t wall_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

int64_t ts_ns(const json& ts) { return ts["seconds"].get<int64_t>() * 1'000'000'000 + ts["nanos"].get<int64_t>(); }

void run_tasks(const settings& s) {
  std::vector<std::vector<uint64_t>> lat(s.connections);
  std::vector<size_t> errors(s.connections, 0);
  std::vector<std::string> first(s.connections);
  std::vector<std::thread> threads;
  const auto start = steady::now();
  const auto end = start + std::chrono::duration_cast<steady::duration>(std::chrono::duration<double>(s.seconds));
  for (unsigned w = 0; w < s.connections; ++w)
    threads.emplace_back([&, w] {
      engram::client::http_connection c(s.host, s.port);
      const std::string agent = "bench-agent-" + std::to_string(w);
      const std::string ctx = "bench/tasks-" + std::to_string(w);
      auto fail = [&](std::string e) {
        if (errors[w]++ == 0) first[w] = std::move(e);
      };
      for (uint64_t i = 0; steady::now() < end; ++i) {
        const std::string id = "t-" + s.run + "-" + std::to_string(w) + "-" + std::to_string(i);
        auto r = c.request("POST", "/contexts/" + ctx + "/tasks", json({{"task_id", id}, {"title", "bench"}}).dump());
        if (auto e = expect(r, 201); !e.empty()) {
          fail(e);
          continue;
        }
        const auto t0 = steady::now();
        r = c.request("POST", "/tasks/" + id + "/claim", json({{"agent_id", agent}, {"ttl_seconds", 30}}).dump());
        if (auto e = expect(r, 200); !e.empty()) {
          fail(e);
          continue;
        }
        const uint64_t fence = json::parse(r->body)["lock"]["fencing_token"];
        r = c.request("POST", "/tasks/" + id + "/complete", json({{"agent_id", agent}, {"fence", fence}}).dump());
        if (auto e = expect(r, 200); !e.empty()) {
          fail(e);
          continue;
        }
        lat[w].push_back(since_ns(t0));
      }
    });
  for (auto& t : threads) t.join();
  std::vector<uint64_t> all;
  size_t errs = 0;
  std::string first_error;
  for (unsigned w = 0; w < s.connections; ++w) {
    all.insert(all.end(), lat[w].begin(), lat[w].end());
    errs += errors[w];
    if (first_error.empty()) first_error = first[w];
  }
  char what[64];
  std::snprintf(what, sizeof what, "claim+complete conns=%u", s.connections);
  print_latencies(what, std::move(all), errs, std::chrono::duration<double>(steady::now() - start).count(), first_error);
}

int run_stranding(const settings& s) {
  const std::string ctx = "bench/stranding-" + s.run;
  engram::client::ws_connection ws;
  if (auto ok = ws.connect(s.host, s.port, "/stream?context=" + ctx); !ok) {
    std::fprintf(stderr, "subscribe: %s\n", ok.error().message.c_str());
    return 1;
  }
  std::mutex mu;
  std::map<std::string, int64_t> expires;  // task id → claim_expires_at (wall ns)
  std::map<std::string, int64_t> arrived;  // task id → when task_stranded arrived (wall ns)
  std::atomic<bool> done{false};
  std::thread reader([&] {
    while (!done) {
      auto msg = ws.read(std::chrono::milliseconds(200));
      if (!msg) return;
      if (!*msg) continue;
      const auto now = wall_ns();
      auto j = json::parse(**msg, nullptr, false);
      if (j.is_object() && j.value("type", "") == "task_stranded") {
        std::lock_guard lock(mu);
        arrived[j["task"]["task_id"].get<std::string>()] = now;
      }
    }
  });
  engram::client::http_connection c(s.host, s.port);
  // Claims spaced 50 ms apart, so expiries do not all land on one timer tick.
  for (unsigned i = 0; i < s.tasks; ++i) {
    const std::string id = "s-" + s.run + "-" + std::to_string(i);
    auto r = c.request("POST", "/contexts/" + ctx + "/tasks", json({{"task_id", id}, {"title", "bench"}}).dump());
    if (auto e = expect(r, 201); !e.empty()) return std::fprintf(stderr, "create: %s\n", e.c_str()), 1;
    r = c.request("POST", "/tasks/" + id + "/claim", json({{"agent_id", "bench-dead"}, {"ttl_ms", s.ttl_ms}}).dump());
    if (auto e = expect(r, 200); !e.empty()) return std::fprintf(stderr, "claim: %s\n", e.c_str()), 1;
    {
      std::lock_guard lock(mu);
      expires[id] = ts_ns(json::parse(r->body)["task"]["claim_expires_at"]);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));  // pacing of the load, not synchronisation
  }
  const auto deadline = steady::now() + std::chrono::milliseconds(s.ttl_ms) + std::chrono::seconds(30);
  while (steady::now() < deadline) {
    {
      std::lock_guard lock(mu);
      if (arrived.size() == expires.size()) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  done = true;
  reader.join();
  std::vector<uint64_t> delays;
  for (const auto& [id, at] : arrived) delays.push_back(uint64_t(std::max<int64_t>(0, at - expires[id])));
  char what[96];
  std::snprintf(what, sizeof what, "expiry->task_stranded at subscriber ttl=%ums tasks=%u received=%zu", s.ttl_ms,
                s.tasks, delays.size());
  print_latencies(what, std::move(delays), s.tasks - std::min<size_t>(s.tasks, arrived.size()), 0, "missing events");
  return 0;
}

// utime + stime of a process in clock ticks, and its RSS in KiB.
std::pair<uint64_t, uint64_t> proc_usage(int pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), {});
  const auto close = text.rfind(')');
  if (close == std::string::npos) return {0, 0};
  std::istringstream rest(text.substr(close + 2));
  std::vector<std::string> f((std::istream_iterator<std::string>(rest)), {});
  if (f.size() < 22) return {0, 0};
  const uint64_t ticks = std::stoull(f[11]) + std::stoull(f[12]);  // fields 14 and 15
  const uint64_t rss_kib = std::stoull(f[21]) * uint64_t(sysconf(_SC_PAGESIZE)) / 1024;  // field 24
  return {ticks, rss_kib};
}

int run_heartbeats(const settings& s) {
  if (!s.pid) return std::fprintf(stderr, "--pid is required (the server's, for /proc)\n"), 1;
  // Each agent joins one of the contexts and holds one task claim (ttl 3 intervals).
  engram::client::http_connection setup(s.host, s.port);
  for (unsigned a = 0; a < s.agents; ++a) {
    const std::string agent = "hb-" + s.run + "-" + std::to_string(a);
    const std::string ctx = "bench/room-" + std::to_string(a % s.contexts);
    auto r = setup.request("POST", "/contexts/" + ctx + "/tasks", json({{"task_id", agent}, {"title", "bench"}}).dump());
    if (auto e = expect(r, 201); !e.empty()) return std::fprintf(stderr, "create: %s\n", e.c_str()), 1;
    r = setup.request("POST", "/tasks/" + agent + "/claim", json({{"agent_id", agent}, {"ttl_ms", 3 * s.interval_ms}}).dump());
    if (auto e = expect(r, 200); !e.empty()) return std::fprintf(stderr, "claim: %s\n", e.c_str()), 1;
  }
  const auto [ticks0, rss0] = proc_usage(s.pid);
  const auto start = steady::now();
  const auto end = start + std::chrono::duration_cast<steady::duration>(std::chrono::duration<double>(s.seconds));
  // Agents spread evenly over the interval; a few connections carry them all.
  const unsigned threads_n = std::min(s.connections, s.agents);
  std::vector<std::vector<uint64_t>> lat(threads_n);
  std::vector<size_t> errors(threads_n, 0);
  std::vector<std::string> first(threads_n);
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < threads_n; ++t)
    threads.emplace_back([&, t] {
      engram::client::http_connection c(s.host, s.port);
      std::vector<unsigned> mine;
      for (unsigned a = t; a < s.agents; a += threads_n) mine.push_back(a);
      const auto interval = std::chrono::milliseconds(s.interval_ms);
      for (uint64_t round = 0;; ++round) {
        for (size_t k = 0; k < mine.size(); ++k) {
          const auto due = start + interval * round + interval * mine[k] / s.agents;
          if (due >= end) return;
          std::this_thread::sleep_until(due);  // the schedule of the simulated agents
          const unsigned a = mine[k];
          const std::string agent = "hb-" + s.run + "-" + std::to_string(a);
          const json body{{"contexts", {"bench/room-" + std::to_string(a % s.contexts)}},
                          {"progress", {{"round", round}}}};
          const auto t0 = steady::now();
          auto r = c.request("POST", "/agents/" + agent + "/heartbeat", body.dump());
          if (auto e = expect(r, 200); !e.empty()) {
            if (errors[t]++ == 0) first[t] = e;
            continue;
          }
          lat[t].push_back(since_ns(t0));
        }
      }
    });
  for (auto& th : threads) th.join();
  const double elapsed = std::chrono::duration<double>(steady::now() - start).count();
  const auto [ticks1, rss1] = proc_usage(s.pid);
  std::vector<uint64_t> all;
  size_t errs = 0;
  std::string first_error;
  for (unsigned t = 0; t < threads_n; ++t) {
    all.insert(all.end(), lat[t].begin(), lat[t].end());
    errs += errors[t];
    if (first_error.empty()) first_error = first[t];
  }
  char what[96];
  std::snprintf(what, sizeof what, "heartbeat agents=%u interval=%ums", s.agents, s.interval_ms);
  print_latencies(what, std::move(all), errs, elapsed, first_error);
  const double cpu = double(ticks1 - ticks0) / double(sysconf(_SC_CLK_TCK)) / elapsed * 100.0;
  std::printf("  server CPU %.1f%% of one core over %.0f s; RSS %.0f MiB -> %.0f MiB\n", cpu, elapsed, rss0 / 1024.0,
              rss1 / 1024.0);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"engram-agents: tasks and presence load for an Engram server (loopback only)"};
  app.fallthrough();
  settings s;
  app.add_option("--host", s.host, "server address (use loopback)");
  app.add_option("--port", s.port, "server port")->required();
  app.add_option("--connections,-c", s.connections, "concurrent keep-alive connections")->check(CLI::Range(1u, 256u));
  app.add_option("--seconds", s.seconds, "duration of a timed run")->check(CLI::Range(0.1, 3600.0));
  auto* tasks = app.add_subcommand("tasks", "claim + complete of fresh tasks");
  auto* stranding = app.add_subcommand("stranding", "claim expiry -> task_stranded at a subscriber");
  stranding->add_option("--tasks", s.tasks)->check(CLI::Range(1u, 10000u));
  stranding->add_option("--ttl-ms", s.ttl_ms)->check(CLI::Range(100u, 600000u));
  auto* heartbeats = app.add_subcommand("heartbeats", "agents heartbeating with task claims; server CPU and RSS");
  heartbeats->add_option("--agents", s.agents)->check(CLI::Range(1u, 100000u));
  heartbeats->add_option("--interval-ms", s.interval_ms)->check(CLI::Range(100u, 600000u));
  heartbeats->add_option("--contexts", s.contexts)->check(CLI::Range(1u, 10000u));
  heartbeats->add_option("--pid", s.pid, "the server's process id");
  app.require_subcommand(1);
  CLI11_PARSE(app, argc, argv);
  if (*tasks) run_tasks(s);
  if (*stranding) return run_stranding(s);
  if (*heartbeats) return run_heartbeats(s);
  return 0;
}
