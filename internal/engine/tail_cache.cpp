#include "engine/tail_cache.hpp"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include <algorithm>

#include "model/codec.hpp"

namespace engram::engine {
namespace {

// What the byte budget counts beyond the rendered JSON: per unit its seq, string
// header, deque slot and allocation; per tail its key, map and LRU nodes and the
// deque's first blocks, so that many empty tails are bounded as well.
constexpr size_t unit_overhead = 64;
constexpr size_t tail_overhead = 1024;

size_t cost(const std::string& json) { return json.size() + unit_overhead; }

// The map key of a context's tail: ids hold no control characters, so "\n" cannot
// make two keys meet.
std::string key_of(std::string_view context_id, bool with_text) {
  std::string key(context_id);
  if (with_text) key.append("\ntext");
  return key;
}

// A unit as its tail keeps it, sized to fit (the budget counts size()).
std::string render(const api::WorkUnit& u, bool with_text, std::string& scratch) {
  scratch.clear();
  if (!with_text) model::append_unit_json(scratch, u);
  else model::append_unit_json(scratch, u, [&](std::string& o) { model::append_text_json(o, u.payload()); });
  return std::string(scratch);
}

}  // namespace

tail_cache::tail_cache(size_t max_bytes, size_t max_units, prometheus::Registry* metrics)
    : max_bytes_(max_bytes), max_tail_bytes_(max_bytes / 4), max_units_(std::max<size_t>(1, max_units)) {
  if (!metrics) return;
  auto& pages = prometheus::BuildCounter()
                    .Name("engram_tail_cache_pages_total")
                    .Help("Pages of GET /workunits/{contextId} answered from a context's cached tail of rendered "
                          "units (hit), or read from storage (miss)")
                    .Register(*metrics);
  hits_ = &pages.Add({{"result", "hit"}});
  misses_ = &pages.Add({{"result", "miss"}});
  bytes_gauge_ = &prometheus::BuildGauge()
                      .Name("engram_tail_cache_bytes")
                      .Help("Bytes the tail cache counts against storage.tail_cache_mb, over all contexts")
                      .Register(*metrics)
                      .Add({});
}

void tail_cache::count(prometheus::Counter* c) {
  if (c) c->Increment();
}

size_t tail_cache::bytes() const {
  std::lock_guard lock(mu_);
  return bytes_;
}

void tail_cache::clear() {
  tails garbage;
  std::lock_guard lock(mu_);
  garbage.swap(tails_);
  lru_.clear();
  bytes_ = 0;
  if (bytes_gauge_) bytes_gauge_->Set(0);
}

tail_cache::page tail_cache::assemble(const std::deque<unit>& units, size_t first, size_t n, bool newest_first) {
  auto at = [&](size_t i) -> const unit& { return units[newest_first ? units.size() - 1 - i : i]; };
  size_t bytes = 2;
  for (size_t i = first; i < first + n; ++i) bytes += at(i).json.size() + 1;
  page p;
  p.units_json.reserve(bytes);
  p.units_json.push_back('[');
  for (size_t i = first; i < first + n; ++i) {
    if (i > first) p.units_json.push_back(',');
    p.units_json += at(i).json;
    p.last_seq = at(i).seq;
  }
  p.units_json.push_back(']');
  p.count = n;
  return p;
}

std::optional<tail_cache::page> tail_cache::serve(std::string_view context_id, const storage::log_position& pos,
                                                  const query& q, size_t max_bytes) {
  std::lock_guard lock(mu_);
  auto it = tails_.find(key_of(context_id, q.with_text));
  if (it == tails_.end()) return std::nullopt;
  auto p = serve_locked(it->second, pos, q, max_bytes);
  if (p) count(hits_);
  return p;
}

std::optional<tail_cache::page> tail_cache::serve_locked(tail& t, const storage::log_position& pos, const query& q,
                                                         size_t max_bytes) {
  if (t.handle != pos.handle || t.head != pos.head_seq || pos.deleted || q.after_seq == UINT64_MAX)
    return std::nullopt;
  // Retention removed the units below first_seq.
  while (!t.units.empty() && t.units.front().seq < pos.first_seq) {
    t.bytes -= cost(t.units.front().json);
    bytes_ -= cost(t.units.front().json);
    t.units.pop_front();
  }
  t.lo = std::max(t.lo, pos.first_seq);
  // The lowest seq the page may hold, and whether the tail has every unit from
  // there up to the head.
  const uint64_t low = std::max(q.after_seq + 1, pos.first_seq);
  const bool covered = t.lo <= low;

  // The page is units [first, first + n) of the tail, in the direction asked.
  // Found, and measured, before anything is copied.
  size_t first = 0, n = 0, bytes = 2;
  bool more = false;
  auto at = [&](size_t i) -> const unit& { return t.units[q.reverse ? t.units.size() - 1 - i : i]; };
  auto seq_at = [&](size_t i) { return at(i).seq; };
  auto in_range = [&](uint64_t seq) { return seq >= low && seq < q.before_seq; };
  if (q.reverse) {
    while (first < t.units.size() && seq_at(first) >= q.before_seq) ++first;
  } else {
    if (!covered) return std::nullopt;
    first = size_t(std::lower_bound(t.units.begin(), t.units.end(), low,
                                    [](const unit& x, uint64_t seq) { return x.seq < seq; }) -
                   t.units.begin());
  }
  for (size_t i = first; i < t.units.size() && in_range(seq_at(i)); ++i) {
    if (n == q.limit) {
      more = true;
      break;
    }
    bytes += at(i).json.size() + 1;
    if (bytes > max_bytes) return std::nullopt;
    ++n;
  }
  // Ran out of the tail (or of the range) with room left: the page is whole only
  // when the tail reaches down to `low`.
  if (!more && !covered) return std::nullopt;

  page p = assemble(t.units, first, n, q.reverse);
  p.more = more;
  lru_.splice(lru_.begin(), lru_, t.lru);
  return p;
}

model::result<std::optional<tail_cache::page>> tail_cache::update_and_serve(const storage::store& store,
                                                                            std::string_view context_id,
                                                                            const storage::log_position& pos,
                                                                            const query& q) {
  using out = model::result<std::optional<page>>;
  std::vector<std::deque<unit>> garbage;  // freed after the lock (declared before it)
  auto miss = [&] {
    count(misses_);
    return out(std::nullopt);
  };
  const std::string id = key_of(context_id, q.with_text);
  std::optional<uint64_t> from;  // the head of a tail that needs only the events after it
  {
    std::lock_guard lock(mu_);
    if (pos.deleted) {  // both renderings go
      for (bool text : {false, true})
        if (auto gone = tails_.find(key_of(context_id, text)); gone != tails_.end()) drop_locked(gone, garbage);
      evict_locked(garbage);  // updates the gauge
      return miss();
    }
    auto it = tails_.find(id);
    if (it != tails_.end() && it->second.handle == pos.handle) {
      tail& t = it->second;
      if (t.head == pos.head_seq) {  // brought up to date by another reader meanwhile
        auto p = serve_locked(t, pos, q, SIZE_MAX);
        count(p ? hits_ : misses_);
        return out(std::move(p));
      }
      if (t.head > pos.head_seq) return miss();  // `pos` is older than the tail
      if (pos.head_seq - t.head <= max_units_) from = t.head;
    }
  }

  if (from) {
    auto events = store.read_events(context_id, *from, pos.head_seq - *from);
    if (!events) return std::unexpected(events.error());
    // All the events after the tail's head, or the tail is started again below:
    // a deletion running meanwhile can have removed some.
    bool whole = events->size() == pos.head_seq - *from;
    for (size_t i = 0; whole && i < events->size(); ++i) whole = (*events)[i].seq() == *from + 1 + i;
    if (whole) {
      std::vector<unit> fresh;
      std::string scratch;
      for (const auto& ev : *events)
        if (ev.has_work_unit()) fresh.push_back({ev.seq(), render(ev.work_unit(), q.with_text, scratch)});
      std::lock_guard lock(mu_);
      auto it = tails_.find(id);
      if (it == tails_.end() || it->second.handle != pos.handle) return miss();  // evicted meanwhile
      tail& t = it->second;
      if (t.head == *from) {
        for (auto& u : fresh) {
          t.bytes += cost(u.json);
          bytes_ += cost(u.json);
          t.units.push_back(std::move(u));
        }
        t.head = pos.head_seq;
        shrink_locked(t);
      }
      auto p = serve_locked(t, pos, q, SIZE_MAX);
      count(p ? hits_ : misses_);
      evict_locked(garbage);
      return out(std::move(p));
    }
  }

  // A new tail, from a reverse page read back from the head: that page is
  // answered from what was read, whether or not the tail can keep it all.
  if (!q.reverse || q.before_seq <= pos.head_seq || q.after_seq == UINT64_MAX) return miss();
  storage::list_query lq;
  lq.after_seq = q.after_seq;
  lq.before_seq = pos.head_seq + 1;  // as of `pos`: the head the tail will say it covers
  lq.limit = std::min(q.limit + 1, max_units_);
  lq.reverse = true;
  auto read = store.list_units(context_id, lq);
  if (!read) return std::unexpected(read.error());
  std::deque<unit> fresh;  // oldest first
  std::string scratch;
  for (const auto& u : read->units) fresh.push_front({u.seq(), render(u, q.with_text, scratch)});
  page p = assemble(fresh, 0, std::min(fresh.size(), q.limit), true);
  p.more = read->more || fresh.size() > q.limit;

  std::lock_guard lock(mu_);
  auto it = tails_.find(id);
  if (it == tails_.end()) {
    it = tails_.try_emplace(id).first;
    lru_.push_front(id);
    it->second.lru = lru_.begin();
    it->second.bytes = tail_overhead + id.size();
    bytes_ += it->second.bytes;
  }
  tail& t = it->second;
  if (t.handle != pos.handle || t.head <= pos.head_seq) {  // else another reader made a newer one
    const size_t kept = tail_overhead + id.size();
    bytes_ -= t.bytes - kept;
    t.bytes = kept;
    garbage.push_back(std::move(t.units));
    t.units = std::move(fresh);
    for (const auto& u : t.units) t.bytes += cost(u.json);
    bytes_ += t.bytes - kept;
    t.handle = pos.handle;
    // With more units below the oldest read, the tail starts at that unit; else
    // it has every unit after q.after_seq.
    t.lo = read->more ? t.units.front().seq : q.after_seq + 1;
    t.head = pos.head_seq;
    shrink_locked(t);
    lru_.splice(lru_.begin(), lru_, t.lru);
  }
  count(misses_);
  evict_locked(garbage);
  return out(std::move(p));
}

void tail_cache::shrink_locked(tail& t) {
  while (!t.units.empty() && (t.units.size() > max_units_ || t.bytes > max_tail_bytes_)) {
    t.bytes -= cost(t.units.front().json);
    bytes_ -= cost(t.units.front().json);
    t.units.pop_front();
    t.lo = t.units.empty() ? t.head + 1 : t.units.front().seq;
  }
}

void tail_cache::drop_locked(tails::iterator it, std::vector<std::deque<unit>>& garbage) {
  bytes_ -= it->second.bytes;
  garbage.push_back(std::move(it->second.units));
  lru_.erase(it->second.lru);
  tails_.erase(it);
}

void tail_cache::evict_locked(std::vector<std::deque<unit>>& garbage) {
  while (bytes_ > max_bytes_ && !lru_.empty()) drop_locked(tails_.find(lru_.back()), garbage);
  if (bytes_gauge_) bytes_gauge_->Set(double(bytes_));
}

}  // namespace engram::engine
