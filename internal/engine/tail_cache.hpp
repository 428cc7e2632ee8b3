#pragma once
// The newest work units of recently listed contexts, kept rendered as JSON
// (README "Pages of the newest units"). A context's tail holds every unit with
// lo <= seq <= head of its log; units are immutable and its log is gap-free, so
// the tail stays true as long as the context's record (storage::log_position)
// shows the same head. A page the tail covers is then answered with no RocksDB
// iteration, no protobuf parse and no JSON rendering, and, when the record is in
// memory, with no hand-off to the read pool. A tail behind its context's head is
// brought up to it by reading only the newer events. Thread-safe.

#include <cstddef>
#include <cstdint>
#include <deque>
#include <list>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

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
  // contexts are dropped beyond it); one context keeps at most a quarter of it
  // and at most max_units units. metrics may be null.
  tail_cache(size_t max_bytes, size_t max_units, prometheus::Registry* metrics);
  tail_cache(const tail_cache&) = delete;
  tail_cache& operator=(const tail_cache&) = delete;

  // Units with after_seq < seq < before_seq, newest first when reverse, at most limit.
  struct query {
    uint64_t after_seq = 0;
    uint64_t before_seq = UINT64_MAX;
    size_t limit = 100;
    bool reverse = false;
  };
  struct page {
    std::string units_json;  // a JSON array of unit objects, as model::append_unit_json renders them
    size_t count = 0;
    uint64_t last_seq = 0;   // of the last unit in the page
    bool more = false;       // another unit exists beyond the last one
  };

  // The page, when the context's tail is current at `pos` and covers it, and its
  // JSON is at most max_bytes; nullopt otherwise (then the tail is not changed).
  std::optional<page> serve(std::string_view context_id, const storage::log_position& pos, const query& q,
                            size_t max_bytes);

  // Brings the context's tail up to `pos` (read just before, not deleted) from
  // `store`, and serves the page from it: the events after the tail's head, or,
  // with no usable tail, the newest q.limit + 1 units (a reverse page from the
  // head, so a first read costs what an uncached one does). nullopt: the page
  // is not in the tail even then (the caller reads storage).
  model::result<std::optional<page>> update_and_serve(const storage::store& store, std::string_view context_id,
                                                      const storage::log_position& pos, const query& q);

  // Forgets every tail (a different store was attached).
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
    size_t bytes = 0;
    std::list<std::string>::iterator lru;  // in lru_, most recently used first
  };

  std::optional<page> serve_locked(tail& t, const storage::log_position& pos, const query& q, size_t max_bytes);
  // Drops a tail's oldest units beyond the per-context limits.
  void shrink_locked(tail& t);
  void evict_locked();
  void count(prometheus::Counter* c);

  const size_t max_bytes_;
  const size_t max_tail_bytes_;
  const size_t max_units_;
  mutable std::mutex mu_;
  std::unordered_map<std::string, tail> tails_;
  std::list<std::string> lru_;
  size_t bytes_ = 0;

  prometheus::Counter* hits_ = nullptr;
  prometheus::Counter* misses_ = nullptr;
  prometheus::Gauge* bytes_gauge_ = nullptr;
};

}  // namespace engram::engine
