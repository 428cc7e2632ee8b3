#pragma once
// The lease manager: leases with fencing tokens (DESIGN.md §6; how grants, waiting
// and expiry work is in README.md). Owned by app. Public methods are thread-safe;
// its timer thread expires leases; no completion runs under its mutex.

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "engram.pb.h"
#include "locks/options.hpp"
#include "model/clock.hpp"
#include "model/error.hpp"
#include "model/ids.hpp"
#include "storage/store.hpp"

namespace prometheus {
class Registry;
}

namespace engram::locks {

struct acquire_request {
  std::vector<std::string> resources;
  std::string agent;
  std::chrono::milliseconds ttl{0};   // <= 0: the configured default
  std::chrono::milliseconds wait{0};  // 0: fail at once when held
  std::string context_id;             // optional: transitions enter this context's log
};

// Sees every lease transition as it is decided, under the manager's mutex, and may
// add to what is committed with it (engine::tasks keeps task claims on `task:<id>`
// leases this way, so a claim and its lease are one atomic write). Its methods must
// return quickly and must not call the manager.
class observer {
 public:
  virtual ~observer() = default;
  // Before `agent` is granted, at once, a lease on `resource` that it does not hold
  // (the manager found it free): an error refuses the whole acquire. A waiting
  // acquire served later is not asked.
  virtual std::optional<model::error> may_grant(const std::string& resource, const std::string& agent) = 0;
  // After each transition ("acquired", "renewed", "released", "expired").
  virtual void changed(const api::LockEvent& event, storage::lock_change& change) = 0;
};

class manager {
 public:
  using locks_done = std::function<void(model::result<std::vector<api::Lock>>)>;
  using lock_done = std::function<void(model::result<api::Lock>)>;

  // All time (wall and monotonic) comes from `clock`; null means the system clock.
  manager(options opts, std::shared_ptr<const model::clock> clock, prometheus::Registry* metrics);
  ~manager();  // stops the timer; pending waiters are told the server is stopping

  // Loads persisted leases and the token counter, then serves. Until then every
  // call answers `unavailable`.
  model::status attach(storage::store* store);
  // Before attach(); the observer must outlive the manager's use (stop()).
  void set_observer(observer* o) { observer_ = o; }

  void acquire(acquire_request req, locks_done done);
  void renew(std::string resource, std::string agent, std::string lock_id, std::chrono::milliseconds ttl,
             lock_done done);
  // `by` is who asks: the holder, or an operator allowed to free anyone's lease. It is
  // recorded in the "released" event.
  void release(std::string resource, std::string agent, std::string lock_id, std::string by,
               std::function<void(model::status)> done);

  std::optional<api::Lock> get(const std::string& resource) const;
  std::vector<api::Lock> list(std::string_view agent, std::string_view prefix) const;

  // Accepts a fenced write only while that exact lease (resource and token) is held
  // and unexpired. Called by the committer.
  model::status check_fence(const storage::fence& f) const;

  // Expires the leases and waiters whose deadline has passed on the clock, then
  // serves the waiters that can go. The timer thread calls it; a test that advances
  // a manual clock calls it to make expiry happen now.
  void expire_due();

  void stop();

 private:
  using time_point = std::chrono::steady_clock::time_point;
  struct held {
    api::Lock lock;
    time_point deadline;
  };
  struct waiter {
    acquire_request req;
    locks_done done;
    time_point deadline;
  };
  // A decision waiting to be handed to the committer.
  struct outgoing {
    storage::lock_change change;
    std::function<void(model::status)> done;
  };
  struct metrics;

  model::status validate(acquire_request& req) const;
  // `unavailable` before attach() and after stop() (mu_ held).
  std::optional<model::error> not_serving() const;
  // The rest run with mu_ held.
  // Grants, queues or refuses; takes `done` unless it returns the refusal.
  std::optional<model::error> admit(acquire_request req, locks_done& done, time_point now);
  bool is_free_for(const std::string& resource, const std::string& agent, time_point now) const;
  std::string conflict_message(const std::string& resource) const;
  // Updates memory and returns the locks granted and the change to persist.
  std::pair<std::vector<api::Lock>, storage::lock_change> grant(const acquire_request& req, time_point now);
  void queue_grant(const acquire_request& req, locks_done done, time_point now);
  void queue_persist(storage::lock_change change, std::function<void(model::status)> done);
  // Grants every waiter that can go now, in FIFO order.
  void serve_waiters(time_point now);
  time_point next_deadline() const;
  int64_t wall_deadline(std::chrono::milliseconds ttl) const;

  // Without mu_: hands the queued decisions to the committer, in decision order.
  void flush();
  void run_timer();

  // Tells the observer (if any) about the transition logged last in `change`.
  void observe(storage::lock_change& change);

  const options opts_;
  observer* observer_ = nullptr;
  std::shared_ptr<const model::clock> clock_;
  std::unique_ptr<metrics> metrics_;
  mutable model::uuid_v7_generator ids_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  storage::store* store_ = nullptr;
  bool stopping_ = false;
  std::map<std::string, held> held_;  // ordered: prefix listing
  std::unordered_map<std::string, size_t> per_agent_;
  uint64_t last_token_ = 0;
  std::list<waiter> waiters_;
  std::deque<outgoing> outbox_;  // decided, not yet handed to the committer
  bool flushing_ = false;        // a thread is draining outbox_
  std::thread timer_;
};

}  // namespace engram::locks
