#include "router/router.hpp"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "model/codec.hpp"
#include "model/thread_name.hpp"

namespace engram::router {

struct router::metrics {
  prometheus::Counter* published = nullptr;
  prometheus::Counter* offered = nullptr;
  prometheus::Counter* inline_batches = nullptr;
  prometheus::Gauge* subscriptions = nullptr;
  explicit metrics(prometheus::Registry* r) {
    if (!r) return;
    published = &prometheus::BuildCounter().Name("engram_router_events_published_total")
                     .Help("Committed events received by the router").Register(*r).Add({});
    inline_batches = &prometheus::BuildCounter().Name("engram_router_inline_batches_total")
                          .Help("Published batches offered to their few subscribers on the publishing thread")
                          .Register(*r).Add({});
    offered = &prometheus::BuildCounter().Name("engram_router_events_offered_total")
                   .Help("Events offered to subscribers (one per matching subscriber)").Register(*r).Add({});
    subscriptions = &prometheus::BuildGauge().Name("engram_router_subscriptions")
                         .Help("Registered subscriptions").Register(*r).Add({});
  }
};

namespace {

// The SSE event name of a lease transition. The kind comes from storage, and a name
// is a line of the SSE frame, so only the known kinds pass (fuzz_storage_record
// found a stored kind with a line break framing an event of its own).
std::string lock_event_name(std::string_view kind) {
  for (std::string_view known : {"acquired", "renewed", "released", "expired"})
    if (kind == known) return "lock_" + std::string(known);
  return "lock_event";
}

}  // namespace

event_ptr to_wire(const api::Event& ev) {
  auto w = std::make_shared<wire_event>();
  w->context_id = ev.context_id();
  w->seq = ev.seq();
  w->published = std::chrono::steady_clock::now();
  switch (ev.kind_case()) {
    case api::Event::kWorkUnit:
      w->json = model::unit_json(ev.work_unit());
      break;
    case api::Event::kContextUpdated:
      w->sse_event = "context_updated";
      w->json = model::dump(model::json{{"type", "context_updated"},
                                        {"context_id", ev.context_id()},
                                        {"seq", ev.seq()},
                                        {"ts", model::timestamp_json(ev.ts_ns())},
                                        {"context", model::to_json(ev.context_updated().context())}});
      break;
    case api::Event::kLockEvent: {
      w->sse_event = lock_event_name(ev.lock_event().kind());
      model::json j{{"type", w->sse_event},
                    {"context_id", ev.context_id()},
                    {"seq", ev.seq()},
                    {"ts", model::timestamp_json(ev.ts_ns())},
                    {"lock", model::to_json(ev.lock_event().lock())}};
      if (!ev.lock_event().released_by().empty()) j["released_by"] = ev.lock_event().released_by();
      w->json = model::dump(j);
      break;
    }
    case api::Event::kContextDeleted:
      w->sse_event = "context_deleted";
      w->json = model::dump(model::json{{"type", "context_deleted"},
                                        {"context_id", ev.context_id()},
                                        {"seq", ev.seq()},
                                        {"ts", model::timestamp_json(ev.ts_ns())},
                                        {"deleted_by", ev.context_deleted().deleted_by()},
                                        {"removed_events", ev.context_deleted().removed_events()}});
      break;
    case api::Event::kCheckpoint: {
      const auto& cp = ev.checkpoint();
      w->sse_event = "checkpoint_saved";
      auto state = model::parse_json(cp.state_json());
      w->json = model::dump(model::json{{"type", "checkpoint_saved"},
                                        {"context_id", ev.context_id()},
                                        {"seq", ev.seq()},
                                        {"ts", model::timestamp_json(ev.ts_ns())},
                                        {"agent_id", cp.agent_id()},
                                        {"version", cp.version()},
                                        {"cursor_seq", cp.cursor_seq()},
                                        {"state", state ? std::move(*state) : model::json()}});
      break;
    }
    case api::Event::kPresence: {
      const auto& p = ev.presence();
      w->sse_event = p.joined() ? "agent_joined" : "agent_left";
      model::json j{{"type", w->sse_event}, {"context_id", ev.context_id()}, {"seq", ev.seq()},
                    {"ts", model::timestamp_json(ev.ts_ns())}, {"agent_id", p.agent_id()}};
      if (p.joined()) j["status"] = p.status();
      else j["reason"] = p.reason();
      w->json = model::dump(j);
      break;
    }
    case api::Event::kTaskEvent: {
      // Kinds come from storage and name an SSE line: only the known ones pass.
      const auto& kind = ev.task_event().kind();
      bool known = false;
      for (std::string_view k : {"created", "claimed", "progress", "completed", "failed", "stranded", "released"})
        known = known || kind == k;
      w->sse_event = known ? "task_" + kind : "task_event";
      w->json = model::dump(model::json{{"type", w->sse_event},
                                        {"context_id", ev.context_id()},
                                        {"seq", ev.seq()},
                                        {"ts", model::timestamp_json(ev.ts_ns())},
                                        {"task", model::to_json(ev.task_event().task())}});
      break;
    }
    case api::Event::kFactEvent: {
      w->sse_event = ev.fact_event().kind() == "retracted" ? "fact_retracted" : "fact_set";
      w->json = model::dump(model::json{{"type", w->sse_event},
                                        {"context_id", ev.context_id()},
                                        {"seq", ev.seq()},
                                        {"ts", model::timestamp_json(ev.ts_ns())},
                                        {"fact", model::to_json(ev.fact_event().fact())}});
      break;
    }
    case api::Event::KIND_NOT_SET:
      w->sse_event = "unknown";
      w->json = model::dump(model::json{{"type", "unknown"}, {"context_id", ev.context_id()}, {"seq", ev.seq()}});
      break;
  }
  return w;
}

bool topic_filter::matches(std::string_view context_id) const {
  const bool named = std::any_of(exact.begin(), exact.end(), [&](const auto& e) { return e == context_id; }) ||
                     std::any_of(prefixes.begin(), prefixes.end(), [&](const auto& p) { return context_id.starts_with(p); });
  return named && (!permit || permit(context_id));
}

router::router(prometheus::Registry* r) : metrics_(std::make_unique<metrics>(r)) {
  thread_ = std::thread([this] {
    model::name_this_thread("router");
    run();
  });
}

router::~router() {
  {
    std::lock_guard lock(queue_mu_);
    stopping_ = true;
    queue_cv_.notify_all();
  }
  thread_.join();
}

void router::publish(const std::vector<std::shared_ptr<const api::Event>>& events) {
  std::unique_lock lock(queue_mu_);
  // With no batch queued or being dispatched, a batch for few sinks is offered
  // here: it cannot overtake an earlier one, and it saves waking the dispatch
  // thread, which on a quiet server is most of an event's way to a subscriber.
  // A batch for many sinks still goes to the dispatch thread, so the committer
  // never serialises a fan-out to thousands.
  if (!queue_.empty() || busy_ || stopping_ || sinks_for(events) > inline_max_sinks) {
    queue_.push_back(events);
    queue_cv_.notify_one();
    return;
  }
  busy_ = true;  // a publish meanwhile queues, and the dispatch thread waits for this one
  lock.unlock();
  dispatch(events);
  if (metrics_->inline_batches) metrics_->inline_batches->Increment();
  lock.lock();
  busy_ = false;
  if (!queue_.empty() || stopping_) queue_cv_.notify_one();
  else idle_cv_.notify_all();
}

size_t router::sinks_for(const std::vector<std::shared_ptr<const api::Event>>& events) {
  std::lock_guard lock(subs_mu_);
  size_t n = 0;
  for (const auto& ev : events) {
    if (auto it = by_context_.find(ev->context_id()); it != by_context_.end()) n += it->second.size();
    n += by_prefix_.size();
  }
  return n;
}

void router::publish_draft(const event_ptr& ev) {
  std::vector<std::shared_ptr<sink>> targets;
  collect(ev->context_id, targets);
  for (const auto& s : targets) s->deliver(ev);
}

void router::flush() {
  std::unique_lock lock(queue_mu_);
  idle_cv_.wait(lock, [&] { return queue_.empty() && !busy_; });
}

router::subscription_id router::subscribe(std::weak_ptr<sink> s, topic_filter filter) {
  auto f = std::make_shared<const topic_filter>(std::move(filter));
  std::lock_guard lock(subs_mu_);
  const auto id = next_id_++;
  for (const auto& ctx : f->exact) by_context_[ctx].push_back({id, s, f});
  if (!f->prefixes.empty()) by_prefix_.push_back({id, s, f});
  if (metrics_->subscriptions) metrics_->subscriptions->Increment();
  return id;
}

void router::unsubscribe(subscription_id id) {
  auto drop = [id](std::vector<entry>& v) {
    v.erase(std::remove_if(v.begin(), v.end(), [id](const entry& e) { return e.id == id; }), v.end());
  };
  std::lock_guard lock(subs_mu_);
  for (auto it = by_context_.begin(); it != by_context_.end();) {
    drop(it->second);
    it = it->second.empty() ? by_context_.erase(it) : std::next(it);
  }
  drop(by_prefix_);
  if (metrics_->subscriptions) metrics_->subscriptions->Decrement();
}

void router::run() {
  for (;;) {
    std::vector<std::shared_ptr<const api::Event>> batch;
    {
      std::unique_lock lock(queue_mu_);
      // Not while a publisher dispatches a batch itself (publish): order.
      queue_cv_.wait(lock, [&] { return !busy_ && (stopping_ || !queue_.empty()); });
      if (queue_.empty()) return;  // stopping
      batch = std::move(queue_.front());
      queue_.pop_front();
      busy_ = true;
    }
    dispatch(batch);
    std::lock_guard lock(queue_mu_);
    busy_ = false;
    if (queue_.empty()) idle_cv_.notify_all();
  }
}

void router::dispatch(const std::vector<std::shared_ptr<const api::Event>>& batch) {
  std::vector<std::shared_ptr<sink>> targets;
  for (const auto& ev : batch) {
    collect(ev->context_id(), targets);
    // An event no one watches is not rendered: appends with no subscriber spent
    // ~4% of their instructions building a message nobody read.
    if (!targets.empty()) {
      const auto wire = to_wire(*ev);
      for (const auto& s : targets) s->deliver(wire);
    }
    if (metrics_->published) metrics_->published->Increment();
    if (metrics_->offered) metrics_->offered->Increment(double(targets.size()));
  }
}

void router::collect(const std::string& context_id, std::vector<std::shared_ptr<sink>>& targets) {
  targets.clear();
  {
    // Copy the matching sinks under the lock; they are offered the event without it.
    std::lock_guard lock(subs_mu_);
    if (auto it = by_context_.find(context_id); it != by_context_.end())
      for (const auto& e : it->second)
        if (auto s = e.target.lock()) targets.push_back(std::move(s));
    for (const auto& e : by_prefix_)
      if (e.filter->matches(context_id))
        if (auto s = e.target.lock()) targets.push_back(std::move(s));
  }
  // A subscription listing a context and a prefix that covers it must get the
  // event once.
  std::sort(targets.begin(), targets.end());
  targets.erase(std::unique(targets.begin(), targets.end()), targets.end());
}

}  // namespace engram::router
