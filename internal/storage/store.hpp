#pragma once
// The durable context logs on RocksDB (DESIGN.md §3).
//
// Column families and keys (all integers big-endian, so byte order = numeric order):
//
//   log          [handle:8][seq:8]      → api::Event      one gap-free log per context
//                                                        (from its first_seq to head_seq)
//   unit_ids     [uuid:16]              → [handle:8][seq:8]
//   contexts     <context id bytes>     → ContextRecord   (handle, Context with head_seq)
//   idempotency  [handle:8][key bytes]  → IdempotencyRecord
//   counters     "next_context_handle"  → [u64:8]
//                "fencing_token"        → [u64:8]   highest fencing token ever granted
//                "next_vseq"            → [u64:8]   the next vseq to hand out
//   locks        <resource path bytes>  → api::Lock  live leases
//   vectors      [vseq:8]               → VectorRecord   every embedding, in commit order
//   vector_keys  [uuid:16][model bytes] → [vseq:8]
//   vector_models <model name>          → VectorModel    the model's dimension
//   embed_cursors <model>\0<context id> → [seq:8]        how far the embedder has read
//   calls        [handle:8][call id]    → CallRecord     the tool-call ledger: call and result seqs
//   checkpoints  [handle:8][agent]\0[version:8] → [seq:8]  the kept versions of agents' checkpoints
//                [handle:8][agent]\0   → [version:8]      the agent's latest version
//   presence     [handle:8][agent]      → PresenceRecord the agents present (joined, not left)
//   tasks        <task id bytes>        → api::Task      every task (engine::tasks)
//   facts        [handle:8][key]\0[seq:8] → api::Fact     every version of every fact,
//                                                        by key, then the seq that set it
//
// A context's numeric handle is assigned once when it is created, so a context's log
// is one contiguous key range: listing never scans another context, and ids such as
// "a" and "a:b" can never collide.
//
// Owned by the app's wiring. One committer orders and commits every write (group
// commit: README.md): its thread, whose completions run on the executor given to
// open(), never on that thread; or, in relaxed mode, the thread calling append()
// when nothing else is in flight, whose completion runs on that thread before
// append() returns. Reads are thread-safe and never wait for the committer.

#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engram.pb.h"
#include "model/clock.hpp"
#include "model/error.hpp"
#include "storage/options.hpp"

namespace prometheus {
class Registry;
}

namespace engram::storage {

// Receives committed events (from the committer, in commit order; per context in
// seq order; on its thread, or on a thread committing a relaxed append inline).
// Implementations must return quickly and must not call the store's write methods
// synchronously.
class publisher {
 public:
  virtual ~publisher() = default;
  virtual void publish(const std::vector<std::shared_ptr<const api::Event>>& events) = 0;
  // Embeddings were committed; `last_vseq` is the newest (see read_vectors).
  virtual void vectors_committed(uint64_t last_vseq) { (void)last_vseq; }
  // Events of `context_id` before `first_seq` were removed (retention or deletion),
  // with these units (their ids, vectors and idempotency records are gone too).
  virtual void removed(const std::string& context_id, uint64_t first_seq, const std::vector<std::string>& unit_ids) {
    (void)context_id, (void)first_seq, (void)unit_ids;
  }
};

// A lease the writer claims to hold ("fence" on a work unit): the append commits only
// if the fence checker accepts it at the moment the append is ordered.
struct fence {
  std::string resource;
  uint64_t token = 0;
};

struct append_request {
  std::string context_id;
  // Units with id, agent_id, type, meta, payload and relationships set; the
  // committer sets context_id, seq, ts_ns and idempotency_key. A unit's
  // `embedding` (if any) is stored in the vector column families, atomically with
  // the unit; the append fails (invalid_argument) when its dimension differs from
  // the one its model already has.
  std::vector<api::WorkUnit> units;
  std::string idempotency_key;  // empty: none
  std::string fingerprint;      // identifies the request for idempotent retries
  std::vector<fence> fences;
};

// A task's new state, written with the lease change that caused it; `event_kind`
// (created, claimed, …) logs a TaskEvent in the task's context, empty writes the
// record only.
struct task_write {
  api::Task task;
  std::string event_kind;
};

// Lease changes, committed atomically with the events they put into context logs.
struct lock_change {
  std::vector<api::Lock> puts;        // live leases to write (by resource_path)
  std::vector<std::string> deletes;   // resource paths no longer held
  uint64_t fencing_high = 0;          // persist the token counter when non-zero
  std::vector<api::LockEvent> events; // logged in their lock's context_id, else in default_context
  std::string default_context;        // empty: events of leases without a context are not logged
  std::vector<task_write> tasks;      // in order; their events come after the lease events
};

struct append_result {
  std::vector<api::WorkUnit> units;
  bool replayed = false;  // true when an earlier identical request's result is returned
};

// Upsert a context: the mutator changes a copy of the current state (a fresh
// context if none exists); the new state is logged as a ContextUpdated event.
struct update_context_request {
  std::string context_id;
  std::function<void(api::Context&)> mutate;
};

// Embeddings computed later for units already in the logs (by the embedder),
// committed together with the embedder's read positions for `cursor_model`. A unit
// that already has a vector (of any model) keeps it: its new one is skipped.
struct vector_write {
  struct item {
    std::string unit_id;
    api::Embedding embedding;
  };
  std::vector<item> vectors;
  std::string cursor_model;
  std::vector<std::pair<std::string, uint64_t>> cursors;  // context → last seq considered
};

// Removal of a context's oldest events (retention) or of the whole context.
struct trim_result {
  uint64_t removed_events = 0;
  uint64_t first_seq = 0;  // the oldest event left (for a deletion: the ContextDeleted event)
};

// A TOOL_CALL unit with a call_id and the TOOL_RESULT that answered it.
struct tool_call {
  api::WorkUnit call;
  std::optional<api::WorkUnit> result;
};

// Saves an agent's checkpoint in a context as a new version (a Checkpoint event).
struct checkpoint_request {
  std::string context_id;
  std::string agent_id;
  uint64_t cursor_seq = 0;  // at most the context's head_seq
  std::string state_json;
  // The version this save replaces (If-Match): precondition_failed when it is not
  // the latest; without it, precondition_required when a version exists.
  std::optional<uint64_t> if_match;
  size_t keep = 20;  // versions kept readable (older ones' index entries go)
};

// An agent joins (agent_joined) or leaves (agent_left) a context. A join of an agent
// already present, or a leave of one absent, logs nothing.
struct presence_change {
  std::string context_id;
  std::string agent_id;
  bool join = true;
  std::string reason;  // leave: "timeout" or "left"
  std::string status;  // join
};

// Sets a fact (a fact_set event; the active version of the key, if any, is
// superseded in the same commit) or retracts the active one (fact_retracted;
// not_found when there is none).
struct fact_change {
  std::string context_id;
  api::Fact fact;  // key, and for a set: value_json, validity, sources, confidence, status, agent_id
  bool retract = false;
  std::string retracted_by;  // a retract's agent
};

// Which fact versions to read: by key prefix; as the log stood at `as_of_seq`
// (versions set by then and not ended by then); valid at `valid_at_ns`; all
// versions rather than the active ones.
struct fact_query {
  std::string prefix;
  std::optional<std::string> key;  // exactly this key's versions (the prefix is then ignored)
  std::optional<uint64_t> as_of_seq;
  std::optional<int64_t> valid_at_ns;
  bool include_superseded = false;
  size_t limit = 1000;
};

struct present_agent {
  std::string context_id;
  std::string agent_id;
  int64_t joined_at_ns = 0;
  std::string status;
};

struct stored_vector {
  uint64_t vseq = 0;  // position in the global order of stored vectors (from 1; removals leave gaps)
  std::string unit_id;
  api::Embedding embedding;
};

struct list_query {
  uint64_t after_seq = 0;              // exclusive lower bound
  uint64_t before_seq = UINT64_MAX;    // exclusive upper bound
  size_t limit = 100;
  bool reverse = false;                // newest first
};

struct unit_page {
  std::vector<api::WorkUnit> units;
  bool more = false;  // another unit exists beyond the last one returned
};

// Where a context's log stands, from its record: every event with first_seq <=
// seq <= head_seq exists (the log is gap-free and events are immutable), none
// other does. What a cache of the newest units checks itself against.
struct log_position {
  uint64_t handle = 0;     // the context's log (never reused for another id)
  uint64_t first_seq = 1;  // lower seqs were removed (retention, deletion)
  uint64_t head_seq = 0;
  bool deleted = false;
};

struct context_page {
  std::vector<api::Context> contexts;
  bool more = false;
};

class store {
 public:
  // Runs a completion off the committer thread: on I/O thread `home`
  // (model::this_io_thread of the thread that made the request) when it is one,
  // else anywhere (-1). Appends made on an I/O thread are answered there; a group's
  // answers for one thread come in one call. Null at open(): completions run on
  // the committer (tests).
  using executor = std::function<void(int home, std::function<void()> f)>;

  // Opens (creating if needed) the database and replays the WAL: this *is* crash
  // recovery. `metrics` may be null.
  static model::result<std::unique_ptr<store>> open(const options& opts,
                                                    prometheus::Registry* metrics,
                                                    std::shared_ptr<const model::clock> clock,
                                                    executor completions);
  ~store();  // close()s if needed
  store(const store&) = delete;
  store& operator=(const store&) = delete;

  // Must be set before the first write; the publisher must outlive the store.
  void set_publisher(publisher* p);

  // `done` may run before append() returns, on the calling thread (relaxed mode:
  // see above); callers must not hold a lock `done` takes.
  void append(append_request req, std::function<void(model::result<append_result>)> done);
  void update_locks(lock_change change, std::function<void(model::status)> done);

  // Checks an append's fence when the committer stages it (see publisher for the
  // thread); an error rejects the append. Must not call the store's write methods.
  using fence_checker = std::function<model::status(const fence&)>;
  void set_fence_checker(fence_checker check);

  // Every task (recovery of engine::tasks).
  model::result<std::vector<api::Task>> load_tasks() const;
  // These tasks as committed, in the order asked (missing ones are left out).
  model::result<std::vector<api::Task>> get_tasks(const std::vector<std::string>& ids) const;
  // Every persisted lease and the fencing counter (recovery of the lock manager).
  model::result<std::pair<std::vector<api::Lock>, uint64_t>> load_locks() const;
  void update_context(update_context_request req,
                      std::function<void(model::result<api::Context>)> done);

  // Removes the context's events with seq < below_seq, keeping at least the newest
  // event, and their units' ids and vectors (an idempotent retry of a request whose
  // units were removed is refused: its record stays until its TTL). Large removals are
  // committed in steps of a few thousand events (each step atomic, oldest first), so
  // other writes are never held up for long; `done` runs after the last step. A
  // context that does not exist (or is deleted) removes nothing.
  void trim(std::string context_id, uint64_t below_seq, std::function<void(model::result<trim_result>)> done);
  // Deletes the context: removes every event (in steps, like trim, including
  // events appended while it runs), then its idempotency records and embedder
  // cursors, and logs a ContextDeleted event; the record stays as a tombstone so
  // the id's seqs never restart. not_found when the context does not exist.
  void delete_context(std::string context_id, std::string deleted_by,
                      std::function<void(model::result<trim_result>)> done);

  // Appends events exported from another server (GET /contexts/{id}/events) to the
  // context's log as they were: their seqs, unit ids and times. The events must
  // have consecutive seqs, all of this context; the first must be the context's
  // head_seq + 1 (conflict otherwise), except for a context that does not exist,
  // which starts at the first event's seq (first_seq, when it is not 1). A unit id
  // that exists already is a conflict; nothing is written then. The context's state
  // becomes that of its last context_updated event. `done` gets the context.
  void import_events(std::string context_id, std::vector<api::Event> events,
                     std::function<void(model::result<api::Context>)> done);

  // Every context whose first events were removed (deleted ones included), with its
  // first_seq: what derived indexes check at start-up.
  model::result<std::vector<std::pair<std::string, uint64_t>>> trimmed_contexts() const;

  model::result<std::optional<api::WorkUnit>> get_unit(std::string_view id) const;
  // get_unit from memory only (the memtables and the block cache: RocksDB's
  // kBlockCacheTier), so it never waits for the disk. nullopt when the answer
  // needs a disk read, or the unit's stored event is over `max_bytes` (it is then
  // not parsed): then call get_unit off the I/O threads.
  std::optional<model::result<std::optional<api::WorkUnit>>> get_unit_if_cached(std::string_view id,
                                                                                 size_t max_bytes) const;
  model::result<unit_page> list_units(std::string_view context_id, const list_query& q) const;
  // The context's log_position; inner nullopt when no context has the id. With
  // memory_only (RocksDB's kBlockCacheTier: never a disk read), the outer nullopt
  // says the record is not in memory; otherwise the outer optional is always set.
  std::optional<model::result<std::optional<log_position>>> context_position(std::string_view id,
                                                                            bool memory_only) const;
  // Every event (any kind) of one context with seq > after_seq, oldest first, at most
  // `limit`. What stream catch-up replays.
  model::result<std::vector<api::Event>> read_events(std::string_view context_id, uint64_t after_seq,
                                                     size_t limit) const;

  // Ids and head seqs of the contexts whose id starts with `prefix` (all when
  // empty), in id order, at most `limit`. Deleted contexts are left out here, in
  // get_context and in list_contexts; read_events still reads their log.
  model::result<std::vector<std::pair<std::string, uint64_t>>> context_heads(std::string_view prefix,
                                                                              size_t limit) const;

  model::result<std::optional<api::Context>> get_context(std::string_view id) const;
  // `done` gets true when an event was logged.
  void change_presence(presence_change change, std::function<void(model::result<bool>)> done);
  // Every agent present in a context (at start-up: what the presence manager resumes).
  model::result<std::vector<present_agent>> load_presence() const;

  // `done` gets the fact_set / fact_retracted event. A source seq beyond the head
  // is invalid_argument.
  void change_fact(fact_change change, std::function<void(model::result<api::Event>)> done);
  // Fact versions by key, then seq, at most q.limit + 1 (one more than asked: the
  // caller can say that more exist); a version read as of a seq before it ended
  // shows as current (superseded_at_seq 0). not_found for a context that does not exist.
  model::result<std::vector<api::Fact>> read_facts(std::string_view context_id, const fact_query& q) const;

  void put_checkpoint(checkpoint_request req, std::function<void(model::result<api::Event>)> done);
  // The agent's checkpoint in the context (the latest, or `version`); nullopt when
  // there is none (or that version is no longer kept).
  model::result<std::optional<api::Event>> get_checkpoint(std::string_view context_id, std::string_view agent_id,
                                                          std::optional<uint64_t> version) const;
  // Every kept version, newest first.
  model::result<std::vector<api::Event>> list_checkpoints(std::string_view context_id, std::string_view agent_id) const;

  // A tool call of the context's ledger (README, Tool calls) and its result, if any;
  // nullopt when the context has no call with that id.
  model::result<std::optional<tool_call>> get_tool_call(std::string_view context_id, std::string_view call_id) const;
  // The last seq of the context's log, a deleted context's included (0: no log):
  // where a stream without a cursor starts.
  model::result<uint64_t> log_head(std::string_view id) const;

  void put_vectors(vector_write write, std::function<void(model::status)> done);
  // Stored vectors with vseq > after_vseq, oldest first, at most `limit`.
  model::result<std::vector<stored_vector>> read_vectors(uint64_t after_vseq, size_t limit) const;
  // The newest vseq handed out (0: none). Vseqs are never handed out twice, so this
  // stays where it was when the newest vectors are removed.
  uint64_t last_vector_seq() const;
  // Every stored vector's unit (its 16 UUID bytes), model and vseq, in unit order:
  // the vector_keys column family alone, no vector is read. What a vector snapshot
  // is checked against for removals made after it was written.
  model::status for_each_vector_key(
      const std::function<void(std::span<const uint8_t, 16> unit, std::string_view model, uint64_t vseq)>& fn) const;
  // The unit's vector (its first model's, should it have several); nullopt: none.
  model::result<std::optional<api::Embedding>> get_vector(std::string_view unit_id) const;
  // A consistent copy of the whole database (every column family, as of one point
  // in the commit order) in a new directory `dir`, resolved inside the backup
  // directory (options::backup_dir); a relative path is taken from there and an
  // absolute one must lie within it. Hard links where the filesystem allows, so it is
  // fast and small; writes go on meanwhile. Returns the absolute path. A server
  // started on that directory is the restore (the search index rebuilds itself).
  model::result<std::string> backup(std::string_view dir) const;
  // The resolved backup directory.
  std::string backup_root() const;

  // Every embedding model with its dimension.
  model::result<std::vector<std::pair<std::string, uint32_t>>> vector_models() const;
  // The embedder's position in a context for a model (0: nothing read yet).
  model::result<uint64_t> vector_cursor(std::string_view model, std::string_view context_id) const;
  // Contexts in id order, starting after `after_id` (exclusive; empty = from the
  // start); only ids starting with `prefix` when it is set.
  model::result<context_page> list_contexts(std::string_view after_id, size_t limit,
                                            std::string_view prefix = {}) const;

  // RocksDB's identity of this database (stable across restarts, new for a new
  // database): lets derived indexes notice that they were built from another store.
  std::string identity() const;

  // Stops accepting writes, commits everything queued, syncs the WAL and closes the
  // database. Idempotent.
  void close();

  struct impl;

 private:
  explicit store(std::unique_ptr<impl> p);
  std::unique_ptr<impl> impl_;
};

}  // namespace engram::storage
