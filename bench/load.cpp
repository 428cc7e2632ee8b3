// engram-load: drives a running Engram server over loopback and reports latency
// percentiles and throughput. One keep-alive connection per worker thread.
//
//   engram-load write --port P --connections 16 --seconds 10 --payload-bytes 300 [--contexts 1]
//   engram-load seed  --port P --units 1000000 --target-units 100000
//   engram-load read  --port P --connections 16 --seconds 10 --context bench/target
//   engram-load mcp   --port P --connections 1 --seconds 10 --limit 10
#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "bench_common.hpp"
#include "engram/client.hpp"
#include "engram/http_connection.hpp"

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
  size_t payload_bytes = 300;
  std::string context = "bench/target";
  size_t limit = 100;
  unsigned contexts = 0;  // write: contexts the workers share; 0: one per worker
  size_t units = 1'000'000;
  size_t target_units = 100'000;
  size_t batch = 1000;
  unsigned resources = 1;
  std::string label;
  bool sdk = false;
};

struct worker_result {
  std::vector<uint64_t> latencies_ns;
  size_t errors = 0;
  std::string first_error;
};

void report(const settings& s, const std::string& what, std::vector<worker_result>& results, double elapsed) {
  std::vector<uint64_t> all;
  size_t errors = 0;
  std::string first_error;
  for (auto& r : results) {
    all.insert(all.end(), r.latencies_ns.begin(), r.latencies_ns.end());
    errors += r.errors;
    if (first_error.empty()) first_error = r.first_error;
  }
  std::sort(all.begin(), all.end());
  auto pct = [&](double p) { return percentile(all, p) / 1000.0; };  // ns → µs
  std::printf("%s%s conns=%u requests=%zu errors=%zu rps=%.0f p50=%.0fus p99=%.0fus p999=%.0fus max=%.0fus\n",
              s.label.empty() ? "" : (s.label + " ").c_str(), what.c_str(), s.connections, all.size(), errors,
              double(all.size()) / elapsed, pct(0.50), pct(0.99), pct(0.999),
              all.empty() ? 0.0 : double(all.back()) / 1000.0);
  if (errors) std::printf("  first error: %s\n", first_error.c_str());
}

// Runs `op` on `connections` threads for the configured duration.
template <class Op>
void timed(const settings& s, const std::string& what, Op op) {
  std::vector<worker_result> results(s.connections);
  std::vector<std::thread> threads;
  const auto start = steady::now();
  const auto end = start + std::chrono::duration_cast<steady::duration>(std::chrono::duration<double>(s.seconds));
  for (unsigned w = 0; w < s.connections; ++w) {
    threads.emplace_back([&, w] {
      engram::client::http_connection c(s.host, s.port);
      auto& res = results[w];
      res.latencies_ns.reserve(100'000);
      for (uint64_t i = 0; steady::now() < end; ++i) {
        const auto t0 = steady::now();
        std::string err = op(c, w, i);
        const auto t1 = steady::now();
        if (err.empty()) {
          res.latencies_ns.push_back(uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count()));
        } else if (res.errors++ == 0) {
          res.first_error = err;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  report(s, what, results, std::chrono::duration<double>(steady::now() - start).count());
}

void run_write(const settings& s) {
  const std::string payload(s.payload_bytes, 'x');
  // Each worker writes its own context by default, as agents usually do; all share
  // the committer. With --contexts N, worker w writes context w mod N.
  auto context = [&](unsigned w) { return "bench/w" + std::to_string(s.contexts ? w % s.contexts : w); };
  if (s.sdk) {
    // The SDK as agents use it: one thread-safe client shared by every worker
    // (pooled keep-alive connections), a generated Idempotency-Key per append.
    engram::client::client_options o;
    o.url = "http://" + s.host + ":" + std::to_string(s.port);
    o.agent_id = "bench";
    o.max_idle_connections = s.connections;
    auto sdk = engram::client::client::create(o);
    if (!sdk) {
      std::fprintf(stderr, "%s\n", sdk.error().describe().c_str());
      return;
    }
    timed(s, "sdk-write", [&](engram::client::http_connection&, unsigned w, uint64_t i) {
      engram::client::unit_input u;
      u.context_id = context(w);
      u.payload = payload;
      u.meta = {{"i", std::to_string(i)}};
      auto r = sdk->append(u);
      return r ? std::string() : r.error().describe();
    });
    return;
  }
  timed(s, "write", [&](engram::client::http_connection& c, unsigned w, uint64_t i) {
    const auto body = json({{"context_id", context(w)},
                            {"agent_id", "bench"},
                            {"type", 1},
                            {"text", payload},
                            {"meta", {{"i", std::to_string(i)}}}}).dump();
    return expect(c.request("POST", "/workunit", body), 201);
  });
}

void run_read(const settings& s) {
  const std::string target = "/workunits/" + s.context + "?limit=" + std::to_string(s.limit) + "&reverse=true";
  // The context id may contain '/', which the route accepts unencoded.
  timed(s, "read", [&](engram::client::http_connection& c, unsigned, uint64_t) {
    return expect(c.request("GET", target), 200);
  });
}

// Acquire + release as one operation. With `resources` < connections the workers
// contend (waiting in the server's FIFO queue); with one resource per worker they
// do not.
void run_locks(const settings& s) {
  timed(s, "lock", [&](engram::client::http_connection& c, unsigned w, uint64_t) {
    const std::string res = "bench/res-" + std::to_string(w % s.resources);
    const std::string agent = "bench-" + std::to_string(w);
    auto r = c.request("POST", "/locks", json({{"resource_path", res}, {"agent_id", agent}, {"ttl_seconds", 30},
                                               {"wait_ms", 30000}}).dump());
    if (auto err = expect(r, 200); !err.empty()) return err;
    const std::string id = json::parse(r->body)["lock"]["lock_id"];
    return expect(c.request("DELETE", "/locks/" + res + "?agent_id=" + agent + "&lock_id=" + id), 200);
  });
}

// Appends carrying a fence for a lease each worker holds, to compare with `write`.
void run_fenced(const settings& s) {
  const std::string payload(s.payload_bytes, 'x');
  std::vector<uint64_t> tokens(s.connections);
  {
    engram::client::http_connection c(s.host, s.port);
    for (unsigned w = 0; w < s.connections; ++w) {
      auto r = c.request("POST", "/locks", json({{"resource_path", "bench/fence-" + std::to_string(w)},
                                                 {"agent_id", "bench"}, {"ttl_seconds", 3600}}).dump());
      if (!r || r->status != 200) {
        std::fprintf(stderr, "could not take the fencing lease\n");
        return;
      }
      tokens[w] = json::parse(r->body)["lock"]["fencing_token"];
    }
  }
  timed(s, "fenced-write", [&](engram::client::http_connection& c, unsigned w, uint64_t) {
    const auto body = json({{"context_id", "bench/w" + std::to_string(w)}, {"agent_id", "bench"}, {"type", 1},
                            {"text", payload}, {"fence", {{"resource", "bench/fence-" + std::to_string(w)}, {"token", tokens[w]}}}})
                          .dump();
    return expect(c.request("POST", "/workunit", body), 201);
  });
}

// The MCP tools `append` and `read` against the REST routes they stand for, one
// after the other on the same connections: what the JSON-RPC wrapping and the
// internal dispatch cost per call.
void run_mcp(const settings& s) {
  const std::string payload(s.payload_bytes, 'x');
  auto context = [](unsigned w) { return "bench/mcp" + std::to_string(w); };
  auto units = [&](uint64_t i) {
    return json::array({{{"type", "MESSAGE"}, {"text", payload}, {"meta", {{"i", std::to_string(i)}}}}});
  };
  // A tool call's answer: 200 with a result that is not a tool error.
  auto tool_ok = [](const auto& r) {
    if (auto err = expect(r, 200); !err.empty()) return err;
    if (r->body.find("\"isError\":false") == std::string::npos) return "tool error: " + r->body.substr(0, 200);
    return std::string();
  };
  auto tool_call = [](const char* name, json args, uint64_t id) {
    return json{{"jsonrpc", "2.0"}, {"id", id}, {"method", "tools/call"},
                {"params", {{"name", name}, {"arguments", std::move(args)}}}}.dump();
  };
  timed(s, "rest-append", [&](engram::client::http_connection& c, unsigned w, uint64_t i) {
    const auto body = json{{"context_id", context(w)}, {"agent_id", "bench"}, {"work_units", units(i)}}.dump();
    return expect(c.request("POST", "/workunits", body), 201);
  });
  timed(s, "mcp-append", [&](engram::client::http_connection& c, unsigned w, uint64_t i) {
    return tool_ok(c.request("POST", "/mcp",
                             tool_call("append", {{"context_id", context(w)}, {"agent_id", "bench"}, {"units", units(i)}}, i)));
  });
  timed(s, "rest-read", [&](engram::client::http_connection& c, unsigned w, uint64_t) {
    return expect(c.request("GET", "/workunits/" + context(w) + "?limit=" + std::to_string(s.limit) + "&text=1"), 200);
  });
  timed(s, "mcp-read", [&](engram::client::http_connection& c, unsigned w, uint64_t i) {
    return tool_ok(c.request("POST", "/mcp", tool_call("read", {{"context_id", context(w)}, {"limit", s.limit}}, i)));
  });
}

// Loads `units` units: `target_units` into s.context, the rest spread over 90 others.
int run_seed(const settings& s) {
  const std::string payload(s.payload_bytes, 'y');
  const size_t batches = (s.units + s.batch - 1) / s.batch;
  const size_t target_batches = s.target_units / s.batch;
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::vector<std::thread> threads;
  const auto t0 = steady::now();
  for (unsigned w = 0; w < s.connections; ++w) {
    threads.emplace_back([&] {
      engram::client::http_connection c(s.host, s.port, std::chrono::seconds(120));
      for (size_t b; (b = next++) < batches && !failed;) {
        // Interleave target batches among the others so the target's keys are spread
        // through the LSM like a real busy context's.
        const bool target = b % (batches / std::max<size_t>(target_batches, 1)) == 0 &&
                            b / (batches / std::max<size_t>(target_batches, 1)) < target_batches;
        const std::string ctx = target ? s.context : "bench/other-" + std::to_string(b % 90);
        json units = json::array();
        for (size_t k = 0; k < s.batch; ++k) units.push_back({{"text", payload}, {"type", 1}});
        auto r = c.request("POST", "/workunits",
                           json({{"context_id", ctx}, {"agent_id", "seed"}, {"work_units", units}}).dump());
        if (auto err = expect(r, 201); !err.empty()) {
          std::fprintf(stderr, "seed failed: %s\n", err.c_str());
          failed = true;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  std::printf("seeded %zu units (%zu in %s) in %.1f s\n", s.units, target_batches * s.batch, s.context.c_str(),
              std::chrono::duration<double>(steady::now() - t0).count());
  return failed ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"engram-load: load generator for an Engram server (loopback only)"};
  app.fallthrough();  // subcommands accept the shared options too
  settings s;
  app.add_option("--host", s.host, "server address (use loopback)");
  app.add_option("--port", s.port, "server port")->required();
  app.add_option("--connections,-c", s.connections, "concurrent keep-alive connections")->check(CLI::Range(1u, 1024u));
  app.add_option("--seconds", s.seconds, "duration of a timed run")->check(CLI::Range(0.1, 3600.0));
  app.add_option("--payload-bytes", s.payload_bytes, "payload size of each unit");
  app.add_option("--label", s.label, "prefix for the result line");
  auto* write = app.add_subcommand("write", "single-unit POST /workunit");
  write->add_flag("--sdk", s.sdk, "append through the C++ SDK (engram::client::client) instead of raw HTTP");
  write->add_option("--contexts", s.contexts, "contexts shared by the workers (default: one per connection)")
      ->check(CLI::Range(1u, 100000u));
  auto* read = app.add_subcommand("read", "GET /workunits/{ctx}?limit=N&reverse=true");
  read->add_option("--context", s.context);
  read->add_option("--limit", s.limit);
  auto* seed = app.add_subcommand("seed", "bulk-load units with POST /workunits batches");
  seed->add_option("--units", s.units);
  seed->add_option("--target-units", s.target_units);
  seed->add_option("--context", s.context);
  seed->add_option("--batch", s.batch)->check(CLI::Range(size_t(1), size_t(1000)));
  auto* locks = app.add_subcommand("locks", "POST /locks + DELETE /locks/{r}, as one operation");
  locks->add_option("--resources", s.resources, "distinct resources (< connections: contended)")->check(CLI::Range(1u, 100000u));
  auto* fenced = app.add_subcommand("fenced", "single-unit POST /workunit carrying a fence");
  auto* mcp = app.add_subcommand("mcp", "MCP tools append and read (POST /mcp) against their REST routes");
  mcp->add_option("--limit", s.limit, "units per read");
  app.require_subcommand(1);
  CLI11_PARSE(app, argc, argv);
  if (*write) run_write(s);
  if (*read) run_read(s);
  if (*seed) return run_seed(s);
  if (*locks) run_locks(s);
  if (*fenced) run_fenced(s);
  if (*mcp) run_mcp(s);
  return 0;
}
