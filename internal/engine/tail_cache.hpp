#pragma once
// The newest work units of recently listed contexts, kept rendered as JSON
// (README "Pages of the newest units"). A context's tail holds every unit with
// lo <= seq <= head of its log; units are immutable and its log is gap-free, so
// the tail stays true as long as the context's record (storage::log_position)
// shows the same head, and units below the record's first_seq (removed by
// retention) are dropped as it is used. A page the tail covers is then answered
// with no iteration of the log, no protobuf parse and no JSON rendering, and,
// when the record is in memory, with no hand-off to the read pool. A tail up to
// max_units events behind its context's head is brought up to it by reading only
// the newer events; a reverse page from the head starts a new one. Thread-safe.

#include <cstddef>
#include <cstdint>
#include <deque>
#include <list>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "model/error.hpp"
#include "storage/store.hpp"

namespace prometheus {
class Counter;
class Gauge;
class Registry;
}  // namespace prometheus

namespace engram::engine {

class tail_cache {
 public:
  // max_bytes: rendered bytes kept over all contexts (least recently listed
  // contexts are dropped beyond it); one tail (a context has one per rendering)
  // keeps at most a quarter of it and at most max_units units. metrics may be null.
  tail_cache(size_t max_bytes, size_t max_units, prometheus::Registry* metrics);
  tail_cache(const tail_cache&) = delete;
  tail_cache& operator=(const tail_cache&) = delete;

  // Units with after_seq < seq < before_seq, newest first when reverse, at most
  // limit; with_text: each with its payload as "text" too (?text=1). A context
  // read both ways has two tails, one per rendering.
  struct query {
    uint64_t after_seq = 0;
    uint64_t before_seq = UINT64_MAX;
    size_t limit = 100;
    bool reverse = false;
    bool with_text = false;
  };
  struct page {
    std::string units_json;  // a JSON array of unit objects, as model::append_unit_json renders them (with text)
    size_t count = 0;
    uint64_t last_seq = 0;   // of the last unit in the page
    bool more = false;       // another unit exists beyond the last one
  };

  // The page, when the context's tail is current at `pos` and covers it, and its
  // JSON is at most max_bytes (checked before anything is copied); nullopt
  // otherwise.
  std::optional<page> serve(std::string_view context_id, const storage::log_position& pos, const query& q,
                            size_t max_bytes);

  // The page as of `pos` (read just before), with the context's tail brought up
  // to it from `store`: a tail behind the head reads the events after its head;
  // with none, a reverse page from the head is read from storage (q.limit + 1
  // units, as an uncached page reads), answered, and kept as the new tail.
  // nullopt: the caller reads the page from storage (a page older than the tail,
  // a forward page with no tail, a deleted context, whose tail is dropped, or a
  // `pos` older than the tail).
  model::result<std::optional<page>> update_and_serve(const storage::store& store, std::string_view context_id,
                                                      const storage::log_position& pos, const query& q);

  // Forgets every tail (the store is attached or detached).
  void clear();

  size_t bytes() const;

 private:
  struct unit {
    uint64_t seq;
    std::string json;
  };
  struct tail {
    uint64_t handle = 0;
    uint64_t lo = 1;    // every unit with lo <= seq <= head is in `units`
    uint64_t head = 0;  // the log's head when the tail was last brought up to date
    std::deque<unit> units;  // oldest first
    size_t bytes = 0;        // counted into bytes_
    std::list<std::string>::iterator lru;  // in lru_, most recently used first
  };

  using tails = std::unordered_map<std::string, tail>;

  std::optional<page> serve_locked(tail& t, const storage::log_position& pos, const query& q, size_t max_bytes);
  // `[…]` of units [first, first + n), counted from the newest end when newest_first.
  static page assemble(const std::deque<unit>& units, size_t first, size_t n, bool newest_first);
  // Drops a tail's oldest units beyond the per-context limits.
  void shrink_locked(tail& t);
  // Removes a tail; its units go to `garbage`, to be freed after the lock.
  void drop_locked(tails::iterator it, std::vector<std::deque<unit>>& garbage);
  // Drops the least recently used tails while over max_bytes.
  void evict_locked(std::vector<std::deque<unit>>& garbage);
  void count(prometheus::Counter* c);

  const size_t max_bytes_;
  const size_t max_tail_bytes_;
  const size_t max_units_;
  mutable std::mutex mu_;
  tails tails_;
  std::list<std::string> lru_;
  size_t bytes_ = 0;  // of every tail: units and a fixed cost per tail (tail_cache.cpp)

  prometheus::Counter* hits_ = nullptr;
  prometheus::Counter* misses_ = nullptr;
  prometheus::Gauge* bytes_gauge_ = nullptr;
};

}  // namespace engram::engine
