// engram-search-bench: search benchmarks against a running Engram server (loopback).
//
//   engram-search-bench seed  --port P --units 1000000     realistic text, 1000 contexts
//   engram-search-bench query --port P --seconds 10 -c 4    p50/p99 per query kind
//   engram-search-bench lag   --port P --rate 2000 --seconds 10
//                             append at a fixed rate; time from ack until searchable
//   engram-search-bench wait  --port P                 until the index has caught up
//   engram-search-bench seed  --port P --units 100000 --dim 384
//                             the same, each unit with a random vector
//   engram-search-bench vquery --port P --dim 384 --seconds 10
//                             semantic (with and without filters) and hybrid p50/p99
//   engram-search-bench packet --port P --units 100000 --facts 1000 --max-tokens 8000
//                             memory packet latency on one big context, with and
//                             without a query (seeds the context first if needed)
//
// Text is drawn from a 20k-word synthetic vocabulary with a Zipf distribution
// (like natural language), ~30 words per unit, so posting lists have realistic
// lengths: a few words are in most units, most words are rare.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <deque>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bench_common.hpp"
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
  size_t units = 1'000'000;
  size_t batch = 1000;
  size_t limit = 20;
  bool snippets = true;
  double rate = 2000;
  size_t dim = 0;  // > 0: units carry random vectors of this dimension
};

json random_vector(std::mt19937_64& rng, size_t dim) {
  std::normal_distribution<float> n;
  json v = json::array();
  for (size_t i = 0; i < dim; ++i) v.push_back(n(rng));
  return v;
}

class vocabulary {
 public:
  vocabulary() {
    static const char* syllables[] = {"ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "ba", "de", "fi", "gu",
                                      "ho", "ja", "ke", "li", "mo", "nu", "pa", "qui", "ra", "se", "to", "un", "ve",
                                      "wa", "xo", "yu", "zi", "bra", "cle", "dri", "fro", "gla", "plu", "sto", "tre"};
    constexpr size_t n = sizeof(syllables) / sizeof(*syllables);
    for (size_t a = 0; a < n && words_.size() < 20'000; ++a)
      for (size_t b = 0; b < n && words_.size() < 20'000; ++b)
        for (size_t c = 0; c < n && words_.size() < 20'000; ++c)
          words_.push_back(std::string(syllables[(a * 7 + b) % n]) + syllables[b] + syllables[c] + "x");
    std::vector<double> weights;
    for (size_t r = 1; r <= words_.size(); ++r) weights.push_back(1.0 / double(r));
    zipf_ = std::discrete_distribution<size_t>(weights.begin(), weights.end());
  }
  const std::string& word(size_t rank) const { return words_[rank]; }
  template <class Rng>
  const std::string& draw(Rng& rng) { return words_[zipf_(rng)]; }
  template <class Rng>
  std::string sentence(Rng& rng, size_t words) {
    std::string out;
    for (size_t i = 0; i < words; ++i) (out += draw(rng)) += ' ';
    return out;
  }

 private:
  std::vector<std::string> words_;
  std::discrete_distribution<size_t> zipf_;
};

void print_percentiles(const char* what, std::vector<double> us, double elapsed, size_t errors) {
  std::sort(us.begin(), us.end());
  auto pct = [&](double p) { return percentile(us, p); };
  std::printf("%-28s n=%zu errors=%zu qps=%.0f p50=%.0fus p99=%.0fus max=%.0fus\n", what, us.size(), errors,
              elapsed > 0 ? double(us.size()) / elapsed : 0, pct(0.5), pct(0.99), us.empty() ? 0 : us.back());
}

json readyz(engram::client::http_connection& c) {
  auto r = c.request("GET", "/readyz");
  return r && r->status == 200 ? json::parse(r->body) : json::object();
}

// Waits until the index has everything (searchable), then until background
// merges are done (so that what follows measures a quiet server); returns the
// seconds until searchable and prints the merge wait.
double wait_indexed(const settings& s) {
  engram::client::http_connection c(s.host, s.port);
  const auto t0 = steady::now();
  auto until = [&](auto pred) {
    for (;;) {
      auto r = readyz(c);
      if (r.contains("search") && pred(r["search"])) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  };
  until([](const json& st) {
    return st["lag"] == 0 && st["state"] == "ready" && (!st.contains("vectors") || st["vectors"]["lag"] == 0);
  });
  const double searchable = std::chrono::duration<double>(steady::now() - t0).count();
  until([](const json& st) { return st.value("pending_merges", 0) == 0; });
  std::printf("  (background merges finished %.1f s after that)\n",
              std::chrono::duration<double>(steady::now() - t0).count() - searchable);
  return searchable;
}

int run_seed(const settings& s) {
  // ~4 KB of JSON per 384-d vector: smaller batches stay under server.max_body_bytes.
  const size_t batch_units = s.dim ? std::max<size_t>(1, 200'000 / (s.dim * 10)) : s.batch;
  const size_t batches = (s.units + batch_units - 1) / batch_units;
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::vector<std::thread> threads;
  const auto t0 = steady::now();
  for (unsigned w = 0; w < s.connections; ++w) {
    threads.emplace_back([&, w] {
      vocabulary vocab;
      std::mt19937_64 rng(w + 1);
      engram::client::http_connection c(s.host, s.port, std::chrono::seconds(120));
      for (size_t b; (b = next++) < batches && !failed;) {
        json units = json::array();
        for (size_t k = 0; k < batch_units; ++k) {
          units.push_back({{"text", vocab.sentence(rng, 20 + rng() % 20)},
                           {"agent_id", "agent-" + std::to_string(rng() % 50)},
                           {"type", 1 + rng() % 8},
                           {"meta", {{"component", "c" + std::to_string(rng() % 10)}}}});
          if (s.dim) units.back()["embedding"] = random_vector(rng, s.dim);
        }
        auto r = c.request("POST", "/workunits",
                           json({{"context_id", "ctx-" + std::to_string(b % 1000)}, {"work_units", units}}).dump());
        if (auto err = expect(r, 201); !err.empty()) {
          std::fprintf(stderr, "seed failed: %s\n", err.c_str());
          failed = true;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  const double written = std::chrono::duration<double>(steady::now() - t0).count();
  const double more = wait_indexed(s);
  std::printf("seeded %zu units in %.1f s; all searchable %.1f s later (%.0f units/s end to end)\n", s.units,
              written, more, double(s.units) / (written + more));
  return failed ? 1 : 0;
}

struct kind {
  const char* name;
  std::function<json(std::mt19937_64&, const vocabulary&)> make;
};
void run_kinds(const settings& s, const std::vector<kind>& kinds);

void run_query(const settings& s) {
  const std::vector<kind> kinds = {
      {"single-term", [](auto& rng, const vocabulary& v) { return json{{"query", v.word(100 + rng() % 1900)}}; }},
      {"two-terms+filters",
       [](auto& rng, const vocabulary& v) {
         json q = {{"query", v.word(10 + rng() % 490) + " " + v.word(10 + rng() % 490)}};
         switch (rng() % 3) {
           case 0: q["context_id"] = "ctx-" + std::to_string(rng() % 10) + "*"; break;
           case 1: q["agent_ids"] = {"agent-" + std::to_string(rng() % 50)}; break;
           default: q["types"] = {1 + rng() % 8}; q["meta_filters"] = {{"component", "c" + std::to_string(rng() % 10)}};
         }
         return q;
       }},
      {"phrase", [](auto& rng, const vocabulary& v) {
         return json{{"query", "\"" + v.word(rng() % 30) + " " + v.word(rng() % 30) + "\""}};
       }},
      {"or-of-three", [](auto& rng, const vocabulary& v) {
         return json{{"query", v.word(rng() % 1000) + " OR " + v.word(rng() % 1000) + " OR " + v.word(rng() % 1000)}};
       }},
      {"no-text, one context", [](auto& rng, const vocabulary&) {
         return json{{"context_id", "ctx-" + std::to_string(rng() % 1000)}};
       }},
      {"no-text, agent filter", [](auto& rng, const vocabulary&) {
         return json{{"agent_ids", {"agent-" + std::to_string(rng() % 50)}}};
       }},
  };
  run_kinds(s, kinds);
}

// Semantic and hybrid queries over units seeded with --dim.
void run_vquery(const settings& s) {
  const std::vector<kind> kinds = {
      {"semantic, no filter", [&](auto& rng, const vocabulary&) {
         return json{{"vector", random_vector(rng, s.dim)}, {"mode", "semantic"}};
       }},
      {"semantic, one context (0.1%)", [&](auto& rng, const vocabulary&) {
         return json{{"vector", random_vector(rng, s.dim)}, {"mode", "semantic"},
                     {"context_id", "ctx-" + std::to_string(rng() % 1000)}};
       }},
      {"semantic, one type (12%)", [&](auto& rng, const vocabulary&) {
         return json{{"vector", random_vector(rng, s.dim)}, {"mode", "semantic"}, {"types", {1 + rng() % 8}}};
       }},
      {"hybrid, one term", [&](auto& rng, const vocabulary& v) {
         return json{{"vector", random_vector(rng, s.dim)}, {"query", v.word(100 + rng() % 1900)}};
       }},
      {"hybrid, two terms + agent", [&](auto& rng, const vocabulary& v) {
         return json{{"vector", random_vector(rng, s.dim)},
                     {"query", v.word(10 + rng() % 490) + " " + v.word(10 + rng() % 490)},
                     {"agent_ids", {"agent-" + std::to_string(rng() % 50)}}};
       }},
  };
  run_kinds(s, kinds);
}

void run_kinds(const settings& s, const std::vector<kind>& kinds) {
  for (const auto& k : kinds) {
    std::vector<std::vector<double>> lat(s.connections);
    std::vector<size_t> errs(s.connections, 0);
    std::vector<std::thread> threads;
    const auto t0 = steady::now();
    const auto end = t0 + std::chrono::duration_cast<steady::duration>(std::chrono::duration<double>(s.seconds));
    for (unsigned w = 0; w < s.connections; ++w) {
      threads.emplace_back([&, w] {
        vocabulary vocab;
        std::mt19937_64 rng(1000 + w);
        engram::client::http_connection c(s.host, s.port, std::chrono::seconds(60));
        while (steady::now() < end) {
          json q = k.make(rng, vocab);
          q["limit"] = s.limit;
          q["snippets"] = s.snippets;
          const auto a = steady::now();
          auto err = expect(c.request("POST", "/search", q.dump()), 200);
          const auto b = steady::now();
          if (err.empty()) lat[w].push_back(std::chrono::duration<double, std::micro>(b - a).count());
          else if (errs[w]++ == 0) std::fprintf(stderr, "%s: %s\n", k.name, err.c_str());
        }
      });
    }
    for (auto& t : threads) t.join();
    std::vector<double> all;
    size_t errors = 0;
    for (unsigned w = 0; w < s.connections; ++w) {
      all.insert(all.end(), lat[w].begin(), lat[w].end());
      errors += errs[w];
    }
    print_percentiles(k.name, std::move(all), std::chrono::duration<double>(steady::now() - t0).count(), errors);
  }
}

// Appends at a fixed rate (open loop, paced per writer); one unit in `sample`
// carries a unique token, and a checker searches for each token from its ack
// until it is found.
void run_lag(const settings& s) {
  constexpr unsigned writers = 4;
  constexpr int sample = 20;
  std::mutex mu;
  std::deque<std::pair<std::string, steady::time_point>> waiting;  // token, acked at
  std::vector<double> delays_us;
  std::atomic<bool> stop{false};
  std::atomic<size_t> acked{0}, errors{0};
  double max_lag = 0;
  const auto t0 = steady::now();
  const auto end = t0 + std::chrono::duration_cast<steady::duration>(std::chrono::duration<double>(s.seconds));
  // A per-run tag in every token: a second run against the same server must not
  // find the units of the first (they are searchable before this run writes its own).
  const std::string run_tag = std::to_string(std::random_device{}());
  std::vector<std::thread> threads;
  for (unsigned w = 0; w < writers; ++w) {
    threads.emplace_back([&, w] {
      vocabulary vocab;
      std::mt19937_64 rng(w + 77);
      engram::client::http_connection c(s.host, s.port);
      const auto period = std::chrono::duration<double>(double(writers) / s.rate);
      for (uint64_t i = 0;; ++i) {
        const auto due = t0 + std::chrono::duration_cast<steady::duration>(period * double(i));
        if (due >= end) break;
        std::this_thread::sleep_until(due);
        const bool sampled = i % sample == 0;
        const std::string token = "probe" + run_tag + "w" + std::to_string(w) + "q" + std::to_string(i) + "z";
        std::string text = vocab.sentence(rng, 30);
        if (sampled) text += token;
        auto r = c.request("POST", "/workunit",
                           json({{"context_id", "lag-" + std::to_string(w)}, {"agent_id", "w"}, {"text", text}}).dump());
        if (!expect(r, 201).empty()) {
          ++errors;
          continue;
        }
        ++acked;
        if (sampled) {
          std::lock_guard lock(mu);
          waiting.emplace_back(token, steady::now());
        }
      }
    });
  }
  std::thread checker([&] {
    engram::client::http_connection c(s.host, s.port);
    while (!stop) {
      std::pair<std::string, steady::time_point> probe;
      {
        std::lock_guard lock(mu);
        if (waiting.empty()) probe.first.clear();
        else probe = waiting.front();
      }
      if (probe.first.empty()) {
        std::this_thread::sleep_for(std::chrono::microseconds(200));
        continue;
      }
      auto r = c.request("POST", "/search", json({{"query", probe.first}, {"snippets", false}}).dump());
      if (r && r->status == 200 && !json::parse(r->body)["results"].empty()) {
        const double us = std::chrono::duration<double, std::micro>(steady::now() - probe.second).count();
        std::lock_guard lock(mu);
        delays_us.push_back(us);
        waiting.pop_front();
      }
    }
  });
  std::thread lag_sampler([&] {
    engram::client::http_connection c(s.host, s.port);
    while (!stop) {
      auto r = readyz(c);
      if (r.contains("search")) max_lag = std::max(max_lag, r["search"]["lag"].get<double>());
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  });
  for (auto& t : threads) t.join();
  const double elapsed = std::chrono::duration<double>(steady::now() - t0).count();
  while (true) {  // let the checker finish the last probes
    std::lock_guard lock(mu);
    if (waiting.empty()) break;
    if (steady::now() - end > std::chrono::seconds(30)) break;
  }
  stop = true;
  checker.join();
  lag_sampler.join();
  std::printf("appended %zu units at %.0f/s (target %.0f/s, %zu errors); max index lag seen %.0f events\n",
              acked.load(), double(acked) / elapsed, s.rate, errors.load(), max_lag);
  print_percentiles("ack → searchable", delays_us, 0, 0);
}

// One context of `units` units (a SUMMARY every 1000 covering the 1000 before it) and
// `facts` facts, each set twice (so half the versions are superseded); then packets
// with and without a query, one at a time, for --seconds each.
int run_packet(const settings& s, size_t facts, unsigned max_tokens) {
  const std::string ctx = "packet-bench";
  engram::client::http_connection c(s.host, s.port, std::chrono::seconds(120));
  auto head = c.request("GET", "/contexts/" + ctx);
  const bool seeded = head && head->status == 200 && json::parse(head->body)["context"]["head_seq"] >= s.units;
  vocabulary vocab;
  std::mt19937_64 rng(42);
  if (!seeded) {
    const auto t0 = steady::now();
    for (size_t done = 0; done < s.units;) {
      json units = json::array();
      for (size_t k = 0; k < s.batch && done < s.units; ++k, ++done) {
        if (done % 1000 == 999) {
          units.push_back({{"text", "Summary: " + vocab.sentence(rng, 60)}, {"agent_id", "summarizer"}, {"type", "SUMMARY"},
                           {"meta", {{"covers_from_seq", std::to_string(done - 998)}, {"covers_to_seq", std::to_string(done)}}}});
          continue;
        }
        units.push_back({{"text", vocab.sentence(rng, 20 + rng() % 20)},
                         {"agent_id", "agent-" + std::to_string(rng() % 20)},
                         {"type", 1 + rng() % 8},
                         {"meta", {{"to", "agent-" + std::to_string(rng() % 20)}}}});
      }
      auto r = c.request("POST", "/workunits", json({{"context_id", ctx}, {"work_units", units}}).dump());
      if (auto err = expect(r, 201); !err.empty()) {
        std::fprintf(stderr, "seed failed: %s\n", err.c_str());
        return 1;
      }
    }
    for (size_t round = 0; round < 2; ++round) {
      for (size_t f = 0; f < facts; ++f) {
        json body{{"value", vocab.sentence(rng, 3 + rng() % 5)}, {"agent_id", "agent-" + std::to_string(rng() % 20)}};
        auto r = c.request("PUT", "/contexts/" + ctx + "/facts/team.k" + std::to_string(f), body.dump());
        if (auto err = expect(r, 200); !err.empty()) {
          std::fprintf(stderr, "fact failed: %s\n", err.c_str());
          return 1;
        }
      }
    }
    std::printf("seeded %zu units and %zu facts (2 versions each) in %.1f s\n", s.units, facts,
                std::chrono::duration<double>(steady::now() - t0).count());
  }
  wait_indexed(s);
  for (bool with_query : {false, true}) {
    std::vector<double> us;
    size_t errors = 0, bytes = 0, items = 0, used = 0, omitted = 0;
    const auto t0 = steady::now();
    const auto end = t0 + std::chrono::duration<double>(s.seconds);
    while (steady::now() < end) {
      json body{{"agent_id", "agent-" + std::to_string(rng() % 20)}, {"budget", {{"max_tokens", max_tokens}}}};
      if (with_query) body["query"] = vocab.word(10 + rng() % 490) + " " + vocab.word(10 + rng() % 490);
      const auto q0 = steady::now();
      auto r = c.request("POST", "/contexts/" + ctx + "/packet", body.dump());
      const double took = std::chrono::duration<double, std::micro>(steady::now() - q0).count();
      if (!expect(r, 200).empty()) {
        ++errors;
        continue;
      }
      us.push_back(took);
      if (us.size() == 1) {
        auto j = json::parse(r->body);
        bytes = r->body.size();
        items = j["items"].size();
        used = j["budget_report"]["used_tokens"];
        omitted = j["budget_report"]["omitted"].size();
      }
    }
    const double elapsed = std::chrono::duration<double>(steady::now() - t0).count();
    print_percentiles(with_query ? "packet, 2-word query" : "packet, no query", us, elapsed, errors);
    std::printf("  (first answer: %zu bytes, %zu items, %zu of %u tokens, %zu omissions reported)\n", bytes, items,
                used, max_tokens, omitted);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"engram-search-bench: search benchmarks for an Engram server (loopback only)"};
  app.fallthrough();
  settings s;
  app.add_option("--host", s.host, "server address (use loopback)");
  app.add_option("--port", s.port, "server port")->required();
  app.add_option("--connections,-c", s.connections, "concurrent connections")->check(CLI::Range(1u, 256u));
  app.add_option("--seconds", s.seconds, "duration of a timed run")->check(CLI::Range(0.1, 3600.0));
  auto* seed = app.add_subcommand("seed", "bulk-load units with realistic text, wait until searchable");
  seed->add_option("--units", s.units);
  seed->add_option("--dim", s.dim, "give each unit a random vector of this dimension");
  auto* vquery = app.add_subcommand("vquery", "semantic and hybrid query latency (after seed --dim)");
  vquery->add_option("--dim", s.dim)->required();
  vquery->add_option("--limit", s.limit);
  auto* query = app.add_subcommand("query", "query latency per query kind");
  query->add_option("--limit", s.limit);
  query->add_option("--snippets", s.snippets);
  auto* lag = app.add_subcommand("lag", "ack-to-searchable delay under a fixed append rate");
  lag->add_option("--rate", s.rate, "appends per second")->check(CLI::Range(1.0, 100000.0));
  auto* wait = app.add_subcommand("wait", "wait until the index has caught up with the logs");
  auto* packet = app.add_subcommand("packet", "memory packet latency on one big context, with and without a query");
  size_t facts = 1000;
  unsigned max_tokens = 8000;
  packet->add_option("--units", s.units, "units of the context (seeded when it has fewer)");
  packet->add_option("--facts", facts, "facts, each set twice");
  packet->add_option("--max-tokens", max_tokens);
  app.require_subcommand(1);
  CLI11_PARSE(app, argc, argv);
  if (*wait) std::printf("index caught up after %.1f s of waiting\n", wait_indexed(s));
  if (*seed) return run_seed(s);
  if (*query) run_query(s);
  if (*vquery) run_vquery(s);
  if (*lag) run_lag(s);
  if (*packet) return run_packet(s, facts, max_tokens);
  return 0;
}
