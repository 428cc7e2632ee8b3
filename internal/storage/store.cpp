#include "storage/store.hpp"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/util/message_differencer.h>
#include <google/protobuf/wire_format_lite.h>
#include <rocksdb/compaction_filter.h>
#include <rocksdb/db.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/table.h>
#include <rocksdb/utilities/checkpoint.h>
#include <rocksdb/utilities/options_util.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <mutex>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <variant>

#include "model/assert.hpp"
#include "model/ids.hpp"
#include "model/io_thread.hpp"
#include "model/thread_name.hpp"
#include "records.pb.h"

namespace engram::storage {
namespace {

// Which kind an encoded Event holds (the field number of its `kind` member, 10 for
// a work unit), read without parsing it: listings of units skip the other events
// of a log (facts, presence, leases…) at the cost of a few varints. 0 when no known
// kind member is found (a newer kind, say): the caller parses the event.
int event_kind(rocksdb::Slice bytes) {
  using google::protobuf::internal::WireFormatLite;
  google::protobuf::io::CodedInputStream in(reinterpret_cast<const uint8_t*>(bytes.data()), int(bytes.size()));
  for (uint32_t tag; (tag = in.ReadTag()) != 0;) {
    const int field = WireFormatLite::GetTagFieldNumber(tag);
    if (field >= api::Event::kWorkUnitFieldNumber && field <= api::Event::kFactEventFieldNumber) return field;
    if (!WireFormatLite::SkipField(&in, tag)) return 0;
  }
  return 0;
}

using model::errc;
using model::fail;
using steady = std::chrono::steady_clock;

// Column family indexes in the handle vector, in open order.
enum cf : size_t {
  cf_default, cf_log, cf_unit_ids, cf_contexts, cf_idempotency, cf_counters, cf_locks,
  cf_vectors, cf_vector_keys, cf_vector_models, cf_embed_cursors, cf_calls, cf_checkpoints, cf_presence, cf_tasks,
  cf_facts, cf_count
};
constexpr const char* cf_names[cf_count] = {"default",  "log",         "unit_ids",      "contexts",
                                            "idempotency", "counters", "locks",         "vectors",
                                            "vector_keys", "vector_models", "embed_cursors", "calls",
                                            "checkpoints", "presence", "tasks", "facts"};
constexpr std::string_view next_handle_key = "next_context_handle";
// The next vseq to hand out. Stored with every batch that hands vseqs out, so a
// vseq is never handed out twice, even after the newest vectors are removed (a
// vector snapshot up to a vseq stays true). Stores written before it have none:
// the vseq after the newest stored vector is used then.
constexpr std::string_view next_vseq_key = "next_vseq";
constexpr std::string_view fencing_key = "fencing_token";

void put_be64(std::string& out, uint64_t v) {
  for (int i = 7; i >= 0; --i) out.push_back(char(v >> (8 * i)));
}

uint64_t get_be64(std::string_view in) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = v << 8 | uint8_t(in[i]);
  return v;
}

std::string log_key(uint64_t handle, uint64_t seq) {
  std::string k;
  k.reserve(16);
  put_be64(k, handle);
  put_be64(k, seq);
  return k;
}

std::string idempotency_key(uint64_t handle, std::string_view key) {
  std::string k;
  k.reserve(8 + key.size());
  put_be64(k, handle);
  k.append(key);
  return k;
}

// [handle:8][call id]: a context's tool calls, in one key range per context.
std::string call_key(uint64_t handle, std::string_view call_id) { return idempotency_key(handle, call_id); }

// [handle:8][agent]\0: one agent's checkpoint versions in a context ([version:8] follows).
std::string checkpoint_prefix(uint64_t handle, std::string_view agent) {
  std::string k = idempotency_key(handle, agent);
  k.push_back('\0');
  return k;
}

std::string checkpoint_key(uint64_t handle, std::string_view agent, uint64_t version) {
  std::string k = checkpoint_prefix(handle, agent);
  put_be64(k, version);
  return k;
}

// [handle:8][key]\0: one fact key's versions in a context ([seq:8] follows).
std::string fact_prefix(uint64_t handle, std::string_view key) { return checkpoint_prefix(handle, key); }

std::string fact_key(uint64_t handle, std::string_view key, uint64_t seq) {
  std::string k = fact_prefix(handle, key);
  put_be64(k, seq);
  return k;
}

// Two units say the same (an identical retry): everything but what the server assigned.
bool same_content(api::WorkUnit a, api::WorkUnit b) {
  for (auto* u : {&a, &b}) {
    u->clear_id();
    u->clear_seq();
    u->clear_ts_ns();
    u->clear_idempotency_key();
    u->clear_embedding();
  }
  return google::protobuf::util::MessageDifferencer::Equals(a, b);
}

std::string uuid_bytes(const model::uuid& id) {
  return std::string(reinterpret_cast<const char*>(id.bytes.data()), id.bytes.size());
}

std::string cursor_key(std::string_view model, std::string_view context_id) {
  std::string k(model);
  k.push_back('\0');
  k.append(context_id);
  return k;
}

model::error storage_error(const rocksdb::Status& s, std::string_view what) {
  return model::error{errc::unavailable, std::string(what) + ": " + s.ToString()};
}

// An iterator over one context's log, bounded to keys [lower, upper). Owns the bound
// keys, which RocksDB reads through while iterating, so it is not movable.
class log_range {
 public:
  log_range(rocksdb::DB& db, rocksdb::ColumnFamilyHandle* log, uint64_t handle, uint64_t first_seq,
            uint64_t end_handle, uint64_t end_seq)
      : lower_(log_key(handle, first_seq)), upper_(log_key(end_handle, end_seq)), lower_s_(lower_), upper_s_(upper_) {
    rocksdb::ReadOptions ro;
    ro.iterate_lower_bound = &lower_s_;
    ro.iterate_upper_bound = &upper_s_;
    it_.reset(db.NewIterator(ro, log));
  }
  log_range(const log_range&) = delete;
  log_range& operator=(const log_range&) = delete;
  rocksdb::Iterator* operator->() const { return it_.get(); }

 private:
  std::string lower_, upper_;
  rocksdb::Slice lower_s_, upper_s_;
  std::unique_ptr<rocksdb::Iterator> it_;
};

// Drops idempotency records older than the TTL during compaction, so they cost
// nothing once expired. Lookups also ignore expired records, so the exact moment
// compaction runs does not matter.
class idempotency_ttl_filter final : public rocksdb::CompactionFilter {
 public:
  idempotency_ttl_filter(std::shared_ptr<const model::clock> clock, std::chrono::nanoseconds ttl)
      : clock_(std::move(clock)), ttl_(ttl) {}
  bool Filter(int, const rocksdb::Slice&, const rocksdb::Slice& value, std::string*,
              bool*) const override {
    IdempotencyRecord rec;
    if (!rec.ParseFromArray(value.data(), int(value.size()))) return false;
    return rec.created_at_ns() + ttl_.count() < clock_->now_ns();
  }
  const char* Name() const override { return "engram.idempotency_ttl"; }

 private:
  std::shared_ptr<const model::clock> clock_;
  std::chrono::nanoseconds ttl_;
};

struct metrics_set {
  prometheus::Counter* units_written = nullptr;
  prometheus::Counter* events_written = nullptr;
  prometheus::Counter* groups = nullptr;
  prometheus::Counter* write_errors = nullptr;
  prometheus::Counter* inline_commits = nullptr;
  prometheus::Counter* wal_syncs = nullptr;
  prometheus::Histogram* group_requests = nullptr;
  prometheus::Histogram* group_units = nullptr;
  prometheus::Histogram* write_seconds = nullptr;
  prometheus::Gauge* queue_depth = nullptr;
  prometheus::Gauge* memtable_bytes = nullptr;
  prometheus::Gauge* block_cache_bytes = nullptr;

  explicit metrics_set(prometheus::Registry* r) {
    if (!r) return;
    using namespace prometheus;
    units_written = &BuildCounter().Name("engram_storage_units_written_total")
                         .Help("Work units committed to the log").Register(*r).Add({});
    events_written = &BuildCounter().Name("engram_storage_events_written_total")
                          .Help("Log events committed (units and context updates)").Register(*r).Add({});
    inline_commits = &BuildCounter().Name("engram_storage_inline_commits_total")
                          .Help("Relaxed-mode appends committed on the thread that received them")
                          .Register(*r).Add({});
    wal_syncs = &BuildCounter().Name("engram_storage_wal_syncs_total")
                     .Help("Relaxed mode: WAL syncs made on the interval").Register(*r).Add({});
    groups = &BuildCounter().Name("engram_storage_commit_groups_total")
                  .Help("Commit groups (one WAL write each)").Register(*r).Add({});
    write_errors = &BuildCounter().Name("engram_storage_write_errors_total")
                        .Help("Commit groups RocksDB refused").Register(*r).Add({});
    const Histogram::BucketBoundaries sizes = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096};
    group_requests = &BuildHistogram().Name("engram_storage_commit_group_requests")
                          .Help("Write requests per commit group").Register(*r).Add({}, sizes);
    group_units = &BuildHistogram().Name("engram_storage_commit_group_units")
                       .Help("Log events per commit group").Register(*r).Add({}, sizes);
    write_seconds = &BuildHistogram().Name("engram_storage_wal_write_seconds")
                         .Help("Duration of one group's WAL write, including fsync in sync mode")
                         .Register(*r)
                         .Add({}, Histogram::BucketBoundaries{0.00005, 0.0001, 0.00025, 0.0005, 0.001,
                                                              0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5});
    queue_depth = &BuildGauge().Name("engram_storage_commit_queue_depth")
                       .Help("Write requests waiting for the committer").Register(*r).Add({});
    // RocksDB's own memory, so RSS can be read net of it (bounded by write_buffer_mb
    // and block_cache_mb); refreshed by the committer at most once a second.
    memtable_bytes = &BuildGauge().Name("engram_storage_memtable_bytes")
                          .Help("Bytes in RocksDB memtables, active and waiting to be flushed").Register(*r).Add({});
    block_cache_bytes = &BuildGauge().Name("engram_storage_block_cache_bytes")
                             .Help("Bytes in the RocksDB block cache (data, index and filter blocks)")
                             .Register(*r).Add({});
  }
};

template <class M>
void inc(M* metric, double by = 1) {
  if (metric) metric->Increment(by);
}

}  // namespace

struct store::impl {
  // ---- immutable after open ----
  options opts;
  std::shared_ptr<const model::clock> clock;
  executor completions;
  std::unique_ptr<rocksdb::DB> db;
  std::vector<rocksdb::ColumnFamilyHandle*> cfs;
  std::unique_ptr<idempotency_ttl_filter> ttl_filter;
  metrics_set metrics;
  std::atomic<publisher*> pub{nullptr};

  // ---- queue shared by callers and the committer ----
  struct pending_append {
    append_request req;
    std::function<void(model::result<append_result>)> done;
    int home = -1;  // the I/O thread that asked (model::this_io_thread): its answer goes back there
  };
  struct pending_update {
    update_context_request req;
    std::function<void(model::result<api::Context>)> done;
  };
  struct pending_locks {
    lock_change change;
    std::function<void(model::status)> done;
  };
  struct pending_vectors {
    vector_write write;
    std::function<void(model::status)> done;
  };
  // One step of a trim or deletion; an unfinished one goes back to the queue.
  struct pending_trim {
    std::string context_id;
    uint64_t below_seq = 0;
    bool erase = false;      // delete the context
    std::string deleted_by;  // for the ContextDeleted event
    trim_result progress;
    std::function<void(model::result<trim_result>)> done;
  };
  struct pending_import {
    std::string context_id;
    std::vector<api::Event> events;
    std::function<void(model::result<api::Context>)> done;
  };
  struct pending_checkpoint {
    checkpoint_request req;
    std::function<void(model::result<api::Event>)> done;
  };
  struct pending_presence {
    presence_change change;
    std::function<void(model::result<bool>)> done;
  };
  struct pending_fact {
    fact_change change;
    std::function<void(model::result<api::Event>)> done;
  };
  using pending = std::variant<pending_append, pending_update, pending_locks, pending_vectors, pending_trim,
                               pending_import, pending_checkpoint, pending_presence, pending_fact>;

  // A callback to run once its group is committed (or refused), and the I/O thread
  // it goes back to (-1: any thread; store::executor).
  template <class Sig>
  struct homed {
    std::function<Sig> run;
    int home = -1;
    template <class F>
      requires std::is_constructible_v<std::function<Sig>, F&&>
    homed(F&& f, int home = -1) : run(std::forward<F>(f)), home(home) {}  // NOLINT: a callback is an outcome
  };
  using outcome = homed<void()>;

  fence_checker check_fence;  // set before writes; called by whoever commits
  // Held by whoever commits a group: the committer thread, or (relaxed mode) an I/O
  // thread committing an append inline (try_commit_inline). Taken before mu. The
  // state under "whoever commits" below belongs to its holder.
  std::mutex commit_mu;
  std::mutex mu;
  std::condition_variable cv;
  std::deque<pending> queue;
  bool stopping = false;
  bool closed = false;
  std::thread committer;

  // ---- whoever commits (holds commit_mu) ----
  struct context_state {
    uint64_t handle = 0;
    api::Context context;
    bool deleted = false;  // a tombstone (records.proto)
  };
  std::unordered_map<std::string, context_state> contexts;
  uint64_t next_handle = 1;
  std::unordered_map<std::string, uint32_t> model_dims;  // embedding model → dimension
  uint64_t next_vseq = 1;
  std::atomic<uint64_t> last_vseq{0};  // next_vseq - 1 once committed, for any thread (last_vector_seq)
  // The memtables' headroom write_may_wait last saw: room for `bytes` more until
  // `until`. Each commit's batch is charged against it.
  struct {
    steady::time_point until;
    size_t bytes = 0;
  } memtable_room;

  // ---- the committer thread only ----
  steady::time_point last_sync = steady::now();
  steady::time_point last_memory_report;
  std::shared_ptr<rocksdb::Cache> block_cache;

  // ---- any thread ----
  // Relaxed mode: the WAL has writes no sync covers yet. Set by a commit (true) and
  // cleared just before a sync; whoever turns it from false to true wakes the
  // committer, which may be waiting without a timeout (commit_group).
  std::atomic<bool> unsynced{false};
  std::atomic<int> appends_in_flight{0};  // store::append called, its completion not yet run

  impl(const options& o, prometheus::Registry* r) : opts(o), metrics(r) {}

  rocksdb::ColumnFamilyHandle* h(cf which) const { return cfs[which]; }

  // The unit with id `id`. With memory_only (kBlockCacheTier), nullopt when a
  // block it needs is not in memory, or its stored event is over `max_bytes`
  // (checked before parsing); otherwise never nullopt.
  std::optional<model::result<std::optional<api::WorkUnit>>> get_unit(std::string_view id, bool memory_only,
                                                                      size_t max_bytes = SIZE_MAX) const {
    using found = model::result<std::optional<api::WorkUnit>>;
    const auto parsed = model::uuid::parse(id);
    if (!parsed) return found(std::nullopt);
    rocksdb::ReadOptions ro;
    if (memory_only) ro.read_tier = rocksdb::kBlockCacheTier;
    std::string loc;
    auto s = db->Get(ro, h(cf_unit_ids), uuid_bytes(*parsed), &loc);
    if (memory_only && s.IsIncomplete()) return std::nullopt;
    if (s.IsNotFound()) return found(std::nullopt);
    if (!s.ok()) return found(std::unexpected(storage_error(s, "reading a work unit")));
    rocksdb::PinnableSlice raw;  // parsed in place: no copy of the event, sized before parsing
    s = db->Get(ro, h(cf_log), loc, &raw);
    if (memory_only && (s.IsIncomplete() || (s.ok() && raw.size() > max_bytes))) return std::nullopt;
    if (s.IsNotFound()) return found(std::nullopt);  // removed (retention) since the id was read
    if (!s.ok()) return found(std::unexpected(storage_error(s, "reading a work unit")));
    api::Event ev;
    if (!ev.ParseFromArray(raw.data(), int(raw.size())) || !ev.has_work_unit())
      return found(fail(errc::internal, "corrupt log entry"));
    return found(std::move(*ev.mutable_work_unit()));
  }

  // A context's stored record; nullopt when the context does not exist.
  model::result<std::optional<ContextRecord>> read_record(std::string_view id) const {
    std::string raw;
    auto s = db->Get(rocksdb::ReadOptions(), h(cf_contexts), id, &raw);
    if (s.IsNotFound()) return std::optional<ContextRecord>();
    if (!s.ok()) return std::unexpected(storage_error(s, "reading context '" + std::string(id) + "'"));
    ContextRecord rec;
    if (!rec.ParseFromString(raw)) return fail(errc::internal, "corrupt record for context '" + std::string(id) + "'");
    return std::optional<ContextRecord>(std::move(rec));
  }

  // -------------------------------------------------------------------------------
  // Queueing
  template <class P, class Done>
  void enqueue(P&& item, Done& done) {
    bool shutting_down;
    {
      std::unique_lock lock(mu);
      shutting_down = stopping;
      if (!stopping && queue.size() < opts.commit_queue_limit) {
        // The committer waits only for an empty queue to fill: behind other
        // requests, this one is taken with them. Notified after the unlock, so
        // that it does not wake only to wait for `mu`.
        const bool was_empty = queue.empty();
        queue.emplace_back(std::forward<P>(item));
        if (metrics.queue_depth) metrics.queue_depth->Set(double(queue.size()));
        lock.unlock();
        if (was_empty) cv.notify_one();
        return;
      }
    }
    auto err = fail(errc::unavailable, shutting_down ? "the server is shutting down"
                                                     : "the write queue is full; retry shortly");
    completions(model::this_io_thread, [done = std::move(done), err] { done(err); });  // on the caller's thread
  }

  // -------------------------------------------------------------------------------
  // Committer
  void run_committer() {
    std::vector<pending> group;
    std::vector<outcome> outcomes;
    for (;;) {
      bool work;
      {
        std::unique_lock lock(mu);
        // Relaxed mode with unsynced writes wakes when the sync is due. An inline
        // commit that leaves the WAL unsynced notifies, so the wait is re-chosen.
        while (queue.empty() && !stopping) {
          if (opts.mode != durability::relaxed || !unsynced) cv.wait(lock);
          else if (cv.wait_for(lock, opts.relaxed_sync_interval) == std::cv_status::timeout) break;
        }
        if (queue.empty() && stopping) break;
        work = !queue.empty();  // else only a sync is due
      }
      if (work) commit_next_group(group, outcomes);
      maybe_sync_wal(false);
      report_memory();
    }
    maybe_sync_wal(true);
  }

  // Takes the next group from the queue and commits it. The outcomes go to the
  // completion executor once commit_mu is released: a caller that hears its answer
  // and appends again at once must find the way to an inline commit free.
  void commit_next_group(std::vector<pending>& group, std::vector<outcome>& outcomes) {
    {
      std::lock_guard commit(commit_mu);
      {
        std::lock_guard lock(mu);
        // A trim step is committed in a group of its own: it reads what it removes
        // (unit ids, vector keys) from the database, which must not miss writes
        // staged beside it.
        while (!queue.empty() && group.size() < opts.max_commit_group) {
          const bool trim = std::holds_alternative<pending_trim>(queue.front());
          if (trim && !group.empty()) break;
          group.push_back(std::move(queue.front()));
          queue.pop_front();
          if (trim) break;
        }
        if (metrics.queue_depth) metrics.queue_depth->Set(double(queue.size()));
      }
      if (!group.empty())
        commit_group(group, outcomes, false);
    }
    group.clear();
    hand_back(outcomes);
    outcomes.clear();
  }

  // Hands a group's outcomes to the completion executor: those of one I/O thread in
  // one hand-off (a group at 50 connections holds ~7 answers for 2 threads, and
  // each hand-off may wake its thread), the others one by one to any thread.
  void hand_back(std::vector<outcome>& outcomes) {
    std::vector<std::pair<int, std::vector<std::function<void()>>>> by_home;
    for (auto& o : outcomes) {
      if (o.home < 0) {
        completions(-1, std::move(o.run));
        continue;
      }
      auto it = std::ranges::find(by_home, o.home, &decltype(by_home)::value_type::first);
      if (it == by_home.end()) it = by_home.emplace(by_home.end(), o.home, std::vector<std::function<void()>>{});
      it->second.push_back(std::move(o.run));
    }
    for (auto& [home, runs] : by_home) {
      if (runs.size() == 1) completions(home, std::move(runs.front()));
      else completions(home, [runs = std::move(runs)] { for (const auto& f : runs) f(); });
    }
  }

  void report_memory() {
    if (!metrics.memtable_bytes || steady::now() - last_memory_report < std::chrono::seconds(1)) return;
    last_memory_report = steady::now();
    uint64_t memtables = 0;
    if (db->GetAggregatedIntProperty(rocksdb::DB::Properties::kSizeAllMemTables, &memtables))
      metrics.memtable_bytes->Set(double(memtables));
    if (block_cache) metrics.block_cache_bytes->Set(double(block_cache->GetUsage()));
  }

  // Relaxed mode: fsync the WAL once the interval has passed since the last sync.
  // Cleared before the sync: a write that lands after it is flagged for the next one.
  void maybe_sync_wal(bool force) {
    if (opts.mode != durability::relaxed || !unsynced) return;
    if (!force && steady::now() - last_sync < opts.relaxed_sync_interval) return;
    unsynced.store(false);
    if (auto s = db->SyncWAL(); !s.ok()) {
      spdlog::error("storage: WAL sync failed: {}", s.ToString());
      unsynced = true;
    } else {
      inc(metrics.wal_syncs);
    }
    last_sync = steady::now();
  }

  // An append committed inline needs nothing from the disk while it is staged (no
  // idempotency key, no tool-call ledger, no vector) and is small. Its size, or
  // nothing when it must be queued.
  static constexpr size_t inline_max_bytes = 64 * 1024;
  static std::optional<size_t> inline_bytes(const append_request& req) {
    if (!req.idempotency_key.empty()) return std::nullopt;
    size_t bytes = 0;
    for (const auto& u : req.units) {
      if (!u.call_id().empty() || u.has_embedding()) return std::nullopt;
      bytes += u.ByteSizeLong();
    }
    if (bytes > inline_max_bytes) return std::nullopt;
    return bytes;
  }

  // RocksDB is stalling writes, or this write may switch the memtable (creating a
  // WAL file and scheduling a flush, which can start a stall): work for the
  // committer thread, not an I/O thread. `bytes`: what the write puts in the
  // memtables, at most (inline_bytes plus keys).
  //
  // The stall is asked every time: an inline write that meets one is refused
  // (no_slowdown), not delayed. The memtables' fill took two more property lookups
  // per inline append (2k instructions; bench/README.md), so the headroom they
  // show is reused for up to a millisecond, less what every commit (inline or the
  // committer's) writes meanwhile (commit_group charges it).
  bool write_may_wait(size_t bytes) {
    uint64_t stopped = 0, delayed = 0;
    if ((db->GetIntProperty(rocksdb::DB::Properties::kIsWriteStopped, &stopped) && stopped) ||
        (db->GetIntProperty(rocksdb::DB::Properties::kActualDelayedWriteRate, &delayed) && delayed))
      return true;
    static constexpr auto reuse_for = std::chrono::milliseconds(1);
    const auto now = steady::now();
    if (now < memtable_room.until && bytes <= memtable_room.bytes) return false;
    memtable_room = {};
    const size_t limit = opts.write_buffer_bytes * 9 / 10;
    size_t headroom = limit;
    for (const cf family : {cf_log, cf_unit_ids}) {  // the memtables an append writes
      uint64_t active = 0;
      if (!db->GetIntProperty(h(family), rocksdb::DB::Properties::kCurSizeActiveMemTable, &active) ||
          active + 2 * inline_max_bytes + bytes >= limit)
        return true;
      headroom = std::min(headroom, size_t(limit - active - 2 * inline_max_bytes));
    }
    memtable_room = {now + reuse_for, headroom};
    return false;
  }

  // Relaxed mode: commits an append on the calling (I/O) thread when nothing else
  // is waiting or being committed and it needs nothing from the disk: a WAL write
  // to the OS and a memtable insert, where the hand-offs to the committer and back
  // cost more than the write. The order stays one order: whoever commits holds
  // commit_mu, and the queue is empty. A busy committer, or a write that may wait
  // (write_may_wait), leaves the append to the queue. False: `p` is untouched,
  // queue it.
  bool try_commit_inline(pending_append& p) {
    if (opts.mode != durability::relaxed) return false;
    const auto bytes = inline_bytes(p.req);
    if (!bytes) return false;
    std::unique_lock commit(commit_mu, std::try_to_lock);
    if (!commit.owns_lock()) return false;
    {
      std::lock_guard lock(mu);
      if (stopping || !queue.empty()) return false;
    }
    // Keys (the context id is one, up to 256 B), the unit-id index entry and the
    // memtable's own overhead: under 1 KiB a unit.
    if (!contexts.contains(p.req.context_id) || write_may_wait(*bytes + 1024 * p.req.units.size())) return false;
    std::vector<pending> group;
    group.emplace_back(std::move(p));
    std::vector<outcome> outcomes;
    const bool newly_unsynced = commit_group(group, outcomes, true);
    commit.unlock();
    inc(metrics.inline_commits);
    if (newly_unsynced) {  // the committer may be waiting without a timeout
      std::lock_guard lock(mu);
      cv.notify_one();
    }
    for (auto& o : outcomes) o.run();  // this thread asked: no hand-off
    return true;
  }

  // Current state of a context for staging: this group's copy, the cache, or disk.
  // Read failures and corruption fail the request, never the server.
  model::result<std::optional<context_state>> find_context(
      const std::string& id, std::unordered_map<std::string, context_state>& staged) {
    if (auto it = staged.find(id); it != staged.end()) return it->second;
    if (auto it = contexts.find(id); it != contexts.end()) return it->second;
    auto rec = read_record(id);
    if (!rec) return std::unexpected(rec.error());
    if (!*rec) return std::optional<context_state>();
    context_state st{(*rec)->handle(), std::move(*(*rec)->mutable_context()), (*rec)->deleted()};
    // The record and its log entries are written in one batch, so they agree; check
    // anyway, since a wrong head would break gap-freedom for good. On disagreement
    // refuse writes to this context rather than guess.
    auto last = last_logged_seq(st.handle);
    if (!last) return std::unexpected(last.error());
    if (*last != st.context.head_seq())
      return fail(errc::internal, "context '" + id + "' head_seq " + std::to_string(st.context.head_seq()) +
                                      " disagrees with its log (last seq " + std::to_string(*last) + ")");
    contexts.emplace(id, st);
    return std::optional<context_state>(std::move(st));
  }

  model::result<uint64_t> last_logged_seq(uint64_t handle) const {
    log_range it(*db, h(cf_log), handle, 0, handle + 1, 0);
    it->SeekToLast();
    if (!it->status().ok()) return std::unexpected(storage_error(it->status(), "reading a context log"));
    return it->Valid() ? get_be64(it->key().ToStringView().substr(8)) : 0;
  }

  context_state new_context(const std::string& id, int64_t now, uint64_t& handle_counter) {
    context_state st;
    st.handle = handle_counter++;
    st.context.set_id(id);
    st.context.set_created_at_ns(now);
    st.context.set_updated_at_ns(now);
    return st;
  }

  // Reads the units an earlier request committed (for an idempotent replay).
  model::result<std::vector<api::WorkUnit>> read_units(uint64_t handle, uint64_t first, uint32_t count) const {
    std::vector<api::WorkUnit> out;
    for (uint64_t seq = first; seq < first + count; ++seq) {
      std::string raw;
      auto s = db->Get(rocksdb::ReadOptions(), h(cf_log), log_key(handle, seq), &raw);
      if (!s.ok()) return std::unexpected(storage_error(s, "reading an earlier result"));
      api::Event ev;
      if (!ev.ParseFromString(raw) || !ev.has_work_unit())
        return fail(errc::internal, "corrupt log entry for an idempotent replay");
      out.push_back(std::move(*ev.mutable_work_unit()));
    }
    return out;
  }

  struct group_state {
    rocksdb::WriteBatch batch;
    std::unordered_map<std::string, context_state> staged;  // contexts changed by this group
    std::unordered_set<std::string> idempotency_keys;       // keys claimed by this group
    uint64_t next_handle = 0;
    int64_t now = 0;
    std::vector<std::shared_ptr<const api::Event>> events;
    // Completions to run if the batch commits, and what to tell callers if it fails.
    std::vector<outcome> on_success;
    std::vector<homed<void(const model::error&)>> on_failure;
    std::vector<outcome> immediate;  // outcomes independent of the write
    bool has_plain_writes = false;  // writes outside any context (lease records, vectors)
    struct removal {
      std::string context_id;
      uint64_t first_seq;
      std::vector<std::string> unit_ids;
    };
    std::vector<removal> removals;         // trim steps, for the publisher
    std::vector<pending_trim> unfinished;  // trim steps to queue again after the commit
    std::unordered_set<std::string> imported_ids;  // unit ids imported by this group
    std::unordered_map<std::string, CallRecord> calls;     // tool-call records written by this group
    std::unordered_map<std::string, api::WorkUnit> call_units;  // their units, by log key
    std::unordered_map<std::string, uint64_t> checkpoint_versions;  // latest, by checkpoint_prefix
    std::unordered_map<std::string, bool> present;                   // presence keys this group changed
    std::unordered_map<std::string, std::optional<api::Fact>> active_facts;  // by fact_prefix, as this group left them
    std::unordered_map<std::string, uint32_t> new_models;  // models first seen in this group
    std::unordered_set<std::string> vector_units;          // units given a vector in this group
    uint64_t next_vseq = 0;
  };

  // ---- the tool-call ledger ----

  // The context's record of a call: this request's, this group's, or stored.
  model::result<std::optional<CallRecord>> find_call(const group_state& g, const std::string& key, bool stored,
                                                     const std::unordered_map<std::string, CallRecord>& local) const {
    if (auto it = local.find(key); it != local.end()) return std::optional<CallRecord>(it->second);
    if (auto it = g.calls.find(key); it != g.calls.end()) return std::optional<CallRecord>(it->second);
    if (!stored) return std::optional<CallRecord>();
    std::string raw;
    auto s = db->Get(rocksdb::ReadOptions(), h(cf_calls), key, &raw);
    if (s.IsNotFound()) return std::optional<CallRecord>();
    if (!s.ok()) return std::unexpected(storage_error(s, "reading the tool-call ledger"));
    CallRecord rec;
    if (!rec.ParseFromString(raw)) return fail(errc::internal, "corrupt tool-call record");
    return std::optional<CallRecord>(std::move(rec));
  }

  // The unit at a seq of a context's log, staged by this group or stored.
  model::result<api::WorkUnit> unit_at(const group_state& g, uint64_t handle, uint64_t seq) {
    if (auto it = g.call_units.find(log_key(handle, seq)); it != g.call_units.end()) return it->second;
    auto units = read_units(handle, seq, 1);
    if (!units) return std::unexpected(units.error());
    return std::move(units->front());
  }

  // Checks a request's units against the ledger: a call id once per context, a
  // result only for a call that exists and has none. `records` receives what the
  // request will write. An identical retry of a one-unit request returns the stored
  // unit instead (replay).
  model::result<std::optional<api::WorkUnit>> check_calls(const group_state& g, const context_state& st, bool stored,
                                                          const std::vector<api::WorkUnit>& units,
                                                          std::unordered_map<std::string, CallRecord>& records) {
    uint64_t seq = st.context.head_seq();
    for (const auto& unit : units) {
      ++seq;
      if (unit.call_id().empty()) continue;
      const auto key = call_key(st.handle, unit.call_id());
      auto rec = find_call(g, key, stored, records);
      if (!rec) return std::unexpected(rec.error());
      const std::string quoted = "tool call '" + unit.call_id() + "'";
      auto replay_or_refuse = [&](uint64_t at, std::string what) -> model::result<std::optional<api::WorkUnit>> {
        auto existing = unit_at(g, st.handle, at);
        if (!existing) return std::unexpected(existing.error());
        if (units.size() == 1 && same_content(*existing, unit)) {
          // Staged by this group: its commit may still fail, so no replay yet.
          if (g.call_units.contains(log_key(st.handle, at)))
            return fail(errc::in_progress, "the same " + quoted + " unit is still being committed; retry shortly");
          return std::optional<api::WorkUnit>(std::move(*existing));
        }
        return fail(errc::conflict, quoted + " " + what + " (unit " + existing->id() + ", seq " + std::to_string(at) + ")");
      };
      const auto mine = records.find(key);  // written by this request already
      if (unit.type() == api::WORK_UNIT_TYPE_TOOL_CALL && mine != records.end())
        return fail(errc::conflict, quoted + " is called twice in this request");
      if (unit.type() == api::WORK_UNIT_TYPE_TOOL_RESULT && mine != records.end() && mine->second.result_seq())
        return fail(errc::conflict, quoted + " is answered twice in this request");
      if (unit.type() == api::WORK_UNIT_TYPE_TOOL_CALL) {
        if (*rec && (*rec)->call_seq()) return replay_or_refuse((*rec)->call_seq(), "exists already in this context");
        CallRecord fresh;
        fresh.set_call_seq(seq);
        records[key] = fresh;
      } else {
        if (!*rec || !(*rec)->call_seq())
          return fail(errc::conflict, "no " + quoted + " in context '" + st.context.id() +
                                          "': append its TOOL_CALL first");
        if ((*rec)->result_seq()) return replay_or_refuse((*rec)->result_seq(), "has a result already");
        (*rec)->set_result_seq(seq);
        records[key] = **rec;
      }
    }
    return std::optional<api::WorkUnit>();
  }

  void stage_calls(group_state& g, uint64_t handle, const std::unordered_map<std::string, CallRecord>& records,
                   const std::vector<api::WorkUnit>& units) {
    for (const auto& [key, rec] : records) {
      g.batch.Put(h(cf_calls), key, rec.SerializeAsString());
      g.calls[key] = rec;
    }
    for (const auto& u : units)
      if (!u.call_id().empty()) g.call_units[log_key(handle, u.seq())] = u;
  }

  // A context found for a write, or a new one. A deleted context written to again
  // comes back empty, with its handle and its seqs continuing after the deletion.
  context_state existing_or_new(std::optional<context_state>& found, const std::string& id, group_state& g) {
    if (!found) return new_context(id, g.now, g.next_handle);
    context_state st = std::move(*found);
    if (st.deleted) {
      st.deleted = false;
      st.context.set_created_at_ns(g.now);
    }
    return st;
  }

  uint32_t model_dimension(const group_state& g, const std::string& model) const {
    if (auto it = g.new_models.find(model); it != g.new_models.end()) return it->second;
    if (auto it = model_dims.find(model); it != model_dims.end()) return it->second;
    return 0;
  }

  // Checks the embeddings of one request against the models' dimensions; models it
  // introduces are added to `introduced` (merged into the group only if the whole
  // request is staged).
  model::status check_dimensions(const group_state& g, const std::vector<const api::Embedding*>& embeddings,
                                 std::unordered_map<std::string, uint32_t>& introduced) const {
    for (const auto* e : embeddings) {
      const auto dim = uint32_t(e->values_size());
      uint32_t want = model_dimension(g, e->model());
      if (!want) {
        auto [it, _] = introduced.emplace(e->model(), dim);
        want = it->second;
      }
      if (dim != want)
        return fail(errc::invalid_argument, "embedding has dimension " + std::to_string(dim) + " but model '" +
                                                e->model() + "' has dimension " + std::to_string(want));
    }
    return {};
  }

  void stage_models(group_state& g, const std::unordered_map<std::string, uint32_t>& introduced) {
    for (const auto& [model, dim] : introduced) {
      if (!g.new_models.emplace(model, dim).second) continue;
      VectorModel rec;
      rec.set_dimension(dim);
      g.batch.Put(h(cf_vector_models), model, rec.SerializeAsString());
    }
  }

  void put_vector(group_state& g, const model::uuid& unit, const std::string& unit_id, api::Embedding e) {
    std::string vseq;
    put_be64(vseq, g.next_vseq++);
    g.batch.Put(h(cf_vector_keys), uuid_bytes(unit) + e.model(), vseq);
    VectorRecord rec;
    rec.set_unit_id(unit_id);
    *rec.mutable_embedding() = std::move(e);
    g.batch.Put(h(cf_vectors), vseq, rec.SerializeAsString());
    g.vector_units.insert(uuid_bytes(unit));
  }

  // True when the unit has a vector of any model (stored, or staged in this group).
  model::result<bool> has_vector(const group_state& g, const model::uuid& unit) const {
    const auto key = uuid_bytes(unit);
    if (g.vector_units.contains(key)) return true;
    std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions(), h(cf_vector_keys)));
    it->Seek(key);
    if (!it->status().ok()) return std::unexpected(storage_error(it->status(), "reading vector keys"));
    return it->Valid() && it->key().starts_with(key);
  }

  void put_event(group_state& g, context_state& st, api::Event ev) {
    const uint64_t seq = st.context.head_seq() + 1;
    st.context.set_head_seq(seq);
    ev.set_context_id(st.context.id());
    ev.set_seq(seq);
    ev.set_ts_ns(g.now);
    g.batch.Put(h(cf_log), log_key(st.handle, seq), ev.SerializeAsString());
    g.events.push_back(std::make_shared<const api::Event>(std::move(ev)));
  }

  // The I/O thread a request's answer goes back to: an append's caller, else any.
  template <class P>
  static int home_of(const P& p) {
    if constexpr (requires { p.home; }) return p.home;
    else return -1;
  }

  // Answers request `p` with `e` without writing anything.
  template <class P>
  void fail_now(group_state& g, P& p, model::error e) {
    g.immediate.push_back({[done = std::move(p.done), e = std::move(e)] { done(std::unexpected(e)); }, home_of(p)});
  }

  void stage(group_state& g, pending_append& p) {
    auto& req = p.req;
    for (const auto& f : req.fences) {
      if (!check_fence) return fail_now(g, p, {errc::conflict, "fencing is not available"});
      if (auto ok = check_fence(f); !ok) return fail_now(g, p, ok.error());
    }
    auto lookup = find_context(req.context_id, g.staged);
    if (!lookup) return fail_now(g, p, lookup.error());
    auto& found = *lookup;
    const bool is_new = !found || found->deleted;
    context_state st = existing_or_new(found, req.context_id, g);

    std::string idem_key;
    if (!req.idempotency_key.empty()) {
      idem_key = idempotency_key(st.handle, req.idempotency_key);
      if (g.idempotency_keys.contains(idem_key))
        return fail_now(g, p,
                        {errc::in_progress, "a request with this Idempotency-Key is still in progress; retry later"});
      if (!is_new) {
        std::string raw;
        auto s = db->Get(rocksdb::ReadOptions(), h(cf_idempotency), idem_key, &raw);
        if (!s.ok() && !s.IsNotFound()) return fail_now(g, p, storage_error(s, "reading an idempotency key"));
        IdempotencyRecord rec;
        if (s.ok() && rec.ParseFromString(raw) &&
            rec.created_at_ns() + std::chrono::nanoseconds(opts.idempotency_ttl).count() >= g.now) {
          if (rec.fingerprint() != req.fingerprint)
            return fail_now(g, p,
                            {errc::unprocessable, "this Idempotency-Key was already used with a different request"});
          if (rec.first_seq() < st.context.first_seq())
            return fail_now(g, p,
                            {errc::conflict, "the units committed by the earlier request with this "
                                             "Idempotency-Key were removed by retention"});
          auto units = read_units(st.handle, rec.first_seq(), rec.count());
          g.immediate.push_back({[done = std::move(p.done), units = std::move(units)]() mutable {
                                   if (!units) return done(std::unexpected(units.error()));
                                   done(append_result{std::move(*units), true});
                                 },
                                 p.home});
          return;
        }
      }
      g.idempotency_keys.insert(idem_key);
    }

    std::unordered_map<std::string, CallRecord> calls;
    auto replay = check_calls(g, st, !is_new, req.units, calls);
    if (!replay) {
      if (!idem_key.empty()) g.idempotency_keys.erase(idem_key);
      return fail_now(g, p, replay.error());
    }
    if (*replay) {
      if (!idem_key.empty()) g.idempotency_keys.erase(idem_key);
      g.immediate.push_back({[done = std::move(p.done), u = std::move(**replay)]() mutable {
                               done(append_result{{std::move(u)}, true});
                             },
                             p.home});
      return;
    }

    // Nothing below can fail, so models a request introduces are staged only when
    // the request is.
    std::vector<const api::Embedding*> embeddings;
    for (const auto& unit : req.units)
      if (unit.has_embedding()) embeddings.push_back(&unit.embedding());
    if (!embeddings.empty()) {
      std::unordered_map<std::string, uint32_t> introduced;
      if (auto ok = check_dimensions(g, embeddings, introduced); !ok) return fail_now(g, p, ok.error());
      stage_models(g, introduced);
    }

    const uint64_t first_seq = st.context.head_seq() + 1;
    auto committed = std::make_shared<std::vector<api::WorkUnit>>();
    committed->reserve(req.units.size());
    for (auto& unit : req.units) {
      unit.set_context_id(req.context_id);
      unit.set_seq(st.context.head_seq() + 1);
      unit.set_ts_ns(g.now);
      unit.set_idempotency_key(req.idempotency_key);
      auto id = model::uuid::parse(unit.id());
      ENGRAM_ASSERT(id.has_value(), "work unit without a valid id reached storage");
      g.batch.Put(h(cf_unit_ids),
                  rocksdb::Slice(reinterpret_cast<const char*>(id->bytes.data()), id->bytes.size()),
                  log_key(st.handle, unit.seq()));
      if (unit.has_embedding()) {
        put_vector(g, *id, unit.id(), std::move(*unit.mutable_embedding()));
        unit.clear_embedding();
        g.has_plain_writes = true;
      }
      committed->push_back(unit);
      api::Event ev;
      *ev.mutable_work_unit() = std::move(unit);
      put_event(g, st, std::move(ev));
    }
    st.context.set_updated_at_ns(g.now);
    stage_calls(g, st.handle, calls, *committed);
    if (!idem_key.empty()) {
      IdempotencyRecord rec;
      rec.set_fingerprint(req.fingerprint);
      rec.set_created_at_ns(g.now);
      rec.set_first_seq(first_seq);
      rec.set_count(uint32_t(req.units.size()));
      g.batch.Put(h(cf_idempotency), idem_key, rec.SerializeAsString());
    }
    inc(metrics.units_written, double(req.units.size()));
    g.staged[req.context_id] = std::move(st);
    auto done = std::make_shared<decltype(p.done)>(std::move(p.done));
    g.on_success.push_back({[done, committed] { (*done)(append_result{std::move(*committed), false}); }, p.home});
    g.on_failure.push_back({[done](const model::error& e) { (*done)(std::unexpected(e)); }, p.home});
  }

  void stage(group_state& g, pending_update& p) {
    auto lookup = find_context(p.req.context_id, g.staged);
    if (!lookup) return fail_now(g, p, lookup.error());
    context_state st = existing_or_new(*lookup, p.req.context_id, g);
    p.req.mutate(st.context);
    st.context.set_id(p.req.context_id);  // the mutator cannot rename a context
    st.context.set_updated_at_ns(g.now);
    // The event carries the state after the update, including its own seq.
    st.context.set_head_seq(st.context.head_seq() + 1);
    api::Event ev;
    *ev.mutable_context_updated()->mutable_context() = st.context;
    st.context.set_head_seq(st.context.head_seq() - 1);
    put_event(g, st, std::move(ev));
    auto result = std::make_shared<api::Context>(st.context);
    g.staged[p.req.context_id] = std::move(st);
    auto done = std::make_shared<decltype(p.done)>(std::move(p.done));
    g.on_success.push_back([done, result] { (*done)(std::move(*result)); });
    g.on_failure.push_back([done](const model::error& e) { (*done)(std::unexpected(e)); });
  }

  void stage(group_state& g, pending_locks& p) {
    auto& ch = p.change;
    // Every context read first, before anything is staged: a refusal below must not
    // leave half of this change in the shared batch.
    for (const auto& ev : ch.events) {
      const auto& ctx = ev.lock().context_id().empty() ? ch.default_context : ev.lock().context_id();
      if (ctx.empty()) continue;
      if (auto lookup = find_context(ctx, g.staged); !lookup) return fail_now(g, p, lookup.error());
    }
    for (const auto& tw : ch.tasks)
      if (!tw.event_kind.empty())
        if (auto lookup = find_context(tw.task.context_id(), g.staged); !lookup)
          return fail_now(g, p, lookup.error());
    // Lock events enter their context's log like any other event (creating the
    // context if needed), in the same batch as the lease records.
    for (auto& ev : ch.events) {
      const std::string ctx = ev.lock().context_id().empty() ? ch.default_context : ev.lock().context_id();
      if (ctx.empty()) continue;
      auto lookup = find_context(ctx, g.staged);
      if (!lookup) return fail_now(g, p, lookup.error());
      // A lease outliving its deleted context does not bring the context back.
      if (*lookup && (*lookup)->deleted) continue;
      context_state st = existing_or_new(*lookup, ctx, g);
      api::Event e;
      *e.mutable_lock_event() = ev;
      put_event(g, st, std::move(e));
      st.context.set_updated_at_ns(g.now);
      g.staged[ctx] = std::move(st);
    }
    // Task records change with their leases (engine::tasks); their events follow
    // the lease events.
    for (auto& tw : ch.tasks) {
      const auto& ctx = tw.task.context_id();
      g.batch.Put(h(cf_tasks), tw.task.task_id(), tw.task.SerializeAsString());
      if (tw.event_kind.empty()) continue;
      auto lookup = find_context(ctx, g.staged);
      if (!lookup) return fail_now(g, p, lookup.error());
      if (*lookup && (*lookup)->deleted && tw.event_kind != "created") continue;
      context_state st = existing_or_new(*lookup, ctx, g);
      api::Event e;
      e.mutable_task_event()->set_kind(tw.event_kind);
      *e.mutable_task_event()->mutable_task() = tw.task;
      put_event(g, st, std::move(e));
      st.context.set_updated_at_ns(g.now);
      g.staged[ctx] = std::move(st);
    }
    for (const auto& l : ch.puts) g.batch.Put(h(cf_locks), l.resource_path(), l.SerializeAsString());
    for (const auto& r : ch.deletes) g.batch.Delete(h(cf_locks), r);
    if (ch.fencing_high) {
      std::string v;
      put_be64(v, ch.fencing_high);
      g.batch.Put(h(cf_counters), fencing_key, v);
    }
    auto done = std::make_shared<decltype(p.done)>(std::move(p.done));
    g.on_success.push_back([done] { (*done)({}); });
    g.on_failure.push_back([done](const model::error& e) { (*done)(std::unexpected(e)); });
    g.has_plain_writes = true;
  }

  void stage(group_state& g, pending_vectors& p) {
    auto& w = p.write;
    std::vector<const api::Embedding*> embeddings;
    for (const auto& v : w.vectors) embeddings.push_back(&v.embedding);
    std::unordered_map<std::string, uint32_t> introduced;
    if (auto ok = check_dimensions(g, embeddings, introduced); !ok) return fail_now(g, p, ok.error());
    std::vector<std::pair<model::uuid, vector_write::item*>> fresh;
    for (auto& v : w.vectors) {
      auto id = model::uuid::parse(v.unit_id);
      if (!id) return fail_now(g, p, {errc::invalid_argument, "vector for an invalid unit id"});
      auto has = has_vector(g, *id);
      if (!has) return fail_now(g, p, has.error());
      auto exists = unit_exists(*id);  // removed since it was embedded: no vector
      if (!exists) return fail_now(g, p, exists.error());
      if (!*has && *exists) fresh.emplace_back(*id, &v);
    }
    stage_models(g, introduced);
    for (auto& [id, v] : fresh) put_vector(g, id, v->unit_id, std::move(v->embedding));
    for (const auto& [context_id, seq] : w.cursors) {
      if (auto st = find_context(context_id, g.staged); st && *st && (*st)->deleted) continue;
      std::string v;
      put_be64(v, seq);
      g.batch.Put(h(cf_embed_cursors), cursor_key(w.cursor_model, context_id), v);
    }
    g.has_plain_writes = true;
    auto done = std::make_shared<decltype(p.done)>(std::move(p.done));
    g.on_success.push_back([done] { (*done)({}); });
    g.on_failure.push_back([done](const model::error& e) { (*done)(std::unexpected(e)); });
  }

  // Commits `group` as one batch and adds each request's outcome to `outcomes`,
  // for the caller to run once commit_mu is released. `inline_write`: the caller
  // is an I/O thread (try_commit_inline), so the write may not wait out a write
  // stall. True when this commit left the WAL unsynced and it was not.
  bool commit_group(std::vector<pending>& group, std::vector<outcome>& outcomes, bool inline_write) {
    bool newly_unsynced = false;
    group_state g;
    g.next_handle = next_handle;
    g.next_vseq = next_vseq;
    g.now = clock->now_ns();
    for (auto& p : group) std::visit([&](auto& item) { stage(g, item); }, p);

    model::error failure{errc::internal, ""};
    bool ok = true;
    if (!g.staged.empty() || g.has_plain_writes) {
      for (const auto& [id, st] : g.staged) {
        ContextRecord rec;
        rec.set_handle(st.handle);
        *rec.mutable_context() = st.context;
        rec.set_deleted(st.deleted);
        g.batch.Put(h(cf_contexts), id, rec.SerializeAsString());
      }
      if (g.next_handle != next_handle) {
        std::string v;
        put_be64(v, g.next_handle);
        g.batch.Put(h(cf_counters), next_handle_key, v);
      }
      if (g.next_vseq != next_vseq) {
        std::string v;
        put_be64(v, g.next_vseq);
        g.batch.Put(h(cf_counters), next_vseq_key, v);
      }
      rocksdb::WriteOptions wo;
      wo.sync = opts.mode == durability::sync;
      wo.no_slowdown = inline_write;
      const auto t0 = steady::now();
      const auto s = db->Write(wo, &g.batch);
      // What this batch put in the memtables is no longer headroom (write_may_wait).
      memtable_room.bytes -= std::min(memtable_room.bytes, g.batch.GetDataSize());
      const double secs = std::chrono::duration<double>(steady::now() - t0).count();
      if (metrics.write_seconds) metrics.write_seconds->Observe(secs);
      if (s.ok()) {
        for (auto& [id, st] : g.staged) contexts[id] = std::move(st);
        next_handle = g.next_handle;
        model_dims.merge(g.new_models);
        if (!wo.sync) newly_unsynced = !unsynced.exchange(true);
        inc(metrics.groups);
        inc(metrics.events_written, double(g.events.size()));
        if (metrics.group_requests) metrics.group_requests->Observe(double(g.on_success.size()));
        if (metrics.group_units) metrics.group_units->Observe(double(g.events.size()));
      } else if (inline_write && s.IsIncomplete()) {  // a stall began in this very write
        ok = false;
        failure = {errc::unavailable, "storage is stalling writes while it catches up; retry shortly"};
        spdlog::warn("storage: an inline append met a write stall: {}", s.ToString());
      } else {
        ok = false;
        failure = storage_error(s, "the write could not be committed");
        inc(metrics.write_errors);
        spdlog::error("storage: commit of {} requests failed: {}", g.on_failure.size(), s.ToString());
      }
    }
    if (ok) {
      // Publish before completing: a client that hears its 201 and subscribes at once
      // must find the router already knows the event.
      auto* p = pub.load(std::memory_order_acquire);
      if (p)
        for (const auto& r : g.removals) p->removed(r.context_id, r.first_seq, r.unit_ids);
      if (p && !g.events.empty()) p->publish(g.events);
      if (g.next_vseq != next_vseq) {
        next_vseq = g.next_vseq;
        last_vseq.store(next_vseq - 1);
        if (p) p->vectors_committed(next_vseq - 1);
      }
      for (auto& f : g.on_success) outcomes.push_back(std::move(f));
      for (auto& t : g.unfinished) requeue(std::move(t));
    } else {
      for (auto& f : g.on_failure) outcomes.push_back({[run = std::move(f.run), failure] { run(failure); }, f.home});
      for (auto& t : g.unfinished)
        outcomes.push_back([done = std::move(t.done), failure] { done(std::unexpected(failure)); });
    }
    for (auto& f : g.immediate) outcomes.push_back(std::move(f));
    return newly_unsynced;
  }

  void stage(group_state& g, pending_import& p) {
    auto lookup = find_context(p.context_id, g.staged);
    if (!lookup) return fail_now(g, p, lookup.error());
    auto& found = *lookup;
    const uint64_t first = p.events.front().seq();
    if (found && first != found->context.head_seq() + 1)
      return fail_now(g, p, {errc::conflict, "context '" + p.context_id + "' ends at seq " +
                                                      std::to_string(found->context.head_seq()) +
                                                      ": an import must continue at seq " +
                                                      std::to_string(found->context.head_seq() + 1) +
                                                      ", this one starts at " + std::to_string(first)});
    std::unordered_set<std::string> ids;
    for (const auto& ev : p.events) {
      if (!ev.has_work_unit()) continue;
      const auto id = model::uuid::parse(ev.work_unit().id());
      ENGRAM_ASSERT(id.has_value(), "imported unit without a valid id reached storage");
      const auto key = uuid_bytes(*id);
      auto exists = unit_exists(*id);
      if (!exists) return fail_now(g, p, exists.error());
      if (*exists || g.imported_ids.contains(key) || !ids.insert(key).second)
        return fail_now(g, p, {errc::conflict, "work unit " + ev.work_unit().id() + " (seq " +
                                                        std::to_string(ev.seq()) + ") already exists"});
    }
    const bool is_new = !found;
    // The ledger, as appends would have built it (a result whose call is not in the
    // log, removed by retention before the export, has no record).
    std::unordered_map<std::string, CallRecord> calls;
    const uint64_t handle = found ? found->handle : g.next_handle;
    for (const auto& ev : p.events) {
      const auto& u = ev.work_unit();
      if (!ev.has_work_unit() || u.call_id().empty()) continue;
      const auto key = call_key(handle, u.call_id());
      auto rec = find_call(g, key, !is_new, calls);
      if (!rec) return fail_now(g, p, rec.error());
      const bool is_call = u.type() == api::WORK_UNIT_TYPE_TOOL_CALL;
      if (*rec && (is_call || (*rec)->result_seq()))
        return fail_now(g, p, {errc::conflict, "tool call '" + u.call_id() + "' at seq " + std::to_string(ev.seq()) +
                                                        (is_call ? " exists already" : " has a result already")});
      if (is_call) calls[key].set_call_seq(ev.seq());
      else if (*rec) (calls[key] = **rec).set_result_seq(ev.seq());
    }
    // Facts, as sets and retractions would have left them: the active version of
    // every key the import touches, read before anything is staged.
    std::unordered_map<std::string, std::optional<api::Fact>> facts;
    for (const auto& ev : p.events) {
      if (!ev.has_fact_event()) continue;
      const auto prefix = fact_prefix(handle, ev.fact_event().fact().key());
      if (facts.contains(prefix)) continue;
      std::optional<api::Fact> active;
      if (!is_new) {
        auto stored = active_fact(g, prefix);
        if (!stored) return fail_now(g, p, stored.error());
        active = std::move(*stored);
      }
      facts[prefix] = std::move(active);
    }
    context_state st = existing_or_new(found, p.context_id, g);
    ENGRAM_ASSERT(st.handle == handle, "an imported context's handle changed while staging");
    for (const auto& [key, rec] : calls) {
      g.batch.Put(h(cf_calls), key, rec.SerializeAsString());
      g.calls[key] = rec;
    }
    if (is_new) {
      st.context.set_head_seq(first - 1);
      if (first > 1) st.context.set_first_seq(first);
      st.context.set_created_at_ns(p.events.front().ts_ns());
    }
    int64_t ts = p.events.front().ts_ns();
    for (auto& ev : p.events) {
      ts = ev.ts_ns() ? ev.ts_ns() : ts;  // control events exported without a time
      ev.set_ts_ns(ts);
      if (ev.has_work_unit()) {
        const auto id = model::uuid::parse(ev.work_unit().id());
        g.batch.Put(h(cf_unit_ids), uuid_bytes(*id), log_key(st.handle, ev.seq()));
        g.imported_ids.insert(uuid_bytes(*id));
        if (!ev.work_unit().call_id().empty()) g.call_units[log_key(st.handle, ev.seq())] = ev.work_unit();
        inc(metrics.units_written);
      }
      if (ev.has_context_updated()) {
        const uint64_t kept_first = st.context.first_seq();
        st.context = ev.context_updated().context();
        st.context.set_id(p.context_id);
        st.context.set_first_seq(kept_first);
      } else {
        st.context.set_updated_at_ns(ts);
      }
      st.context.set_head_seq(ev.seq());
      if (ev.has_checkpoint()) {
        const auto& cp = ev.checkpoint();
        std::string seq;
        put_be64(seq, ev.seq());
        g.batch.Put(h(cf_checkpoints), checkpoint_key(st.handle, cp.agent_id(), cp.version()), seq);
        const auto prefix = checkpoint_prefix(st.handle, cp.agent_id());
        auto latest = latest_checkpoint(g, prefix);
        if (latest && *latest < cp.version()) put_checkpoint_counter(g, prefix, cp.version());
      }
      if (ev.has_fact_event()) import_fact(g, st.handle, facts, *ev.mutable_fact_event(), ev.seq(), ts);
      g.batch.Put(h(cf_log), log_key(st.handle, ev.seq()), ev.SerializeAsString());
      g.events.push_back(std::make_shared<const api::Event>(std::move(ev)));
    }
    for (auto& [prefix, active] : facts) g.active_facts[prefix] = std::move(active);
    auto result = std::make_shared<api::Context>(st.context);
    g.staged[p.context_id] = std::move(st);
    auto done = std::make_shared<decltype(p.done)>(std::move(p.done));
    g.on_success.push_back([done, result] { (*done)(std::move(*result)); });
    g.on_failure.push_back([done](const model::error& e) { (*done)(std::unexpected(e)); });
  }

  // The newest version of an agent's checkpoint (0: none), from its counter: the key
  // `prefix` itself, which retention never removes, so versions never repeat.
  model::result<uint64_t> latest_checkpoint(const group_state& g, const std::string& prefix) const {
    if (auto it = g.checkpoint_versions.find(prefix); it != g.checkpoint_versions.end()) return it->second;
    std::string v;
    auto s = db->Get(rocksdb::ReadOptions(), h(cf_checkpoints), prefix, &v);
    if (s.IsNotFound()) return uint64_t(0);
    if (!s.ok() || v.size() != 8) return std::unexpected(storage_error(s, "reading a checkpoint counter"));
    return get_be64(v);
  }

  void put_checkpoint_counter(group_state& g, const std::string& prefix, uint64_t version) {
    std::string v;
    put_be64(v, version);
    g.batch.Put(h(cf_checkpoints), prefix, v);
    g.checkpoint_versions[prefix] = version;
  }

  void stage(group_state& g, pending_checkpoint& p) {
    auto& req = p.req;
    auto lookup = find_context(req.context_id, g.staged);
    if (!lookup) return fail_now(g, p, lookup.error());
    const bool exists = *lookup && !(*lookup)->deleted;
    const uint64_t head = exists ? (*lookup)->context.head_seq() : 0;
    if (req.cursor_seq > head)
      return fail_now(g, p, {errc::invalid_argument, "cursor_seq " + std::to_string(req.cursor_seq) +
                                                              " is beyond the context's head_seq " + std::to_string(head)});
    const uint64_t handle = *lookup ? (*lookup)->handle : g.next_handle;
    const auto prefix = checkpoint_prefix(handle, req.agent_id);
    uint64_t latest = 0;
    if (*lookup) {
      auto found = latest_checkpoint(g, prefix);
      if (!found) return fail_now(g, p, found.error());
      latest = *found;
    }
    if (req.if_match && *req.if_match != latest)
      return fail_now(g, p, {errc::precondition_failed, "If-Match names version " + std::to_string(*req.if_match) +
                                                                 " but the latest is " + std::to_string(latest)});
    if (!req.if_match && latest)
      return fail_now(g, p, {errc::precondition_required, "agent '" + req.agent_id + "' has checkpoint version " +
                                                                   std::to_string(latest) +
                                                                   " here; send If-Match with the version this replaces"});
    context_state st = existing_or_new(*lookup, req.context_id, g);
    const uint64_t version = latest + 1;
    api::Event ev;
    auto* cp = ev.mutable_checkpoint();
    cp->set_agent_id(req.agent_id);
    cp->set_version(version);
    cp->set_cursor_seq(req.cursor_seq);
    cp->set_state_json(std::move(req.state_json));
    put_event(g, st, std::move(ev));
    st.context.set_updated_at_ns(g.now);
    std::string seq;
    put_be64(seq, st.context.head_seq());
    g.batch.Put(h(cf_checkpoints), checkpoint_key(handle, req.agent_id, version), seq);
    if (version > req.keep)
      g.batch.DeleteRange(h(cf_checkpoints), checkpoint_key(handle, req.agent_id, 0),
                          checkpoint_key(handle, req.agent_id, version - req.keep + 1));
    put_checkpoint_counter(g, prefix, version);
    auto saved = std::make_shared<api::Event>(*g.events.back());
    g.staged[req.context_id] = std::move(st);
    auto done = std::make_shared<decltype(p.done)>(std::move(p.done));
    g.on_success.push_back([done, saved] { (*done)(std::move(*saved)); });
    g.on_failure.push_back([done](const model::error& e) { (*done)(std::unexpected(e)); });
  }

  // Kept checkpoint versions of an agent, newest first (only `version`, if given), at
  // most `limit`. Versions whose events retention removed are skipped.
  model::result<std::vector<api::Event>> checkpoints(std::string_view context_id, std::string_view agent_id,
                                                     std::optional<uint64_t> version, size_t limit) const {
    std::vector<api::Event> out;
    auto rec = read_record(context_id);
    if (!rec) return std::unexpected(rec.error());
    if (!*rec || (*rec)->deleted()) return out;
    const uint64_t handle = (*rec)->handle();
    const std::string prefix = checkpoint_prefix(handle, agent_id);
    std::string lower = version ? checkpoint_key(handle, agent_id, *version) : prefix;
    std::string upper = version ? checkpoint_key(handle, agent_id, *version + 1) : prefix;
    if (!version) upper.back() = '\1';  // just past every [version:8] after the '\0'
    rocksdb::Slice lo(lower), hi(upper);
    rocksdb::ReadOptions ro;
    ro.iterate_lower_bound = &lo;
    ro.iterate_upper_bound = &hi;
    std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(ro, h(cf_checkpoints)));
    for (it->SeekToLast(); it->Valid() && out.size() < limit; it->Prev()) {
      if (it->key().size() != prefix.size() + 8) continue;  // the counter
      std::string raw;
      auto s = db->Get(rocksdb::ReadOptions(), h(cf_log), log_key(handle, get_be64(it->value().ToStringView())), &raw);
      if (s.IsNotFound()) continue;  // removed by retention with its event
      if (!s.ok()) return std::unexpected(storage_error(s, "reading a checkpoint"));
      api::Event ev;
      if (!ev.ParseFromString(raw) || !ev.has_checkpoint()) return fail(errc::internal, "corrupt checkpoint event");
      out.push_back(std::move(ev));
    }
    if (!it->status().ok()) return std::unexpected(storage_error(it->status(), "reading checkpoints"));
    return out;
  }

  // An imported fact event applied to the facts column family as change_fact would
  // have: a set becomes the key's active version (ending the one before), a
  // retraction ends the active one. `facts` holds the active versions by prefix.
  void import_fact(group_state& g, uint64_t handle, std::unordered_map<std::string, std::optional<api::Fact>>& facts,
                   api::FactEvent& fe, uint64_t seq, int64_t ts) {
    auto& f = *fe.mutable_fact();
    auto& active = facts[fact_prefix(handle, f.key())];
    const bool set = fe.kind() == "set";
    if (active) {
      active->set_superseded_at_seq(seq);
      active->set_ended_by(set ? "superseded" : "retracted");
      if (!set) active->set_retracted_by(f.retracted_by());
      g.batch.Put(h(cf_facts), fact_key(handle, f.key(), active->set_at_seq()), active->SerializeAsString());
    }
    if (!set) {
      active.reset();
      return;
    }
    f.set_set_at_seq(seq);
    if (!f.set_at_ns()) f.set_set_at_ns(ts);
    f.set_superseded_at_seq(0);
    f.clear_ended_by();
    f.clear_retracted_by();
    g.batch.Put(h(cf_facts), fact_key(handle, f.key(), seq), f.SerializeAsString());
    active = f;
  }

  // The active version of a fact key (nullopt: none): this group's, else the newest
  // stored version when it has not ended.
  model::result<std::optional<api::Fact>> active_fact(const group_state& g, const std::string& prefix) const {
    if (auto it = g.active_facts.find(prefix); it != g.active_facts.end()) return it->second;
    rocksdb::ReadOptions ro;
    std::string upper = prefix;
    put_be64(upper, UINT64_MAX);
    std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(ro, h(cf_facts)));
    it->SeekForPrev(upper);
    if (!it->status().ok()) return std::unexpected(storage_error(it->status(), "reading a fact"));
    if (!it->Valid() || !it->key().starts_with(prefix)) return std::optional<api::Fact>();
    api::Fact f;
    if (!f.ParseFromArray(it->value().data(), int(it->value().size()))) return fail(errc::internal, "corrupt fact record");
    if (f.superseded_at_seq()) return std::optional<api::Fact>();
    return std::optional<api::Fact>(std::move(f));
  }

  void stage(group_state& g, pending_fact& p) {
    auto& ch = p.change;
    auto lookup = find_context(ch.context_id, g.staged);
    if (!lookup) return fail_now(g, p, lookup.error());
    const bool exists = *lookup && !(*lookup)->deleted;
    const uint64_t head = exists ? (*lookup)->context.head_seq() : 0;
    for (uint64_t src : ch.fact.sources())
      if (src == 0 || src > head)
        return fail_now(g, p, {errc::invalid_argument, "sources: seq " + std::to_string(src) +
                                                                " is not in the context (its head_seq is " +
                                                                std::to_string(head) + ")"});
    const std::string& key = ch.fact.key();
    std::optional<api::Fact> active;
    if (exists) {
      auto found = active_fact(g, fact_prefix((*lookup)->handle, key));
      if (!found) return fail_now(g, p, found.error());
      active = std::move(*found);
    }
    if (ch.retract && !active)
      return fail_now(g, p, {errc::not_found, "no active fact '" + key + "' in context '" + ch.context_id + "'"});
    context_state st = existing_or_new(*lookup, ch.context_id, g);
    const std::string prefix = fact_prefix(st.handle, key);
    const uint64_t seq = st.context.head_seq() + 1;  // put_event's
    api::Event ev;
    auto* fe = ev.mutable_fact_event();
    if (active) {  // ends here: superseded by the new version, or retracted
      active->set_superseded_at_seq(seq);
      active->set_ended_by(ch.retract ? "retracted" : "superseded");
      if (ch.retract) active->set_retracted_by(ch.retracted_by);
      g.batch.Put(h(cf_facts), fact_key(st.handle, key, active->set_at_seq()), active->SerializeAsString());
    }
    if (ch.retract) {
      fe->set_kind("retracted");
      *fe->mutable_fact() = *active;
      g.active_facts[prefix] = std::nullopt;
    } else {
      api::Fact f = std::move(ch.fact);
      f.set_set_at_seq(seq);
      f.set_set_at_ns(g.now);
      f.set_superseded_at_seq(0);
      f.clear_ended_by();
      g.batch.Put(h(cf_facts), fact_key(st.handle, key, seq), f.SerializeAsString());
      fe->set_kind("set");
      *fe->mutable_fact() = f;
      g.active_facts[prefix] = std::move(f);
    }
    put_event(g, st, std::move(ev));
    st.context.set_updated_at_ns(g.now);
    auto saved = std::make_shared<api::Event>(*g.events.back());
    g.staged[ch.context_id] = std::move(st);
    auto done = std::make_shared<decltype(p.done)>(std::move(p.done));
    g.on_success.push_back([done, saved] { (*done)(std::move(*saved)); });
    g.on_failure.push_back([done](const model::error& e) { (*done)(std::unexpected(e)); });
  }

  model::result<std::vector<api::Fact>> facts(std::string_view context_id, const fact_query& q) const {
    auto rec = read_record(context_id);
    if (!rec) return std::unexpected(rec.error());
    if (!*rec || (*rec)->deleted()) return fail(errc::not_found, "no context '" + std::string(context_id) + "'");
    const uint64_t handle = (*rec)->handle();
    std::string lower = q.key ? fact_prefix(handle, *q.key) : idempotency_key(handle, q.prefix);
    std::string upper = idempotency_key(handle + 1, "");
    rocksdb::Slice upper_slice(upper);
    rocksdb::ReadOptions ro;
    ro.iterate_upper_bound = &upper_slice;
    std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(ro, h(cf_facts)));
    std::vector<api::Fact> out;
    for (it->Seek(lower); it->Valid() && it->key().starts_with(lower) && out.size() <= q.limit; it->Next()) {
      api::Fact f;
      if (!f.ParseFromArray(it->value().data(), int(it->value().size()))) return fail(errc::internal, "corrupt fact record");
      if (q.as_of_seq) {
        if (f.set_at_seq() > *q.as_of_seq) continue;
        if (f.superseded_at_seq() > *q.as_of_seq) {  // still current then
          f.set_superseded_at_seq(0);
          f.clear_ended_by();
          f.clear_retracted_by();
        }
      }
      if (!q.include_superseded && f.superseded_at_seq()) continue;
      if (q.valid_at_ns && (*q.valid_at_ns < f.valid_from_ns() || (f.valid_to_ns() && *q.valid_at_ns >= f.valid_to_ns())))
        continue;
      out.push_back(std::move(f));
    }
    if (!it->status().ok()) return std::unexpected(storage_error(it->status(), "reading facts"));
    return out;
  }

  void stage(group_state& g, pending_presence& p) {
    auto& ch = p.change;
    auto lookup = find_context(ch.context_id, g.staged);
    if (!lookup) return fail_now(g, p, lookup.error());
    const bool exists = *lookup && !(*lookup)->deleted;
    bool present = false;
    if (exists) {
      const auto key = call_key((*lookup)->handle, ch.agent_id);
      if (auto it = g.present.find(key); it != g.present.end()) {
        present = it->second;
      } else {
        std::string raw;
        auto s = db->Get(rocksdb::ReadOptions(), h(cf_presence), key, &raw);
        if (!s.ok() && !s.IsNotFound()) return fail_now(g, p, storage_error(s, "reading presence"));
        present = s.ok();
      }
    }
    if (present == ch.join) {  // nothing changes
      g.immediate.push_back([done = std::move(p.done)] { done(false); });
      return;
    }
    context_state st = existing_or_new(*lookup, ch.context_id, g);
    const auto key = call_key(st.handle, ch.agent_id);
    api::Event ev;
    auto* pe = ev.mutable_presence();
    pe->set_agent_id(ch.agent_id);
    pe->set_joined(ch.join);
    if (ch.join) {
      pe->set_status(ch.status);
      PresenceRecord rec;
      rec.set_joined_at_ns(g.now);
      rec.set_status(ch.status);
      g.batch.Put(h(cf_presence), key, rec.SerializeAsString());
    } else {
      pe->set_reason(ch.reason);
      g.batch.Delete(h(cf_presence), key);
    }
    g.present[key] = ch.join;
    put_event(g, st, std::move(ev));
    st.context.set_updated_at_ns(g.now);
    g.staged[ch.context_id] = std::move(st);
    auto done = std::make_shared<decltype(p.done)>(std::move(p.done));
    g.on_success.push_back([done] { (*done)(true); });
    g.on_failure.push_back([done](const model::error& e) { (*done)(std::unexpected(e)); });
  }

  // The next step of a trim: behind what is queued, past the queue limit (it was
  // admitted once), unless the store is closing.
  void requeue(pending_trim t) {
    {
      std::lock_guard lock(mu);
      if (!stopping) {
        queue.emplace_back(std::move(t));
        cv.notify_one();
        return;
      }
    }
    const auto at = t.progress.first_seq;
    completions(-1, [done = std::move(t.done), at] {
      done(std::unexpected(model::error{errc::unavailable, "the server is shutting down; events before seq " +
                                                               std::to_string(at) +
                                                               " were removed, send the request again"}));
    });
  }

  model::result<bool> unit_exists(const model::uuid& id) const {
    std::string loc;
    auto s = db->Get(rocksdb::ReadOptions(), h(cf_unit_ids), uuid_bytes(id), &loc);
    if (s.IsNotFound()) return false;
    if (!s.ok()) return std::unexpected(storage_error(s, "reading unit ids"));
    return true;
  }

  static constexpr uint64_t trim_step = 4096;  // events removed per commit

  void stage(group_state& g, pending_trim& p) {
    auto lookup = find_context(p.context_id, g.staged);
    if (!lookup) return fail_now(g, p, lookup.error());
    if (!*lookup || (*lookup)->deleted) {
      if (p.erase && p.progress.removed_events == 0)
        return fail_now(g, p, {errc::not_found, "context '" + p.context_id + "' does not exist"});
      // A concurrent deletion finished it: answer with its context_deleted event.
      if (*lookup) p.progress.first_seq = (*lookup)->context.head_seq();
      g.immediate.push_back([done = std::move(p.done), r = p.progress] { done(r); });
      return;
    }
    context_state st = std::move(**lookup);
    const uint64_t first = std::max<uint64_t>(st.context.first_seq(), 1);
    const uint64_t head = st.context.head_seq();
    // Retention keeps the newest event; a deletion removes everything.
    const uint64_t target = p.erase ? head + 1 : std::min(p.below_seq, head);
    const uint64_t end = std::max(first, std::min(target, first + trim_step));

    // Staging may fail below after deletes are in the batch: safe only because a trim
    // step commits in a group of its own (run_committer), so nothing else is lost.
    std::vector<std::string> unit_ids;
    std::unique_ptr<rocksdb::Iterator> keys(db->NewIterator(rocksdb::ReadOptions(), h(cf_vector_keys)));
    log_range it(*db, h(cf_log), st.handle, first, st.handle, end);
    api::Event ev;
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      if (!ev.ParseFromArray(it->value().data(), int(it->value().size())))
        return fail_now(g, p, {errc::internal, "corrupt log entry in context '" + p.context_id + "'"});
      if (ev.has_checkpoint())
        g.batch.Delete(h(cf_checkpoints), checkpoint_key(st.handle, ev.checkpoint().agent_id(), ev.checkpoint().version()));
      if (!ev.has_work_unit()) continue;
      const auto id = model::uuid::parse(ev.work_unit().id());
      if (!id) continue;
      const auto key = uuid_bytes(*id);
      g.batch.Delete(h(cf_unit_ids), key);
      if (ev.work_unit().type() == api::WORK_UNIT_TYPE_TOOL_CALL && !ev.work_unit().call_id().empty())
        g.batch.Delete(h(cf_calls), call_key(st.handle, ev.work_unit().call_id()));
      for (keys->Seek(key); keys->Valid() && keys->key().starts_with(key); keys->Next()) {
        g.batch.Delete(h(cf_vectors), keys->value());
        g.batch.Delete(h(cf_vector_keys), keys->key());
      }
      if (!keys->status().ok()) return fail_now(g, p, storage_error(keys->status(), "reading vector keys"));
      unit_ids.push_back(ev.work_unit().id());
    }
    if (!it->status().ok()) return fail_now(g, p, storage_error(it->status(), "reading a context log"));
    if (end > first) {
      g.batch.DeleteRange(h(cf_log), log_key(st.handle, first), log_key(st.handle, end));
      g.removals.push_back({p.context_id, end, std::move(unit_ids)});
    }
    p.progress.removed_events += end - first;
    st.context.set_first_seq(end);
    p.progress.first_seq = end;

    const bool finished = end >= target;
    if (finished && p.erase) {
      g.batch.DeleteRange(h(cf_idempotency), idempotency_key(st.handle, ""), idempotency_key(st.handle + 1, ""));
      g.batch.DeleteRange(h(cf_calls), call_key(st.handle, ""), call_key(st.handle + 1, ""));
      g.batch.DeleteRange(h(cf_checkpoints), call_key(st.handle, ""), call_key(st.handle + 1, ""));
      g.batch.DeleteRange(h(cf_presence), call_key(st.handle, ""), call_key(st.handle + 1, ""));
      g.batch.DeleteRange(h(cf_facts), call_key(st.handle, ""), call_key(st.handle + 1, ""));
      for (const auto& [model, _] : model_dims) g.batch.Delete(h(cf_embed_cursors), cursor_key(model, p.context_id));
      api::Context kept;  // the tombstone keeps no display name, members or meta
      kept.set_id(p.context_id);
      kept.set_head_seq(head);
      kept.set_created_at_ns(st.context.created_at_ns());
      kept.set_updated_at_ns(g.now);
      st.context = std::move(kept);
      api::Event deleted;
      deleted.mutable_context_deleted()->set_deleted_by(p.deleted_by);
      deleted.mutable_context_deleted()->set_removed_events(p.progress.removed_events);
      put_event(g, st, std::move(deleted));
      st.context.set_first_seq(st.context.head_seq());
      st.deleted = true;
      p.progress.first_seq = st.context.head_seq();
      g.removals.push_back({p.context_id, p.progress.first_seq, {}});  // the cut the index records
    }
    g.staged[p.context_id] = std::move(st);
    if (!finished) {
      g.unfinished.push_back(std::move(p));
      return;
    }
    auto done = std::make_shared<decltype(p.done)>(std::move(p.done));
    g.on_success.push_back([done, r = p.progress] { (*done)(r); });
    g.on_failure.push_back([done](const model::error& e) { (*done)(std::unexpected(e)); });
  }

  // -------------------------------------------------------------------------------
  // Open / close
  model::status open_db() {
    std::error_code ec;
    std::filesystem::create_directories(opts.data_dir, ec);
    if (ec)
      return fail(errc::unavailable, "cannot create data_dir " + opts.data_dir + ": " + ec.message());

    rocksdb::DBOptions dbo;
    dbo.create_if_missing = true;
    dbo.create_missing_column_families = true;
    dbo.IncreaseParallelism(2);
    dbo.max_total_wal_size = 256 << 20;
    dbo.keep_log_file_num = 4;
    // Our committer is the only writer, so pipelining has nothing to overlap.
    dbo.enable_pipelined_write = false;

    auto cache = rocksdb::NewLRUCache(opts.block_cache_bytes);
    block_cache = cache;
    auto cf_options = [&](bool point_lookups) {
      rocksdb::ColumnFamilyOptions o;
      o.OptimizeLevelStyleCompaction(opts.write_buffer_bytes * 2);
      o.write_buffer_size = opts.write_buffer_bytes;
      rocksdb::BlockBasedTableOptions t;
      t.block_cache = cache;
      t.cache_index_and_filter_blocks = true;
      t.pin_l0_filter_and_index_blocks_in_cache = true;
      if (point_lookups) t.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
      o.table_factory.reset(rocksdb::NewBlockBasedTableFactory(t));
      o.compression = rocksdb::kNoCompression;
      return o;
    };
    std::vector<rocksdb::ColumnFamilyDescriptor> descs;
    for (size_t i = 0; i < cf_count; ++i) {
      auto o = cf_options(i != cf_log);
      if (i == cf_log) o.compression = rocksdb::kLZ4Compression;
      if (i == cf_idempotency) o.compaction_filter = ttl_filter.get();
      descs.emplace_back(cf_names[i], o);
    }
    rocksdb::DB* raw = nullptr;
    auto s = rocksdb::DB::Open(dbo, opts.data_dir, descs, &cfs, &raw);
    if (!s.ok() && s.IsInvalidArgument() && s.ToString().find("LZ4") != std::string::npos) {
      // LZ4 missing from this RocksDB build: fall back to no compression.
      descs[cf_log].options.compression = rocksdb::kNoCompression;
      s = rocksdb::DB::Open(dbo, opts.data_dir, descs, &cfs, &raw);
    }
    if (!s.ok()) return std::unexpected(storage_error(s, "cannot open RocksDB at " + opts.data_dir));
    db.reset(raw);

    std::string v;
    s = db->Get(rocksdb::ReadOptions(), h(cf_counters), next_handle_key, &v);
    if (s.ok() && v.size() == 8) next_handle = get_be64(v);
    else if (!s.IsNotFound()) return std::unexpected(storage_error(s, "cannot read counters"));

    s = db->Get(rocksdb::ReadOptions(), h(cf_counters), next_vseq_key, &v);
    if (s.ok() && v.size() == 8) next_vseq = get_be64(v);
    else if (!s.IsNotFound()) return std::unexpected(storage_error(s, "cannot read counters"));
    std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions(), h(cf_vectors)));
    it->SeekToLast();
    if (!it->status().ok()) return std::unexpected(storage_error(it->status(), "cannot read vectors"));
    if (it->Valid() && it->key().size() == 8) next_vseq = std::max(next_vseq, get_be64(it->key().ToStringView()) + 1);
    last_vseq = next_vseq - 1;
    it.reset(db->NewIterator(rocksdb::ReadOptions(), h(cf_vector_models)));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      VectorModel m;
      if (!m.ParseFromArray(it->value().data(), int(it->value().size())))
        return fail(errc::internal, "corrupt vector model record");
      model_dims[it->key().ToString()] = m.dimension();
    }
    if (!it->status().ok()) return std::unexpected(storage_error(it->status(), "cannot read vector models"));
    return {};
  }

  void close() {
    {
      std::lock_guard lock(mu);
      if (closed) return;
      closed = true;
      stopping = true;
      cv.notify_all();
    }
    if (committer.joinable()) committer.join();
    // An inline commit's write ends first. (append() must not race with the
    // store's destruction: the app joins the I/O threads before closing it.)
    std::lock_guard commit(commit_mu);
    if (db) {
      if (auto s = db->FlushWAL(/*sync=*/true); !s.ok())
        spdlog::error("storage: final WAL sync failed: {}", s.ToString());
      for (auto* cf : cfs) db->DestroyColumnFamilyHandle(cf);
      cfs.clear();
      if (auto s = db->Close(); !s.ok()) spdlog::error("storage: close failed: {}", s.ToString());
      db.reset();
    }
  }
};

// ---------------------------------------------------------------------------------

store::store(std::unique_ptr<impl> p) : impl_(std::move(p)) {}
store::~store() { close(); }

model::result<std::unique_ptr<store>> store::open(const options& opts, prometheus::Registry* metrics,
                                                  std::shared_ptr<const model::clock> clock,
                                                  executor completions) {
  auto p = std::make_unique<impl>(opts, metrics);
  p->clock = clock ? std::move(clock) : model::default_clock();
  p->completions = completions ? std::move(completions) : [](int, std::function<void()> f) { f(); };
  p->ttl_filter = std::make_unique<idempotency_ttl_filter>(p->clock, opts.idempotency_ttl);
  if (auto ok = p->open_db(); !ok) return std::unexpected(ok.error());
  auto* raw = p.get();
  p->committer = std::thread([raw] {
    model::name_this_thread("committer");
    raw->run_committer();
  });
  return std::unique_ptr<store>(new store(std::move(p)));
}

void store::set_publisher(publisher* p) { impl_->pub.store(p, std::memory_order_release); }

void store::append(append_request req, std::function<void(model::result<append_result>)> done) {
  ENGRAM_ASSERT(!req.units.empty(), "empty append request");
  auto& s = *impl_;
  // Inline only when no other append is in flight: under load, appends share the
  // committer's groups, and I/O threads committing one each made relaxed appends
  // ~10% slower at 50 connections (bench/README.md).
  const bool alone = s.appends_in_flight.fetch_add(1, std::memory_order_relaxed) == 0;
  impl::pending_append p{std::move(req),
                         [&s, done = std::move(done)](model::result<append_result> r) {
                           s.appends_in_flight.fetch_sub(1, std::memory_order_relaxed);
                           done(std::move(r));
                         },
                         model::this_io_thread};
  if (alone && s.try_commit_inline(p)) return;
  auto& done_if_refused = p.done;  // enqueue moves `p` only when it queues it
  s.enqueue(std::move(p), done_if_refused);
}

void store::update_locks(lock_change change, std::function<void(model::status)> done) {
  impl_->enqueue(impl::pending_locks{std::move(change), done}, done);
}

void store::set_fence_checker(fence_checker check) { impl_->check_fence = std::move(check); }

model::result<std::pair<std::vector<api::Lock>, uint64_t>> store::load_locks() const {
  std::pair<std::vector<api::Lock>, uint64_t> out{{}, 0};
  std::string v;
  auto s = impl_->db->Get(rocksdb::ReadOptions(), impl_->h(cf_counters), fencing_key, &v);
  if (s.ok() && v.size() == 8) out.second = get_be64(v);
  else if (!s.IsNotFound()) return std::unexpected(storage_error(s, "reading the fencing counter"));
  std::unique_ptr<rocksdb::Iterator> it(impl_->db->NewIterator(rocksdb::ReadOptions(), impl_->h(cf_locks)));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    api::Lock l;
    if (!l.ParseFromArray(it->value().data(), int(it->value().size())))
      return fail(errc::internal, "corrupt lock record");
    out.first.push_back(std::move(l));
  }
  if (!it->status().ok()) return std::unexpected(storage_error(it->status(), "reading locks"));
  return out;
}

model::result<std::vector<api::Task>> store::load_tasks() const {
  std::vector<api::Task> out;
  std::unique_ptr<rocksdb::Iterator> it(impl_->db->NewIterator(rocksdb::ReadOptions(), impl_->h(cf_tasks)));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    api::Task t;
    if (!t.ParseFromArray(it->value().data(), int(it->value().size())))
      return fail(errc::internal, "corrupt task record");
    out.push_back(std::move(t));
  }
  if (!it->status().ok()) return std::unexpected(storage_error(it->status(), "reading tasks"));
  return out;
}

model::result<std::vector<api::Task>> store::get_tasks(const std::vector<std::string>& ids) const {
  std::vector<rocksdb::Slice> keys(ids.begin(), ids.end());
  std::vector<rocksdb::ColumnFamilyHandle*> cfs(ids.size(), impl_->h(cf_tasks));
  std::vector<std::string> values;
  const auto statuses = impl_->db->MultiGet(rocksdb::ReadOptions(), cfs, keys, &values);
  std::vector<api::Task> out;
  out.reserve(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    if (statuses[i].IsNotFound()) continue;
    if (!statuses[i].ok()) return std::unexpected(storage_error(statuses[i], "reading tasks"));
    api::Task t;
    if (!t.ParseFromString(values[i])) return fail(errc::internal, "corrupt task record");
    out.push_back(std::move(t));
  }
  return out;
}

void store::update_context(update_context_request req,
                           std::function<void(model::result<api::Context>)> done) {
  impl_->enqueue(impl::pending_update{std::move(req), done}, done);
}

void store::trim(std::string context_id, uint64_t below_seq, std::function<void(model::result<trim_result>)> done) {
  impl::pending_trim t;
  t.context_id = std::move(context_id);
  t.below_seq = below_seq;
  t.done = done;
  impl_->enqueue(std::move(t), done);
}

void store::delete_context(std::string context_id, std::string deleted_by,
                           std::function<void(model::result<trim_result>)> done) {
  impl::pending_trim t;
  t.context_id = std::move(context_id);
  t.below_seq = UINT64_MAX;
  t.erase = true;
  t.deleted_by = std::move(deleted_by);
  t.done = done;
  impl_->enqueue(std::move(t), done);
}

void store::import_events(std::string context_id, std::vector<api::Event> events,
                          std::function<void(model::result<api::Context>)> done) {
  ENGRAM_ASSERT(!events.empty(), "empty import");
  for (size_t i = 1; i < events.size(); ++i)
    ENGRAM_ASSERT(events[i].seq() == events[i - 1].seq() + 1, "import with non-consecutive seqs reached storage");
  impl_->enqueue(impl::pending_import{std::move(context_id), std::move(events), done}, done);
}

model::result<std::vector<std::pair<std::string, uint64_t>>> store::trimmed_contexts() const {
  std::vector<std::pair<std::string, uint64_t>> out;
  std::unique_ptr<rocksdb::Iterator> it(impl_->db->NewIterator(rocksdb::ReadOptions(), impl_->h(cf_contexts)));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    ContextRecord rec;
    if (!rec.ParseFromArray(it->value().data(), int(it->value().size())))
      return fail(errc::internal, "corrupt context record");
    if (rec.context().first_seq() > 1) out.emplace_back(it->key().ToString(), rec.context().first_seq());
  }
  if (!it->status().ok()) return std::unexpected(storage_error(it->status(), "listing contexts"));
  return out;
}

model::result<std::optional<api::WorkUnit>> store::get_unit(std::string_view id) const {
  return *impl_->get_unit(id, false);
}

std::optional<model::result<std::optional<api::WorkUnit>>> store::get_unit_if_cached(std::string_view id,
                                                                                     size_t max_bytes) const {
  return impl_->get_unit(id, true, max_bytes);
}

std::optional<model::result<std::optional<log_position>>> store::context_position(std::string_view id,
                                                                                   bool memory_only) const {
  using found = model::result<std::optional<log_position>>;
  rocksdb::ReadOptions ro;
  if (memory_only) ro.read_tier = rocksdb::kBlockCacheTier;
  rocksdb::PinnableSlice raw;
  auto s = impl_->db->Get(ro, impl_->h(cf_contexts), id, &raw);
  if (memory_only && s.IsIncomplete()) return std::nullopt;
  if (s.IsNotFound()) return found(std::nullopt);
  if (!s.ok()) return found(std::unexpected(storage_error(s, "reading context '" + std::string(id) + "'")));
  ContextRecord rec;
  if (!rec.ParseFromArray(raw.data(), int(raw.size())))
    return found(fail(errc::internal, "corrupt record for context '" + std::string(id) + "'"));
  return found(log_position{rec.handle(), std::max<uint64_t>(1, rec.context().first_seq()),
                            rec.context().head_seq(), rec.deleted()});
}

model::result<unit_page> store::list_units(std::string_view context_id, const list_query& q) const {
  unit_page page;
  auto rec = impl_->read_record(context_id);
  if (!rec) return std::unexpected(rec.error());
  if (!*rec) return page;
  if (q.after_seq >= q.before_seq || q.before_seq - q.after_seq < 2) return page;
  const uint64_t handle = (*rec)->handle();
  log_range it(*impl_->db, impl_->h(cf_log), handle, q.after_seq + 1, handle, q.before_seq);  // upper exclusive
  api::Event ev;
  // The unit at the iterator, or nullopt for another kind of event.
  auto unit_here = [&]() -> model::result<std::optional<api::WorkUnit>> {
    const auto value = it->value();
    if (const int kind = event_kind(value); kind && kind != api::Event::kWorkUnitFieldNumber) return std::nullopt;
    if (!ev.ParseFromArray(value.data(), int(value.size()))) return fail(errc::internal, "corrupt log entry");
    if (!ev.has_work_unit()) return std::nullopt;  // other event kinds are not units
    return std::move(*ev.mutable_work_unit());
  };
  if (!q.reverse) {
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      auto u = unit_here();
      if (!u) return std::unexpected(u.error());
      if (!*u) continue;
      if (page.units.size() == q.limit) {
        page.more = true;
        break;
      }
      page.units.push_back(std::move(**u));
    }
  } else {
    // Newest first, read forward in windows that end where the last one began and
    // grow fourfold: a step back (Prev) in RocksDB's memtable is a new search of its
    // skiplist, a step forward is not. Each window is read twice: once peeking at
    // the kinds for where its units are, then parsing only the newest ones needed.
    // Seqs below `head` never change meanwhile.
    const uint64_t first = q.after_seq + 1;
    uint64_t end = std::min(q.before_seq, (*rec)->context().head_seq() + 1);  // exclusive
    uint64_t span = std::max<uint64_t>(64, 2 * uint64_t(q.limit));
    std::vector<api::WorkUnit> newer;  // oldest first: windows taken so far, later ones first
    std::vector<uint64_t> at;          // seqs of the window's units
    while (end > first && newer.size() <= q.limit) {
      const uint64_t start = end - first > span ? end - span : first;
      const std::string end_key = log_key(handle, end);
      at.clear();
      for (it->Seek(log_key(handle, start)); it->Valid() && it->key().compare(end_key) < 0; it->Next()) {
        const int kind = event_kind(it->value());
        bool is_unit = kind == api::Event::kWorkUnitFieldNumber;
        if (!kind) {  // not told by peeking: parse it
          auto u = unit_here();
          if (!u) return std::unexpected(u.error());
          is_unit = u->has_value();
        }
        if (is_unit) at.push_back(get_be64(it->key().ToStringView().substr(8)));
      }
      if (!it->status().ok()) break;
      const size_t need = q.limit + 1 - newer.size();
      std::vector<api::WorkUnit> window;
      if (!at.empty()) {
        const uint64_t from = at.size() > need ? at[at.size() - need] : at.front();
        for (it->Seek(log_key(handle, from)); it->Valid() && it->key().compare(end_key) < 0; it->Next()) {
          auto u = unit_here();
          if (!u) return std::unexpected(u.error());
          if (*u) window.push_back(std::move(**u));
        }
      }
      if (!it->status().ok()) break;
      window.insert(window.end(), std::make_move_iterator(newer.begin()), std::make_move_iterator(newer.end()));
      newer = std::move(window);
      end = start;
      span *= 4;
    }
    page.more = newer.size() > q.limit;
    for (size_t i = 0; i < newer.size() && page.units.size() < q.limit; ++i)
      page.units.push_back(std::move(newer[newer.size() - 1 - i]));
  }
  if (!it->status().ok()) return std::unexpected(storage_error(it->status(), "listing units"));
  return page;
}

model::result<std::vector<api::Event>> store::read_events(std::string_view context_id, uint64_t after_seq,
                                                          size_t limit) const {
  std::vector<api::Event> out;
  auto rec = impl_->read_record(context_id);
  if (!rec) return std::unexpected(rec.error());
  if (!*rec || after_seq == UINT64_MAX) return out;
  const uint64_t handle = (*rec)->handle();
  log_range it(*impl_->db, impl_->h(cf_log), handle, after_seq + 1, handle + 1, 0);
  for (it->SeekToFirst(); it->Valid() && out.size() < limit; it->Next()) {
    api::Event ev;
    if (!ev.ParseFromArray(it->value().data(), int(it->value().size())))
      return fail(errc::internal, "corrupt log entry");
    out.push_back(std::move(ev));
  }
  if (!it->status().ok()) return std::unexpected(storage_error(it->status(), "reading events"));
  return out;
}

model::result<std::vector<std::pair<std::string, uint64_t>>> store::context_heads(std::string_view prefix,
                                                                                   size_t limit) const {
  std::vector<std::pair<std::string, uint64_t>> out;
  std::unique_ptr<rocksdb::Iterator> it(
      impl_->db->NewIterator(rocksdb::ReadOptions(), impl_->h(cf_contexts)));
  for (it->Seek(prefix); it->Valid() && out.size() < limit; it->Next()) {
    if (!it->key().starts_with(rocksdb::Slice(prefix.data(), prefix.size()))) break;
    ContextRecord rec;
    if (!rec.ParseFromArray(it->value().data(), int(it->value().size())))
      return fail(errc::internal, "corrupt context record");
    if (rec.deleted()) continue;
    out.emplace_back(it->key().ToString(), rec.context().head_seq());
  }
  if (!it->status().ok()) return std::unexpected(storage_error(it->status(), "listing contexts"));
  return out;
}

void store::change_presence(presence_change change, std::function<void(model::result<bool>)> done) {
  impl_->enqueue(impl::pending_presence{std::move(change), done}, done);
}

model::result<std::vector<present_agent>> store::load_presence() const {
  std::vector<present_agent> out;
  std::unordered_map<uint64_t, std::string> ids;  // handle → context id (live contexts)
  std::unique_ptr<rocksdb::Iterator> it(impl_->db->NewIterator(rocksdb::ReadOptions(), impl_->h(cf_contexts)));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    ContextRecord rec;
    if (!rec.ParseFromArray(it->value().data(), int(it->value().size())))
      return fail(errc::internal, "corrupt context record");
    if (!rec.deleted()) ids[rec.handle()] = it->key().ToString();
  }
  if (!it->status().ok()) return std::unexpected(storage_error(it->status(), "listing contexts"));
  it.reset(impl_->db->NewIterator(rocksdb::ReadOptions(), impl_->h(cf_presence)));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    const auto key = it->key().ToStringView();
    PresenceRecord rec;
    if (key.size() <= 8 || !rec.ParseFromArray(it->value().data(), int(it->value().size())))
      return fail(errc::internal, "corrupt presence record");
    auto ctx = ids.find(get_be64(key));
    if (ctx == ids.end()) continue;
    out.push_back({ctx->second, std::string(key.substr(8)), rec.joined_at_ns(), rec.status()});
  }
  if (!it->status().ok()) return std::unexpected(storage_error(it->status(), "reading presence"));
  return out;
}

void store::change_fact(fact_change change, std::function<void(model::result<api::Event>)> done) {
  impl_->enqueue(impl::pending_fact{std::move(change), done}, done);
}

model::result<std::vector<api::Fact>> store::read_facts(std::string_view context_id, const fact_query& q) const {
  return impl_->facts(context_id, q);
}

void store::put_checkpoint(checkpoint_request req, std::function<void(model::result<api::Event>)> done) {
  impl_->enqueue(impl::pending_checkpoint{std::move(req), done}, done);
}

model::result<std::vector<api::Event>> store::list_checkpoints(std::string_view context_id,
                                                                std::string_view agent_id) const {
  return impl_->checkpoints(context_id, agent_id, std::nullopt, SIZE_MAX);
}

model::result<std::optional<api::Event>> store::get_checkpoint(std::string_view context_id, std::string_view agent_id,
                                                               std::optional<uint64_t> version) const {
  auto found = impl_->checkpoints(context_id, agent_id, version, 1);
  if (!found) return std::unexpected(found.error());
  if (found->empty()) return std::optional<api::Event>();
  return std::optional<api::Event>(std::move(found->front()));
}

model::result<std::optional<tool_call>> store::get_tool_call(std::string_view context_id,
                                                             std::string_view call_id) const {
  auto rec = impl_->read_record(context_id);
  if (!rec) return std::unexpected(rec.error());
  if (!*rec || (*rec)->deleted()) return std::optional<tool_call>();
  const uint64_t handle = (*rec)->handle();
  std::string raw;
  auto s = impl_->db->Get(rocksdb::ReadOptions(), impl_->h(cf_calls), call_key(handle, call_id), &raw);
  if (s.IsNotFound()) return std::optional<tool_call>();
  if (!s.ok()) return std::unexpected(storage_error(s, "reading the tool-call ledger"));
  CallRecord calls;
  if (!calls.ParseFromString(raw)) return fail(errc::internal, "corrupt tool-call record");
  auto read = [&](uint64_t seq) -> model::result<std::optional<api::WorkUnit>> {
    std::string raw;
    auto s = impl_->db->Get(rocksdb::ReadOptions(), impl_->h(cf_log), log_key(handle, seq), &raw);
    if (s.IsNotFound()) return std::optional<api::WorkUnit>();  // removed by retention meanwhile
    if (!s.ok()) return std::unexpected(storage_error(s, "reading a tool call"));
    api::Event ev;
    if (!ev.ParseFromString(raw) || !ev.has_work_unit()) return fail(errc::internal, "corrupt tool-call unit");
    return std::optional<api::WorkUnit>(std::move(*ev.mutable_work_unit()));
  };
  tool_call out;
  auto call = read(calls.call_seq());
  if (!call) return std::unexpected(call.error());
  if (!*call) return std::optional<tool_call>();
  out.call = std::move(**call);
  if (calls.result_seq()) {
    auto result = read(calls.result_seq());
    if (!result) return std::unexpected(result.error());
    if (*result) out.result = std::move(**result);
  }
  return std::optional<tool_call>(std::move(out));
}

model::result<uint64_t> store::log_head(std::string_view id) const {
  auto rec = impl_->read_record(id);
  if (!rec) return std::unexpected(rec.error());
  return *rec ? (*rec)->context().head_seq() : 0;
}

model::result<std::optional<api::Context>> store::get_context(std::string_view id) const {
  auto rec = impl_->read_record(id);
  if (!rec) return std::unexpected(rec.error());
  if (!*rec || (*rec)->deleted()) return std::optional<api::Context>();
  return std::optional<api::Context>(std::move(*(*rec)->mutable_context()));
}

std::string store::identity() const {
  std::string id;
  if (!impl_->db->GetDbIdentity(id).ok()) id.clear();
  return id;
}

model::result<context_page> store::list_contexts(std::string_view after_id, size_t limit,
                                                 std::string_view prefix) const {
  context_page page;
  std::unique_ptr<rocksdb::Iterator> it(
      impl_->db->NewIterator(rocksdb::ReadOptions(), impl_->h(cf_contexts)));
  it->Seek(after_id < prefix ? prefix : after_id);
  if (it->Valid() && !after_id.empty() && it->key() == rocksdb::Slice(after_id)) it->Next();
  for (; it->Valid() && it->key().starts_with(prefix); it->Next()) {
    ContextRecord rec;
    if (!rec.ParseFromArray(it->value().data(), int(it->value().size())))
      return fail(errc::internal, "corrupt context record");
    if (rec.deleted()) continue;
    if (page.contexts.size() == limit) {
      page.more = true;
      break;
    }
    page.contexts.push_back(std::move(*rec.mutable_context()));
  }
  if (!it->status().ok()) return std::unexpected(storage_error(it->status(), "listing contexts"));
  return page;
}

void store::put_vectors(vector_write write, std::function<void(model::status)> done) {
  impl_->enqueue(impl::pending_vectors{std::move(write), done}, done);
}

model::result<std::vector<stored_vector>> store::read_vectors(uint64_t after_vseq, size_t limit) const {
  std::vector<stored_vector> out;
  if (after_vseq == UINT64_MAX) return out;
  std::string start;
  put_be64(start, after_vseq + 1);
  std::unique_ptr<rocksdb::Iterator> it(impl_->db->NewIterator(rocksdb::ReadOptions(), impl_->h(cf_vectors)));
  for (it->Seek(start); it->Valid() && out.size() < limit; it->Next()) {
    VectorRecord rec;
    if (it->key().size() != 8 || !rec.ParseFromArray(it->value().data(), int(it->value().size())))
      return fail(errc::internal, "corrupt vector record");
    out.push_back({get_be64(it->key().ToStringView()), std::move(*rec.mutable_unit_id()),
                   std::move(*rec.mutable_embedding())});
  }
  if (!it->status().ok()) return std::unexpected(storage_error(it->status(), "reading vectors"));
  return out;
}

uint64_t store::last_vector_seq() const { return impl_->last_vseq.load(); }

model::status store::for_each_vector_key(
    const std::function<void(std::span<const uint8_t, 16> unit, std::string_view model, uint64_t vseq)>& fn) const {
  std::unique_ptr<rocksdb::Iterator> it(impl_->db->NewIterator(rocksdb::ReadOptions(), impl_->h(cf_vector_keys)));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    const auto key = it->key().ToStringView();
    if (key.size() <= 16 || it->value().size() != 8) return fail(errc::internal, "corrupt vector key");
    fn(std::span<const uint8_t, 16>(reinterpret_cast<const uint8_t*>(key.data()), 16), key.substr(16),
       get_be64(it->value().ToStringView()));
  }
  if (!it->status().ok()) return std::unexpected(storage_error(it->status(), "reading vector keys"));
  return {};
}

model::result<std::optional<api::Embedding>> store::get_vector(std::string_view unit_id) const {
  const auto parsed = model::uuid::parse(unit_id);
  if (!parsed) return std::optional<api::Embedding>();
  const auto prefix = uuid_bytes(*parsed);
  std::unique_ptr<rocksdb::Iterator> it(
      impl_->db->NewIterator(rocksdb::ReadOptions(), impl_->h(cf_vector_keys)));
  it->Seek(prefix);
  if (!it->status().ok()) return std::unexpected(storage_error(it->status(), "reading vector keys"));
  if (!it->Valid() || !it->key().starts_with(prefix)) return std::optional<api::Embedding>();
  std::string raw;
  auto s = impl_->db->Get(rocksdb::ReadOptions(), impl_->h(cf_vectors), it->value(), &raw);
  if (!s.ok()) return std::unexpected(storage_error(s, "reading a vector"));
  VectorRecord rec;
  if (!rec.ParseFromString(raw)) return fail(errc::internal, "corrupt vector record");
  return std::optional<api::Embedding>(std::move(*rec.mutable_embedding()));
}

std::string store::backup_root() const {
  if (!impl_->opts.backup_dir.empty()) return impl_->opts.backup_dir;
  std::filesystem::path data(impl_->opts.data_dir);
  if (!data.has_filename()) data = data.parent_path();  // "./data/" names "./data"
  return data.string() + "-backups";
}

model::result<std::string> store::backup(std::string_view dir) const {
  namespace fs = std::filesystem;
  std::error_code ec;
  // Paths that do not exist yet keep a trailing separator through weakly_canonical.
  auto clean = [](fs::path p) { return p.has_filename() || !p.has_parent_path() ? p : p.parent_path(); };
  const fs::path root = clean(fs::weakly_canonical(fs::absolute(backup_root(), ec), ec));
  if (ec) return fail(errc::internal, "backup directory " + backup_root() + ": " + ec.message());
  const fs::path asked(dir);
  const fs::path target = clean(fs::weakly_canonical(asked.is_absolute() ? asked : root / asked, ec));
  if (ec) return fail(errc::invalid_argument, "backup dir '" + std::string(dir) + "': " + ec.message());
  const auto [r, t] = std::mismatch(root.begin(), root.end(), target.begin(), target.end());
  if (r != root.end() || t == target.end())
    return fail(errc::invalid_argument, "backup dir '" + std::string(dir) + "' must lie inside the backup directory " +
                                            root.string() + " (storage.backup_dir)");
  if (fs::exists(target, ec))
    return fail(errc::conflict, "backup dir " + target.string() + " already exists; name a new one");
  fs::create_directories(target.parent_path(), ec);
  if (ec) return fail(errc::internal, "creating " + target.parent_path().string() + ": " + ec.message());
  rocksdb::Checkpoint* raw = nullptr;
  auto s = rocksdb::Checkpoint::Create(impl_->db.get(), &raw);
  std::unique_ptr<rocksdb::Checkpoint> checkpoint(raw);
  if (s.ok()) s = checkpoint->CreateCheckpoint(target.string());
  if (!s.ok() && fs::exists(target, ec))  // another backup took the name meanwhile
    return fail(errc::conflict, "backup dir " + target.string() + " already exists; name a new one");
  if (!s.ok()) return std::unexpected(storage_error(s, "creating a backup in " + target.string()));
  return target.string();
}

model::result<std::vector<std::pair<std::string, uint32_t>>> store::vector_models() const {
  std::vector<std::pair<std::string, uint32_t>> out;
  std::unique_ptr<rocksdb::Iterator> it(
      impl_->db->NewIterator(rocksdb::ReadOptions(), impl_->h(cf_vector_models)));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    VectorModel m;
    if (!m.ParseFromArray(it->value().data(), int(it->value().size())))
      return fail(errc::internal, "corrupt vector model record");
    out.emplace_back(it->key().ToString(), m.dimension());
  }
  if (!it->status().ok()) return std::unexpected(storage_error(it->status(), "reading vector models"));
  return out;
}

model::result<uint64_t> store::vector_cursor(std::string_view model, std::string_view context_id) const {
  std::string v;
  auto s = impl_->db->Get(rocksdb::ReadOptions(), impl_->h(cf_embed_cursors), cursor_key(model, context_id), &v);
  if (s.IsNotFound()) return uint64_t(0);
  if (!s.ok() || v.size() != 8) return std::unexpected(storage_error(s, "reading an embedder cursor"));
  return get_be64(v);
}

void store::close() { impl_->close(); }

}  // namespace engram::storage
