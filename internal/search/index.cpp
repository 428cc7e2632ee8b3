#include "search/index.hpp"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <spdlog/spdlog.h>
#include <xapian.h>

#include <fcntl.h>
#include <malloc.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "model/codec.hpp"
#include "search/fusion.hpp"
#include "search/terms.hpp"
#include "storage/store.hpp"

namespace engram::search {
namespace {

using model::errc;
using model::fail;
using steady = std::chrono::steady_clock;

// Bumped whenever the document layout (terms.hpp) changes: an index with another
// schema is rebuilt.
constexpr std::string_view schema_version = "1";
constexpr std::string_view meta_schema = "engram.schema";
constexpr std::string_view meta_store = "engram.store";
constexpr std::string_view meta_language = "engram.language";
// Boot id of the last session that wrote without fsync and did not close cleanly.
constexpr std::string_view meta_unsynced = "engram.unsynced_boot";
constexpr size_t read_chunk = 512;  // events read from a log at a time
constexpr size_t max_sealed_shards = 8;

std::string position_key(std::string_view context_id) { return bool_term("p:", context_id); }

std::string describe(const Xapian::Error& e) { return e.get_type() + std::string(": ") + e.get_msg(); }

std::string read_boot_id(const std::string& path) {
  std::ifstream in(path);
  std::string id;
  std::getline(in, id);
  return id.empty() ? "unknown" : id;
}

// fsync every file of a directory, then the directory.
void sync_directory(const std::string& dir) {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    if (!entry.is_regular_file()) continue;
    const int fd = ::open(entry.path().c_str(), O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
      ::fsync(fd);
      ::close(fd);
    }
  }
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

struct metrics_set {
  std::shared_ptr<prometheus::Registry> own;  // when the caller gave none
  prometheus::Counter* documents_indexed;
  prometheus::Counter* commits;
  prometheus::Gauge* lag;
  prometheus::Gauge* documents;
  prometheus::Histogram* delay;
  prometheus::Histogram* commit_seconds;
  prometheus::Histogram* latency;
  prometheus::Counter* queries_ok;
  prometheus::Counter* queries_invalid;
  prometheus::Counter* queries_failed;

  explicit metrics_set(prometheus::Registry* r) {
    if (!r) {
      own = std::make_shared<prometheus::Registry>();
      r = own.get();
    }
    using namespace prometheus;
    documents_indexed = &BuildCounter().Name("engram_search_documents_indexed_total")
                             .Help("Work units written to the search index (re-indexing counts again)")
                             .Register(*r).Add({});
    commits = &BuildCounter().Name("engram_search_index_commits_total")
                   .Help("Search index commits (each makes a batch searchable)").Register(*r).Add({});
    lag = &BuildGauge().Name("engram_search_index_lag_events")
               .Help("Events committed to context logs but not yet searchable").Register(*r).Add({});
    documents = &BuildGauge().Name("engram_search_index_documents")
                     .Help("Work units in the search index").Register(*r).Add({});
    delay = &BuildHistogram().Name("engram_search_index_delay_seconds")
                 .Help("From a unit's commit to the log until it is searchable")
                 .Register(*r)
                 .Add({}, Histogram::BucketBoundaries{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                                      1, 5, 30});
    commit_seconds = &BuildHistogram().Name("engram_search_index_commit_seconds")
                          .Help("Duration of one index commit (writing and syncing the batch)")
                          .Register(*r)
                          .Add({}, Histogram::BucketBoundaries{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                               0.5, 1, 2.5});
    latency = &BuildHistogram().Name("engram_search_query_duration_seconds")
                   .Help("Search query execution time, snippets included")
                   .Register(*r)
                   .Add({}, Histogram::BucketBoundaries{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                                        0.025, 0.05, 0.1, 0.25, 1});
    auto& queries = BuildCounter().Name("engram_search_queries_total")
                        .Help("Search queries by outcome (ok, invalid: refused as malformed, error)")
                        .Register(*r);
    queries_ok = &queries.Add({{"outcome", "ok"}});
    queries_invalid = &queries.Add({{"outcome", "invalid"}});
    queries_failed = &queries.Add({{"outcome", "error"}});
  }
};

}  // namespace

std::string_view to_string(search_mode m) {
  switch (m) {
    case search_mode::automatic: return "auto";
    case search_mode::keyword: return "keyword";
    case search_mode::semantic: return "semantic";
    case search_mode::hybrid: return "hybrid";
  }
  return "unknown";
}

std::string_view to_string(index_state s) {
  switch (s) {
    case index_state::catching_up: return "catching_up";
    case index_state::ready: return "ready";
    case index_state::failed: return "failed";
  }
  return "unknown";
}

// One Xapian database directory of the index. A retired shard (merged into the
// base) is deleted when the last view that still shows it is released.
struct shard {
  std::string dir;
  uint64_t number = 0;  // 0: the base
  std::atomic<bool> retired{false};
  shard(std::string d, uint64_t n) : dir(std::move(d)), number(n) {}
  ~shard() {
    if (!retired) return;
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
};

// The shards a query searches together, base first. Published as a whole, so a
// query sees a merged unit either in the base or in its recent shard, never both.
struct view {
  uint64_t epoch = 0;
  std::vector<std::shared_ptr<shard>> shards;
};

struct index::impl {
  options opts;
  storage::store& store;
  std::string store_identity;
  std::string boot_id;
  // Xapian objects are not thread-safe (not even their reference counts): every
  // thread builds its own stemmer from the language.
  metrics_set metrics;

  // ---- indexer thread only (after open) ----
  std::shared_ptr<shard> base;
  std::vector<std::shared_ptr<shard>> sealed;  // full recent shards, oldest first, awaiting merge
  std::shared_ptr<shard> active;               // the recent shard being written
  std::optional<Xapian::WritableDatabase> writer;  // on `active`
  uint64_t documents_elsewhere = 0;                // in the base and sealed shards
  std::unordered_map<std::string, uint64_t> positions;  // last seq indexed, per context
  std::vector<Xapian::Database> position_sources;       // base and sealed shards, during scan()
  std::vector<int64_t> uncommitted_ts;                  // commit times of units awaiting commit
  uint64_t uncommitted_events = 0;
  steady::time_point last_commit{};
  steady::time_point last_progress_log{};
  steady::time_point catch_up_started{};
  std::thread indexer;

  // ---- merging: one background merge at a time, started and joined by the indexer ----
  std::thread merger;
  std::shared_ptr<shard> merging;
  std::atomic<bool> merge_done{false};
  std::atomic<bool> abort_merge{false};
  std::string merge_error;  // written by the merger before merge_done

  // ---- shared with the committer thread (publisher) and status readers ----
  mutable std::mutex mu;
  std::condition_variable cv;
  bool stopping = false;
  std::unordered_map<std::string, uint64_t> heads;    // last committed seq, per context
  std::unordered_map<std::string, uint64_t> pending;  // contexts with events to index
  std::string failure;
  std::atomic<uint64_t> committed_events{0};  // Σ heads
  std::atomic<uint64_t> indexed_events{0};    // Σ positions, as of the last index commit
  std::atomic<uint64_t> documents{0};
  std::atomic<size_t> sealed_count{0};  // recent shards waiting to be merged
  // Queries that lost their revision to index commits more than once. While any
  // is retrying, the indexer holds its commits (up to max_commit_hold): a reader
  // survives one commit, not two, so under a steady write load a query slower than
  // two commit intervals would otherwise never finish (seen in the soak test).
  std::atomic<int> starved_queries{0};
  static constexpr auto max_commit_hold = std::chrono::seconds(1);
  std::atomic<index_state> state{index_state::catching_up};

  // ---- queries ----
  // Readers take the view and reopen under the shared lock; a merge commits the
  // base and publishes the view without the merged shard under the exclusive lock.
  std::shared_mutex view_mu;
  std::shared_ptr<const view> current_view;
  struct reader {
    std::unique_ptr<Xapian::Database> db;
    std::shared_ptr<const view> v;
  };
  std::mutex readers_mu;
  std::vector<reader> idle_readers;
  std::optional<boost::asio::thread_pool> pool;
  std::atomic<size_t> queued_queries{0};
  std::atomic<bool> closed{false};

  // ---- semantic search ----
  std::unique_ptr<vector_index> vectors;
  std::unique_ptr<search::embedder> embedder;  // null: no endpoint configured

  impl(const options& o, storage::store& s, prometheus::Registry* r)
      : opts(o), store(s), store_identity(s.identity()), boot_id(read_boot_id(o.boot_id_file)), metrics(r) {
    Xapian::Stem check(o.language);  // throws for an unknown language
  }

  int sync_flag() const { return opts.fsync ? 0 : Xapian::DB_NO_SYNC; }
  std::string base_dir() const { return opts.index_dir + "/base"; }
  std::string recent_dir(uint64_t n) const { return opts.index_dir + "/recent." + std::to_string(n); }

  // ---- opening -------------------------------------------------------------------

  // Opens the index, replacing one that is unreadable, was built for another store,
  // schema or language, or may have lost unsynced writes to an OS crash. Fails only
  // when the directory cannot be used at all.
  model::status open_index() {
    std::error_code ec;
    const std::filesystem::path dir(opts.index_dir);
    const bool existed = std::filesystem::exists(dir, ec);
    std::string reason;
    std::vector<uint64_t> recents;
    if (existed && std::filesystem::exists(dir / "iamglass", ec)) reason = "it has an older layout";
    try {
      std::filesystem::create_directories(dir, ec);
      if (reason.empty()) {
        Xapian::WritableDatabase b(base_dir(), Xapian::DB_CREATE_OR_OPEN);
        if (existed) {
          const auto unsynced = b.get_metadata(std::string(meta_unsynced));
          if (b.get_metadata(std::string(meta_schema)) != schema_version) reason = "it has another schema";
          else if (b.get_metadata(std::string(meta_store)) != store_identity) reason = "it was built from another store";
          else if (b.get_metadata(std::string(meta_language)) != opts.language) reason = "it was built for another language";
          else if (!unsynced.empty() && unsynced != boot_id)
            reason = "the machine restarted while it held writes that were not fsynced (search.fsync: false)";
        }
        for (const auto& entry : std::filesystem::directory_iterator(dir)) {
          const auto name = entry.path().filename().string();
          if (!name.starts_with("recent.")) continue;
          const uint64_t n = std::strtoull(name.c_str() + 7, nullptr, 10);
          // A shard merged just before a crash is already in the base.
          if (b.get_metadata("merged." + std::to_string(n)) == "1") std::filesystem::remove_all(entry.path(), ec);
          else recents.push_back(n);
        }
        b.close();
      }
    } catch (const Xapian::DatabaseLockError& e) {
      return fail(errc::unavailable, "search index " + opts.index_dir + " is in use by another process (" +
                                         e.get_msg() + ")");
    } catch (const Xapian::Error& e) {
      reason = "it cannot be opened (" + describe(e) + ")";
    } catch (const std::filesystem::filesystem_error& e) {
      return fail(errc::unavailable, "search index " + opts.index_dir + ": " + e.what());
    }
    if (!existed) {
      spdlog::info("search: no index at {}; building it from the logs", opts.index_dir);
    } else if (!reason.empty()) {
      spdlog::warn("search: replacing the index at {} because {}; rebuilding it from the logs", opts.index_dir,
                   reason);
      return recreate();
    }
    std::sort(recents.begin(), recents.end());
    try {
      start_writing(recents);
    } catch (const Xapian::Error& e) {
      spdlog::warn("search: the index at {} cannot be used ({}); rebuilding it from the logs", opts.index_dir,
                   describe(e));
      return recreate();
    }
    return {};
  }

  // Records what the index is in the base (a synced commit), seals the recent
  // shards left by the last run (they are merged in the background) and starts a
  // new active shard, written without fsync when search.fsync is off.
  void start_writing(const std::vector<uint64_t>& recents) {
    {
      Xapian::WritableDatabase b(base_dir(), Xapian::DB_CREATE_OR_OPEN);
      b.set_metadata(std::string(meta_schema), std::string(schema_version));
      b.set_metadata(std::string(meta_store), store_identity);
      b.set_metadata(std::string(meta_language), opts.language);
      b.set_metadata(std::string(meta_unsynced), opts.fsync ? std::string() : boot_id);
      b.commit();
      documents_elsewhere = b.get_doccount();
      b.close();
    }
    base = std::make_shared<shard>(base_dir(), 0);
    sealed.clear();
    for (const uint64_t n : recents) {
      sealed.push_back(std::make_shared<shard>(recent_dir(n), n));
      documents_elsewhere += Xapian::Database(sealed.back()->dir).get_doccount();
    }
    sealed_count = sealed.size();
    const uint64_t next = recents.empty() ? 1 : recents.back() + 1;
    active = std::make_shared<shard>(recent_dir(next), next);
    writer.emplace(active->dir, Xapian::DB_CREATE_OR_OPEN | sync_flag());
    documents = documents_elsewhere + writer->get_doccount();
    metrics.documents->Set(double(documents));
    publish([&](view& v) {
      v.shards = {base};
      v.shards.insert(v.shards.end(), sealed.begin(), sealed.end());
      v.shards.push_back(active);
    });
  }

  // Replaces the published view (exclusive lock held by the caller or here).
  template <class Change>
  void publish(Change&& change, bool locked = false) {
    auto next = std::make_shared<view>();
    std::unique_lock lock(view_mu, std::defer_lock);
    if (!locked) lock.lock();
    if (current_view) *next = *current_view;
    next->epoch = current_view ? current_view->epoch + 1 : 1;
    change(*next);
    current_view = std::move(next);
    std::lock_guard readers_lock(readers_mu);
    idle_readers.clear();  // they hold the old view (and its shards) alive
  }

  // After the last commit of a clean shutdown: make everything durable, then clear
  // the unsynced mark (itself with a synced commit).
  void finish_writing() {
    stop_merge();
    if (writer) writer->close();
    writer.reset();
    if (opts.fsync) return;
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(opts.index_dir, ec))
      if (entry.is_directory()) sync_directory(entry.path().string());
    Xapian::WritableDatabase b(base_dir(), Xapian::DB_OPEN);
    b.set_metadata(std::string(meta_unsynced), "");
    b.commit();
    b.close();
  }

  // Deletes the index and starts an empty one (readers of the old one keep their
  // open files until they finish).
  model::status recreate() {
    stop_merge();
    try {
      if (writer) writer->close();
    } catch (const Xapian::Error&) {
      // Closing a broken index may fail; it is being deleted anyway.
    }
    writer.reset();
    publish([](view& v) { v.shards.clear(); });
    base.reset();
    active.reset();
    sealed.clear();
    std::error_code ec;
    std::filesystem::remove_all(opts.index_dir, ec);
    if (ec) return fail(errc::unavailable, "cannot remove search index " + opts.index_dir + ": " + ec.message());
    std::filesystem::create_directories(opts.index_dir, ec);
    try {
      start_writing({});
    } catch (const Xapian::Error& e) {
      return fail(errc::unavailable, "cannot create search index " + opts.index_dir + ": " + describe(e));
    }
    positions.clear();
    uncommitted_ts.clear();
    uncommitted_events = 0;
    indexed_events = 0;
    return {};
  }

  // ---- tiers ---------------------------------------------------------------------

  // After a commit: when the active shard is full, seal it and start a new one;
  // merge sealed shards into the base one at a time, oldest first.
  void manage_tiers() {
    if (merger.joinable() && merge_done) {
      merger.join();
      merge_done = false;
      if (!merge_error.empty()) throw std::runtime_error("merging into the base: " + merge_error);
      sealed.erase(sealed.begin());
      merging.reset();
    }
    // Sealed shards queue for the merger (searched meanwhile); past a few, the
    // active shard grows instead, so queries never span too many shards.
    if (sealed.size() < max_sealed_shards && writer->get_doccount() >= opts.recent_units) {
      documents_elsewhere += writer->get_doccount();
      writer->close();
      sealed.push_back(active);
      active = std::make_shared<shard>(recent_dir(active->number + 1), active->number + 1);
      writer.emplace(active->dir, Xapian::DB_CREATE_OR_OPEN | sync_flag());
      publish([&](view& v) { v.shards.push_back(active); });
    }
    sealed_count = sealed.size();
    if (!merger.joinable() && !sealed.empty()) {
      merging = sealed.front();
      merge_done = false;
      abort_merge = false;
      merge_error.clear();
      merger = std::thread([this, src = merging] { merge(src); });
    }
  }

  // Copies a sealed shard into the base in one transaction (so a crash leaves it
  // wholly in one place), marks it merged, then shows the base without it.
  void merge(const std::shared_ptr<shard>& src) {
    // Background work: yield the CPU to the indexer and the request threads, so
    // freshness holds while a merge runs (Linux: nice applies per thread).
    ::setpriority(PRIO_PROCESS, ::gettid(), 10);
    try {
      const auto t0 = steady::now();
      Xapian::Database in(src->dir);
      Xapian::WritableDatabase out(base_dir(), Xapian::DB_OPEN | sync_flag());
      out.begin_transaction(true);
      for (auto it = in.postlist_begin(""); it != in.postlist_end(""); ++it) {
        if (abort_merge) {
          out.cancel_transaction();
          finish_merge();
          return;
        }
        // The base cannot hold these units yet: a shard is merged once (the
        // transaction and its "merged" mark commit together).
        out.add_document(in.get_document(*it));
      }
      for (auto k = in.metadata_keys_begin("p:"); k != in.metadata_keys_end("p:"); ++k) {
        const auto pos = in.get_metadata(*k);
        if (read_sortable_u64(pos) > read_sortable_u64(out.get_metadata(*k))) out.set_metadata(*k, pos);
      }
      out.set_metadata("merged." + std::to_string(src->number), "1");
      {
        std::unique_lock lock(view_mu);
        out.commit_transaction();
        publish([&](view& v) { std::erase(v.shards, src); }, true);
      }
      out.close();
      src->retired = true;
      spdlog::info("search: merged {} units of {} into the base in {:.1f} s", in.get_doccount(), src->dir,
                    std::chrono::duration<double>(steady::now() - t0).count());
      // Xapian holds the whole transaction in memory (tens of MiB per merge). It is
      // freed now, but glibc keeps freed memory in this thread's arena; give it back,
      // or RSS steps up at every merge (bench/README.md "Soak").
      ::malloc_trim(0);
    } catch (const Xapian::Error& e) {
      merge_error = describe(e);
    } catch (const std::exception& e) {
      merge_error = e.what();
    }
    finish_merge();
  }

  void finish_merge() {
    {
      std::lock_guard lock(mu);
      merge_done = true;
    }
    cv.notify_all();
  }

  void stop_merge() {
    abort_merge = true;
    if (merger.joinable()) merger.join();
    merge_done = false;
    merging.reset();
  }

  // ---- indexer -------------------------------------------------------------------

  void run() {
    int rebuilds = 0;
    for (;;) {
      try {
        scan();
        follow();
        return;
      } catch (const std::exception& e) {
        // Xapian::Error is not a std::exception; this is storage or allocation.
        spdlog::error("search: indexer error: {}", e.what());
        if (!restart_after_error(++rebuilds, e.what())) return;
      } catch (const Xapian::Error& e) {
        spdlog::error("search: index error: {}", describe(e));
        if (!restart_after_error(++rebuilds, describe(e))) return;
      }
    }
  }

  bool restart_after_error(int rebuilds, const std::string& why) {
    if (rebuilds > 3) return give_up("gave up after repeated index errors; last: " + why);
    spdlog::warn("search: rebuilding the index from the logs");
    if (auto ok = recreate(); !ok) return give_up(ok.error().message);
    return !stopping_now();
  }

  bool give_up(const std::string& why) {
    spdlog::critical("search: {}; searches answer 503 until a restart", why);
    std::lock_guard lock(mu);
    failure = why;
    state = index_state::failed;
    return false;
  }

  bool stopping_now() {
    std::lock_guard lock(mu);
    return stopping;
  }

  // The last seq indexed for a context: the highest any shard records (shards are
  // newer than the base, and a merge carries positions into the base).
  uint64_t position(const std::string& context_id) {
    auto it = positions.find(context_id);
    if (it != positions.end()) return it->second;
    const auto key = position_key(context_id);
    uint64_t pos = read_sortable_u64(writer->get_metadata(key));
    for (const auto& db : position_sources) pos = std::max(pos, read_sortable_u64(db.get_metadata(key)));
    indexed_events += pos;
    positions.emplace(context_id, pos);
    return pos;
  }

  // Compares every context's head with the index's position: what the index lacks
  // becomes pending work. Runs at start and after a rebuild.
  void scan() {
    state = index_state::catching_up;
    catch_up_started = last_progress_log = steady::now();
    position_sources.clear();
    position_sources.emplace_back(base->dir);
    for (const auto& sh : sealed) position_sources.emplace_back(sh->dir);
    std::string after;
    for (;;) {
      auto page = store.list_contexts(after, 1000);
      if (!page) throw std::runtime_error("listing contexts: " + page.error().message);
      for (const auto& c : page->contexts) {
        const uint64_t pos = position(c.id());
        std::lock_guard lock(mu);
        auto& known = heads[c.id()];
        if (c.head_seq() > known) {
          committed_events += c.head_seq() - known;
          known = c.head_seq();
        }
        if (pos < known) {
          auto& p = pending[c.id()];
          p = std::max(p, known);
        }
      }
      if (!page->more || page->contexts.empty()) break;
      after = page->contexts.back().id();
    }
    position_sources.clear();  // contexts seen later are new: only the active shard can know them
    const uint64_t backlog = lag();
    spdlog::info("search: index at {} holds {} units; {} log events to index", opts.index_dir,
                 documents.load(), backlog);
    update_lag_metric();
    if (backlog == 0) state = index_state::ready;
  }

  uint64_t lag() const {
    const uint64_t c = committed_events.load(), i = indexed_events.load();
    return c > i ? c - i : 0;
  }
  void update_lag_metric() { metrics.lag->Set(double(lag())); }

  // Follows the logs until close(): index whatever is pending, commit at most every
  // commit_interval (sooner when a batch is full), sleep when there is nothing.
  void follow() {
    for (;;) {
      std::unordered_map<std::string, uint64_t> work;
      {
        std::unique_lock lock(mu);
        // A finished merge wakes the indexer too: the next one starts even when
        // no writes arrive.
        auto has_work = [&] { return stopping || !pending.empty() || merge_done; };
        if (uncommitted_events == 0) cv.wait(lock, has_work);
        else cv.wait_until(lock, last_commit + (starved_queries > 0 ? max_commit_hold : opts.commit_interval), has_work);
        if (stopping) break;
        work.swap(pending);
      }
      const bool read_error = !work.empty() && !index_some(work);
      const bool held = starved_queries > 0 && steady::now() < last_commit + max_commit_hold;
      if (uncommitted_events > 0 && !held &&
          (steady::now() >= last_commit + opts.commit_interval || uncommitted_ts.size() >= opts.max_batch_units))
        commit();  // manages the tiers too
      else if (merge_done)
        manage_tiers();
      if (read_error) {
        std::unique_lock lock(mu);  // storage refused a read: retry later
        cv.wait_for(lock, std::chrono::milliseconds(100), [&] { return stopping; });
      }
    }
    if (uncommitted_events > 0) commit();
  }

  // Indexes up to max_batch_units units of the work; what is left goes back to
  // `pending`. False when a storage read failed.
  bool index_some(const std::unordered_map<std::string, uint64_t>& work) {
    Xapian::TermGenerator generator;
    generator.set_stemmer(Xapian::Stem(opts.language));
    generator.set_flags(Xapian::TermGenerator::FLAG_CJK_NGRAM);
    size_t budget = opts.max_batch_units;
    bool ok = true;
    std::vector<std::pair<std::string, uint64_t>> leftover;
    for (const auto& [context_id, head] : work) {
      uint64_t pos = position(context_id);
      const uint64_t start = pos;
      while (pos < head && budget > 0 && ok) {
        auto events = store.read_events(context_id, pos, std::min<uint64_t>({read_chunk, budget, head - pos}));
        if (!events) {
          spdlog::error("search: reading context '{}' after seq {}: {}", context_id, pos, events.error().message);
          ok = false;
          break;
        }
        if (events->empty()) break;  // cannot happen while head is a committed seq
        for (const auto& ev : *events) {
          if (ev.has_work_unit()) {
            const auto& unit = ev.work_unit();
            writer->replace_document(unique_term(unit.id()), make_document(unit, generator, opts.max_text_bytes));
            uncommitted_ts.push_back(unit.ts_ns());
            --budget;
          }
          pos = ev.seq();
        }
      }
      if (pos != start) {
        positions[context_id] = pos;
        writer->set_metadata(position_key(context_id), sortable_u64(pos));
        uncommitted_events += pos - start;
      }
      if (pos < head) leftover.emplace_back(context_id, head);
    }
    if (!leftover.empty()) {
      std::lock_guard lock(mu);
      for (auto& [context_id, head] : leftover) {
        auto& p = pending[context_id];
        p = std::max(p, head);
      }
    }
    return ok;
  }

  void commit() {
    const auto t0 = steady::now();
    writer->commit();
    last_commit = steady::now();
    metrics.commit_seconds->Observe(std::chrono::duration<double>(last_commit - t0).count());
    const int64_t now_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                               std::chrono::system_clock::now().time_since_epoch()).count();
    for (const int64_t ts : uncommitted_ts) metrics.delay->Observe(double(std::max<int64_t>(0, now_ns - ts)) / 1e9);
    metrics.documents_indexed->Increment(double(uncommitted_ts.size()));
    metrics.commits->Increment();
    indexed_events += uncommitted_events;
    uncommitted_ts.clear();
    uncommitted_events = 0;
    documents = documents_elsewhere + writer->get_doccount();
    metrics.documents->Set(double(documents));
    update_lag_metric();
    manage_tiers();
    if (state == index_state::catching_up) {
      const uint64_t remaining = lag();
      const auto now = steady::now();
      if (remaining == 0) {
        state = index_state::ready;
        spdlog::info("search: index caught up in {:.1f} s ({} units)",
                     std::chrono::duration<double>(now - catch_up_started).count(), documents.load());
      } else if (now - last_progress_log >= std::chrono::seconds(2)) {
        last_progress_log = now;
        spdlog::info("search: catching up: {} units indexed, {} log events to go", documents.load(), remaining);
      }
    }
  }

  // ---- queries -------------------------------------------------------------------

  // A reader over the current view, reopened to the latest commits. Under the
  // shared lock, so a merge cannot commit the base between the two.
  reader acquire_reader() {
    std::shared_lock lock(view_mu);
    const auto v = current_view;
    if (!v || v->shards.empty()) throw Xapian::DatabaseOpeningError("the index is being rebuilt");
    {
      std::lock_guard readers_lock(readers_mu);
      while (!idle_readers.empty()) {
        reader r = std::move(idle_readers.back());
        idle_readers.pop_back();
        if (r.v != v) continue;
        r.db->reopen();
        return r;
      }
    }
    reader r{std::make_unique<Xapian::Database>(), v};
    for (const auto& sh : v->shards) r.db->add_database(Xapian::Database(sh->dir));
    return r;
  }

  void release_reader(reader r) {
    std::shared_lock lock(view_mu);  // lock order: view_mu, then readers_mu
    if (r.v != current_view) return;
    std::lock_guard readers_lock(readers_mu);
    idle_readers.push_back(std::move(r));
  }

  std::string snippet(const Xapian::MSet& mset, const api::WorkUnit& head, const Xapian::Stem& stemmer) const {
    if (head.seq() == 0) return {};
    auto events = store.read_events(head.context_id(), head.seq() - 1, 1);
    if (!events || events->empty() || !events->front().has_work_unit()) return {};
    const auto text = payload_text(events->front().work_unit(), opts.max_text_bytes);
    if (!text) return {};
    return unescape_html(mset.snippet(std::string(*text), opts.snippet_bytes, stemmer,
                                      Xapian::MSet::SNIPPET_BACKGROUND_MODEL | Xapian::MSet::SNIPPET_EXHAUSTIVE |
                                          Xapian::MSet::SNIPPET_CJK_NGRAM,
                                      "", "", "…"));
  }

  static bool blank(const std::string& text) { return text.find_first_not_of(" \t\r\n") == std::string::npos; }

  // The text query and filters as one Xapian query; nullopt when the text parses
  // to nothing (only punctuation, say), which matches nothing.
  model::result<std::optional<Xapian::Query>> full_query(Xapian::Database& db, const query& q,
                                                         const Xapian::Stem& stemmer) const {
    const bool has_text = !blank(q.text);
    Xapian::Query text_query;
    if (has_text) {
      Xapian::QueryParser qp;
      qp.set_database(db);
      qp.set_stemmer(stemmer);
      qp.set_stemming_strategy(Xapian::QueryParser::STEM_SOME);
      qp.set_default_op(opts.default_and ? Xapian::Query::OP_AND : Xapian::Query::OP_OR);
      qp.set_max_expansion(Xapian::termcount(opts.max_wildcard_terms), Xapian::Query::WILDCARD_LIMIT_ERROR,
                           Xapian::QueryParser::FLAG_WILDCARD);
      text_query = qp.parse_query(q.text, Xapian::QueryParser::FLAG_PHRASE | Xapian::QueryParser::FLAG_BOOLEAN |
                                              Xapian::QueryParser::FLAG_LOVEHATE | Xapian::QueryParser::FLAG_WILDCARD |
                                              Xapian::QueryParser::FLAG_PURE_NOT |
                                              Xapian::QueryParser::FLAG_CJK_NGRAM);
      if (text_query.empty()) return std::optional<Xapian::Query>();
    }
    auto filters = filter_query(q);
    if (!filters) return std::unexpected(filters.error());
    if (has_text)
      return std::optional<Xapian::Query>(*filters ? Xapian::Query(Xapian::Query::OP_FILTER, text_query, **filters)
                                                   : text_query);
    // All (Query::MatchAll is a shared object: not thread-safe).
    return std::optional<Xapian::Query>(*filters ? **filters : Xapian::Query(std::string()));
  }

  // Matches of `full` from `first`, at most `count`, counting at least `check`:
  // by BM25 with text, else newest first (units of one commit share a ts, so seq
  // breaks ties within a context; across contexts the later-indexed comes first).
  static Xapian::MSet match(Xapian::Database& db, const Xapian::Query& full, bool has_text, size_t first,
                            size_t count, size_t check) {
    Xapian::MultiValueKeyMaker newest_first;
    newest_first.add_value(ts_slot, true);
    newest_first.add_value(seq_slot, true);
    Xapian::Enquire enquire(db);
    enquire.set_query(full);
    if (!has_text) {
      enquire.set_weighting_scheme(Xapian::BoolWeight());
      enquire.set_sort_by_key(&newest_first, false);
      enquire.set_docid_order(Xapian::Enquire::DESCENDING);
    }
    return enquire.get_mset(Xapian::doccount(first), Xapian::doccount(count), Xapian::doccount(check));
  }

  model::result<results> keyword(Xapian::Database& db, const query& q) const {
    const bool has_text = !blank(q.text);
    const Xapian::Stem stemmer(opts.language);
    auto full = full_query(db, q, stemmer);
    if (!full) return std::unexpected(full.error());
    results out;
    out.limit = q.limit;
    if (!*full) return out;
    const auto mset = match(db, **full, has_text, q.offset, q.limit, std::max(q.offset + q.limit, opts.exact_count_up_to));
    out.total = mset.get_matches_estimated();
    out.total_exact = mset.get_matches_lower_bound() == mset.get_matches_upper_bound();
    out.hits.reserve(mset.size());
    for (auto it = mset.begin(); it != mset.end(); ++it) {
      const auto head = document_head(it.get_document());
      hit h;
      h.id = head.id();
      h.context_id = head.context_id();
      h.seq = head.seq();
      h.ts_ns = head.ts_ns();
      h.score = has_text ? it.get_weight() : 0;
      if (q.snippets) h.snippet = snippet(mset, head, stemmer);
      out.hits.push_back(std::move(h));
    }
    return out;
  }

  // ---- semantic and hybrid -------------------------------------------------------

  struct plan {
    search_mode mode = search_mode::keyword;
    std::string model;
    std::vector<float> vector;
    std::string degraded;
  };

  // Which mode runs, in which vector space, with which query vector (embedding the
  // text if needed). An unreachable endpoint degrades the search to keyword results.
  model::result<plan> resolve(const query& q) const {
    plan p;
    const bool has_text = !blank(q.text);
    p.model = !q.model.empty() ? q.model : embedder ? embedder->model() : std::string(model::default_embedding_model);
    const auto wants = q.mode;
    const auto name = std::string(to_string(wants));
    if (wants == search_mode::keyword) return p;
    if (!q.vector.empty()) {
      if (wants == search_mode::hybrid && !has_text)
        return fail(errc::invalid_argument, "mode \"hybrid\" needs query text as well as a vector");
      p.mode = wants == search_mode::automatic ? (has_text ? search_mode::hybrid : search_mode::semantic) : wants;
      p.vector = q.vector;
      return p;
    }
    if (wants == search_mode::automatic) {
      // Hybrid only when the query can be embedded and the space has vectors.
      if (!has_text || !embedder || vectors->size(p.model) == 0) return p;
    } else {
      if (!has_text) return fail(errc::invalid_argument, "mode \"" + name + "\" needs query text or a vector");
      if (!embedder)
        return fail(errc::invalid_argument, "mode \"" + name + "\" needs a vector: no embedding endpoint is "
                                            "configured (search.embeddings.url) to embed the query text");
    }
    auto v = embedder->embed_query(q.text);
    if (!v) {
      p.degraded = "keyword results only: " + v.error().message;
      return p;
    }
    p.mode = wants == search_mode::automatic ? search_mode::hybrid : wants;
    p.vector = std::move(*v);
    return p;
  }

  // Ids of the documents matching `filter`, at most `limit` (+1 to tell "more").
  static std::vector<std::string> matching_ids(Xapian::Database& db, const Xapian::Query& filter, size_t limit) {
    Xapian::Enquire enquire(db);
    enquire.set_query(filter);
    enquire.set_weighting_scheme(Xapian::BoolWeight());
    const auto mset = enquire.get_mset(0, Xapian::doccount(limit));
    std::vector<std::string> ids;
    ids.reserve(mset.size());
    for (auto it = mset.begin(); it != mset.end(); ++it) ids.push_back(document_head(it.get_document()).id());
    return ids;
  }

  // The candidates that match `filter`, in their order.
  static std::vector<neighbour> keep_matching(Xapian::Database& db, const Xapian::Query& filter,
                                              std::vector<neighbour> candidates) {
    if (candidates.empty()) return candidates;
    std::vector<Xapian::Query> terms;
    terms.reserve(candidates.size());
    for (const auto& c : candidates) terms.emplace_back(unique_term(c.unit_id));
    Xapian::Query ids(Xapian::Query::OP_OR, terms.begin(), terms.end());
    auto ok = matching_ids(db, Xapian::Query(Xapian::Query::OP_FILTER, ids, filter), candidates.size());
    std::unordered_set<std::string> allowed(ok.begin(), ok.end());
    std::erase_if(candidates, [&](const neighbour& c) { return !allowed.contains(c.unit_id); });
    return candidates;
  }

  // The `depth` nearest units that pass the query's filters. A selective filter
  // (few matches) ranks every match exactly; a broad one searches the graph for
  // more neighbours than needed and keeps those that match, widening until enough
  // do. `complete` tells whether every vector that passes was considered.
  model::result<std::vector<neighbour>> nearest(Xapian::Database& db, const query& q, const plan& p, size_t depth,
                                                bool& complete) const {
    auto filters = filter_query(q);
    if (!filters) return std::unexpected(filters.error());
    const size_t space = vectors->size(p.model);
    if (!*filters) {
      complete = space <= depth;
      return vectors->nearest(p.model, p.vector, depth);
    }
    // Count first (cheap: no documents read), then read the ids only if few.
    Xapian::Enquire counter(db);
    counter.set_query(**filters);
    counter.set_weighting_scheme(Xapian::BoolWeight());
    const auto count = counter.get_mset(0, 0, Xapian::doccount(opts.exact_filter_limit + 1));
    if (count.get_matches_lower_bound() <= opts.exact_filter_limit) {
      complete = true;
      return vectors->rank_exact(p.model, p.vector, matching_ids(db, **filters, opts.exact_filter_limit), depth);
    }
    // More than exact_filter_limit units match: the fraction of vectors that pass
    // is about matches / space, so ask for depth / fraction, twice over.
    const double fraction =
        std::min(1.0, double(count.get_matches_estimated()) / double(std::max<size_t>(space, 1)));
    size_t want = std::max(depth * 2, size_t(double(depth) / fraction * 2));
    for (;;) {
      want = std::min(want, space);
      auto found = vectors->nearest(p.model, p.vector, want);
      if (!found) return found;
      const size_t got = found->size();
      auto kept = keep_matching(db, **filters, std::move(*found));
      if (kept.size() >= depth || got < want || want >= space) {
        complete = want >= space;
        if (kept.size() > depth) kept.resize(depth);
        return kept;
      }
      want *= 4;
    }
  }

  // A result row for a unit found by its vector (the keyword side did not load it).
  std::optional<hit> unit_hit(const std::string& id, bool with_snippet) const {
    auto unit = store.get_unit(id);
    if (!unit || !*unit) return std::nullopt;
    hit h;
    h.id = id;
    h.context_id = (*unit)->context_id();
    h.seq = (*unit)->seq();
    h.ts_ns = (*unit)->ts_ns();
    if (with_snippet)
      if (auto text = payload_text(**unit, opts.snippet_bytes * 2)) {
        h.snippet = std::string(cut_utf8(*text, opts.snippet_bytes));
        if (h.snippet.size() < text->size()) h.snippet += "…";
      }
    return h;
  }

  model::result<results> vector_search(Xapian::Database& db, const query& q, const plan& p) const {
    const size_t end = q.offset + q.limit;
    if (end > opts.max_vector_results)
      return fail(errc::invalid_argument, "semantic and hybrid results page through the best " +
                                              std::to_string(opts.max_vector_results) + " (offset + limit)");
    const bool hybrid = p.mode == search_mode::hybrid;
    const size_t depth = hybrid ? std::max(end, opts.fusion_depth) : end;
    bool vectors_complete = false;
    auto near = nearest(db, q, p, depth, vectors_complete);
    if (!near) return std::unexpected(near.error());

    std::vector<ranked> by_vector;
    by_vector.reserve(near->size());
    for (auto& n : *near) by_vector.push_back({std::move(n.unit_id), n.similarity});
    std::vector<ranked> by_keyword;
    std::optional<Xapian::MSet> kw;
    const Xapian::Stem stemmer(opts.language);
    std::unordered_map<std::string, api::WorkUnit> heads;  // keyword matches, by id
    bool keyword_complete = true;
    if (hybrid) {
      auto full = full_query(db, q, stemmer);
      if (!full) return std::unexpected(full.error());
      if (*full) {
        kw = match(db, **full, true, 0, depth, depth);
        keyword_complete = kw->get_matches_upper_bound() <= depth;
        for (auto it = kw->begin(); it != kw->end(); ++it) {
          auto head = document_head(it.get_document());
          by_keyword.push_back({head.id(), it.get_weight()});
          heads.emplace(head.id(), std::move(head));
        }
      }
    }
    auto fusedlist = hybrid ? fuse_rrf(by_keyword, by_vector, opts.rrf_k) : fuse_rrf({}, by_vector, opts.rrf_k);
    results out;
    out.limit = q.limit;
    out.mode = p.mode;
    out.total = fusedlist.size();
    out.total_exact = vectors_complete && keyword_complete;
    for (size_t i = q.offset; i < fusedlist.size() && out.hits.size() < q.limit; ++i) {
      auto& f = fusedlist[i];
      std::optional<hit> h;
      if (auto it = heads.find(f.id); it != heads.end()) {
        h.emplace();
        h->id = f.id;
        h->context_id = it->second.context_id();
        h->seq = it->second.seq();
        h->ts_ns = it->second.ts_ns();
        if (q.snippets) h->snippet = snippet(*kw, it->second, stemmer);
      } else {
        h = unit_hit(f.id, q.snippets);
        if (!h) continue;
      }
      h->score = hybrid ? f.score : f.vector_score.value_or(0);
      h->keyword_rank = f.keyword_rank;
      h->vector_rank = f.vector_rank;
      h->keyword_score = f.keyword_score;
      h->vector_score = f.vector_score;
      out.hits.push_back(std::move(*h));
    }
    return out;
  }

  model::result<results> execute(Xapian::Database& db, const query& q, const plan& p) const {
    auto out = p.mode == search_mode::keyword ? keyword(db, q) : vector_search(db, q, p);
    if (out) out->degraded = p.degraded;
    return out;
  }

  model::result<results> run(const query& q) {
    if (state == index_state::failed) {
      std::lock_guard lock(mu);
      return fail(errc::unavailable, "search index unavailable: " + failure);
    }
    auto p = resolve(q);
    if (!p) return std::unexpected(p.error());
    // Set after the second lost revision: holds index commits until this query ends.
    std::unique_ptr<std::atomic<int>, void (*)(std::atomic<int>*)> hold(nullptr, [](std::atomic<int>* n) { --*n; });
    for (int attempt = 0;; ++attempt) {
      std::optional<reader> r;
      try {
        r = acquire_reader();
        auto out = execute(*r->db, q, *p);
        release_reader(std::move(*r));
        return out;
      } catch (const Xapian::DatabaseModifiedError& e) {
        // The writer moved on twice during this query: retry on the newest revision,
        // from the second time with the indexer's commits held.
        if (attempt >= 1 && !hold) {
          ++starved_queries;
          hold.reset(&starved_queries);
        }
        if (attempt < 4) continue;
        return fail(errc::unavailable, "search index busy: " + e.get_msg());
      } catch (const Xapian::QueryParserError& e) {
        release_reader(std::move(*r));
        return fail(errc::invalid_argument, "query: " + e.get_msg());
      } catch (const Xapian::WildcardError& e) {
        release_reader(std::move(*r));
        return fail(errc::invalid_argument, "query: " + e.get_msg());
      } catch (const Xapian::InvalidArgumentError& e) {
        return fail(errc::invalid_argument, "query: " + e.get_msg());
      } catch (const Xapian::DatabaseError& e) {
        // Being rebuilt, or damaged underneath us: drop this reader.
        return fail(errc::unavailable, "search index unavailable: " + describe(e));
      } catch (const Xapian::Error& e) {
        return fail(errc::internal, "search: " + describe(e));
      } catch (const std::exception& e) {  // hnswlib reports with std::runtime_error
        return fail(errc::internal, std::string("search: ") + e.what());
      }
    }
  }

  model::result<results> run_measured(const query& q) {
    const auto t0 = steady::now();
    auto out = run(q);
    metrics.latency->Observe(std::chrono::duration<double>(steady::now() - t0).count());
    if (out) metrics.queries_ok->Increment();
    else if (out.error().code == errc::invalid_argument) metrics.queries_invalid->Increment();
    else metrics.queries_failed->Increment();
    return out;
  }
};

index::index(std::unique_ptr<impl> p) : impl_(std::move(p)) {}
index::~index() { close(); }

model::result<std::unique_ptr<index>> index::open(const options& opts, storage::store& store,
                                                  prometheus::Registry* metrics) {
  std::unique_ptr<impl> p;
  try {
    p = std::make_unique<impl>(opts, store, metrics);
  } catch (const Xapian::InvalidArgumentError& e) {
    return fail(errc::invalid_argument, "search.language: " + e.get_msg());
  }
  if (auto ok = p->open_index(); !ok) return std::unexpected(ok.error());
  auto vectors = vector_index::open(opts.vectors, store, metrics);
  if (!vectors) return std::unexpected(vectors.error());
  p->vectors = std::move(*vectors);
  if (!opts.embeddings.url.empty()) {
    auto e = embedder::open(opts.embeddings, store, metrics);
    if (!e) return std::unexpected(e.error());
    p->embedder = std::move(*e);
  }
  p->pool.emplace(std::max<size_t>(1, opts.query_threads));
  auto* raw = p.get();
  p->indexer = std::thread([raw] { raw->run(); });
  return std::unique_ptr<index>(new index(std::move(p)));
}

void index::on_vectors(uint64_t last_vseq) { impl_->vectors->on_committed(last_vseq); }

void index::on_committed(const std::vector<std::shared_ptr<const api::Event>>& events) {
  auto& s = *impl_;
  if (s.embedder) s.embedder->on_committed(events);
  std::lock_guard lock(s.mu);
  if (s.stopping) return;
  bool grew = false;
  for (const auto& ev : events) {
    auto it = s.heads.find(ev->context_id());
    if (it == s.heads.end()) it = s.heads.emplace(ev->context_id(), 0).first;
    if (ev->seq() <= it->second) continue;
    s.committed_events += ev->seq() - it->second;
    it->second = ev->seq();
    s.pending[ev->context_id()] = ev->seq();
    grew = true;
  }
  if (grew) {
    s.update_lag_metric();
    s.cv.notify_one();
  }
}

void index::search(query q, std::function<void(model::result<results>)> done) {
  auto& s = *impl_;
  if (s.closed) return done(fail(errc::unavailable, "search is shutting down"));
  if (s.queued_queries.fetch_add(1) >= s.opts.max_queued_queries) {
    s.queued_queries.fetch_sub(1);
    return done(fail(errc::unavailable, "too many searches in progress; retry shortly"));
  }
  boost::asio::post(*s.pool, [&s, q = std::move(q), done = std::move(done)] {
    auto out = s.run_measured(q);
    s.queued_queries.fetch_sub(1);
    done(std::move(out));
  });
}

model::result<results> index::search_now(const query& q) { return impl_->run_measured(q); }

index_status index::status() const {
  const auto& s = *impl_;
  index_status st;
  st.state = s.state.load();
  st.lag = s.lag();
  st.documents = s.documents.load();
  st.pending_merges = s.sealed_count.load();
  st.vectors = s.vectors->status();
  if (s.embedder) st.embedder = s.embedder->status();
  if (st.state == index_state::failed) {
    std::lock_guard lock(s.mu);
    st.error = s.failure;
  }
  return st;
}

void index::close() {
  auto& s = *impl_;
  if (s.closed.exchange(true)) return;
  if (s.embedder) s.embedder->close();  // it writes to the store: stop it first
  {
    std::lock_guard lock(s.mu);
    s.stopping = true;
  }
  s.cv.notify_all();
  if (s.indexer.joinable()) s.indexer.join();
  if (s.pool) s.pool->join();
  s.vectors->close();
  try {
    s.stop_merge();  // an unfinished merge is cancelled; the next start redoes it
    if (s.writer) s.finish_writing();
  } catch (const Xapian::Error& e) {
    spdlog::error("search: closing the index: {}", describe(e));
  }
}

}  // namespace engram::search
