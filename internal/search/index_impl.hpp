#pragma once
// Private to search: the state shared by the parts of search::index, and which
// part does what (README.md describes the design). Only search's .cpp files
// include this header.
//
//   index.cpp     the public surface: open, publisher hooks, status, close
//   shards.cpp    the shards: opening, start-up checks, rebuild, sealing, merging,
//                 the published view (indexer thread, and the merge thread)
//   indexer.cpp   the indexer thread: scan the logs, index, commit
//   searcher.cpp  queries: readers over the view, keyword, semantic and hybrid
//                 (query threads, or the caller's thread for search_now)

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <xapian.h>

#include <atomic>
#include <boost/asio/thread_pool.hpp>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "search/embedder.hpp"
#include "search/index.hpp"
#include "search/vectors.hpp"

namespace engram::search {

namespace detail {

// Bumped whenever the document layout (terms.hpp) changes: an index with another
// schema is rebuilt. Not bumped when the head moved from the document data to a
// value slot: this version reads both, so no rebuild; an older binary would read
// empty heads from new documents, so going back to one needs the index deleted.
constexpr std::string_view schema_version = "2";  // 2: shard.<n> directories, meta, manifest
constexpr std::string_view meta_schema = "engram.schema";
constexpr std::string_view meta_store = "engram.store";
constexpr std::string_view meta_language = "engram.language";
// Boot id of the last session that wrote without fsync and did not close cleanly.
constexpr std::string_view meta_unsynced = "engram.unsynced_boot";
constexpr size_t read_chunk = 512;  // events read from a log at a time
// Between a batch's first event and its commit, new events wake the indexer only
// once this many wait: a trickle is read once per commit, not once per event.
constexpr uint64_t wake_batch = 256;
// Units in one round while the backlog is over options::yield_backlog (yield.hpp).
constexpr size_t yield_round_units = 256;
// Sealed shards, at most: past this the active shard grows instead, so queries
// never span too many. Merges keep a settled index at about log2(documents /
// recent_units) + 1 shards (shards.cpp).
constexpr size_t max_sealed_shards = 16;

inline std::string describe(const Xapian::Error& e) { return e.get_type() + std::string(": ") + e.get_msg(); }

struct metrics_set {
  std::shared_ptr<prometheus::Registry> own;  // when the caller gave none
  prometheus::Counter* documents_indexed;
  prometheus::Counter* commits;
  prometheus::Counter* rounds;
  prometheus::Counter* yield_seconds;
  prometheus::Counter* commit_holds;
  prometheus::Counter* query_retries;
  prometheus::Gauge* lag;
  prometheus::Gauge* documents;
  prometheus::Histogram* delay;
  prometheus::Histogram* commit_seconds;
  prometheus::Histogram* latency;
  prometheus::Counter* queries_ok;
  prometheus::Counter* queries_invalid;
  prometheus::Counter* queries_failed;

  explicit metrics_set(prometheus::Registry* r);  // index.cpp
};

// One Xapian database directory of the index: `shard.<number>`. A retired shard
// (merged into another, or dropped by a rebuild) is deleted when the last view
// that still shows it is released.
struct shard {
  std::string dir;
  uint64_t number = 0;
  uint64_t documents = 0;  // indexer thread: counted when sealed, after merges and purges
  std::atomic<bool> retired{false};
  shard(std::string d, uint64_t n) : dir(std::move(d)), number(n) {}
  ~shard() {
    if (!retired) return;
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
};

// The shards a query searches together, oldest first. Published as a whole, so a
// query sees a merged unit either in the merge's output or in its input, never both.
struct view {
  uint64_t epoch = 0;
  std::vector<std::shared_ptr<shard>> shards;
};

// Lowers the calling thread's priority to `nice` (options::indexer_nice); 0: unchanged.
void lower_priority(int nice);

}  // namespace detail

struct index::impl {
  using steady = std::chrono::steady_clock;
  using shard = detail::shard;
  using view = detail::view;

  options opts;
  storage::store& store;
  std::string store_identity;
  std::string boot_id;
  // Xapian objects are not thread-safe (not even their reference counts): every
  // thread builds its own stemmer from the language.
  detail::metrics_set metrics;

  // ---- indexer thread only (after open) ----
  std::vector<std::shared_ptr<shard>> sealed;  // every shard but the active one, oldest first
  std::shared_ptr<shard> active;               // the shard being written
  std::optional<Xapian::WritableDatabase> writer;  // on `active`
  uint64_t next_shard = 1;                         // the number of the next shard directory
  uint64_t documents_elsewhere = 0;                // in the sealed shards
  std::unordered_map<std::string, uint64_t> positions;  // last seq indexed, per context
  std::vector<Xapian::Database> position_sources;       // the sealed shards, during scan()
  std::vector<int64_t> uncommitted_ts;                  // commit times of units awaiting commit
  uint64_t uncommitted_events = 0;
  steady::time_point last_commit{};
  steady::time_point last_progress_log{};
  steady::time_point catch_up_started{};
  std::thread indexer;

  // ---- merging: one background merge at a time, started and joined by the indexer ----
  std::thread merger;
  std::vector<std::shared_ptr<shard>> merging;  // a run of `sealed`, compacted into merge_output
  std::shared_ptr<shard> merge_output;
  std::atomic<bool> merge_done{false};
  std::atomic<bool> abort_merge{false};
  std::string merge_error;  // written by the merger before merge_done

  // ---- shared with the store's committer (publisher) and status readers ----
  mutable std::mutex mu;
  std::condition_variable cv;
  bool stopping = false;
  std::unordered_map<std::string, uint64_t> heads;    // last committed seq, per context
  std::unordered_map<std::string, uint64_t> pending;  // contexts with events to index
  uint64_t unread_events = 0;  // events commits and leftovers added to `pending` since the indexer took it
  bool holding = false;        // the indexer waits for its commit: wake it for wake_batch events
  bool pausing = false;        // the indexer yields (yield_if_overloaded): commits do not wake it
  std::unordered_map<std::string, uint64_t> purges;   // contexts whose documents before a seq must go
  std::string failure;
  std::atomic<uint64_t> committed_events{0};  // Σ heads
  std::atomic<uint64_t> indexed_events{0};    // Σ positions, as of the last index commit
  std::atomic<uint64_t> documents{0};
  std::atomic<size_t> pending_merges{0};  // shards in the running merge (0: the tiers are settled)
  // Queries that lost their revision to index commits more than once. While any
  // is retrying, the indexer holds its commits (up to max_commit_hold): a reader
  // survives one commit, not two, so under a steady write load a query slower than
  // two commit intervals would otherwise never finish (seen in the soak test).
  std::atomic<int> starved_queries{0};
  static constexpr auto max_commit_hold = std::chrono::seconds(1);
  // A starved query ended: the last one wakes an indexer waiting out the hold.
  void release_commit_hold();
  std::atomic<index_state> state{index_state::catching_up};

  // ---- queries ----
  // Readers take the view and reopen under the shared lock; the indexer publishes
  // a merge's output in place of its inputs under the exclusive lock.
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

  // index::open checks the language before (Xapian::Stem throws for an unknown one).
  impl(const options& o, storage::store& s, prometheus::Registry* r);

  int sync_flag() const { return opts.fsync ? 0 : Xapian::DB_NO_SYNC; }
  std::string shard_dir(uint64_t n) const { return opts.index_dir + "/shard." + std::to_string(n); }
  // The index's own metadata (schema, store, language, unsynced boot, purge cuts):
  // a Xapian database without documents.
  std::string meta_dir() const { return opts.index_dir + "/meta"; }
  // The shards in use, oldest first, one directory name per line; replaced by a
  // rename, so a crash leaves the old list or the new one.
  std::string manifest_path() const { return opts.index_dir + "/shards"; }

  // ---- shards.cpp ----------------------------------------------------------------
  // Xapian exceptions from these functions reach the indexer's boundary
  // (guarded_indexing), except where they say otherwise.

  // Opens the index, replacing one that is unreadable, was built for another store,
  // schema or language, or may have lost unsynced writes to an OS crash. Fails only
  // when the directory cannot be used at all. Catches Xapian errors.
  model::status open_index();
  void start_writing(const std::vector<std::string>& listed);
  std::shared_ptr<shard> new_shard();
  void write_manifest() const;
  // Publishes a view of the sealed shards and the active one (exclusive lock).
  void publish_shards();
  void finish_writing();
  // Deletes the index and starts an empty one. Catches Xapian errors.
  model::status recreate();
  // After a commit: seal a full active shard, install a finished merge, start the next.
  model::status manage_tiers();
  // Where the next merge starts in `sealed` (it runs to the newest sealed shard).
  std::optional<size_t> next_merge() const;
  model::status install_merge();  // a finished merge's output replaces its inputs
  // The merge thread: compacts `inputs` into `output`; catches Xapian errors.
  void merge(const std::vector<std::shared_ptr<shard>>& inputs, const std::shared_ptr<shard>& output);
  void finish_merge();
  void stop_merge();

  // ---- indexer.cpp ---------------------------------------------------------------
  void run_indexer();  // the indexer thread's body
  model::status guarded_indexing();
  bool restart_after_error(int rebuilds, const std::string& why);
  bool give_up(const std::string& why);
  bool stopping_now();
  uint64_t position(const std::string& context_id);
  model::status scan();
  uint64_t lag() const {
    const uint64_t c = committed_events.load(), i = indexed_events.load();
    return c > i ? c - i : 0;
  }
  // Call with `mu` held: the writers' thread (on_committed, committed_events
  // under `mu`) and the indexer (indexed_events, changed outside it, then this)
  // both set the gauge, and a value computed before the other's change must not
  // land after it (the gauge stayed at 1 with nothing left to index).
  void update_lag_metric() { metrics.lag->Set(double(lag())); }
  model::status follow();
  bool index_some(const std::unordered_map<std::string, uint64_t>& work, size_t budget);
  // After a round that took `taken` events in `worked` while `arrived` more were
  // committed to the logs: pauses when the load is more than the indexer can keep
  // up with (options::yield_backlog).
  void yield_if_overloaded(steady::duration worked, uint64_t arrived, uint64_t taken);
  // Deletes every document of each context with a seq before its cut, in every
  // shard, then records the cuts in the meta database (what scan() compares with storage).
  model::status purge(const std::unordered_map<std::string, uint64_t>& cuts);
  // Queues the purges a crash may have left undone.
  model::status check_purges();
  model::status commit();

  // ---- searcher.cpp --------------------------------------------------------------
  struct plan {
    search_mode mode = search_mode::keyword;
    std::string model;
    std::vector<float> vector;
    std::string degraded;
  };
  model::result<reader> acquire_reader();
  void release_reader(reader r);
  std::string snippet(const Xapian::MSet& mset, const api::WorkUnit& head, const Xapian::Stem& stemmer) const;
  model::result<std::optional<Xapian::Query>> full_query(Xapian::Database& db, const query& q,
                                                         const Xapian::Stem& stemmer) const;
  model::result<results> keyword(Xapian::Database& db, const query& q) const;
  model::result<plan> resolve(const query& q) const;
  void note_empty_space(plan& p) const;
  model::result<std::vector<neighbour>> nearest(Xapian::Database& db, const query& q, const plan& p, size_t depth,
                                                bool& complete) const;
  void fill_author(hit& h, const api::WorkUnit& head) const;
  std::optional<hit> unit_hit(const std::string& id, bool with_snippet) const;
  model::result<results> vector_search(Xapian::Database& db, const query& q, const plan& p) const;
  model::result<results> execute(Xapian::Database& db, const query& q, const plan& p) const;
  // Runs a query on the calling thread; the boundary for Xapian's and hnswlib's
  // exceptions on the query path.
  model::result<results> run_query(const query& q);
  model::result<results> run_measured(const query& q);
};

}  // namespace engram::search
