#pragma once
// One live subscription to a set of contexts, with lossless resume (DESIGN.md §4).
//
// State machine, per stream (all under one mutex):
//
//   catching_up ──(every context read up to its head, no event arrived meanwhile)──► live
//        ▲                                                                              │
//        └────────(gap in seq, or the byte-bounded queue is full)────────────────────────┘
//
// * live: the router's deliver() appends an event to the queue iff its seq is exactly
//   the next one this stream needs for that context and the queue has room. A seq at
//   or below the cursor is a duplicate and is dropped.
// * catching_up: deliver() only marks the event's context stale; the transport's
//   poll() then reads that context from storage from the cursor, in bounded chunks.
//   A context counts as caught up only if no live event arrived for it while it was
//   being read (a generation counter), so nothing published during a read is lost.
//
// Hence every subscriber sees each seq of each context exactly once, in order, and a
// slow subscriber costs at most its queue bound plus one chunk of memory: it falls
// back to reading storage instead of holding events. If it falls more than
// `max_lag` events behind it is told to go (lagging()), with its cursor intact.
//
// Draft messages (drafts.hpp) have no seq and bypass the cursor: they are queued in
// either state. The stream starts with a snapshot of every open draft it matches
// (taken under its mutex right after subscribing, so a delta is either in the
// snapshot or delivered after it) and then takes each draft's deltas above the
// index it has. A delta that finds the queue full is dropped and that draft is
// owed a fresh snapshot, sent with the next poll: a slow subscriber sees every
// draft whole, possibly in fewer, larger steps. A draft's end is always queued.

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/options.hpp"
#include "model/error.hpp"
#include "router/router.hpp"

namespace engram::storage {
class store;
}
namespace prometheus {
class Counter;
class Gauge;
}  // namespace prometheus

namespace engram::engine {

class drafts;

struct stream_request {
  std::vector<std::string> contexts;  // exact ids
  std::vector<std::string> prefixes;  // "p/" for the pattern "p/*"
  // Resume points: the last seq the client has (0 = replay everything). A context
  // with no cursor starts at its current head (live only). `since` applies to every
  // matched context; `since_by_context` overrides it per context.
  std::optional<uint64_t> since;
  std::map<std::string, uint64_t> since_by_context;
  // When set, only contexts it accepts are streamed (the caller's read grants);
  // a pattern silently skips the others.
  std::function<bool(std::string_view)> permit;
  // A WebSocket subscriber that declares itself present: `agent_id` is present in
  // the exact contexts while the connection lasts (README, Presence). The stream
  // itself ignores these.
  std::string agent_id;
  bool presence = false;
};

// Shared by all streams; null members are not recorded.
struct stream_counters {
  prometheus::Gauge* queued_bytes = nullptr;  // live queue bytes, all streams
  prometheus::Counter* catch_ups = nullptr;   // live → catching_up transitions
};

class stream final : public router::sink, public std::enable_shared_from_this<stream> {
 public:
  struct position {
    std::string context_id;
    uint64_t from_seq;  // first seq this stream will deliver
    uint64_t head_seq;  // the context's head when the stream started
    bool exists = true;  // false: no such context yet (its first event will be streamed)
  };

  // `notify` is called (from any thread, at most once until the next poll) when
  // poll() has something to return.
  static model::result<std::shared_ptr<stream>> open(const storage::store& store, router::router& router,
                                                     stream_request req, stream_options opts,
                                                     std::function<void()> notify,
                                                     const stream_counters* counters = nullptr,
                                                     const drafts* drafts = nullptr);
  ~stream() override;

  const std::vector<position>& positions() const { return positions_; }
  // The patterns ("p/*") that matched no readable context when the stream opened.
  const std::vector<std::string>& unmatched_patterns() const { return unmatched_patterns_; }

  // Transport side: the next events to write, oldest first per context, up to about
  // max_bytes. Reads storage when catching up (so call it on a read thread:
  // engine::poll_stream). Empty when there is nothing to send.
  model::result<std::vector<router::event_ptr>> poll(size_t max_bytes);
  // poll() without storage: queued live events, or nullopt when the stream is
  // catching up and only poll() can make progress. Cheap; fine on an I/O thread.
  std::optional<std::vector<router::event_ptr>> poll_queued(size_t max_bytes);

  // True once the stream fell more than max_lag events behind: close it with a
  // resumable reason; the client resumes from its cursor.
  bool lagging() const;

  // The last seq delivered per context (for resume tokens).
  std::map<std::string, uint64_t> cursors() const;

  // Per context: the last seq handed to the transport, the highest seq seen
  // published, and the lag between them (events published and not yet handed over,
  // queued ones included). For operators; a snapshot.
  struct progress_entry {
    std::string context_id;
    uint64_t delivered = 0;
    uint64_t head = 0;
    uint64_t lag = 0;
  };
  std::vector<progress_entry> progress() const;
  bool catching_up() const;

  // Stops delivery (also done by the destructor).
  void close();

  void deliver(const router::event_ptr& ev) override;

 private:
  stream(const storage::store& store, router::router& router, stream_options opts,
         std::function<void()> notify, const stream_counters* counters, const drafts* drafts);
  void account(int64_t bytes);
  void queue(const router::event_ptr& ev);
  void deliver_draft(const router::event_ptr& ev, std::unique_lock<std::mutex>& lock);

  struct cursor {
    uint64_t next_seq = 1;  // the next seq to deliver
    uint64_t seen_head = 0;  // highest seq seen live
  };

  void wake(std::unique_lock<std::mutex>& lock);
  std::vector<router::event_ptr> take_queued(std::unique_lock<std::mutex>& lock, size_t max_bytes);

  const storage::store& store_;
  router::router& router_;
  const stream_options opts_;
  const std::function<void()> notify_;
  const stream_counters* counters_;
  const drafts* drafts_;
  std::vector<position> positions_;
  std::vector<std::string> unmatched_patterns_;
  std::optional<router::router::subscription_id> subscription_;

  mutable std::mutex mu_;
  bool catching_up_ = true;
  std::unordered_map<std::string, cursor> cursors_;
  std::unordered_map<std::string, uint64_t> stale_;  // context → generation
  std::vector<router::event_ptr> queue_;
  size_t queue_bytes_ = 0;
  bool notified_ = false;
  bool lagging_ = false;
  bool closed_ = false;
  // Drafts this stream is showing: (context, draft id) → the last index handed
  // over, and whether a snapshot is owed instead of the next deltas.
  struct draft_seen {
    uint64_t last = 0;
    bool resync = false;
  };
  std::map<std::pair<std::string, std::string>, draft_seen> drafts_seen_;
  size_t resyncs_ = 0;          // entries of drafts_seen_ with resync set
  bool drafts_primed_ = false;  // the opening snapshot is taken
};

}  // namespace engram::engine
