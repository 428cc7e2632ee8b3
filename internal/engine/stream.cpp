#include "engine/stream.hpp"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>

#include <algorithm>
#include <limits>
#include <set>

#include "engine/drafts.hpp"
#include "storage/store.hpp"

namespace engram::engine {

stream::stream(const storage::store& store, router::router& router, stream_options opts,
               std::function<void()> notify, const stream_counters* counters, const drafts* drafts)
    : store_(store), router_(router), opts_(opts), notify_(std::move(notify)), counters_(counters), drafts_(drafts) {}

void stream::account(int64_t bytes) {
  if (counters_ && counters_->queued_bytes) counters_->queued_bytes->Increment(double(bytes));
}

stream::~stream() { close(); }

model::result<std::shared_ptr<stream>> stream::open(const storage::store& store, router::router& router,
                                                     stream_request req, stream_options opts,
                                                     std::function<void()> notify,
                                                     const stream_counters* counters, const drafts* drafts) {
  auto s = std::shared_ptr<stream>(new stream(store, router, opts, std::move(notify), counters, drafts));
  // 1. Where each matched context starts: read heads *before* registering, so any
  //    event committed from here on is either read by catch-up or delivered live.
  std::map<std::string, uint64_t> heads;
  std::set<std::string> missing;  // named contexts that do not exist (yet)
  for (const auto& id : req.contexts) {
    auto ctx = store.get_context(id);
    if (!ctx) return std::unexpected(ctx.error());
    if (!*ctx) missing.insert(id);
    auto head = store.log_head(id);  // a deleted context's log goes on after its tombstone
    if (!head) return std::unexpected(head.error());
    heads[id] = *head;
  }
  for (const auto& prefix : req.prefixes) {
    auto found = store.context_heads(prefix, opts.max_pattern_contexts + 1);
    if (!found) return std::unexpected(found.error());
    if (found->size() > opts.max_pattern_contexts)
      return model::fail(model::errc::invalid_argument,
                         "the pattern '" + prefix + "*' matches more than " +
                             std::to_string(opts.max_pattern_contexts) + " contexts; narrow it");
    bool matched = false;
    for (auto& [id, head] : *found)
      if (!req.permit || req.permit(id)) {
        heads[id] = head;
        missing.erase(id);
        matched = true;
      }
    if (!matched) s->unmatched_patterns_.push_back(prefix + "*");
  }
  for (const auto& [id, head] : heads) {
    uint64_t after = head;  // no cursor: live from the current head
    if (auto it = req.since_by_context.find(id); it != req.since_by_context.end()) after = it->second;
    else if (req.since) after = *req.since;
    if (after == std::numeric_limits<uint64_t>::max())
      return model::fail(model::errc::invalid_argument, "since is out of range");
    s->cursors_[id] = cursor{after + 1, head};
    s->stale_[id] = 0;
    s->positions_.push_back({id, after + 1, head, !missing.contains(id)});
  }
  // 2. Register; until the first poll finds every context caught up, live events
  //    only mark their context stale (catching_up_ starts true).
  router::topic_filter filter{req.contexts, req.prefixes, req.permit};
  s->subscription_ = router.subscribe(s, filter);
  std::unique_lock lock(s->mu_);
  // 3. The drafts open now, before any of their later deltas (deliver() waits for
  //    the lock and drops what the snapshot already holds).
  if (drafts)
    for (auto& snap : drafts->snapshots(filter)) {
      s->drafts_seen_[{snap->context_id, snap->draft->id}] = {snap->draft->index, false};
      s->queue(snap);
    }
  s->drafts_primed_ = true;
  s->wake(lock);
  return s;
}

void stream::close() {
  std::optional<router::router::subscription_id> id;
  {
    std::lock_guard lock(mu_);
    if (closed_) return;
    closed_ = true;
    id = subscription_;
    queue_.clear();
    account(-int64_t(queue_bytes_));
    queue_bytes_ = 0;
  }
  if (id) router_.unsubscribe(*id);
}

void stream::wake(std::unique_lock<std::mutex>& lock) {
  if (notified_ || closed_) return;
  notified_ = true;
  lock.unlock();
  if (notify_) notify_();
}

void stream::queue(const router::event_ptr& ev) {
  queue_.push_back(ev);
  queue_bytes_ += ev->json.size();
  account(int64_t(ev->json.size()));
}

void stream::deliver_draft(const router::event_ptr& ev, std::unique_lock<std::mutex>& lock) {
  if (!drafts_primed_) return;  // the opening snapshot includes it
  const auto& tag = *ev->draft;
  const std::pair<std::string, std::string> k{ev->context_id, tag.id};
  if (tag.kind == router::wire_event::draft_tag::end) {
    if (auto it = drafts_seen_.find(k); it != drafts_seen_.end()) {
      if (it->second.resync) --resyncs_;
      drafts_seen_.erase(it);
    }
    queue(ev);  // small, one per draft: never dropped
    return wake(lock);
  }
  auto it = drafts_seen_.find(k);
  if (it != drafts_seen_.end() && (it->second.resync || tag.index <= it->second.last)) return;
  if (queue_bytes_ + ev->json.size() > opts_.queue_bytes) {
    // No room: skip deltas until the next poll sends the draft whole, and drop the
    // ones queued already (the snapshot holds them, and goes first).
    auto& seen = drafts_seen_[k];
    seen.resync = true;
    ++resyncs_;
    std::erase_if(queue_, [&](const router::event_ptr& q) {
      const bool superseded = q->draft && q->draft->kind != router::wire_event::draft_tag::end &&
                              q->draft->id == tag.id && q->context_id == ev->context_id;
      if (superseded) {
        queue_bytes_ -= q->json.size();
        account(-int64_t(q->json.size()));
      }
      return superseded;
    });
    return wake(lock);
  }
  drafts_seen_[k].last = tag.index;
  queue(ev);
  wake(lock);
}

void stream::deliver(const router::event_ptr& ev) {
  std::unique_lock lock(mu_);
  if (closed_) return;
  if (ev->draft) return deliver_draft(ev, lock);
  // A context this stream has not seen is one created after it started (a pattern
  // match, or a listed context that did not exist yet): deliver it from seq 1.
  auto& c = cursors_.try_emplace(ev->context_id).first->second;
  c.seen_head = std::max(c.seen_head, ev->seq);
  if (ev->seq < c.next_seq) return;  // already delivered (replay overlap)
  const size_t size = ev->json.size();
  if (!catching_up_ && ev->seq == c.next_seq && queue_bytes_ + size <= opts_.queue_bytes) {
    queue(ev);
    c.next_seq = ev->seq + 1;
  } else {
    // A gap, or no room: fall back to reading this context from storage.
    if (!catching_up_ && counters_ && counters_->catch_ups) counters_->catch_ups->Increment();
    catching_up_ = true;
    ++stale_[ev->context_id];
    if (ev->seq - c.next_seq > opts_.max_lag) lagging_ = true;
  }
  wake(lock);
}

std::vector<router::event_ptr> stream::take_queued(std::unique_lock<std::mutex>& lock, size_t max_bytes) {
  std::vector<router::event_ptr> out;
  if (resyncs_) {
    // Drafts whose deltas were dropped, whole as they stand now; later deltas carry
    // higher indexes and are delivered after this (deliver() waits for the lock).
    for (auto it = drafts_seen_.begin(); it != drafts_seen_.end();) {
      if (!it->second.resync) {
        ++it;
        continue;
      }
      auto snap = drafts_ ? drafts_->snapshot(it->first.first, it->first.second) : nullptr;
      if (!snap) {
        it = drafts_seen_.erase(it);  // ended: its end is on its way
        continue;
      }
      it->second = {snap->draft->index, false};
      out.push_back(std::move(snap));
      ++it;
    }
    resyncs_ = 0;
  }
  size_t bytes = 0, n = 0;
  while (n < queue_.size() && (n == 0 || bytes + queue_[n]->json.size() <= max_bytes))
    bytes += queue_[n++]->json.size();
  out.insert(out.end(), queue_.begin(), queue_.begin() + long(n));
  queue_.erase(queue_.begin(), queue_.begin() + long(n));
  queue_bytes_ -= bytes;
  account(-int64_t(bytes));
  if (!queue_.empty() || catching_up_) wake(lock);
  return out;
}

std::optional<std::vector<router::event_ptr>> stream::poll_queued(size_t max_bytes) {
  std::unique_lock lock(mu_);
  if (closed_) return std::vector<router::event_ptr>{};
  if (!queue_.empty() || resyncs_) {
    notified_ = false;
    return take_queued(lock, max_bytes);
  }
  if (catching_up_) return std::nullopt;  // leave notified_ set: poll() follows
  notified_ = false;
  return std::vector<router::event_ptr>{};
}

model::result<std::vector<router::event_ptr>> stream::poll(size_t max_bytes) {
  std::vector<router::event_ptr> out;
  std::vector<std::tuple<std::string, uint64_t, uint64_t>> to_read;  // id, next_seq, generation
  {
    std::unique_lock lock(mu_);
    notified_ = false;
    if (closed_) return out;
    if (!queue_.empty() || resyncs_) return take_queued(lock, max_bytes);
    if (!catching_up_) return out;
    for (const auto& [id, gen] : stale_) to_read.emplace_back(id, cursors_[id].next_seq, gen);
  }
  // Catching up with an empty queue: read stale contexts from storage, outside the
  // lock (deliver() keeps running and marks what it sees).
  size_t bytes = 0;
  std::vector<std::tuple<std::string, std::vector<api::Event>, uint64_t>> reads;
  for (const auto& [id, next, gen] : to_read) {
    if (bytes >= max_bytes) break;
    auto events = store_.read_events(id, next - 1, opts_.catch_up_batch);
    if (!events) return std::unexpected(events.error());
    for (const auto& e : *events) bytes += e.ByteSizeLong();
    reads.emplace_back(id, std::move(*events), gen);
  }
  if (opts_.after_catch_up_read) opts_.after_catch_up_read();
  std::unique_lock lock(mu_);
  if (closed_) return out;
  for (auto& [id, events, gen] : reads) {
    auto& c = cursors_[id];
    for (size_t i = 0; i < events.size(); ++i) {
      const auto& e = events[i];
      // Only contiguous seqs are delivered, except that the first one read may lie
      // beyond the cursor: the events between were removed (retention), and the log
      // is gap-free from its first_seq on.
      if (e.seq() != c.next_seq && !(i == 0 && e.seq() > c.next_seq)) break;
      out.push_back(router::to_wire(e));
      c.next_seq = e.seq() + 1;
    }
    const bool drained = events.size() < opts_.catch_up_batch;
    auto it = stale_.find(id);
    if (drained && it != stale_.end() && it->second == gen) stale_.erase(it);  // nothing arrived meanwhile
  }
  if (stale_.empty()) {
    catching_up_ = false;
  } else {
    wake(lock);  // more to read
  }
  return out;
}

bool stream::lagging() const {
  std::lock_guard lock(mu_);
  return lagging_;
}

std::map<std::string, uint64_t> stream::cursors() const {
  std::lock_guard lock(mu_);
  std::map<std::string, uint64_t> out;
  for (const auto& [id, c] : cursors_) out[id] = c.next_seq - 1;
  return out;
}

std::vector<stream::progress_entry> stream::progress() const {
  std::lock_guard lock(mu_);
  std::unordered_map<std::string_view, uint64_t> queued;
  for (const auto& ev : queue_)
    if (!ev->draft) ++queued[ev->context_id];
  std::vector<progress_entry> out;
  out.reserve(cursors_.size());
  for (const auto& [id, c] : cursors_) {
    const auto it = queued.find(id);
    const uint64_t waiting = it == queued.end() ? 0 : it->second;
    const uint64_t handed = c.next_seq - 1 - waiting;  // queued events are not handed over yet
    const uint64_t head = std::max(c.seen_head, c.next_seq - 1);
    out.push_back({id, handed, head, head - handed});
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.context_id < b.context_id; });
  return out;
}

bool stream::catching_up() const {
  std::lock_guard lock(mu_);
  return catching_up_;
}

}  // namespace engram::engine
