#include "search/vectors.hpp"

// hnswlib's SSE path prefetches through *(datal + j + 1), one element past the end
// of a neighbour list (nmslib/hnswlib issues #107 and #578, fix PR #459 still open):
// a read of up to 4 bytes past a malloc'd block, only used as a prefetch address.
// ASan reports it, so sanitizer builds take hnswlib's portable path, as hnswlib's
// own sanitizer tests do (PR #628). Release builds keep the prefetches.
#ifdef ENGRAM_HNSW_PORTABLE
#pragma push_macro("__SSE__")
#undef __SSE__
#include <hnswlib/hnswlib.h>
#pragma pop_macro("__SSE__")
#else
#include <hnswlib/hnswlib.h>
#endif
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <queue>
#include <shared_mutex>
#include <thread>
#include <unordered_map>

#include "model/ids.hpp"
#include "model/thread_name.hpp"
#include "search/distance.hpp"
#include "search/vector_snapshot.hpp"
#include "storage/store.hpp"

namespace engram::search {
namespace {

using model::errc;
using model::fail;
using steady = std::chrono::steady_clock;

constexpr size_t read_chunk = 1024;   // vectors read from storage at a time
constexpr size_t insert_batch = 64;   // inserts per exclusive hold of a graph
constexpr size_t initial_capacity = 1024;

using unit_key = std::array<uint8_t, 16>;
struct unit_key_hash {
  size_t operator()(const unit_key& k) const {
    // UUIDv7: the last 8 bytes are random.
    uint64_t h;
    std::memcpy(&h, k.data() + 8, 8);
    return size_t(h);
  }
};

std::optional<unit_key> key_of(std::string_view unit_id) {
  auto id = model::uuid::parse(unit_id);
  if (!id) return std::nullopt;
  return id->bytes;
}

const dot_kernel dot = best_dot();

// A table of a snapshot (label → unit, label → vseq) as the bytes written to its file.
template <class T>
std::string_view bytes_of(const std::vector<T>& table) {
  return {reinterpret_cast<const char*>(table.data()), table.size() * sizeof(T)};
}

// Reads such a file back into a table of `n` entries; false if it is short.
template <class T>
bool read_table(const std::string& path, std::vector<T>& table, size_t n) {
  table.resize(n);
  std::ifstream in(path, std::ios::binary);
  in.read(reinterpret_cast<char*>(table.data()), std::streamsize(n * sizeof(T)));
  return bool(in);
}

// Cosine distance over unit vectors, 1 - a·b, as hnswlib's InnerProductSpace
// measures it (so saved graphs stay valid), with the CPU's best kernel
// (search/distance.hpp) rather than the one hnswlib was compiled with.
class dot_space final : public hnswlib::SpaceInterface<float> {
 public:
  explicit dot_space(size_t dim) : dim_(dim) {}
  size_t get_data_size() override { return dim_ * sizeof(float); }
  hnswlib::DISTFUNC<float> get_dist_func() override { return &distance; }
  void* get_dist_func_param() override { return &dim_; }

 private:
  static float distance(const void* a, const void* b, const void* dim) {
    return 1.0f - dot(static_cast<const float*>(a), static_cast<const float*>(b), *static_cast<const size_t*>(dim));
  }
  size_t dim_;
};

// One embedding model's vectors.
struct space {
  using graph_type = hnswlib::HierarchicalNSW<float>;
  explicit space(uint32_t d, const vector_options& o)
      : dim(d), metric(d), graph(std::make_unique<graph_type>(&metric, initial_capacity, o.m, o.ef_construction)) {}
  // Loads a graph hnswlib saved (a snapshot); throws what hnswlib throws.
  space(uint32_t d, const std::string& path) : dim(d), metric(d), graph(std::make_unique<graph_type>(&metric, path)) {
    // hnswlib 0.6's loading constructor counts deletions from an uninitialised value.
    graph->num_deleted_ = 0;
    for (size_t i = 0; i < graph->cur_element_count; ++i) graph->num_deleted_ += graph->isMarkedDeleted(i);
  }
  const uint32_t dim;
  dot_space metric;  // must outlive the graph
  // Searches share the lock; inserts (and growth) take it exclusively.
  mutable std::shared_mutex mu;
  std::unique_ptr<graph_type> graph;
  std::vector<unit_key> ids;     // label → unit
  std::vector<uint64_t> vseqs;   // label → the vseq its vector was stored under
  std::unordered_map<unit_key, hnswlib::labeltype, unit_key_hash> labels;
};

struct metrics_set {
  std::shared_ptr<prometheus::Registry> own;
  prometheus::Gauge* vectors;
  prometheus::Gauge* lag;
  prometheus::Counter* inserted;
  prometheus::Gauge* snapshot_seconds;

  explicit metrics_set(prometheus::Registry* r) {
    if (!r) {
      own = std::make_shared<prometheus::Registry>();
      r = own.get();
    }
    using namespace prometheus;
    vectors = &BuildGauge().Name("engram_search_vectors").Help("Vectors in the vector index").Register(*r).Add({});
    lag = &BuildGauge().Name("engram_search_vector_lag")
               .Help("Vectors committed to storage but not yet in the vector index").Register(*r).Add({});
    inserted = &BuildCounter().Name("engram_search_vectors_inserted_total")
                    .Help("Vectors inserted into the vector index (a rebuild at start-up counts again)")
                    .Register(*r).Add({});
    snapshot_seconds = &BuildGauge().Name("engram_search_vector_snapshot_seconds")
                            .Help("How long the last snapshot of the vector graphs took to write")
                            .Register(*r).Add({});
  }
};

}  // namespace

bool normalize(std::span<float> v) {
  double norm = 0;
  for (const float x : v) norm += double(x) * x;
  if (norm == 0 || !std::isfinite(norm)) return false;
  const auto inv = float(1.0 / std::sqrt(norm));
  for (float& x : v) x *= inv;
  return true;
}

struct vector_index::impl {
  vector_options opts;
  storage::store& store;
  metrics_set metrics;

  mutable std::shared_mutex spaces_mu;  // the map; each space has its own lock
  std::map<std::string, std::unique_ptr<space>, std::less<>> spaces;

  std::mutex mu;
  std::condition_variable cv;
  bool stopping = false;
  std::atomic<uint64_t> committed{0};  // highest vseq committed to storage
  std::atomic<uint64_t> applied{0};    // highest vseq inserted
  std::atomic<uint64_t> count{0};
  std::atomic<bool> catching_up{true};
  std::vector<std::string> removals;  // units whose vectors storage removed (guarded by mu)
  std::thread follower;
  // Snapshots: written and read by the follower only (and by close() after it ends).
  uint64_t saved_vseq = 0;  // the newest snapshot on disk covers vectors up to this
  steady::time_point last_save = steady::now();

  impl(const vector_options& o, storage::store& s, prometheus::Registry* r) : opts(o), store(s), metrics(r) {}

  space* find(std::string_view model) const {
    std::shared_lock lock(spaces_mu);
    auto it = spaces.find(model);
    return it == spaces.end() ? nullptr : it->second.get();
  }

  space& find_or_create(const std::string& model, uint32_t dim) {
    if (auto* s = find(model)) return *s;
    std::unique_lock lock(spaces_mu);
    auto& slot = spaces[model];
    if (!slot) slot = std::make_unique<space>(dim, opts);
    return *slot;
  }

  void run() {
    const auto started = steady::now();
    auto last_log = started;
    if (!opts.snapshot_dir.empty()) load_snapshot();
    if (catching_up && lag() == 0) {
      catching_up = false;
      spdlog::info("search: vector index ready with {} vectors ({:.1f} s)", count.load(),
                   std::chrono::duration<double>(steady::now() - started).count());
    }
    for (;;) {
      std::vector<std::string> removed;
      {
        std::unique_lock lock(mu);
        cv.wait(lock, [&] { return stopping || committed > applied || !removals.empty(); });
        if (stopping) return;
        removed.swap(removals);
      }
      // Removals are applied here, after every vector read before the removal was
      // committed has been inserted, so a removed vector cannot come back.
      if (!removed.empty()) remove(removed);
      if (committed <= applied) continue;
      const uint64_t target = committed;
      auto batch = store.read_vectors(applied, read_chunk);
      if (!batch) {
        spdlog::error("search: reading vectors after {}: {}", applied.load(), batch.error().message);
        std::unique_lock lock(mu);
        cv.wait_for(lock, std::chrono::milliseconds(200), [&] { return stopping; });
        continue;
      }
      if (batch->empty()) {
        // Every vector up to `target` is committed and readable, so the rest were
        // removed (retention, a deleted context). Loading can end here: storage's
        // newest vseq stays a removed vector's across restarts.
        applied = std::max<uint64_t>(applied, target);
      } else {
        insert(*batch);
        applied = batch->back().vseq;
      }
      metrics.lag->Set(double(lag()));
      const bool loaded = catching_up && lag() == 0;
      if (loaded) {
        catching_up = false;
        spdlog::info("search: vector index ready with {} vectors ({:.1f} s)", count.load(),
                     std::chrono::duration<double>(steady::now() - started).count());
      } else if (catching_up && steady::now() - last_log > std::chrono::seconds(2)) {
        last_log = steady::now();
        spdlog::info("search: loading vectors: {} in the index, {} to go", count.load(), lag());
      }
      // A snapshot after enough new vectors, at most every snapshot_interval, and
      // as soon as loading ends, so that the next start does not insert them again.
      if (applied - saved_vseq >= opts.snapshot_min_vectors &&
          (loaded || steady::now() - last_save >= opts.snapshot_interval))
        save_snapshot();
    }
  }

  // ---- snapshots (search/vector_snapshot.hpp has the files) ----------------------

  // Writes every graph and its label table, then moves CURRENT to them. Runs on the
  // follower (or after it ended): nothing inserts meanwhile, searches go on.
  void save_snapshot() {
    if (opts.snapshot_dir.empty() || applied == saved_vseq) return;
    const auto t0 = steady::now();
    last_save = t0;  // a failed save waits an interval too
    const uint64_t vseq = applied;
    auto dir = snapshot::begin(opts.snapshot_dir, vseq);
    if (!dir) return spdlog::error("search: vector snapshot: {}", dir.error().message);
    snapshot::manifest m{vseq, store.identity(), {}};
    size_t vectors = 0;
    {
      std::shared_lock spaces_lock(spaces_mu);
      for (const auto& [model, sp] : spaces) {
        std::shared_lock lock(sp->mu);
        const std::string n = std::to_string(m.models.size());
        try {
          sp->graph->saveIndex(*dir + "/" + n + ".hnsw");
        } catch (const std::exception& e) {
          return spdlog::error("search: vector snapshot: saving the graph of '{}': {}", model, e.what());
        }
        auto graph = snapshot::seal(*dir, n + ".hnsw");
        if (!graph) return spdlog::error("search: vector snapshot: {}", graph.error().message);
        if (graph->bytes != saved_size(*sp->graph))
          return spdlog::error("search: vector snapshot: the graph of '{}' was not written whole ({} bytes)", model,
                               graph->bytes);
        auto ids = snapshot::write_sealed(*dir, n + ".ids", bytes_of(sp->ids));
        if (!ids) return spdlog::error("search: vector snapshot: {}", ids.error().message);
        auto vseqs = snapshot::write_sealed(*dir, n + ".vseq", bytes_of(sp->vseqs));
        if (!vseqs) return spdlog::error("search: vector snapshot: {}", vseqs.error().message);
        m.models.push_back(
            {model, sp->dim, opts.m, opts.ef_construction, std::move(*graph), std::move(*ids), std::move(*vseqs)});
        vectors += sp->labels.size();
      }
    }
    if (auto ok = snapshot::commit(opts.snapshot_dir, *dir, m); !ok)
      return spdlog::error("search: vector snapshot: {}", ok.error().message);
    saved_vseq = vseq;
    metrics.snapshot_seconds->Set(std::chrono::duration<double>(steady::now() - t0).count());
    spdlog::info("search: vector snapshot of {} vectors (up to vseq {}) written in {:.1f} s", vectors, vseq,
                 std::chrono::duration<double>(steady::now() - t0).count());
  }

  // What hnswlib's saveIndex writes for a graph: a header, every element's level-0
  // record, and each element's upper-level links with their length.
  static uint64_t saved_size(const space::graph_type& g) {
    uint64_t bytes = 6 * sizeof(size_t) + sizeof(int) + sizeof(hnswlib::tableint) + 3 * sizeof(size_t) +
                     sizeof(double) + sizeof(size_t);
    bytes += g.cur_element_count * g.size_data_per_element_;
    for (size_t i = 0; i < g.cur_element_count; ++i)
      bytes += sizeof(unsigned) + (g.element_levels_[i] > 0 ? g.size_links_per_element_ * g.element_levels_[i] : 0);
    return bytes;
  }

  // At start: the graphs from the newest snapshot, checked against storage's vector
  // keys: a label stays only if storage still has its unit's vector under the same
  // vseq; a stored vector up to the snapshot's vseq that it lacks (removed and
  // stored again since under a reused vseq, which only a store written before
  // vseqs were counted can hold) is inserted now, and the follower
  // inserts those after it. Anything else wrong with the snapshot (another store,
  // changed graph parameters, a file that does not match, mostly deleted slots)
  // means it is dropped and every vector is inserted again, as without snapshots.
  void load_snapshot() {
    const auto t0 = steady::now();
    auto current = snapshot::read_current(opts.snapshot_dir);
    if (!current) {
      spdlog::warn("search: not using the vector snapshot: {}; inserting every vector again", current.error().message);
      return snapshot::drop(opts.snapshot_dir);
    }
    if (!*current) return;
    const auto& [dir, m] = **current;
    // Dropped, not just skipped: a snapshot newer than the store would otherwise be
    // taken once the store's vseqs passed it again, with other vectors under them.
    const auto skip = [&](const std::string& why) {
      spdlog::warn("search: not using the vector snapshot {}: {}; inserting every vector again", dir, why);
      snapshot::drop(opts.snapshot_dir);
    };
    if (m.store != store.identity()) return skip("it was built from another store");
    if (m.vseq > committed) return skip("it is newer than the store (a restored backup?)");
    std::map<std::string, std::unique_ptr<space>, std::less<>> loaded;
    for (const auto& e : m.models) {
      if (e.m != opts.m || e.ef_construction != opts.ef_construction)
        return skip("search.vectors.m or ef_construction changed");
      if (!snapshot::verify(dir, e.graph) || !snapshot::verify(dir, e.ids) || !snapshot::verify(dir, e.vseqs) ||
          e.ids.bytes % sizeof(unit_key) != 0 || e.vseqs.bytes / sizeof(uint64_t) != e.ids.bytes / sizeof(unit_key))
        return skip("the files of '" + e.model + "' do not match its manifest");
      std::unique_ptr<space> sp;
      try {
        sp = std::make_unique<space>(e.dim, dir + "/" + e.graph.name);
      } catch (const std::exception& ex) {
        return skip(std::string("loading the graph of '") + e.model + "': " + ex.what());
      }
      // hnswlib keeps deleted slots (memory, snapshot size, search time); once they
      // are most of the graph, a rebuild from the live vectors is worth its time.
      if (sp->graph->num_deleted_ * 2 > sp->graph->cur_element_count)
        return skip("most of the graph of '" + e.model + "' is deleted slots");
      const size_t labels = e.ids.bytes / sizeof(unit_key);
      if (labels != sp->graph->cur_element_count || !read_table(dir + "/" + e.ids.name, sp->ids, labels) ||
          !read_table(dir + "/" + e.vseqs.name, sp->vseqs, labels))
        return skip("the label table of '" + e.model + "'");
      for (hnswlib::labeltype label = 0; label < sp->ids.size(); ++label) {
        const auto internal = sp->graph->label_lookup_.find(label);
        if (internal != sp->graph->label_lookup_.end() && !sp->graph->isMarkedDeleted(internal->second))
          sp->labels.emplace(sp->ids[label], label);
      }
      loaded.emplace(e.model, std::move(sp));
    }
    std::map<std::string, std::vector<bool>, std::less<>> kept;
    for (const auto& [model, sp] : loaded) kept[model].resize(sp->ids.size());
    std::vector<uint64_t> missing;  // stored up to m.vseq, not in the snapshot
    auto listed = store.for_each_vector_key([&](std::span<const uint8_t, 16> unit, std::string_view model, uint64_t vseq) {
      if (vseq > m.vseq) return;  // the follower inserts it
      unit_key key;
      std::copy(unit.begin(), unit.end(), key.begin());
      if (const auto sp = loaded.find(model); sp != loaded.end()) {
        const auto label = sp->second->labels.find(key);
        if (label != sp->second->labels.end() && sp->second->vseqs[label->second] == vseq) {
          kept.find(model)->second[label->second] = true;
          return;
        }
      }
      missing.push_back(vseq);
    });
    if (!listed) return skip(listed.error().message);
    uint64_t removed = 0;
    for (auto& [model, sp] : loaded) {
      const auto& keep = kept.find(model)->second;
      for (auto it = sp->labels.begin(); it != sp->labels.end();) {
        if (keep[it->second]) {
          ++it;
          continue;
        }
        sp->graph->markDelete(it->second);
        it = sp->labels.erase(it);
        ++removed;
      }
    }
    {
      std::unique_lock lock(spaces_mu);
      spaces = std::move(loaded);
    }
    uint64_t vectors = 0;
    for (const auto& [model, sp] : spaces) vectors += sp->labels.size();
    count = vectors;
    for (const uint64_t vseq : missing) {  // rare: each is one read
      auto one = store.read_vectors(vseq - 1, 1);
      if (one && !one->empty() && one->front().vseq == vseq) insert(*one);
    }
    applied = saved_vseq = m.vseq;
    metrics.vectors->Set(double(count.load()));
    metrics.lag->Set(double(lag()));
    spdlog::info("search: vector snapshot loaded: {} vectors up to vseq {} ({} removed since, {} stored again) in "
                 "{:.1f} s; {} to insert",
                 count.load(), m.vseq, removed, missing.size(),
                 std::chrono::duration<double>(steady::now() - t0).count(), lag());
  }

  // Marks the units' vectors deleted in every model's graph (hnswlib keeps the slot;
  // searches skip it).
  void remove(const std::vector<std::string>& unit_ids) {
    std::shared_lock spaces_lock(spaces_mu);
    for (auto& [model, sp] : spaces) {
      std::unique_lock lock(sp->mu);
      for (const auto& id : unit_ids) {
        const auto key = key_of(id);
        if (!key) continue;
        const auto it = sp->labels.find(*key);
        if (it == sp->labels.end()) continue;
        try {
          sp->graph->markDelete(it->second);
        } catch (const std::exception& e) {
          spdlog::warn("search: removing the vector of unit {}: {}", id, e.what());
        }
        sp->labels.erase(it);
        --count;
      }
    }
    metrics.vectors->Set(double(count.load()));
  }

  uint64_t lag() const {
    const uint64_t c = committed, a = applied;
    return c > a ? c - a : 0;
  }

  // Inserts one read batch, grouped by model, a few at a time per exclusive hold.
  void insert(std::vector<storage::stored_vector>& batch) {
    std::map<std::string, std::vector<storage::stored_vector*>> by_model;
    for (auto& v : batch) by_model[v.embedding.model()].push_back(&v);
    for (auto& [model, items] : by_model) {
      auto& sp = find_or_create(model, uint32_t(items.front()->embedding.values_size()));
      for (size_t from = 0; from < items.size(); from += insert_batch) {
        const size_t to = std::min(items.size(), from + insert_batch);
        insert_some(sp, std::span(items).subspan(from, to - from));
      }
    }
  }

  void insert_some(space& sp, std::span<storage::stored_vector*> items) {
    struct prepared {
      hnswlib::labeltype label;
      std::vector<float> values;
    };
    std::vector<prepared> work;
    std::unique_lock lock(sp.mu);
    for (auto* v : items) {
      auto key = key_of(v->unit_id);
      auto* values = v->embedding.mutable_values();
      // Storage enforces one dimension per model; a unit has one vector per model.
      if (!key || uint32_t(values->size()) != sp.dim || sp.labels.contains(*key)) continue;
      std::vector<float> unit(values->begin(), values->end());
      if (!normalize(unit)) continue;
      const auto label = hnswlib::labeltype(sp.ids.size());
      sp.ids.push_back(*key);
      sp.vseqs.push_back(v->vseq);
      sp.labels.emplace(*key, label);
      work.push_back({label, std::move(unit)});
    }
    if (work.empty()) return;
    const size_t needed = sp.graph->cur_element_count + work.size();
    if (needed > sp.graph->max_elements_) sp.graph->resizeIndex(std::max(needed, sp.graph->max_elements_ * 2));
    // hnswlib inserts in parallel safely, except the very first element.
    size_t first = 0;
    if (sp.graph->cur_element_count == 0) {
      sp.graph->addPoint(work[0].values.data(), work[0].label);
      first = 1;
    }
    const size_t threads = std::min<size_t>(std::max<size_t>(1, opts.insert_threads), work.size() - first);
    if (threads <= 1) {
      for (size_t i = first; i < work.size(); ++i) sp.graph->addPoint(work[i].values.data(), work[i].label);
    } else {
      std::atomic<size_t> next{first};
      auto worker = [&] {
        for (size_t i; (i = next.fetch_add(1)) < work.size();) sp.graph->addPoint(work[i].values.data(), work[i].label);
      };
      std::vector<std::jthread> helpers;
      for (size_t t = 1; t < threads; ++t) helpers.emplace_back(worker);
      worker();
    }
    count += work.size();
    metrics.vectors->Set(double(count.load()));
    metrics.inserted->Increment(double(work.size()));
  }

  model::result<std::vector<float>> prepare_query(const space& sp, std::span<const float> query) const {
    if (query.size() != sp.dim)
      return fail(errc::invalid_argument, "vector has dimension " + std::to_string(query.size()) +
                                              " but the model has dimension " + std::to_string(sp.dim));
    std::vector<float> q(query.begin(), query.end());
    if (!normalize(q)) return fail(errc::invalid_argument, "vector must not be all zeros");
    return q;
  }

  std::string unit_id(const space& sp, hnswlib::labeltype label) const {
    model::uuid id;
    id.bytes = sp.ids[label];
    return id.to_string();
  }
};

vector_index::vector_index(std::unique_ptr<impl> p) : impl_(std::move(p)) {}
vector_index::~vector_index() { close(); }

model::result<std::unique_ptr<vector_index>> vector_index::open(const vector_options& opts, storage::store& store,
                                                                prometheus::Registry* metrics) {
  auto p = std::make_unique<impl>(opts, store, metrics);
  spdlog::debug("search: vector distance kernel: {}", best_dot_name());
  // Everything stored so far is the backlog.
  p->committed = store.last_vector_seq();
  if (p->committed == 0) p->catching_up = false;
  auto* raw = p.get();
  p->follower = std::thread([raw] {
    model::name_this_thread("vector-follow");
    raw->run();
  });
  return std::unique_ptr<vector_index>(new vector_index(std::move(p)));
}

void vector_index::on_committed(uint64_t last_vseq) {
  auto& s = *impl_;
  {
    std::lock_guard lock(s.mu);
    if (last_vseq <= s.committed) return;
    s.committed = last_vseq;
  }
  s.metrics.lag->Set(double(s.lag()));
  s.cv.notify_one();
}

void vector_index::on_removed(const std::vector<std::string>& unit_ids) {
  if (unit_ids.empty()) return;
  auto& s = *impl_;
  {
    std::lock_guard lock(s.mu);
    s.removals.insert(s.removals.end(), unit_ids.begin(), unit_ids.end());
  }
  s.cv.notify_one();
}

std::optional<uint32_t> vector_index::dimension(const std::string& model) const {
  const auto* sp = impl_->find(model);
  if (!sp) return std::nullopt;
  return sp->dim;
}

size_t vector_index::size(const std::string& model) const {
  const auto* sp = impl_->find(model);
  if (!sp) return 0;
  std::shared_lock lock(sp->mu);
  return sp->labels.size();
}

model::result<std::vector<neighbour>> vector_index::nearest(const std::string& model, std::span<const float> query,
                                                            size_t k) const {
  std::vector<neighbour> out;
  const auto* sp = impl_->find(model);
  if (!sp || k == 0) return out;
  auto q = impl_->prepare_query(*sp, query);
  if (!q) return std::unexpected(q.error());
  std::shared_lock lock(sp->mu);
  if (sp->graph->cur_element_count == 0) return out;
  // hnswlib searches with max(ef, k) candidates; asking for ef_search and keeping
  // the best k avoids its shared (racy) setEf.
  std::priority_queue<std::pair<float, hnswlib::labeltype>> found;
  try {
    found = sp->graph->searchKnn(q->data(), std::max(k, impl_->opts.ef_search));
  } catch (const std::exception& e) {  // hnswlib reports a damaged graph with std::runtime_error
    return fail(errc::internal, std::string("search: vector index: ") + e.what());
  }
  std::vector<std::pair<float, hnswlib::labeltype>> ranked;
  ranked.reserve(found.size());
  for (; !found.empty(); found.pop()) ranked.push_back(found.top());
  std::sort(ranked.begin(), ranked.end());
  if (ranked.size() > k) ranked.resize(k);
  out.reserve(ranked.size());
  for (const auto& [distance, label] : ranked) out.push_back({impl_->unit_id(*sp, label), 1 - distance});
  return out;
}

model::result<std::vector<neighbour>> vector_index::rank_exact(const std::string& model,
                                                               std::span<const float> query,
                                                               const std::vector<std::string>& unit_ids,
                                                               size_t k) const {
  std::vector<neighbour> out;
  const auto* sp = impl_->find(model);
  if (!sp || k == 0) return out;
  auto q = impl_->prepare_query(*sp, query);
  if (!q) return std::unexpected(q.error());
  std::vector<std::pair<float, size_t>> scored;  // (similarity, index into unit_ids)
  {
    std::shared_lock lock(sp->mu);
    for (size_t i = 0; i < unit_ids.size(); ++i) {
      const auto key = key_of(unit_ids[i]);
      if (!key) continue;
      const auto it = sp->labels.find(*key);
      if (it == sp->labels.end()) continue;
      // The label is in the graph (inserted under the same exclusive hold). Read the
      // stored vector in place: getDataByLabel would copy it for every candidate.
      const auto internal = sp->graph->label_lookup_.find(it->second);
      if (internal == sp->graph->label_lookup_.end()) continue;
      const auto* values = reinterpret_cast<const float*>(sp->graph->getDataByInternalId(internal->second));
      scored.emplace_back(dot(q->data(), values, sp->dim), i);
    }
  }
  const size_t keep = std::min(k, scored.size());
  std::partial_sort(scored.begin(), scored.begin() + ptrdiff_t(keep), scored.end(),
                    [](const auto& a, const auto& b) { return a.first > b.first; });
  scored.resize(keep);
  for (const auto& [similarity, i] : scored) out.push_back({unit_ids[i], similarity});
  return out;
}

vector_status vector_index::status() const {
  vector_status st;
  st.vectors = impl_->count.load();
  st.lag = impl_->lag();
  st.catching_up = impl_->catching_up.load();
  return st;
}

void vector_index::close() {
  auto& s = *impl_;
  {
    std::lock_guard lock(s.mu);
    s.stopping = true;
  }
  s.cv.notify_all();
  if (!s.follower.joinable()) return;
  s.follower.join();
  s.save_snapshot();  // whatever was inserted since the last one
}

}  // namespace engram::search
