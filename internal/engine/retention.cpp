#include "engine/retention.hpp"

#include <prometheus/counter.h>
#include <prometheus/registry.h>
#include <spdlog/spdlog.h>

#include <future>

#include "model/thread_name.hpp"
#include "storage/store.hpp"

namespace engram::engine {

retention::retention(retention_options opts, storage::store& store, std::shared_ptr<const model::clock> clock,
                     prometheus::Registry* metrics)
    : opts_(opts), store_(store), clock_(clock ? std::move(clock) : model::default_clock()) {
  if (metrics)
    removed_ = &prometheus::BuildCounter().Name("engram_retention_removed_events_total")
                    .Help("Events removed from context logs by retention").Register(*metrics).Add({});
}

retention::~retention() { stop(); }

void retention::start() {
  if (!thread_.joinable()) thread_ = std::thread([this] {
    model::name_this_thread("retention");
    run();
  });
}

void retention::stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    cv_.notify_all();
  }
  if (thread_.joinable()) thread_.join();
}

void retention::run() {
  for (;;) {
    {
      std::unique_lock lock(mu_);
      if (cv_.wait_for(lock, opts_.interval, [&] { return stopping_; })) return;
    }
    if (auto n = sweep(); !n) spdlog::warn("retention: sweep stopped: {}", n.error().message);
  }
}

model::result<uint64_t> retention::cut(const std::string& id, uint64_t first, uint64_t head, int64_t max_age_s,
                                       uint64_t max_events) const {
  uint64_t keep_from = 0;
  if (max_events > 0 && head > max_events) keep_from = head - max_events + 1;
  if (max_age_s > 0) {
    // Seqs are ordered by commit time: binary search for the first event young
    // enough to keep, in [max(first, keep_from), head].
    const int64_t oldest_kept_ns = clock_->now_ns() - max_age_s * 1'000'000'000;
    uint64_t lo = std::max(first, keep_from), hi = head;
    while (lo < hi) {
      const uint64_t mid = lo + (hi - lo) / 2;
      auto ev = store_.read_events(id, mid - 1, 1);
      if (!ev) return std::unexpected(ev.error());
      if (ev->empty()) return uint64_t(0);  // deleted meanwhile
      if ((*ev)[0].ts_ns() < oldest_kept_ns) lo = (*ev)[0].seq() + 1;
      else hi = mid;
    }
    keep_from = std::max(keep_from, lo);
  }
  return keep_from > first ? keep_from : 0;
}

model::result<uint64_t> retention::sweep() {
  uint64_t total = 0;
  std::string after;
  for (;;) {
    auto page = store_.list_contexts(after, 1000);
    if (!page) return std::unexpected(page.error());
    for (const auto& c : page->contexts) {
      {
        std::lock_guard lock(mu_);
        if (stopping_) return total;
      }
      const bool own = c.has_retention();
      const int64_t max_age = own ? c.retention().max_age_seconds() : opts_.max_age.count();
      const uint64_t max_events = own ? c.retention().max_events() : opts_.max_events;
      if (max_age <= 0 && max_events == 0) continue;
      const uint64_t first = std::max<uint64_t>(c.first_seq(), 1);
      auto below = cut(c.id(), first, c.head_seq(), max_age, max_events);
      if (!below) return std::unexpected(below.error());
      if (!*below) continue;
      std::promise<model::result<storage::trim_result>> done;
      auto trimmed = done.get_future();
      store_.trim(c.id(), *below, [&done](model::result<storage::trim_result> r) { done.set_value(std::move(r)); });
      auto r = trimmed.get();
      if (!r) return std::unexpected(r.error());
      if (r->removed_events == 0) continue;
      total += r->removed_events;
      if (removed_) removed_->Increment(double(r->removed_events));
      spdlog::info("retention: removed {} events from context '{}' (now from seq {})", r->removed_events, c.id(),
                   r->first_seq);
    }
    if (!page->more || page->contexts.empty()) return total;
    after = page->contexts.back().id();
  }
}

}  // namespace engram::engine
