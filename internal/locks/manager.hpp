#pragma once
// Leases on shared artifacts with fencing tokens (DESIGN.md §6).
//
// The manager decides in memory, under one mutex, then persists each decision
// through the storage committer (the same durable path as work units) and answers
// only after the commit. Grants are all-or-nothing over a canonical (sorted) set of
// resources, so no request ever holds some resources while waiting for others: no
// deadlock. Waiters form one FIFO list; a waiter is granted only when all its
// resources are free and no earlier waiter needs any of them: no starvation.
// A timer thread reaps expired leases and timed-out waiters. Deadlines are persisted
// as wall-clock time and tracked in-process on the monotonic clock.
//
// Threading: all public methods are thread-safe. Completions run on the storage
// executor (an I/O thread) or, for waiter time-outs, on the timer thread.

#include <chrono>
#include <condition_variable>
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

class manager {
 public:
  using locks_done = std::function<void(model::result<std::vector<api::Lock>>)>;
  using lock_done = std::function<void(model::result<api::Lock>)>;

  manager(options opts, std::shared_ptr<const model::clock> clock, prometheus::Registry* metrics);
  ~manager();  // stops the timer; pending waiters are told the server is stopping

  // Loads persisted leases and the token counter, then serves. Until then every
  // call answers `unavailable`.
  model::status attach(storage::store* store);

  void acquire(acquire_request req, locks_done done);
  void renew(std::string resource, std::string agent, std::string lock_id, std::chrono::milliseconds ttl,
             lock_done done);
  void release(std::string resource, std::string agent, std::string lock_id, std::function<void(model::status)> done);

  std::optional<api::Lock> get(const std::string& resource) const;
  std::vector<api::Lock> list(std::string_view agent, std::string_view prefix) const;

  // Accepts a fenced write only while that exact lease (resource and token) is held
  // and unexpired. Called by the committer.
  model::status check_fence(const storage::fence& f) const;

  void stop();

 private:
  struct held {
    api::Lock lock;
    std::chrono::steady_clock::time_point deadline;
  };
  struct waiter {
    acquire_request req;
    locks_done done;
    std::chrono::steady_clock::time_point deadline;
  };
  struct metrics;

  model::status validate(acquire_request& req) const;
  bool is_free_for(const std::string& resource, const std::string& agent, std::chrono::steady_clock::time_point now) const;
  std::string conflict_message(const std::string& resource) const;
  // Grants (mu_ held): updates memory, returns the locks and the change to persist.
  std::pair<std::vector<api::Lock>, storage::lock_change> grant(const acquire_request& req);
  void persist(storage::lock_change change, std::function<void(model::status)> done);
  // Grants every waiter that can go now, in FIFO order (mu_ held).
  void serve_waiters();
  void run_timer();
  int64_t wall_deadline(std::chrono::milliseconds ttl) const;

  const options opts_;
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
  std::thread timer_;
};

}  // namespace engram::locks
