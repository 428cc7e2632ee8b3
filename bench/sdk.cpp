// engram-sdk-bench: what the C++ SDK costs over raw HTTP/WebSocket, measured side
// by side against one running server over loopback.
//
//   engram-sdk-bench append --port P [--ops 5000] [-c 1]
//       the same single-unit append three ways, interleaved in rounds:
//       raw POST /workunit; raw with an Idempotency-Key header (the server-side
//       cost the SDK's retry safety adds); client::append (key, JSON encode,
//       decode of the answer into work_unit, pooled connections).
//   engram-sdk-bench subscribe --port P [--rate 200] [--seconds 10]
//       one writer stamps send time in meta "t"; a raw ws_connection and an SDK
//       subscription follow the same context at the same time and record now - t.
//   engram-sdk-bench replay --port P [--units 50000]
//       seeds a context, then times a raw WS reader and an SDK subscription each
//       replaying it from since=0 (decode throughput).
#include <CLI/CLI.hpp>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "bench_common.hpp"
#include "engram/client.hpp"
#include "engram/stream_connections.hpp"

namespace {

namespace ec = engram::client;
using json = nlohmann::json;
using steady = std::chrono::steady_clock;
using engram::bench::percentile;

struct settings {
  uint16_t port = 8080;
  size_t ops = 5000;
  unsigned connections = 1;
  double rate = 200;
  double seconds = 10;
  size_t units = 50'000;
};

int64_t wall_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

void print(const char* what, std::vector<uint64_t> ns, double elapsed_s, size_t errors) {
  std::sort(ns.begin(), ns.end());
  std::printf("%-22s n=%zu errors=%zu  ", what, ns.size(), errors);
  if (elapsed_s > 0) std::printf("%.0f op/s  ", double(ns.size()) / elapsed_s);
  std::printf("p50=%.1fus p99=%.1fus p99.9=%.1fus\n", percentile(ns, 0.5) / 1e3, percentile(ns, 0.99) / 1e3,
              percentile(ns, 0.999) / 1e3);
}

ec::client make_client(const settings& s) {
  ec::client_options o;
  o.url = "http://127.0.0.1:" + std::to_string(s.port);
  o.agent_id = "sdk-bench";
  o.max_idle_connections = s.connections;
  return std::move(*ec::client::create(o));
}

// Polls `done` every millisecond until it holds or `limit` passes.
bool wait_for(const std::function<bool()>& done, std::chrono::milliseconds limit) {
  const auto deadline = steady::now() + limit;
  while (!done()) {
    if (steady::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

// --- append --------------------------------------------------------------------------
int run_append(const settings& s) {
  auto sdk = make_client(s);
  enum kind { raw, raw_keyed, via_sdk, kinds };
  const char* names[] = {"raw POST", "raw POST + key", "sdk append"};
  std::vector<std::vector<uint64_t>> lat(kinds);
  std::vector<double> busy(kinds, 0);
  std::vector<size_t> errors(kinds, 0);
  std::mutex mu;
  const std::string text(256, 'x');
  // Rounds of 100 ops per kind, interleaved, so drift (compaction, page cache) hits
  // all three alike.
  constexpr size_t round = 100;
  std::vector<ec::http_connection> raw_conns;
  for (unsigned w = 0; w < s.connections; ++w) raw_conns.emplace_back("127.0.0.1", s.port);
  for (size_t done = 0; done < s.ops; done += round) {
    for (int k = 0; k < kinds; ++k) {
      std::vector<std::thread> threads;
      const auto t0 = steady::now();
      for (unsigned w = 0; w < s.connections; ++w)
        threads.emplace_back([&, k, w] {
          auto& raw_conn = raw_conns[w];
          std::vector<uint64_t> mine;
          size_t errs = 0;
          const std::string ctx = "bench/sdk-w" + std::to_string(w);
          for (size_t i = w; i < round; i += s.connections) {
            const auto a = steady::now();
            bool ok;
            if (k == via_sdk) {
              ec::unit_input u;
              u.context_id = ctx;
              u.payload = text;
              ok = sdk.append(u).has_value();
            } else {
              const std::string body = json{{"context_id", ctx}, {"agent_id", "sdk-bench"}, {"type", 1},
                                            {"text", text}}.dump();
              ec::header_list h;
              if (k == raw_keyed) h.emplace_back("Idempotency-Key", "k-" + std::to_string(wall_ns()) + "-" + std::to_string(w));
              auto r = raw_conn.request("POST", "/workunit", body, h);
              ok = r && r->status == 201;
            }
            if (ok) mine.push_back(uint64_t((steady::now() - a).count()));
            else ++errs;
          }
          std::lock_guard lock(mu);
          lat[k].insert(lat[k].end(), mine.begin(), mine.end());
          errors[k] += errs;
        });
      for (auto& t : threads) t.join();
      busy[k] += std::chrono::duration<double>(steady::now() - t0).count();
    }
  }
  for (int k = 0; k < kinds; ++k) print(names[k], lat[k], busy[k], errors[k]);
  return 0;
}

// --- subscribe -----------------------------------------------------------------------
int run_subscribe(const settings& s) {
  auto sdk = make_client(s);
  const std::string ctx = "bench/sdk-sub-" + std::to_string(wall_ns());
  std::mutex mu;
  std::vector<uint64_t> sdk_lat, raw_lat;
  auto latency_of = [](const ec::string_map& meta) -> std::optional<uint64_t> {
    auto it = meta.find("t");
    if (it == meta.end()) return std::nullopt;
    return uint64_t(wall_ns() - std::stoll(it->second));
  };
  auto sub = sdk.subscribe({ctx}, std::nullopt, [&](const ec::event& ev) {
    if (!ev.unit) return;
    if (auto l = latency_of(ev.unit->meta)) {
      std::lock_guard lock(mu);
      sdk_lat.push_back(*l);
    }
  });
  std::atomic<bool> stop{false}, raw_ready{false};
  std::thread raw([&] {
    ec::ws_connection ws;
    if (!ws.connect("127.0.0.1", s.port, "/stream?context=" + ctx)) return;
    while (!stop) {
      auto m = ws.read(std::chrono::milliseconds(100));
      if (!m || !*m) continue;
      const auto t = wall_ns();
      auto j = json::parse(**m, nullptr, false);
      if (j.is_object() && j.value("type", json()) == "subscribe_ack") raw_ready = true;
      if (!j.is_object() || !j.contains("meta") || !j["meta"].contains("t")) continue;
      std::lock_guard lock(mu);
      raw_lat.push_back(uint64_t(t - std::stoll(j["meta"]["t"].get<std::string>())));
    }
  });
  // Both must be subscribed before the first stamped unit.
  if (!wait_for([&] { return raw_ready && !sub.cursors().empty(); }, std::chrono::seconds(10))) {
    std::fprintf(stderr, "subscribers did not start\n");
    stop = true;
    raw.join();
    return 1;
  }
  ec::http_connection writer("127.0.0.1", s.port);
  const auto period = std::chrono::duration<double>(1.0 / s.rate);
  const auto start = steady::now();
  size_t sent = 0;
  for (auto next = start; steady::now() - start < std::chrono::duration<double>(s.seconds); ++sent) {
    next += std::chrono::duration_cast<steady::duration>(period);
    std::this_thread::sleep_until(next);
    const auto body = json{{"context_id", ctx}, {"agent_id", "sdk-bench"}, {"text", "tick"},
                           {"meta", {{"t", std::to_string(wall_ns())}}}}.dump();
    writer.request("POST", "/workunit", body);
  }
  wait_for([&] {  // drain: every unit at both readers, or give up after 5 s
    std::lock_guard lock(mu);
    return raw_lat.size() >= sent && sdk_lat.size() >= sent;
  }, std::chrono::seconds(5));
  stop = true;
  raw.join();
  sub.stop();
  std::printf("sent %zu units at %.0f/s\n", sent, s.rate);
  print("raw ws receive", raw_lat, 0, sent - raw_lat.size());
  print("sdk subscribe receive", sdk_lat, 0, sent - sdk_lat.size());
  return 0;
}

// --- replay --------------------------------------------------------------------------
int run_replay(const settings& s) {
  auto sdk = make_client(s);
  const std::string ctx = "bench/sdk-replay-" + std::to_string(wall_ns());
  std::vector<ec::unit_input> batch(500);
  for (auto& u : batch) u.payload = std::string(256, 'r');
  for (size_t done = 0; done < s.units; done += batch.size())
    if (!sdk.append_batch(ctx, batch)) {
      std::fprintf(stderr, "seed failed\n");
      return 1;
    }
  const size_t total = (s.units + batch.size() - 1) / batch.size() * batch.size();
  {
    ec::ws_connection ws;
    const auto t0 = steady::now();
    if (!ws.connect("127.0.0.1", s.port, "/stream?context=" + ctx + "&since=0")) return 1;
    size_t got = 0;
    while (got < total) {
      auto m = ws.read(std::chrono::seconds(10));
      if (!m || !*m) break;
      auto j = json::parse(**m, nullptr, false);  // parse, as any real reader would
      if (j.is_object() && j.contains("seq") && !j.contains("event") && j["type"].is_number()) ++got;
    }
    const double secs = std::chrono::duration<double>(steady::now() - t0).count();
    std::printf("raw ws replay         %zu units in %.2f s  %.0f units/s\n", got, secs, double(got) / secs);
  }
  {
    std::atomic<size_t> got{0};
    const auto t0 = steady::now();
    auto sub = sdk.subscribe({ctx}, 0, [&](const ec::event& ev) {
      if (ev.unit) ++got;
    });
    wait_for([&] { return got >= total; }, std::chrono::seconds(120));
    const double secs = std::chrono::duration<double>(steady::now() - t0).count();
    sub.stop();
    std::printf("sdk subscribe replay  %zu units in %.2f s  %.0f units/s\n", got.load(), secs, double(got) / secs);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"engram-sdk-bench: C++ SDK overhead versus raw HTTP/WebSocket (loopback only)"};
  app.fallthrough();
  settings s;
  app.add_option("--port", s.port)->required();
  auto* append = app.add_subcommand("append", "raw POST vs raw POST with a key vs client::append");
  append->add_option("--ops", s.ops, "appends per kind")->check(CLI::Range(size_t(100), size_t(10'000'000)));
  append->add_option("-c,--connections", s.connections)->check(CLI::Range(1u, 256u));
  auto* subscribe = app.add_subcommand("subscribe", "publish-to-receive latency, raw WS vs SDK subscription");
  subscribe->add_option("--rate", s.rate)->check(CLI::Range(1.0, 20000.0));
  subscribe->add_option("--seconds", s.seconds)->check(CLI::Range(1.0, 600.0));
  auto* replay = app.add_subcommand("replay", "replay throughput from since=0, raw WS vs SDK subscription");
  replay->add_option("--units", s.units)->check(CLI::Range(size_t(1000), size_t(5'000'000)));
  app.require_subcommand(1);
  CLI11_PARSE(app, argc, argv);
  if (*append) return run_append(s);
  if (*subscribe) return run_subscribe(s);
  return run_replay(s);
}
