// engram-vector-bench: the vector index (internal/search/vectors) in-process, on a
// real RocksDB store, at sizes where going through HTTP would only measure JSON.
//
//   engram-vector-bench --dir /tmp/vb --vectors 1000000 --dim 384 [--data clustered]
//
// Writes the vectors to the store (random unit vectors, the hard case for a graph
// index, or clustered ones, closer to real embeddings; skipped when the store
// already holds them), loads the index from it the way the server does at start-up
// with no snapshot (build rate), then reports kNN latency p50/p99 without a filter
// and with a selective filter (exact ranking of a 1% subset, what the server does
// when a filter matches few units), recall@10 against exact search, and resident
// memory per vector. Then it closes the index (which writes a snapshot of the
// graph), opens it again from that snapshot (a restart) and checks recall again.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <random>
#include <set>
#include <thread>
#include <unistd.h>

#include "bench_common.hpp"
#include "model/ids.hpp"
#include "search/vectors.hpp"
#include "storage/store.hpp"

namespace {

using steady = std::chrono::steady_clock;
using engram::bench::percentile;

double rss_bytes() {
  std::ifstream in("/proc/self/statm");
  double pages = 0, resident = 0;
  in >> pages >> resident;
  return resident * double(::sysconf(_SC_PAGESIZE));
}

std::vector<float> random_unit(std::mt19937_64& rng, size_t dim) {
  std::normal_distribution<float> n;
  std::vector<float> v(dim);
  for (auto& x : v) x = n(rng);
  engram::search::normalize(v);
  return v;
}

// Clustered data: 1,000 random centres, each vector a centre plus noise of a third
// of its length (queries are drawn the same way).
struct clusters {
  std::vector<std::vector<float>> centres;
  clusters(std::mt19937_64& rng, size_t dim) {
    for (int i = 0; i < 1000; ++i) centres.push_back(random_unit(rng, dim));
  }
  std::vector<float> draw(std::mt19937_64& rng) const {
    const auto& c = centres[rng() % centres.size()];
    auto v = random_unit(rng, c.size());
    for (size_t i = 0; i < v.size(); ++i) v[i] = c[i] + v[i] / 3;
    engram::search::normalize(v);
    return v;
  }
};

double seconds_since(steady::time_point t0) { return std::chrono::duration<double>(steady::now() - t0).count(); }

// Opens the index and waits until it has loaded every vector; the seconds it took.
double open_and_load(std::unique_ptr<engram::search::vector_index>& index, const engram::search::vector_options& vo,
                     engram::storage::store& store) {
  const auto t0 = steady::now();
  auto opened = engram::search::vector_index::open(vo, store, nullptr);
  if (!opened) std::fprintf(stderr, "%s\n", opened.error().message.c_str()), std::exit(1);
  index = std::move(*opened);
  while (index->status().catching_up) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  return seconds_since(t0);
}

float dot(const std::vector<float>& a, const float* b) {
  float s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

void print(const char* what, std::vector<double> us) {
  std::sort(us.begin(), us.end());
  std::printf("%-34s n=%zu p50=%.0fus p99=%.0fus max=%.0fus\n", what, us.size(), percentile(us, 0.5),
              percentile(us, 0.99), us.empty() ? 0 : us.back());
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"engram-vector-bench: the HNSW vector index in-process on a real store"};
  std::string dir;
  size_t vectors = 100'000, dim = 384, queries = 1000, recall_queries = 100;
  engram::search::vector_options vo;
  app.add_option("--dir", dir, "store directory (reused when it already holds the vectors)")->required();
  app.add_option("--vectors", vectors, "vectors to index")->check(CLI::Range(1000ul, 100'000'000ul));
  app.add_option("--dim", dim, "dimension")->check(CLI::Range(1ul, 4096ul));
  app.add_option("--queries", queries, "timed queries per kind");
  app.add_option("--recall-queries", recall_queries, "queries checked against exact search");
  app.add_option("--m", vo.m, "graph degree");
  app.add_option("--ef-construction", vo.ef_construction);
  app.add_option("--ef-search", vo.ef_search);
  app.add_option("--insert-threads", vo.insert_threads, "threads inserting while loading (server: search.vectors.insert_threads)");
  std::string kind = "random";
  app.add_option("--data", kind, "random or clustered")->check(CLI::IsMember({"random", "clustered"}));
  CLI11_PARSE(app, argc, argv);
  vo.snapshot_dir = dir + "/vector-snapshot";
  std::filesystem::remove_all(vo.snapshot_dir);  // the first load builds the graph

  engram::storage::options so;
  so.data_dir = dir;
  so.mode = engram::storage::durability::relaxed;
  so.write_buffer_bytes = 64 << 20;
  auto store = engram::storage::store::open(so, nullptr, nullptr, nullptr);
  if (!store) return std::fprintf(stderr, "%s\n", store.error().message.c_str()), 1;

  // Seed (the vectors are regenerated from the seed, so a reused store matches).
  std::mt19937_64 rng(1234);
  const clusters centres(rng, dim);
  const auto draw = [&](std::mt19937_64& r) { return kind == "clustered" ? centres.draw(r) : random_unit(r, dim); };
  std::vector<float> data(vectors * dim);
  std::vector<std::string> ids(vectors);
  for (size_t i = 0; i < vectors; ++i) {
    auto v = draw(rng);
    std::copy(v.begin(), v.end(), data.begin() + ptrdiff_t(i * dim));
  }
  const uint64_t stored = (*store)->last_vector_seq();
  engram::model::uuid_v7_generator gen;
  if (stored != vectors) {
    if (stored != 0) return std::fprintf(stderr, "%s holds other vectors; use an empty dir\n", dir.c_str()), 1;
    const auto t0 = steady::now();
    for (size_t b = 0; b < vectors; b += 1000) {
      engram::storage::append_request req;
      req.context_id = "ctx-" + std::to_string((b / 1000) % 100);
      for (size_t i = b; i < std::min(vectors, b + 1000); ++i) {
        engram::api::WorkUnit u;
        u.set_id(gen.next(1'700'000'000'000 + int64_t(i)).to_string());
        u.set_agent_id("bench");
        u.mutable_embedding()->set_model("m");
        u.mutable_embedding()->mutable_values()->Add(data.begin() + ptrdiff_t(i * dim),
                                                     data.begin() + ptrdiff_t((i + 1) * dim));
        req.units.push_back(std::move(u));
      }
      std::promise<bool> done;
      (*store)->append(std::move(req), [&](auto r) { done.set_value(bool(r)); });
      if (!done.get_future().get()) return std::fprintf(stderr, "append failed\n"), 1;
    }
    std::printf("stored %zu vectors in %.1f s\n", vectors,
                std::chrono::duration<double>(steady::now() - t0).count());
  }
  // The ids, in vseq order (= data order).
  for (uint64_t after = 0; after < vectors;) {
    auto some = (*store)->read_vectors(after, 10'000);
    if (!some || some->empty()) return std::fprintf(stderr, "reading vectors failed\n"), 1;
    for (auto& v : *some) ids[v.vseq - 1] = std::move(v.unit_id);
    after = some->back().vseq;
  }

  const double rss0 = rss_bytes();
  std::unique_ptr<engram::search::vector_index> index;
  auto first = vo;
  first.snapshot_min_vectors = UINT64_MAX;  // no snapshot when loading ends: close() writes it, timed
  const double build = open_and_load(index, first, **store);
  const double rss1 = rss_bytes();
  std::printf("index (%s data): %zu vectors dim %zu (M=%zu ef_construction=%zu ef_search=%zu) built in %.1f s "
              "(%.0f inserts/s, %u threads); memory %.0f bytes/vector (RSS growth)\n",
              kind.c_str(), vectors, dim, vo.m, vo.ef_construction, vo.ef_search, build, double(vectors) / build,
              unsigned(vo.insert_threads), (rss1 - rss0) / double(vectors));

  std::mt19937_64 qrng(99);
  const auto recall = [&] {
    size_t hits = 0;
    for (size_t q = 0; q < recall_queries; ++q) {
      const auto v = draw(qrng);
      std::vector<std::pair<float, size_t>> exact(vectors);
      for (size_t i = 0; i < vectors; ++i) exact[i] = {dot(v, &data[i * dim]), i};
      std::partial_sort(exact.begin(), exact.begin() + 10, exact.end(), std::greater<>());
      std::set<std::string> truth;
      for (size_t i = 0; i < 10; ++i) truth.insert(ids[exact[i].second]);
      const auto found = index->nearest("m", v, 10);  // named: a range-for over *temporary dangles
      if (!found) std::fprintf(stderr, "query failed\n"), std::exit(1);
      for (const auto& n : *found) hits += truth.count(n.unit_id);
    }
    return double(hits) / double(recall_queries * 10);
  };
  std::vector<double> plain, filtered;
  std::vector<std::string> subset;  // a selective filter: 1% of the units
  for (size_t i = 0; i < vectors; i += 100) subset.push_back(ids[i]);
  for (size_t q = 0; q < queries; ++q) {
    const auto v = draw(qrng);
    auto a = steady::now();
    auto r = index->nearest("m", v, 10);
    plain.push_back(std::chrono::duration<double, std::micro>(steady::now() - a).count());
    a = steady::now();
    auto f = index->rank_exact("m", v, subset, 10);
    filtered.push_back(std::chrono::duration<double, std::micro>(steady::now() - a).count());
    if (!r || !f || r->size() != 10) return std::fprintf(stderr, "query failed\n"), 1;
  }
  print("kNN k=10, no filter", plain);
  char label[64];
  std::snprintf(label, sizeof label, "kNN k=10, exact over 1%% (%zu)", subset.size());
  print(label, filtered);

  std::printf("recall@10 against exact search: %.4f (%zu queries)\n", recall(), recall_queries);

  // A restart: close() writes the snapshot, open() loads it.
  auto t0 = steady::now();
  index->close();
  const double saved = seconds_since(t0);
  uintmax_t bytes = 0;
  for (const auto& f : std::filesystem::recursive_directory_iterator(vo.snapshot_dir))
    if (f.is_regular_file()) bytes += f.file_size();
  index.reset();
  const double restart = open_and_load(index, vo, **store);
  std::printf("snapshot: written in %.1f s (%.0f MiB); restart loaded %zu vectors in %.1f s; recall@10 after: %.4f\n",
              saved, double(bytes) / (1 << 20), index->size("m"), restart, recall());
  index->close();
  (*store)->close();
  return 0;
}
