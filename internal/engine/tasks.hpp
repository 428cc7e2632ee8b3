#pragma once
// Tasks (README "Tasks"): work one agent should do at a time. A task lives in a
// context; claiming it is taking the lease `task:<task_id>` from the lock manager,
// whose fencing token is the claim's, and every change of a task is written with
// the lease transition that caused it (this class is the lock manager's observer),
// so a claim, its lease and its task_claimed event commit together or not at all.
//
//   open ──claim──▶ claimed ──complete──▶ done
//    ▲                │ │ └──fail──────▶ failed
//    │   release      │ └─lease expires─▶ stranded ──claim──▶ claimed …
//    └────────────────┘                   (or failed, after max_attempts claims)
//
// Tasks are kept in memory (loaded at start) and written through to storage; a
// restart resumes them with the leases, and a claim whose lease ran out while the
// server was down is stranded as soon as the lock manager reaps it. Thread-safe.
// Lock order: the lock manager's mutex, then this one; this class never calls the
// lock manager while holding its own.

#include <chrono>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "engram.pb.h"
#include "locks/manager.hpp"
#include "model/clock.hpp"
#include "model/error.hpp"
#include "model/ids.hpp"

namespace engram::storage {
class store;
}

namespace engram::engine {

struct tasks_options {
  uint32_t max_attempts = 3;                // claims before a stranding fails the task
  size_t max_json_bytes = 64 * 1024;        // spec, progress, result (each, as JSON)
  size_t max_depends_on = 64;
};

struct task_create {
  std::string context_id;
  std::string task_id;  // empty: a new UUID
  std::string title;
  std::string spec_json;  // a JSON object or empty
  std::vector<std::string> depends_on;
  uint32_t max_attempts = 0;  // 0: the configured default
  std::string created_by;
};

struct task_claim {
  api::Task task;  // as claimed (with the last progress, for a resumed task)
  api::Lock lock;  // the lease task:<task_id>
};

// What a heartbeat did to one of the agent's claims.
struct claim_renewal {
  std::string task_id;
  bool renewed = false;  // false: the claim was lost (expired, released or taken)
  int64_t expires_at_ns = 0;
};

class tasks final : public locks::observer {
 public:
  tasks(tasks_options opts, storage::store& store, locks::manager& locks, std::shared_ptr<const model::clock> clock);
  tasks(const tasks&) = delete;
  tasks& operator=(const tasks&) = delete;

  // Loads every task and becomes the lock manager's observer: call before the lock
  // manager's attach(), which may strand claims at once.
  model::status start();

  const tasks_options& options() const { return opts_; }
  static std::string resource(std::string_view task_id) { return "task:" + std::string(task_id); }

  void create(task_create req, std::function<void(model::result<api::Task>)> done);
  // 409 naming the holder when claimed, or naming the dependency not done; a holder
  // claiming again extends its claim (same token).
  void claim(std::string task_id, std::string agent, std::chrono::milliseconds ttl,
             std::function<void(model::result<task_claim>)> done);
  // Only the holder with the claim's fencing token (409 "stale fencing token"
  // otherwise). `result_json` / `error` is stored with the task.
  void complete(std::string task_id, std::string agent, uint64_t fence, std::string result_json,
                std::function<void(model::result<api::Task>)> done);
  void fail(std::string task_id, std::string agent, uint64_t fence, std::string error,
            std::function<void(model::result<api::Task>)> done);
  // A heartbeat: renews every claim the agent holds (by the ttl it was claimed
  // with) and stores `progress_json` (when set) with them all, or only with
  // `only_task` when that is set.
  void renew_claims(std::string agent, std::optional<std::string> progress_json, std::string only_task,
                    std::function<void(model::result<std::vector<claim_renewal>>)> done);

  std::optional<api::Task> get(const std::string& task_id) const;
  struct page {
    std::vector<std::string> task_ids;
    bool more = false;
  };
  // The context's tasks in creation order after task `after` (empty: from the
  // first); `status` empty: any. Ids only, so that the mutex the lock manager waits
  // on is held briefly: the records are read from storage (committed state).
  page list(const std::string& context_id, std::string_view status, std::string_view after, size_t limit) const;
  // The records of `ids` as committed.
  model::result<std::vector<api::Task>> read(const std::vector<std::string>& ids) const;

  // locks::observer
  std::optional<model::error> may_grant(const std::string& resource, const std::string& agent) override;
  void changed(const api::LockEvent& event, storage::lock_change& change) override;

 private:
  struct ending {
    bool completed = true;
    std::string result_json, error;
  };
  void end(std::string task_id, std::string agent, uint64_t fence, ending how,
           std::function<void(model::result<api::Task>)> done);
  // Why the task cannot be claimed now, or nullopt (mu_ held). `claimed` counts as
  // claimable: the lock manager has found its lease free.
  std::optional<model::error> unclaimable(const api::Task& t) const;
  api::Task* find(std::string_view task_id);
  void write(storage::lock_change& change, api::Task& t, const char* event_kind);

  tasks_options opts_;
  storage::store& store_;
  locks::manager& locks_;
  std::shared_ptr<const model::clock> clock_;
  model::uuid_v7_generator ids_;

  mutable std::mutex mu_;
  std::map<std::string, api::Task, std::less<>> tasks_;
  // context → (created_at, task id): listing in creation order.
  std::map<std::string, std::set<std::pair<int64_t, std::string>>, std::less<>> by_context_;
  std::map<std::string, std::set<std::string>, std::less<>> claims_;  // agent → tasks it holds (heartbeats)
  std::set<std::string, std::less<>> creating_;           // created in memory, not yet committed
  std::map<uint64_t, ending> ending_;                     // by the claim's token: ends waiting for their release
  std::map<std::string, std::string, std::less<>> progress_;  // progress waiting for its renewal
  std::map<uint64_t, api::Task> claimed_;                 // by token: the task as its claim left it
  std::map<uint64_t, api::Task> ended_;                   // by token: the task as its end left it
};

}  // namespace engram::engine
