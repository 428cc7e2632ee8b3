#include "engine/tail_cache.hpp"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include <algorithm>
#include <vector>

#include "model/codec.hpp"

namespace engram::engine {
namespace {

constexpr size_t unit_overhead = 48;  // what a kept unit costs beyond its JSON (seq, string header, deque slot)

}  // namespace

tail_cache::tail_cache(size_t max_bytes, size_t max_units, prometheus::Registry* metrics)
    : max_bytes_(max_bytes), max_tail_bytes_(max_bytes / 4), max_units_(std::max<size_t>(1, max_units)) {
  if (!metrics) return;
  auto& pages = prometheus::BuildCounter()
                    .Name("engram_tail_cache_pages_total")
                    .Help("Pages of GET /workunits/{contextId} by where they came from: a context's cached tail "
                          "of rendered units (hit) or storage (miss)")
                    .Register(*metrics);
  hits_ = &pages.Add({{"result", "hit"}});
  misses_ = &pages.Add({{"result", "miss"}});
  bytes_gauge_ = &prometheus::BuildGauge()
                      .Name("engram_tail_cache_bytes")
                      .Help("Rendered unit bytes kept by the tail cache, over all contexts")
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
  std::lock_guard lock(mu_);
  tails_.clear();
  lru_.clear();
  bytes_ = 0;
  if (bytes_gauge_) bytes_gauge_->Set(0);
}

std::optional<tail_cache::page> tail_cache::serve(std::string_view context_id, const storage::log_position& pos,
                                                  const query& q, size_t max_bytes) {
  std::lock_guard lock(mu_);
  auto it = tails_.find(std::string(context_id));
  if (it == tails_.end()) return std::nullopt;
  auto p = serve_locked(it->second, pos, q, max_bytes);
  if (p) count(hits_);
  return p;
}

std::optional<tail_cache::page> tail_cache::serve_locked(tail& t, const storage::log_position& pos, const query& q,
                                                         size_t max_bytes) {
  if (t.handle != pos.handle || t.head != pos.head_seq || pos.deleted || q.after_seq == UINT64_MAX)
    return std::nullopt;
  // The lowest seq the page may hold, and whether the tail has every unit from
  // there up to the head (the log has none below first_seq: retention removed them).
  const uint64_t low = std::max(q.after_seq + 1, pos.first_seq);
  const bool covered = t.lo <= low;
  if (!q.reverse && !covered) return std::nullopt;

  page p;
  const size_t per_unit = t.units.empty() ? 0 : t.bytes / t.units.size();
  p.units_json.reserve(2 + std::min(q.limit, t.units.size()) * per_unit);
  p.units_json.push_back('[');
  auto add = [&](const unit& u) {
    if (p.count) p.units_json.push_back(',');
    p.units_json += u.json;
    p.last_seq = u.seq;
    ++p.count;
  };
  if (q.reverse) {
    auto u = t.units.rbegin();
    while (u != t.units.rend() && u->seq >= q.before_seq) ++u;
    for (; u != t.units.rend() && u->seq >= low; ++u) {
      if (p.count == q.limit) {
        p.more = true;
        break;
      }
      add(*u);
      if (p.units_json.size() > max_bytes) return std::nullopt;
    }
    // Ran out of the tail (or reached `low`) with room left: the page is whole
    // only when the tail reaches down to `low`.
    if (!p.more && !covered) return std::nullopt;
  } else {
    auto u = std::lower_bound(t.units.begin(), t.units.end(), low,
                              [](const unit& x, uint64_t seq) { return x.seq < seq; });
    for (; u != t.units.end() && u->seq < q.before_seq; ++u) {
      if (p.count == q.limit) {
        p.more = true;
        break;
      }
      add(*u);
      if (p.units_json.size() > max_bytes) return std::nullopt;
    }
  }
  p.units_json.push_back(']');
  lru_.splice(lru_.begin(), lru_, t.lru);
  return p;
}

model::result<std::optional<tail_cache::page>> tail_cache::update_and_serve(const storage::store& store,
                                                                            std::string_view context_id,
                                                                            const storage::log_position& pos,
                                                                            const query& q) {
  using out = model::result<std::optional<page>>;
  auto miss = [&] {
    count(misses_);
    return out(std::nullopt);
  };
  if (pos.deleted) return miss();
  const std::string id(context_id);
  std::optional<uint64_t> from;  // the head of a tail that only needs the events after it
  {
    std::lock_guard lock(mu_);
    if (auto it = tails_.find(id); it != tails_.end() && it->second.handle == pos.handle) {
      tail& t = it->second;
      if (t.head == pos.head_seq) {  // brought up to date meanwhile
        auto p = serve_locked(t, pos, q, SIZE_MAX);
        count(p ? hits_ : misses_);
        return out(std::move(p));
      }
      if (t.head < pos.head_seq && pos.head_seq - t.head <= max_units_) from = t.head;
    }
  }

  // The units to add, oldest first, and the range of seqs they account for.
  std::vector<unit> fresh;
  uint64_t lo = 1;
  if (from) {
    auto events = store.read_events(context_id, *from, pos.head_seq - *from);
    if (!events) return std::unexpected(events.error());
    // The events after the tail's head, all of them: a deletion running meanwhile
    // can have removed some, and then the tail is rebuilt (below).
    bool whole = events->size() == pos.head_seq - *from;
    for (size_t i = 0; whole && i < events->size(); ++i) whole = (*events)[i].seq() == *from + 1 + i;
    if (whole) {
      for (const auto& ev : *events) {
        if (!ev.has_work_unit()) continue;
        fresh.push_back({ev.seq(), {}});
        model::append_unit_json(fresh.back().json, ev.work_unit());
      }
    } else {
      from.reset();
    }
  }
  if (!from) {
    // Only a page read back from the head can be served from a new tail.
    if (!q.reverse || q.before_seq <= pos.head_seq) return miss();
    storage::list_query lq;
    lq.before_seq = pos.head_seq + 1;  // as of `pos`: the head the tail will say it covers
    lq.limit = std::min(q.limit + 1, max_units_);
    lq.reverse = true;
    auto read = store.list_units(context_id, lq);
    if (!read) return std::unexpected(read.error());
    for (auto u = read->units.rbegin(); u != read->units.rend(); ++u) {
      fresh.push_back({u->seq(), {}});
      model::append_unit_json(fresh.back().json, *u);
    }
    // With more units below the oldest read, the tail starts at that unit.
    lo = read->more && !fresh.empty() ? fresh.front().seq : 1;
  }

  std::lock_guard lock(mu_);
  auto it = tails_.find(id);
  if (it == tails_.end()) {
    if (from) return miss();  // dropped meanwhile (eviction): the next read fills it again
    it = tails_.try_emplace(id).first;
    lru_.push_front(id);
    it->second.lru = lru_.begin();
    it->second.handle = pos.handle;
  }
  tail& t = it->second;
  if (from && t.handle == pos.handle && t.head == *from) {
    for (auto& u : fresh) {
      t.bytes += u.json.size() + unit_overhead;
      bytes_ += u.json.size() + unit_overhead;
      t.units.push_back(std::move(u));
    }
    t.head = pos.head_seq;
  } else if (!from && (t.handle != pos.handle || t.head <= pos.head_seq)) {
    bytes_ -= t.bytes;
    t.units.clear();
    t.bytes = 0;
    for (auto& u : fresh) {
      t.bytes += u.json.size() + unit_overhead;
      t.units.push_back(std::move(u));
    }
    bytes_ += t.bytes;
    t.handle = pos.handle;
    t.lo = lo;
    t.head = pos.head_seq;
  }
  // (Otherwise another reader moved the tail on first; it is served as it is.)
  shrink_locked(t);
  auto p = serve_locked(t, pos, q, SIZE_MAX);
  count(p && from ? hits_ : misses_);  // a page that filled the tail was read from storage
  evict_locked();
  return out(std::move(p));
}

void tail_cache::shrink_locked(tail& t) {
  while (!t.units.empty() && (t.units.size() > max_units_ || t.bytes > max_tail_bytes_)) {
    const size_t cost = t.units.front().json.size() + unit_overhead;
    t.bytes -= cost;
    bytes_ -= cost;
    t.units.pop_front();
    t.lo = t.units.empty() ? t.head + 1 : t.units.front().seq;
  }
}

void tail_cache::evict_locked() {
  while (bytes_ > max_bytes_ && !lru_.empty()) {
    auto it = tails_.find(lru_.back());
    bytes_ -= it->second.bytes;
    tails_.erase(it);
    lru_.pop_back();
  }
  if (bytes_gauge_) bytes_gauge_->Set(double(bytes_));
}

}  // namespace engram::engine
