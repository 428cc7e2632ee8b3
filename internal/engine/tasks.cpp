#include "engine/tasks.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <ctime>
#include <memory>

#include "model/text.hpp"
#include "storage/store.hpp"

namespace engram::engine {
namespace {

using model::errc;


model::error stale(std::string_view task_id, uint64_t fence, std::string_view why) {
  return {errc::conflict, "stale fencing token " + std::to_string(fence) + " for task '" + std::string(task_id) +
                              "': " + std::string(why)};
}

}  // namespace

tasks::tasks(tasks_options opts, storage::store& store, locks::manager& locks,
             std::shared_ptr<const model::clock> clock)
    : opts_(opts), store_(store), locks_(locks), clock_(clock ? std::move(clock) : model::default_clock()) {}

model::status tasks::start() {
  auto loaded = store_.load_tasks();
  if (!loaded) return std::unexpected(loaded.error());
  size_t claimed = 0;
  {
    std::lock_guard lock(mu_);
    for (auto& t : *loaded) {
      if (t.status() == "claimed") {
        ++claimed;
        claims_[t.holder_agent()].insert(t.task_id());
      }
      by_context_[t.context_id()].emplace(t.created_at_ns(), t.task_id());
      auto id = t.task_id();
      tasks_.emplace(std::move(id), std::move(t));
    }
  }
  locks_.set_observer(this);
  if (!loaded->empty()) spdlog::info("tasks: {} tasks recovered, {} claimed", loaded->size(), claimed);
  return {};
}

api::Task* tasks::find(std::string_view task_id) {
  auto it = tasks_.find(task_id);
  return it == tasks_.end() ? nullptr : &it->second;
}

std::optional<api::Task> tasks::get(const std::string& task_id) const {
  std::lock_guard lock(mu_);
  auto it = tasks_.find(task_id);
  if (it == tasks_.end() || creating_.contains(task_id)) return std::nullopt;
  return it->second;
}

tasks::page tasks::list(const std::string& context_id, std::string_view status, std::string_view after,
                        size_t limit) const {
  page out;
  std::lock_guard lock(mu_);
  auto ctx = by_context_.find(context_id);
  if (ctx == by_context_.end()) return out;
  auto it = ctx->second.begin();
  if (!after.empty()) {
    auto a = tasks_.find(after);
    if (a == tasks_.end() || a->second.context_id() != context_id) return out;
    it = ctx->second.upper_bound({a->second.created_at_ns(), a->second.task_id()});
  }
  for (; it != ctx->second.end(); ++it) {
    const auto& id = it->second;
    if (creating_.contains(id)) continue;
    if (!status.empty() && tasks_.at(id).status() != status) continue;
    if (out.task_ids.size() == limit) {
      out.more = true;
      break;
    }
    out.task_ids.push_back(id);
  }
  return out;
}

model::result<std::vector<api::Task>> tasks::read(const std::vector<std::string>& ids) const {
  return store_.get_tasks(ids);
}

void tasks::write(storage::lock_change& change, api::Task& t, const char* event_kind) {
  t.set_updated_at_ns(clock_->now_ns());
  change.tasks.push_back(storage::task_write{t, event_kind});
}

void tasks::create(task_create req, std::function<void(model::result<api::Task>)> done) {
  if (req.task_id.empty()) req.task_id = ids_.next(clock_->now_ns() / 1'000'000).to_string();
  if (req.depends_on.size() > opts_.max_depends_on)
    return done(model::fail(errc::invalid_argument,
                            "depends_on lists at most " + std::to_string(opts_.max_depends_on) + " tasks"));
  storage::lock_change change;
  api::Task t;
  std::optional<model::error> refused;  // answered after the mutex is released
  {
    std::lock_guard lock(mu_);
    if (tasks_.contains(req.task_id))
      refused = model::error{errc::conflict, "task '" + req.task_id + "' exists already"};
    for (const auto& dep : req.depends_on) {
      if (refused) break;
      if (dep == req.task_id) refused = model::error{errc::invalid_argument, "a task cannot depend on itself"};
      else if (!tasks_.contains(dep) || creating_.contains(dep))
        refused = model::error{errc::invalid_argument, "depends_on names task '" + dep + "', which does not exist"};
    }
    if (!refused) {
    t.set_task_id(req.task_id);
    t.set_context_id(req.context_id);
    t.set_title(std::move(req.title));
    t.set_spec_json(req.spec_json.empty() ? "{}" : std::move(req.spec_json));
    for (auto& d : req.depends_on) t.add_depends_on(std::move(d));
    t.set_status("open");
    t.set_max_attempts(req.max_attempts ? req.max_attempts : opts_.max_attempts);
    t.set_created_by(std::move(req.created_by));
    t.set_created_at_ns(clock_->now_ns());
    write(change, t, "created");
    tasks_[t.task_id()] = t;
    by_context_[t.context_id()].emplace(t.created_at_ns(), t.task_id());
    creating_.insert(t.task_id());
    }
  }
  if (refused) return done(std::unexpected(*refused));
  // Not through the lock manager: no lease changes. Until it commits the task is
  // invisible and cannot be claimed, so nothing about it can be ordered before it.
  store_.update_locks(std::move(change), [this, t, done = std::move(done)](model::status ok) {
    {
      std::lock_guard lock(mu_);
      creating_.erase(t.task_id());
      if (!ok) {
        tasks_.erase(t.task_id());
        by_context_[t.context_id()].erase({t.created_at_ns(), t.task_id()});
      }
    }
    if (!ok) return done(std::unexpected(ok.error()));
    done(t);
  });
}

std::optional<model::error> tasks::unclaimable(const api::Task& t) const {
  if (creating_.contains(t.task_id()))
    return model::error{errc::conflict, "task '" + t.task_id() + "' is being created; retry"};
  if (t.status() == "done" || t.status() == "failed")
    return model::error{errc::conflict, "task '" + t.task_id() + "' is " + t.status() + "; it cannot be claimed"};
  for (const auto& dep : t.depends_on()) {
    auto it = tasks_.find(dep);
    const std::string status = it == tasks_.end() ? "missing" : it->second.status();
    if (status != "done")
      return model::error{errc::conflict, "task '" + t.task_id() + "' depends on task '" + dep + "', which is " +
                                              status + ", not done"};
  }
  return std::nullopt;
}

void tasks::claim(std::string task_id, std::string agent, std::chrono::milliseconds ttl,
                  std::function<void(model::result<task_claim>)> done) {
  std::optional<model::error> refused;
  {
    std::lock_guard lock(mu_);
    auto* t = find(task_id);
    if (!t || creating_.contains(task_id)) refused = model::error{errc::not_found, "no task '" + task_id + "'"};
    else refused = unclaimable(*t);  // answered here for a clear message; may_grant decides under the lease's lock
  }
  if (refused) return done(std::unexpected(*refused));
  locks::acquire_request req;
  req.resources = {resource(task_id)};
  req.agent = agent;
  req.ttl = ttl;
  locks_.acquire(std::move(req), [this, task_id, agent, done = std::move(done)](
                                     model::result<std::vector<api::Lock>> granted) {
    if (!granted) {
      auto e = granted.error();
      // The lock manager names the resource; say task.
      if (e.code == errc::conflict && e.message.starts_with("resource 'task:"))
        e.message = "task '" + task_id + "' is claimed: " + e.message;
      return done(std::unexpected(e));
    }
    const api::Lock& l = granted->front();
    std::optional<api::Task> claimed;
    std::optional<model::error> refused;
    {
      std::lock_guard lock(mu_);
      if (auto it = claimed_.find(l.fencing_token()); it != claimed_.end()) {
        claimed = std::move(it->second);
        claimed_.erase(it);
      } else if (auto* t = find(task_id);
                 t && t->status() == "claimed" && t->fencing_token() == l.fencing_token()) {
        claimed = *t;  // the holder again: its claim was extended
      } else {
        refused = model::error{errc::conflict, "task '" + task_id + "' is " + (t ? t->status() : "gone") +
                                                   "; it cannot be claimed"};
      }
    }
    if (refused) {
      // Its state changed between the check and the grant (it failed on a last
      // stranding): give the lease back.
      locks_.release(l.resource_path(), agent, l.lock_id(), agent, [](model::status) {});
      return done(std::unexpected(*refused));
    }
    done(task_claim{std::move(*claimed), l});
  });
}

void tasks::complete(std::string task_id, std::string agent, uint64_t fence, std::string result_json,
                     std::function<void(model::result<api::Task>)> done) {
  end(std::move(task_id), std::move(agent), fence, ending{true, std::move(result_json), ""}, std::move(done));
}

void tasks::fail(std::string task_id, std::string agent, uint64_t fence, std::string error,
                 std::function<void(model::result<api::Task>)> done) {
  end(std::move(task_id), std::move(agent), fence, ending{false, "", std::move(error)}, std::move(done));
}

void tasks::end(std::string task_id, std::string agent, uint64_t fence, ending how,
                std::function<void(model::result<api::Task>)> done) {
  std::string lock_id;
  std::optional<model::error> refused;
  {
    std::lock_guard lock(mu_);
    auto* t = find(task_id);
    if (!t || creating_.contains(task_id))
      refused = model::error{errc::not_found, "no task '" + task_id + "'"};
    else if (t->status() != "claimed")
      refused = stale(task_id, fence, "the task is " + t->status() + ", not claimed");
    else if (t->fencing_token() != fence || t->holder_agent() != agent)
      refused = stale(task_id, fence,
                      "the task is claimed by agent '" + t->holder_agent() + "' with token " +
                          std::to_string(t->fencing_token()));
    else if (!ending_.emplace(fence, std::move(how)).second)
      refused = model::error{errc::conflict, "task '" + task_id + "' is being completed or failed already"};
    else
      lock_id = t->lock_id();
  }
  if (refused) return done(std::unexpected(*refused));
  locks_.release(resource(task_id), agent, lock_id, agent, [this, task_id, fence, done = std::move(done)](model::status ok) {
    std::optional<api::Task> ended;
    {
      std::lock_guard lock(mu_);
      if (!ok) ending_.erase(fence);  // else changed() consumed it
      if (auto it = ended_.find(fence); it != ended_.end()) {
        ended = std::move(it->second);
        ended_.erase(it);
      }
    }
    if (!ok) {
      // Lost between the check and the release (expired, or taken after expiring).
      if (ok.error().code == errc::not_found || ok.error().code == errc::invalid_argument)
        return done(std::unexpected(stale(task_id, fence, "the claim was lost")));
      return done(std::unexpected(ok.error()));
    }
    if (!ended) return done(model::fail(errc::internal, "task '" + task_id + "' ended without a record"));
    done(std::move(*ended));
  });
}

void tasks::renew_claims(std::string agent, std::optional<std::string> progress_json, std::string only_task,
                         std::function<void(model::result<std::vector<claim_renewal>>)> done) {
  struct claim_ref {
    std::string task_id, lock_id;
    std::chrono::milliseconds ttl;
  };
  std::vector<claim_ref> held;
  {
    std::lock_guard lock(mu_);
    if (auto mine = claims_.find(agent); mine != claims_.end())
      for (const auto& id : mine->second) {
        if (!only_task.empty() && id != only_task) continue;
        const auto& t = tasks_.at(id);
        held.push_back({id, t.lock_id(), std::chrono::milliseconds(t.claim_ttl_ms())});
        if (progress_json) progress_[id] = *progress_json;
      }
  }
  if (held.empty()) {
    if (!only_task.empty())
      return done(model::fail(errc::conflict, "agent '" + agent + "' holds no claim on task '" + only_task + "'"));
    return done(std::vector<claim_renewal>{});
  }
  struct gather {
    std::mutex mu;
    std::vector<claim_renewal> out;
    std::atomic<size_t> left;
    std::optional<model::error> failed;
    std::function<void(model::result<std::vector<claim_renewal>>)> done;
  };
  auto g = std::make_shared<gather>();
  g->left = held.size();
  g->done = std::move(done);
  for (auto& c : held) {
    locks_.renew(resource(c.task_id), agent, c.lock_id, c.ttl,
                 [this, g, task_id = c.task_id](model::result<api::Lock> r) {
                   if (!r) {  // else changed() consumed it
                     std::lock_guard lock(mu_);
                     progress_.erase(task_id);
                   }
                   {
                     std::lock_guard lock(g->mu);
                     if (r) g->out.push_back({task_id, true, r->expires_at_ns()});
                     else if (r.error().code == errc::conflict) g->out.push_back({task_id, false, 0});
                     else g->failed = r.error();
                   }
                   if (--g->left > 0) return;
                   if (g->failed) return g->done(std::unexpected(*g->failed));
                   std::sort(g->out.begin(), g->out.end(),
                             [](const auto& a, const auto& b) { return a.task_id < b.task_id; });
                   g->done(std::move(g->out));
                 });
  }
}

std::optional<model::error> tasks::may_grant(const std::string& resource, const std::string& agent) {
  (void)agent;
  if (!resource.starts_with("task:")) return std::nullopt;
  std::lock_guard lock(mu_);
  auto* t = find(std::string_view(resource).substr(5));
  if (!t) return std::nullopt;  // a lease like any other
  return unclaimable(*t);
}

void tasks::changed(const api::LockEvent& ev, storage::lock_change& change) {
  const auto& l = ev.lock();
  if (!l.resource_path().starts_with("task:")) return;
  const auto task_id = std::string_view(l.resource_path()).substr(5);
  std::lock_guard lock(mu_);
  auto* t = find(task_id);
  if (!t) return;
  const auto& kind = ev.kind();
  if (kind == "acquired") {
    if (unclaimable(*t)) return;  // the lease is granted, the task is not claimed (claim() gives it back)
    t->set_status("claimed");
    t->set_holder_agent(l.holder_agent());
    t->set_fencing_token(l.fencing_token());
    t->set_lock_id(l.lock_id());
    t->set_claim_expires_at_ns(l.expires_at_ns());
    t->set_claim_ttl_ms(std::max<int64_t>(1, (l.expires_at_ns() - l.acquired_at_ns()) / 1'000'000));
    t->set_attempts(t->attempts() + 1);
    claims_[l.holder_agent()].insert(t->task_id());
    write(change, *t, "claimed");
    claimed_[l.fencing_token()] = *t;
    return;
  }
  // The rest concern the lease the task is claimed with.
  if (t->status() != "claimed" || t->fencing_token() != l.fencing_token()) return;
  const auto let_go = [&](const char* status) {
    claimed_.erase(t->fencing_token());  // a claim whose answer never collected it
    if (auto mine = claims_.find(t->holder_agent()); mine != claims_.end()) {
      mine->second.erase(t->task_id());
      if (mine->second.empty()) claims_.erase(mine);
    }
    t->set_status(status);
    t->set_last_holder(t->holder_agent());
    t->clear_holder_agent();
    t->clear_fencing_token();
    t->clear_lock_id();
    t->clear_claim_expires_at_ns();
    t->clear_claim_ttl_ms();
  };
  if (kind == "renewed") {
    t->set_claim_expires_at_ns(l.expires_at_ns());
    auto p = progress_.find(task_id);
    if (p != progress_.end() && p->second != t->progress_json()) {
      t->set_progress_json(std::move(p->second));
      progress_.erase(p);
      write(change, *t, "progress");
    } else {
      if (p != progress_.end()) progress_.erase(p);
      write(change, *t, "");  // the new expiry, unlogged: the lease is logged
    }
  } else if (kind == "released") {
    auto e = ending_.find(l.fencing_token());
    if (e == ending_.end()) {  // released without ending it (DELETE /locks/task:…): open again
      let_go("open");
      write(change, *t, "released");
    } else {
      let_go(e->second.completed ? "done" : "failed");
      if (e->second.completed) t->set_result_json(std::move(e->second.result_json));
      else t->set_error(std::move(e->second.error));
      ending_.erase(e);
      write(change, *t, t->status() == "done" ? "completed" : "failed");
      ended_[l.fencing_token()] = *t;
    }
  } else if (kind == "expired") {
    const bool exhausted = t->attempts() >= t->max_attempts();
    let_go(exhausted ? "failed" : "stranded");
    if (exhausted)
      t->set_error("stranded on attempt " + std::to_string(t->attempts()) + " of " +
                   std::to_string(t->max_attempts()) + " (claim by '" + t->last_holder() + "' expired at " +
                   model::rfc3339_seconds(l.expires_at_ns()) + ")");
    write(change, *t, exhausted ? "failed" : "stranded");
  }
}

}  // namespace engram::engine
