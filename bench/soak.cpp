// engram-soak: a bounded soak of a running server (bench/soak.sh starts one on
// loopback). For --seconds it runs, all at once:
//   writers      appending units to soak/c<k> (some fenced by a lease),
//   subscribers  following "soak/*" over WebSocket through a proxy that cuts every
//                connection at random moments; each also stops and resumes from
//                its cursors now and then,
//   lockers      churning leases (single and all-or-nothing pairs, FIFO waits,
//                some left to expire),
//   searchers    running keyword searches over soak/*,
//   a sampler    reading the server's process_* figures from /metrics.
// Then it verifies: every acknowledged unit is stored at its seq, every subscriber
// received every stored unit exactly once and in order, no request failed other
// than expected refusals (409 for a held lease), and memory after warm-up stayed
// flat: RSS net of RocksDB's memtables and block cache, which fill up to their
// configured sizes as data arrives. Exit 0 only when all of that holds.
//
//   engram-soak --port P --seconds 300
#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <numeric>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench_common.hpp"
#include "engram/client.hpp"
#include "engram/http_connection.hpp"
#include "support/fault_proxy.hpp"

namespace {

namespace ec = engram::client;
using steady = std::chrono::steady_clock;
using namespace std::chrono_literals;
using engram::bench::percentile;

struct settings {
  uint16_t port = 8080;
  double seconds = 300;
  unsigned writers = 4, subscribers = 4, lockers = 2, searchers = 1, contexts = 8;
  double write_rate = 50;  // appends per second per writer (0: as fast as possible)
  double warmup_fraction = 1.0 / 3;
  double max_rss_growth = 0.25;  // allowed growth after warm-up
};

const char* const words[] = {"alpha", "build", "cache", "delta", "error", "fetch", "graph", "index",
                             "joint", "kernel", "lease", "merge", "node", "order", "patch", "query",
                             "retry", "shard", "token", "unit", "vector", "write", "yield", "zone"};

// What every worker reports; unexpected errors keep their first messages.
struct tally {
  std::mutex mu;
  std::map<std::string, uint64_t> counts;
  std::vector<std::string> unexpected;
  std::map<std::string, std::vector<uint64_t>> latencies_us;

  void count(const std::string& what, uint64_t n = 1) {
    std::lock_guard lock(mu);
    counts[what] += n;
  }
  void fail(const std::string& what, const ec::error& e) {
    std::lock_guard lock(mu);
    ++counts["unexpected " + what];
    if (unexpected.size() < 20) unexpected.push_back(what + ": " + std::to_string(e.status) + " " + e.message);
  }
  void merge_latencies(const std::string& what, const std::vector<uint64_t>& v) {
    std::lock_guard lock(mu);
    auto& all = latencies_us[what];
    all.insert(all.end(), v.begin(), v.end());
  }
};

// Acknowledged units: context → seq → id.
struct ledger {
  std::mutex mu;
  std::map<std::string, std::map<uint64_t, std::string>> units;
  void add(const ec::work_unit& u) {
    std::lock_guard lock(mu);
    units[u.context_id][u.seq] = u.id;
  }
};

struct subscriber_state {
  std::mutex mu;
  std::map<std::string, std::map<uint64_t, std::string>> units;  // received work units
  std::map<std::string, uint64_t> last_seq;                      // every event kind
  uint64_t violations = 0;                                       // duplicate or out of order
  std::string first_violation;
};

template <class Fn>
uint64_t timed_us(Fn&& fn) {
  const auto t0 = steady::now();
  fn();
  return uint64_t(std::chrono::duration_cast<std::chrono::microseconds>(steady::now() - t0).count());
}

ec::client make_client(uint16_t port, const std::string& agent) {
  ec::client_options o;
  o.url = "http://127.0.0.1:" + std::to_string(port);
  o.agent_id = agent;
  o.timeout = 10s;
  auto c = ec::client::create(o);
  if (!c) throw std::runtime_error("client: " + c.error().message);
  return std::move(*c);
}

std::string random_text(std::mt19937_64& rng, const std::string& tag) {
  std::string text = tag;
  for (int i = 0; i < 8; ++i) text += std::string(" ") + words[rng() % std::size(words)];
  return text;
}

void writer(const settings& s, unsigned id, steady::time_point end, ledger& acked, tally& t) {
  auto c = make_client(s.port, "soak-writer-" + std::to_string(id));
  std::mt19937_64 rng(id);
  std::vector<uint64_t> lat;
  const auto period = s.write_rate > 0 ? std::chrono::duration_cast<steady::duration>(std::chrono::duration<double>(1 / s.write_rate))
                                       : steady::duration::zero();
  auto next = steady::now();
  for (uint64_t n = 0; steady::now() < end; ++n) {
    if (period.count()) {  // paced (open loop): a slow answer does not lower the offered rate
      std::this_thread::sleep_until(next);
      next += period;
    }
    ec::unit_input u;
    u.context_id = "soak/c" + std::to_string(rng() % s.contexts);
    u.payload = random_text(rng, "w" + std::to_string(id) + "-" + std::to_string(n));
    u.meta = {{"writer", std::to_string(id)}};
    std::expected<ec::work_unit, ec::error> r;
    lat.push_back(timed_us([&] { r = c.append(u); }));
    if (r) {
      acked.add(*r);
      t.count("appends");
    } else {
      t.fail("append", r.error());
    }
  }
  t.merge_latencies("append", lat);
}

void locker(const settings& s, unsigned id, steady::time_point end, ledger& acked, tally& t) {
  auto c = make_client(s.port, "soak-locker-" + std::to_string(id));
  std::mt19937_64 rng(1000 + id);
  std::vector<uint64_t> lat;
  while (steady::now() < end) {
    ec::lock_request req;
    req.resources = {"soak/res" + std::to_string(rng() % 3)};
    if (rng() % 4 == 0) req.resources.push_back("soak/res" + std::to_string(3 + rng() % 2));  // all-or-nothing pair
    req.ttl = 1000ms;
    req.wait = std::chrono::milliseconds(rng() % 200);
    if (rng() % 2) req.context_id = "soak/c0";  // transitions enter that context's log
    std::expected<std::vector<ec::lock>, ec::error> granted;
    lat.push_back(timed_us([&] { granted = c.acquire(req); }));
    if (!granted) {
      if (granted.error().what == ec::error::kind::server && granted.error().status == 409) t.count("lock conflicts (409)");
      else t.fail("acquire", granted.error());
      continue;
    }
    t.count("lock grants");
    const auto& held = granted->front();
    if (rng() % 3 == 0) {  // a write fenced by the lease
      ec::unit_input u;
      u.context_id = "soak/c1";
      u.payload = random_text(rng, "fenced-" + std::to_string(held.fencing_token));
      u.fence = held.fence();
      if (auto r = c.append(u)) {
        acked.add(*r);
        t.count("fenced appends");
      } else {
        t.fail("fenced append", r.error());
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 20));
    if (rng() % 10 == 0) {
      t.count("leases left to expire");
      continue;
    }
    for (const auto& l : *granted)
      if (auto r = c.release(l); !r) t.fail("release", r.error());
  }
  t.merge_latencies("acquire", lat);
}

void searcher(const settings& s, unsigned id, steady::time_point end, tally& t) {
  auto c = make_client(s.port, "soak-searcher-" + std::to_string(id));
  std::mt19937_64 rng(2000 + id);
  std::vector<uint64_t> lat;
  while (steady::now() < end) {
    ec::search_request q;
    q.query = std::string(words[rng() % std::size(words)]) + (rng() % 2 ? std::string(" ") + words[rng() % std::size(words)] : "");
    q.context_id = "soak/*";
    q.limit = 20;
    std::expected<ec::search_result, ec::error> r;
    lat.push_back(timed_us([&] { r = c.search(q); }));
    if (r) t.count("searches");
    else t.fail("search", r.error());
    std::this_thread::sleep_for(20ms);
  }
  t.merge_latencies("search", lat);
}

struct sample {
  double t, rss, fds, threads, rocksdb;  // rocksdb: memtables + block cache
  double other() const { return rss - rocksdb; }
};

std::optional<sample> read_process_metrics(engram::client::http_connection& http, double t) {
  auto r = http.request("GET", "/metrics");
  if (!r || r->status != 200) return std::nullopt;
  sample out{t, 0, 0, 0, 0};
  std::istringstream in(r->body);
  std::string line;
  while (std::getline(in, line)) {
    auto value = [&](const char* name) {
      return line.starts_with(name) && line[std::strlen(name)] == ' ' ? std::stod(line.substr(std::strlen(name) + 1)) : -1.0;
    };
    if (double v = value("process_resident_memory_bytes"); v >= 0) out.rss = v;
    if (double v = value("process_open_fds"); v >= 0) out.fds = v;
    if (double v = value("process_threads"); v >= 0) out.threads = v;
    if (double v = value("engram_storage_memtable_bytes"); v >= 0) out.rocksdb += v;
    if (double v = value("engram_storage_block_cache_bytes"); v >= 0) out.rocksdb += v;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  settings s;
  CLI::App app{"engram-soak: bounded mixed-load soak with verification (bench/README.md)"};
  app.add_option("--port", s.port, "server port on 127.0.0.1")->required();
  app.add_option("--seconds", s.seconds, "duration of the load")->check(CLI::Range(5.0, 3600.0));
  app.add_option("--writers", s.writers)->check(CLI::Range(1u, 64u));
  app.add_option("--subscribers", s.subscribers)->check(CLI::Range(1u, 64u));
  app.add_option("--lockers", s.lockers)->check(CLI::Range(0u, 64u));
  app.add_option("--searchers", s.searchers)->check(CLI::Range(0u, 64u));
  app.add_option("--contexts", s.contexts)->check(CLI::Range(2u, 1000u));
  app.add_option("--write-rate", s.write_rate, "appends per second per writer (0: unpaced)")->check(CLI::Range(0.0, 1e6));
  app.add_option("--warmup", s.warmup_fraction, "fraction of the run before memory is compared")
      ->check(CLI::Range(0.0, 0.9));
  app.add_option("--max-rss-growth", s.max_rss_growth,
                 "allowed growth after warm-up of RSS net of RocksDB's caches (0.25 = 25%)");
  CLI11_PARSE(app, argc, argv);

  tally t;
  ledger acked;
  engram::test::fault_proxy proxy(s.port);
  const auto start = steady::now();
  const auto end = start + std::chrono::duration_cast<steady::duration>(std::chrono::duration<double>(s.seconds));

  std::vector<std::unique_ptr<subscriber_state>> subs;
  for (unsigned i = 0; i < s.subscribers; ++i) subs.push_back(std::make_unique<subscriber_state>());
  std::atomic<bool> done{false};
  std::vector<std::jthread> load, followers;
  for (unsigned i = 0; i < s.subscribers; ++i)
    followers.emplace_back([&, i](std::stop_token stop) {
      auto c = make_client(proxy.port(), "soak-subscriber-" + std::to_string(i));
      std::mt19937_64 rng(3000 + i);
      auto& st = *subs[i];
      auto handler = [&st](const ec::event& ev) {
        std::lock_guard lock(st.mu);
        auto& last = st.last_seq[ev.context_id];
        if (ev.seq <= last) {
          if (!st.violations++)
            st.first_violation = ev.context_id + " seq " + std::to_string(ev.seq) + " after " + std::to_string(last);
          return;
        }
        last = ev.seq;
        if (ev.unit) st.units[ev.context_id][ev.seq] = ev.unit->id;
      };
      ec::subscribe_options opts;
      opts.min_backoff = 20ms;
      opts.max_backoff = 500ms;
      opts.on_disconnected = [&t](const ec::error&) { t.count("subscriber disconnects seen"); };
      auto sub = c.subscribe({"soak/*"}, 0, handler, opts);
      while (!stop.stop_requested()) {
        for (auto wake = steady::now() + std::chrono::milliseconds(2000 + rng() % 4000);
             steady::now() < wake && !stop.stop_requested();)
          std::this_thread::sleep_for(50ms);
        if (stop.stop_requested() || done) break;
        sub.stop();  // a clean client-side close, then a resume from the cursors
        opts.cursors = sub.cursors();
        sub = c.subscribe({"soak/*"}, 0, handler, opts);
        t.count("subscriber restarts");
      }
      // After the load: keep following (no more cuts) until main has verified.
      while (!stop.stop_requested()) std::this_thread::sleep_for(50ms);
    });
  for (unsigned i = 0; i < s.writers; ++i) load.emplace_back([&, i] { writer(s, i, end, acked, t); });
  for (unsigned i = 0; i < s.lockers; ++i) load.emplace_back([&, i] { locker(s, i, end, acked, t); });
  for (unsigned i = 0; i < s.searchers; ++i) load.emplace_back([&, i] { searcher(s, i, end, t); });

  // Chaos: cut every proxied connection at random moments; sample memory.
  std::vector<sample> samples;
  {
    engram::client::http_connection http("127.0.0.1", s.port);
    std::mt19937_64 rng(42);
    auto next_cut = steady::now() + 1s;
    auto next_sample = steady::now();
    while (steady::now() < end) {
      const auto now = steady::now();
      if (now >= next_cut) {
        proxy.drop_all();
        t.count("connection cuts");
        next_cut = now + std::chrono::milliseconds(500 + rng() % 2500);
      }
      if (now >= next_sample) {
        if (auto smp = read_process_metrics(http, std::chrono::duration<double>(now - start).count()))
          samples.push_back(*smp);
        next_sample = now + 5s;
      }
      std::this_thread::sleep_for(50ms);
    }
    for (auto& th : load) th.join();
    done = true;
    if (auto smp = read_process_metrics(http, std::chrono::duration<double>(steady::now() - start).count()))
      samples.push_back(*smp);
  }

  // Verification. Heads first, then wait for every subscriber to reach them.
  bool ok = true;
  auto c = make_client(s.port, "soak-verifier");
  std::map<std::string, std::map<uint64_t, std::string>> stored;
  std::map<std::string, uint64_t> heads;
  for (unsigned k = 0; k < s.contexts; ++k) {
    const std::string ctx = "soak/c" + std::to_string(k);
    auto info = c.get_context(ctx);
    if (!info) continue;  // never written
    heads[ctx] = info->head_seq;
    ec::list_options page;
    page.limit = 1000;
    for (const auto& u : c.units(ctx, page)) {
      if (!u) {
        std::printf("FAIL listing %s: %s\n", ctx.c_str(), u.error().message.c_str());
        ok = false;
        break;
      }
      stored[ctx][u->seq] = u->id;
    }
  }
  size_t acked_total = 0, missing = 0, stored_total = 0;
  for (const auto& [ctx, units] : acked.units)
    for (const auto& [seq, id] : units) {
      ++acked_total;
      auto it = stored[ctx].find(seq);
      if (it == stored[ctx].end() || it->second != id) {
        if (!missing++) std::printf("FAIL acknowledged %s seq %lu (%s) is not stored\n", ctx.c_str(), seq, id.c_str());
      }
    }
  for (const auto& [ctx, units] : stored) stored_total += units.size();
  if (missing) ok = false;

  const auto catch_up_deadline = steady::now() + 60s;
  auto caught_up = [&](subscriber_state& st) {
    std::lock_guard lock(st.mu);
    return std::ranges::all_of(heads, [&](const auto& h) { return st.last_seq[h.first] >= h.second; });
  };
  for (auto& st : subs)
    while (!caught_up(*st) && steady::now() < catch_up_deadline) std::this_thread::sleep_for(50ms);
  size_t delivery_mismatches = 0, violations = 0;
  for (size_t i = 0; i < subs.size(); ++i) {
    std::lock_guard lock(subs[i]->mu);
    violations += subs[i]->violations;
    if (subs[i]->violations) std::printf("FAIL subscriber %zu: %s\n", i, subs[i]->first_violation.c_str());
    for (const auto& [ctx, units] : stored)
      if (subs[i]->units[ctx] != units) {
        if (!delivery_mismatches++)
          std::printf("FAIL subscriber %zu received %zu units of %s, %zu stored\n", i, subs[i]->units[ctx].size(),
                      ctx.c_str(), units.size());
      }
  }
  for (auto& f : followers) f.request_stop();
  followers.clear();
  if (delivery_mismatches || violations) ok = false;

  // Report.
  std::printf("soak: %.0f s, %u writers (%.0f/s each), %u subscribers, %u lockers, %u searchers, %u contexts\n",
              s.seconds, s.writers, s.write_rate, s.subscribers, s.lockers, s.searchers, s.contexts);
  for (const auto& [what, n] : t.counts) std::printf("  %-32s %lu\n", what.c_str(), n);
  for (auto& [what, v] : t.latencies_us) {
    std::sort(v.begin(), v.end());
    std::printf("  %-10s n=%zu p50=%.0fus p99=%.0fus max=%.0fus\n", what.c_str(), v.size(), percentile(v, 0.5),
                percentile(v, 0.99), v.empty() ? 0.0 : double(v.back()));
  }
  std::printf("  acknowledged units %zu, stored %zu, acknowledged but missing %zu\n", acked_total, stored_total, missing);
  std::printf("  subscribers: %zu order violations, %zu delivery mismatches\n", violations, delivery_mismatches);
  for (const auto& e : t.unexpected) std::printf("  unexpected: %s\n", e.c_str());
  const size_t unexpected = std::accumulate(t.counts.begin(), t.counts.end(), size_t(0), [](size_t n, const auto& kv) {
    return n + (kv.first.starts_with("unexpected") ? kv.second : 0);
  });
  if (unexpected) ok = false;

  if (samples.size() >= 3) {
    const double warm_t = s.seconds * s.warmup_fraction;
    auto warm = std::find_if(samples.begin(), samples.end(), [&](const sample& x) { return x.t >= warm_t; });
    if (warm == samples.end()) warm = samples.end() - 1;
    // RocksDB's memtables and block cache grow to their configured sizes as data
    // arrives; what must stay flat is everything else.
    double peak = 0;
    for (auto it = warm; it != samples.end(); ++it) peak = std::max(peak, it->rss);
    const auto& last = samples.back();
    const double growth = (last.other() - warm->other()) / warm->other();
    const double mib = 1048576;
    std::printf("  server RSS MiB: start %.1f, after warm-up (%.0f s) %.1f, peak after %.1f, end %.1f\n",
                samples.front().rss / mib, warm->t, warm->rss / mib, peak / mib, last.rss / mib);
    std::printf("  of which RocksDB memtables + block cache: after warm-up %.1f, end %.1f\n", warm->rocksdb / mib,
                last.rocksdb / mib);
    std::printf("  RSS net of RocksDB caches: after warm-up %.1f, end %.1f (%+.1f%%)\n", warm->other() / mib,
                last.other() / mib, growth * 100);
    std::printf("  server fds: start %.0f, after warm-up %.0f, end %.0f; threads: %.0f, %.0f, %.0f\n",
                samples.front().fds, warm->fds, last.fds, samples.front().threads, warm->threads, last.threads);
    // Least-squares slope of the net RSS over the samples after warm-up.
    double n = 0, st = 0, sr = 0, stt = 0, str = 0;
    for (auto it = warm; it != samples.end(); ++it, ++n) {
      st += it->t;
      sr += it->other();
      stt += it->t * it->t;
      str += it->t * it->other();
    }
    const double slope = n > 1 ? (n * str - st * sr) / (n * stt - st * st) : 0;  // bytes per second
    std::printf("  net RSS trend after warm-up: %+.2f MiB/min\n", slope * 60 / mib);
    std::printf("  samples (s: RSS/net MiB):");
    for (const auto& x : samples) std::printf(" %.0f:%.0f/%.0f", x.t, x.rss / mib, x.other() / mib);
    std::printf("\n");
    if (growth > s.max_rss_growth) {
      std::printf("FAIL net RSS grew %.1f%% after warm-up (allowed %.0f%%)\n", growth * 100, s.max_rss_growth * 100);
      ok = false;
    }
  } else {
    std::printf("FAIL too few /metrics samples (%zu)\n", samples.size());
    ok = false;
  }
  std::printf("soak %s\n", ok ? "PASSED" : "FAILED");
  return ok ? 0 : 1;
}
