#include "locks/manager.hpp"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <ctime>

#include "model/text.hpp"
#include "model/thread_name.hpp"

namespace engram::locks {
namespace {

using model::errc;
using model::fail;


}  // namespace

struct manager::metrics {
  prometheus::Gauge* active = nullptr;
  prometheus::Gauge* waiting = nullptr;
  prometheus::Counter* grants = nullptr;
  prometheus::Counter* conflicts = nullptr;
  prometheus::Counter* expiries = nullptr;
  prometheus::Counter* fenced_rejections = nullptr;
  prometheus::Histogram* wait_seconds = nullptr;
  explicit metrics(prometheus::Registry* r) {
    if (!r) return;
    using namespace prometheus;
    active = &BuildGauge().Name("engram_locks_active").Help("Leases currently held").Register(*r).Add({});
    waiting = &BuildGauge().Name("engram_locks_waiting").Help("Lock requests waiting").Register(*r).Add({});
    grants = &BuildCounter().Name("engram_locks_grants_total").Help("Leases granted (new holders)").Register(*r).Add({});
    conflicts = &BuildCounter().Name("engram_locks_conflicts_total")
                     .Help("Lock requests refused or timed out because a resource was held")
                     .Register(*r).Add({});
    expiries = &BuildCounter().Name("engram_locks_expiries_total").Help("Leases that expired").Register(*r).Add({});
    fenced_rejections = &BuildCounter().Name("engram_locks_fenced_rejections_total")
                             .Help("Writes rejected for a stale fencing token").Register(*r).Add({});
    wait_seconds = &BuildHistogram().Name("engram_locks_wait_seconds")
                        .Help("Time a waiting lock request waited until granted or timed out")
                        .Register(*r)
                        .Add({}, Histogram::BucketBoundaries{0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30});
  }
};

manager::manager(options opts, std::shared_ptr<const model::clock> clock, prometheus::Registry* r)
    : opts_(opts), clock_(clock ? std::move(clock) : model::default_clock()), metrics_(std::make_unique<metrics>(r)) {}

manager::~manager() { stop(); }

void manager::stop() {
  std::list<waiter> left;
  {
    std::lock_guard lock(mu_);
    if (stopping_) return;
    stopping_ = true;
    left.swap(waiters_);
    cv_.notify_all();
  }
  if (timer_.joinable()) timer_.join();
  for (auto& w : left) w.done(fail(errc::unavailable, "the server is shutting down"));
}

model::status manager::attach(storage::store* store) {
  auto loaded = store->load_locks();
  if (!loaded) return std::unexpected(loaded.error());
  std::lock_guard lock(mu_);
  store_ = store;
  last_token_ = loaded->second;
  const int64_t now_wall = clock_->now_ns();
  const auto now = clock_->steady_now();
  for (auto& l : loaded->first) {
    last_token_ = std::max(last_token_, l.fencing_token());
    // The persisted deadline is wall-clock; track it on the monotonic clock. A lease
    // that expired while the server was down is reaped by the timer at once.
    const auto remaining = std::chrono::nanoseconds(std::max<int64_t>(0, l.expires_at_ns() - now_wall));
    ++per_agent_[l.holder_agent()];
    held_[l.resource_path()] = held{l, now + std::chrono::duration_cast<time_point::duration>(remaining)};
  }
  if (metrics_->active) metrics_->active->Set(double(held_.size()));
  store->set_fence_checker([this](const storage::fence& f) { return check_fence(f); });
  timer_ = std::thread([this] {
    model::name_this_thread("lease-timer");
    run_timer();
  });
  spdlog::info("locks: {} leases recovered, fencing counter at {}", held_.size(), last_token_);
  return {};
}

int64_t manager::wall_deadline(std::chrono::milliseconds ttl) const {
  return clock_->now_ns() + std::chrono::duration_cast<std::chrono::nanoseconds>(ttl).count();
}

model::status manager::validate(acquire_request& req) const {
  if (auto bad = model::check_identifier("agent_id", req.agent))
    return fail(errc::invalid_argument, *bad + " (in the body or the X-Agent-ID header)");
  if (req.resources.empty()) return fail(errc::invalid_argument, "resource_path is required");
  if (req.resources.size() > opts_.max_resources_per_request)
    return fail(errc::invalid_argument,
                "at most " + std::to_string(opts_.max_resources_per_request) + " resources per request");
  for (const auto& r : req.resources)
    if (auto bad = model::check_identifier("resource_path", r, opts_.max_resource_bytes))
      return fail(errc::invalid_argument, *bad);
  if (!req.context_id.empty())
    if (auto bad = model::check_identifier("context_id", req.context_id)) return fail(errc::invalid_argument, *bad);
  // Canonical order: every multi-resource request takes its resources sorted.
  std::sort(req.resources.begin(), req.resources.end());
  req.resources.erase(std::unique(req.resources.begin(), req.resources.end()), req.resources.end());
  if (req.ttl.count() <= 0) req.ttl = opts_.default_ttl;
  req.ttl = std::min(req.ttl, opts_.max_ttl);
  req.wait = std::clamp(req.wait, std::chrono::milliseconds(0), opts_.max_wait);
  return {};
}

bool manager::is_free_for(const std::string& resource, const std::string& agent, time_point now) const {
  auto it = held_.find(resource);
  return it == held_.end() || it->second.deadline <= now || it->second.lock.holder_agent() == agent;
}

std::string manager::conflict_message(const std::string& resource) const {
  auto it = held_.find(resource);
  if (it == held_.end()) return "resource '" + resource + "' is wanted by an earlier waiting request";
  return "resource '" + resource + "' is locked by agent '" + it->second.lock.holder_agent() + "' until " +
         model::rfc3339_seconds(it->second.lock.expires_at_ns());
}

std::pair<std::vector<api::Lock>, storage::lock_change> manager::grant(const acquire_request& req, time_point now) {
  std::vector<api::Lock> granted;
  storage::lock_change change;
  for (const auto& r : req.resources) {
    auto it = held_.find(r);
    api::LockEvent ev;
    if (it != held_.end() && it->second.deadline > now && it->second.lock.holder_agent() == req.agent) {
      // The same agent again: extend, keeping lock_id and token.
      it->second.lock.set_expires_at_ns(wall_deadline(req.ttl));
      it->second.deadline = now + req.ttl;
      if (!req.context_id.empty()) it->second.lock.set_context_id(req.context_id);
      ev.set_kind("renewed");
    } else {
      if (it != held_.end()) {
        // Expired but not yet reaped by the timer: record its expiry first.
        --per_agent_[it->second.lock.holder_agent()];
        api::LockEvent expired;
        expired.set_kind("expired");
        *expired.mutable_lock() = it->second.lock;
        change.events.push_back(std::move(expired));
        observe(change);
        if (metrics_->expiries) metrics_->expiries->Increment();
      }
      api::Lock l;
      l.set_resource_path(r);
      l.set_holder_agent(req.agent);
      l.set_lock_id(ids_.next(clock_->now_ns() / 1'000'000).to_string());
      l.set_fencing_token(++last_token_);
      l.set_expires_at_ns(wall_deadline(req.ttl));
      l.set_acquired_at_ns(clock_->now_ns());
      l.set_context_id(req.context_id);
      held_[r] = held{l, now + req.ttl};
      ++per_agent_[req.agent];
      change.fencing_high = last_token_;
      ev.set_kind("acquired");
      if (metrics_->grants) metrics_->grants->Increment();
    }
    const auto& l = held_[r].lock;
    granted.push_back(l);
    change.puts.push_back(l);
    *ev.mutable_lock() = l;
    change.events.push_back(std::move(ev));
    observe(change);
  }
  if (metrics_->active) metrics_->active->Set(double(held_.size()));
  cv_.notify_all();  // a new earliest deadline, maybe
  return {std::move(granted), std::move(change)};
}

void manager::queue_grant(const acquire_request& req, locks_done done, time_point now) {
  auto [granted, change] = grant(req, now);
  queue_persist(std::move(change), [done = std::move(done), granted = std::move(granted)](model::status ok) {
    if (!ok) return done(std::unexpected(ok.error()));
    done(granted);
  });
}

void manager::observe(storage::lock_change& change) {
  if (observer_) observer_->changed(change.events.back(), change);
}

void manager::queue_persist(storage::lock_change change, std::function<void(model::status)> done) {
  change.default_context = opts_.events_context;
  outbox_.push_back(outgoing{std::move(change), std::move(done)});
}

// The committer must see decisions in the order they were taken (a release before
// the grant it enables, a grant before a later expiry of the same resource), yet
// update_locks may complete at once on the calling thread (a full queue, a store
// that is stopping, an inline executor), so it is never called under mu_. One
// thread drains at a time; a thread that finds another draining leaves its
// decisions to it.
void manager::flush() {
  std::unique_lock lock(mu_);
  if (flushing_) return;
  flushing_ = true;
  while (!outbox_.empty()) {
    auto batch = std::exchange(outbox_, {});
    lock.unlock();
    for (auto& o : batch) store_->update_locks(std::move(o.change), std::move(o.done));
    lock.lock();
  }
  flushing_ = false;
}

std::optional<model::error> manager::not_serving() const {
  if (!store_ || stopping_) return model::error{errc::unavailable, "locks are not available yet; retry shortly"};
  return std::nullopt;
}

std::optional<model::error> manager::admit(acquire_request req, locks_done& done, time_point now) {
  if (auto refused = not_serving()) return refused;
  bool free = true;
  std::string blocker;
  for (const auto& r : req.resources) {
    if (!is_free_for(r, req.agent, now)) {
      free = false;
      blocker = r;
      break;
    }
  }
  // FIFO: a resource an earlier waiter wants is not free for newcomers.
  if (free) {
    for (const auto& w : waiters_) {
      for (const auto& r : w.req.resources) {
        if (std::binary_search(req.resources.begin(), req.resources.end(), r) && w.req.agent != req.agent) {
          free = false;
          blocker = r;
        }
      }
      if (!free) break;
    }
  }
  if (free) {
    size_t new_ones = 0;
    for (const auto& r : req.resources) {
      auto it = held_.find(r);
      if (it == held_.end() || it->second.lock.holder_agent() != req.agent) ++new_ones;
    }
    if (per_agent_[req.agent] + new_ones > opts_.max_locks_per_agent)
      return model::error{errc::conflict, "agent '" + req.agent + "' would hold more than " +
                                              std::to_string(opts_.max_locks_per_agent) + " locks"};
    if (observer_)
      for (const auto& r : req.resources) {
        auto it = held_.find(r);
        if (it != held_.end() && it->second.deadline > now && it->second.lock.holder_agent() == req.agent) continue;
        if (auto refused = observer_->may_grant(r, req.agent)) return refused;
      }
    queue_grant(req, std::move(done), now);
    return std::nullopt;
  }
  if (req.wait.count() > 0) {
    const auto deadline = now + req.wait;
    waiters_.push_back(waiter{std::move(req), std::move(done), deadline});
    if (metrics_->waiting) metrics_->waiting->Set(double(waiters_.size()));
    cv_.notify_all();
    return std::nullopt;
  }
  if (metrics_->conflicts) metrics_->conflicts->Increment();
  return model::error{errc::conflict, conflict_message(blocker)};
}

void manager::acquire(acquire_request req, locks_done done) {
  if (auto ok = validate(req); !ok) return done(std::unexpected(ok.error()));
  std::optional<model::error> refused;
  {
    std::lock_guard lock(mu_);
    refused = admit(std::move(req), done, clock_->steady_now());
  }
  flush();
  if (refused) done(std::unexpected(std::move(*refused)));
}

void manager::renew(std::string resource, std::string agent, std::string lock_id, std::chrono::milliseconds ttl,
                    lock_done done) {
  std::optional<model::error> refused;
  {
    std::lock_guard lock(mu_);
    auto it = held_.find(resource);
    if (auto unavailable = not_serving()) {
      refused = std::move(unavailable);
    } else if (it == held_.end() || it->second.deadline <= clock_->steady_now() ||
               it->second.lock.holder_agent() != agent ||
               it->second.lock.lock_id() != lock_id) {
      refused = model::error{errc::conflict,
                             "the lease on '" + resource + "' was lost (expired, released or taken); acquire it again"};
    } else {
      if (ttl.count() <= 0) ttl = opts_.default_ttl;
      ttl = std::min(ttl, opts_.max_ttl);
      it->second.lock.set_expires_at_ns(wall_deadline(ttl));
      it->second.deadline = clock_->steady_now() + ttl;
      storage::lock_change change;
      change.puts.push_back(it->second.lock);
      api::LockEvent ev;
      ev.set_kind("renewed");
      *ev.mutable_lock() = it->second.lock;
      change.events.push_back(std::move(ev));
      observe(change);
      queue_persist(std::move(change), [done = std::move(done), renewed = it->second.lock](model::status ok) {
        if (!ok) return done(std::unexpected(ok.error()));
        done(renewed);
      });
      cv_.notify_all();
    }
  }
  flush();
  if (refused) done(std::unexpected(std::move(*refused)));
}

void manager::release(std::string resource, std::string agent, std::string lock_id, std::string by,
                      std::function<void(model::status)> done) {
  std::optional<model::error> refused;
  {
    std::lock_guard lock(mu_);
    auto it = held_.find(resource);
    const auto now = clock_->steady_now();
    if (auto unavailable = not_serving()) {
      refused = std::move(unavailable);
    } else if (it == held_.end() || it->second.deadline <= now) {
      refused = model::error{errc::not_found, "no lock on '" + resource + "'"};
    } else if (it->second.lock.holder_agent() != agent) {
      refused = model::error{errc::invalid_argument, "the lock on '" + resource + "' is held by agent '" +
                                                         it->second.lock.holder_agent() + "', not '" + agent + "'"};
    } else if (it->second.lock.lock_id() != lock_id) {
      refused = model::error{errc::invalid_argument, "lock_id does not match the lock on '" + resource + "'"};
    } else {
      storage::lock_change change;
      change.deletes.push_back(resource);
      api::LockEvent ev;
      ev.set_kind("released");
      *ev.mutable_lock() = it->second.lock;
      ev.set_released_by(by.empty() ? agent : std::move(by));
      change.events.push_back(std::move(ev));
      observe(change);
      --per_agent_[agent];
      held_.erase(it);
      if (metrics_->active) metrics_->active->Set(double(held_.size()));
      // Queued before any grant it enables.
      queue_persist(std::move(change), std::move(done));
      serve_waiters(now);
    }
  }
  flush();
  if (refused) done(std::unexpected(std::move(*refused)));
}

void manager::serve_waiters(time_point now) {
  std::vector<std::string> wanted_earlier;  // resources of waiters still waiting ahead
  for (auto it = waiters_.begin(); it != waiters_.end();) {
    bool can = true;
    for (const auto& r : it->req.resources) {
      if (!is_free_for(r, it->req.agent, now) ||
          std::find(wanted_earlier.begin(), wanted_earlier.end(), r) != wanted_earlier.end()) {
        can = false;
        break;
      }
    }
    if (!can) {
      wanted_earlier.insert(wanted_earlier.end(), it->req.resources.begin(), it->req.resources.end());
      ++it;
      continue;
    }
    if (metrics_->wait_seconds)
      metrics_->wait_seconds->Observe(
          std::chrono::duration<double>(now - (it->deadline - it->req.wait)).count());
    queue_grant(it->req, std::move(it->done), now);
    it = waiters_.erase(it);
  }
  if (metrics_->waiting) metrics_->waiting->Set(double(waiters_.size()));
}

void manager::expire_due() {
  std::vector<std::pair<locks_done, std::string>> timed_out;
  {
    std::lock_guard lock(mu_);
    if (!store_ || stopping_) return;
    const auto now = clock_->steady_now();
    // Reap expired leases (one change, events in resource order).
    storage::lock_change change;
    for (auto it = held_.begin(); it != held_.end();) {
      if (it->second.deadline > now) {
        ++it;
        continue;
      }
      change.deletes.push_back(it->first);
      api::LockEvent ev;
      ev.set_kind("expired");
      *ev.mutable_lock() = it->second.lock;
      change.events.push_back(std::move(ev));
      observe(change);
      --per_agent_[it->second.lock.holder_agent()];
      if (metrics_->expiries) metrics_->expiries->Increment();
      it = held_.erase(it);
    }
    if (!change.deletes.empty()) {
      if (metrics_->active) metrics_->active->Set(double(held_.size()));
      queue_persist(std::move(change), [](model::status ok) {
        if (!ok) spdlog::error("locks: persisting expiries failed: {}", ok.error().message);
      });
    }
    // Waiters whose time ran out.
    for (auto it = waiters_.begin(); it != waiters_.end();) {
      if (it->deadline > now) {
        ++it;
        continue;
      }
      std::string msg = "timed out waiting: ";
      for (const auto& r : it->req.resources)
        if (!is_free_for(r, it->req.agent, now)) {
          msg += conflict_message(r);
          break;
        }
      if (msg.ends_with(": ")) msg += "an earlier waiting request holds its place";
      if (metrics_->conflicts) metrics_->conflicts->Increment();
      if (metrics_->wait_seconds) metrics_->wait_seconds->Observe(std::chrono::duration<double>(it->req.wait).count());
      timed_out.emplace_back(std::move(it->done), std::move(msg));
      it = waiters_.erase(it);
    }
    serve_waiters(now);
  }
  flush();
  for (auto& [done, msg] : timed_out) done(fail(errc::conflict, msg));
}

manager::time_point manager::next_deadline() const {
  auto next = time_point::max();
  for (const auto& [r, h] : held_) next = std::min(next, h.deadline);
  for (const auto& w : waiters_) next = std::min(next, w.deadline);
  return next;
}

// Waits for a duration rather than until a time point, so that a clock whose
// monotonic epoch is not steady_clock's (a test's manual clock) never spins; such a
// test calls expire_due() itself after advancing its clock.
void manager::run_timer() {
  std::unique_lock lock(mu_);
  while (!stopping_) {
    const auto next = next_deadline();
    if (next == time_point::max()) cv_.wait(lock);
    else cv_.wait_for(lock, next - clock_->steady_now());
    if (stopping_) break;
    lock.unlock();
    expire_due();
    lock.lock();
  }
}

std::optional<api::Lock> manager::get(const std::string& resource) const {
  std::lock_guard lock(mu_);
  auto it = held_.find(resource);
  if (it == held_.end() || it->second.deadline <= clock_->steady_now()) return std::nullopt;
  return it->second.lock;
}

std::vector<api::Lock> manager::list(std::string_view agent, std::string_view prefix) const {
  std::vector<api::Lock> out;
  std::lock_guard lock(mu_);
  const auto now = clock_->steady_now();
  for (auto it = held_.lower_bound(std::string(prefix)); it != held_.end() && it->first.starts_with(prefix); ++it) {
    if (it->second.deadline <= now) continue;
    if (!agent.empty() && it->second.lock.holder_agent() != agent) continue;
    out.push_back(it->second.lock);
  }
  return out;
}

model::status manager::check_fence(const storage::fence& f) const {
  std::lock_guard lock(mu_);
  auto it = held_.find(f.resource);
  const bool live = it != held_.end() && it->second.deadline > clock_->steady_now();
  if (live && it->second.lock.fencing_token() == f.token) return {};
  if (metrics_->fenced_rejections) metrics_->fenced_rejections->Increment();
  std::string why = !live
                        ? "the lease is no longer held"
                        : "the lease now has token " + std::to_string(it->second.lock.fencing_token());
  return fail(errc::conflict, "stale fencing token " + std::to_string(f.token) + " for '" + f.resource + "': " + why);
}

}  // namespace engram::locks
