#pragma once
// The use cases every front end (REST, streams, SDK, CLI) reaches: work units,
// contexts, leases, search, streams (DESIGN.md §1). Thread-safe; see README.md
// for which thread runs each completion.

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/options.hpp"
#include "engine/packet.hpp"
#include "engine/stream.hpp"
#include "locks/manager.hpp"
#include "model/clock.hpp"
#include "model/codec.hpp"
#include "model/error.hpp"
#include "model/ids.hpp"
#include "search/index.hpp"
#include "search/query.hpp"
#include "storage/store.hpp"

namespace prometheus {
class Registry;
}

namespace engram::engine {

class drafts;
class presence;
class tail_cache;
class tasks;

struct idempotency {
  std::string key;          // empty: the request is not idempotent
  std::string fingerprint;  // identifies the request body for that key
};

struct list_request {
  std::optional<size_t> limit;
  std::string cursor;  // opaque, from a previous page's next_cursor
  bool reverse = false;
  uint64_t after_seq = 0;
  bool with_text = false;  // each unit also carries its payload as "text" (model::append_text_json)
};

struct units_page {
  // The units as one JSON array of unit objects (model::append_unit_json), in
  // page order: pages are rendered where they are read, or come rendered from
  // the tail cache (engine/tail_cache.hpp).
  std::string units_json;
  size_t count = 0;
  std::string next_cursor;  // empty on the last page
  // False when no context has this id (v3 answers such a listing with 200 and an
  // empty page; the marker lets a client tell a misspelt id from a quiet context).
  bool context_exists = true;
};

// A slice of one context's log: every kind of event (units, context updates,
// lease events) in seq order.
struct events_page {
  std::vector<api::Event> events;
  uint64_t head_seq = 0;  // of the context when the page was read
  bool more = false;      // events after the last one on this page existed
};

struct contexts_page {
  std::vector<api::Context> contexts;
  std::string next_cursor;
};

// A unit as read, with its stored embedding when one was asked for and exists.
struct unit_read {
  api::WorkUnit unit;
  std::optional<api::Embedding> embedding;
};

template <class T>
using reply = std::function<void(model::result<T>)>;

class engine {
 public:
  // `router` (may be null) is where streams subscribe; it must outlive the engine.
  engine(options opts, std::shared_ptr<const model::clock> clock, router::router* router = nullptr,
         prometheus::Registry* metrics = nullptr);
  ~engine();  // finishes queued reads

  // Called once recovery has opened the store; until then every use case answers
  // `unavailable` and ready() is false. The store must outlive the engine's use:
  // detach (attach(nullptr)) and drain_reads() before closing it.
  void attach(storage::store* store);
  bool ready() const { return store_.load(std::memory_order_acquire) != nullptr; }
  // The search index, once open (null: search answers `unavailable`).
  void attach_search(search::index* index);
  // Null while search is not attached.
  std::optional<search::index_status> search_status() const;
  // The lease manager, once recovered (null: lock calls answer `unavailable`).
  void attach_locks(locks::manager* locks);
  // Presence, once recovered (null: presence calls answer `unavailable`).
  void attach_presence(presence* p) { presence_.store(p, std::memory_order_release); }
  model::result<presence*> presence_manager() const;
  // Tasks, once recovered (null: task calls answer `unavailable`).
  void attach_tasks(tasks* t) { tasks_.store(t, std::memory_order_release); }
  model::result<tasks*> task_manager() const;
  // Drafts (partial output, in memory): there whenever streaming is (a router).
  model::result<drafts*> draft_registry() const;
  // Waits for every queued read to finish; later reads answer `unavailable`
  // (except what get_unit answers from memory, which never uses the pool).
  void drain_reads();

  // ---- work units ---------------------------------------------------------------
  using append_done = std::function<void(model::result<storage::append_result>)>;
  // Appends units (already validated by the codec) to one context, atomically.
  // `done` runs on the store's completion executor, or in relaxed mode possibly
  // on this thread before append() returns (storage::store::append).
  void append(std::string context_id, std::vector<api::WorkUnit> units, idempotency idem,
              append_done done, std::vector<storage::fence> fences = {});

  // Reads run on the read pool; `done` runs on a read thread, except that
  // get_unit answers at once, on the caller's thread, for a unit of at most 16 KiB
  // that storage has in memory (and never waits for the disk there). `readable`, when
  // set, answers whether the caller may read a context: a unit in another is
  // reported as not found (before its embedding is read).
  void get_unit(std::string id, bool with_embedding, std::function<bool(std::string_view)> readable,
                reply<unit_read> done) const;
  void list_units(std::string context_id, list_request req, reply<units_page> done) const;
  // Events with seq > after_seq; not_found when the context does not exist.
  void list_events(std::string context_id, uint64_t after_seq, std::optional<size_t> limit,
                   reply<events_page> done) const;

  // ---- checkpoints (storage::store::put_checkpoint and friends) ----
  // `keep` comes from the options; `done` gets the Checkpoint event.
  void put_checkpoint(storage::checkpoint_request req, reply<api::Event> done);
  // not_found when the agent has none (or that version is no longer kept).
  void get_checkpoint(std::string context_id, std::string agent_id, std::optional<uint64_t> version,
                      reply<api::Event> done) const;
  void list_checkpoints(std::string context_id, std::string agent_id, reply<std::vector<api::Event>> done) const;

  // ---- facts (storage::store::change_fact and read_facts) ----
  // `done` gets the fact_set / fact_retracted event.
  void change_fact(storage::fact_change change, reply<api::Event> done);
  // Fact versions as the log stood at `as_of_seq`: the query's, at most the head;
  // the head when the query named none (so a repeated read at it gives the same).
  struct facts_read {
    std::vector<api::Fact> facts;
    uint64_t as_of_seq = 0;
  };
  void read_facts(std::string context_id, storage::fact_query q, reply<facts_read> done) const;

  // A tool call and its result (storage::store::get_tool_call); not_found when the
  // context has no such call.
  void get_tool_call(std::string context_id, std::string call_id, reply<storage::tool_call> done) const;

  // ---- the memory packet (packet.hpp) ----
  // Gathers what the packet may show as the log stood at the request's as_of_seq
  // (at most the head; the head, read first, when it names none) and assembles it.
  // not_found when the context does not exist. Runs on the read pool.
  void packet(packet_request req, reply<packet_output> done) const;

  // ---- contexts -----------------------------------------------------------------
  void get_context(std::string id, reply<api::Context> done) const;
  // storage::store::backup on the read pool; `done` gets the backup's absolute path.
  void backup(std::string dir, reply<std::string> done) const;
  void patch_context(std::string context_id, model::context_patch patch, reply<api::Context> done);
  // storage::store::import_events (events already parsed and checked to be
  // consecutive); `done` gets the context after the import.
  void import_events(std::string context_id, std::vector<api::Event> events, reply<api::Context> done);
  // storage::store::delete_context; `done` runs once every event is gone.
  void delete_context(std::string context_id, std::string deleted_by, reply<storage::trim_result> done);
  // Contexts in id order after `cursor`, only ids starting with `prefix` when set.
  void list_contexts(std::string cursor, std::optional<size_t> limit, std::string prefix,
                     reply<contexts_page> done) const;

  // ---- leases (DESIGN.md §6) ----------------------------------------------------
  void acquire_locks(locks::acquire_request req, locks::manager::locks_done done);
  void renew_lock(std::string resource, std::string agent, std::string lock_id, std::chrono::milliseconds ttl,
                  locks::manager::lock_done done);
  void release_lock(std::string resource, std::string agent, std::string lock_id, std::string by,
                    std::function<void(model::status)> done);
  // In-memory reads: no storage access.
  model::result<api::Lock> get_lock(const std::string& resource) const;
  model::result<std::vector<api::Lock>> list_locks(std::string_view agent, std::string_view prefix) const;

  // ---- search -------------------------------------------------------------------
  // Keyword, semantic or hybrid search over all history. `limit` defaults and is
  // capped like list pages; `done` runs on a search thread.
  void search(search::query q, std::optional<size_t> limit, reply<search::results> done) const;

  // ---- streams ------------------------------------------------------------------
  // Opens a live subscription (see stream.hpp). `notify` is called when the stream
  // has events to poll.
  model::result<std::shared_ptr<stream>> open_stream(stream_request req, std::function<void()> notify);
  // stream::poll on the read pool (a catch-up reads storage); `done` runs on a read
  // thread. Never refused for a full queue: a stream has at most one poll in flight.
  void poll_stream(std::shared_ptr<stream> s, size_t max_bytes, reply<std::vector<router::event_ptr>> done) const;

  const options& opts() const { return opts_; }

 private:
  struct read_pool;

  model::result<storage::store*> store() const;
  model::result<locks::manager*> locks() const;
  model::result<size_t> page_limit(std::optional<size_t> requested) const;
  // Runs `job` on the read pool; `unavailable` (and `job` not run) when `bounded`
  // and max_queued_reads REST reads wait already, or once drain_reads() began.
  model::status submit_read(std::function<void()> job, bool bounded) const;

  model::result<unit_read> read_unit(std::string_view id, bool with_embedding,
                                     const std::function<bool(std::string_view)>& readable) const;
  model::result<storage::list_query> page_query(const list_request& req) const;
  model::result<units_page> read_units(std::string_view context_id, const list_request& req) const;
  model::result<contexts_page> read_contexts(std::string_view cursor, std::optional<size_t> limit,
                                             std::string_view prefix) const;

  options opts_;
  std::shared_ptr<const model::clock> clock_;
  router::router* router_;
  stream_counters stream_counters_;
  std::atomic<storage::store*> store_{nullptr};
  std::atomic<search::index*> search_{nullptr};
  std::atomic<locks::manager*> locks_{nullptr};
  std::atomic<presence*> presence_{nullptr};
  std::atomic<tasks*> tasks_{nullptr};
  std::unique_ptr<drafts> drafts_;  // with a router
  std::unique_ptr<read_pool> reads_;
  std::unique_ptr<tail_cache> tails_;  // null: options::tail_cache_bytes is 0
  mutable model::uuid_v7_generator ids_;
};

}  // namespace engram::engine
