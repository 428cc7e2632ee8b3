#include "engine/presence.hpp"

#include <spdlog/spdlog.h>

#include <atomic>
#include <memory>

#include "model/thread_name.hpp"
#include "storage/store.hpp"

namespace engram::engine {

presence::presence(presence_options opts, storage::store& store, std::shared_ptr<const model::clock> clock)
    : opts_(opts), store_(store), clock_(clock ? std::move(clock) : model::default_clock()) {}

presence::~presence() { stop(); }

model::status presence::start() {
  auto loaded = store_.load_presence();
  if (!loaded) return std::unexpected(loaded.error());
  {
    std::lock_guard lock(mu_);
    const auto now = std::chrono::steady_clock::now();
    for (auto& a : *loaded)
      contexts_[a.context_id][a.agent_id] = entry{a.joined_at_ns, std::move(a.status), now + opts_.ttl, {}, clock_->now_ns()};
  }
  if (!loaded->empty())
    spdlog::info("presence: {} agents were present; each has {} ms to send a heartbeat", loaded->size(), opts_.ttl.count());
  thread_ = std::thread([this] {
    model::name_this_thread("presence");
    run();
  });
  return {};
}

void presence::stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    cv_.notify_all();
  }
  if (thread_.joinable()) thread_.join();
}

void presence::heartbeat(const std::string& agent, const std::vector<std::string>& contexts, const std::string& status,
                         std::function<void(model::status)> done) {
  touch(agent, contexts, status, std::nullopt, std::move(done));
}

void presence::connect(uint64_t conn, const std::string& agent, const std::vector<std::string>& contexts,
                       std::function<void(model::status)> done) {
  touch(agent, contexts, "", conn, std::move(done));
}

void presence::disconnect(uint64_t conn, const std::string& agent, const std::vector<std::string>& contexts) {
  std::lock_guard lock(mu_);
  const auto now = std::chrono::steady_clock::now();
  for (const auto& ctx : contexts) {
    auto h = holds_.find({ctx, agent});
    if (h == holds_.end() || !h->second.erase(conn) || !h->second.empty()) continue;
    holds_.erase(h);
    if (auto c = contexts_.find(ctx); c != contexts_.end())
      if (auto e = c->second.find(agent); e != c->second.end()) {
        e->second.grace_deadline = now + opts_.grace;
        e->second.last_seen_ns = clock_->now_ns();
      }
  }
}

void presence::touch(const std::string& agent, const std::vector<std::string>& contexts, const std::string& status,
                     std::optional<uint64_t> conn, std::function<void(model::status)> done) {
  std::vector<std::string> joins;
  {
    std::lock_guard lock(mu_);
    const auto now = std::chrono::steady_clock::now();
    for (const auto& ctx : contexts) {
      if (conn) holds_[{ctx, agent}].insert(*conn);
      auto& agents = contexts_[ctx];
      auto it = agents.find(agent);
      if (it == agents.end()) {
        joins.push_back(ctx);
        continue;
      }
      if (!conn) it->second.beat_deadline = now + opts_.ttl;
      it->second.last_seen_ns = clock_->now_ns();
      if (!status.empty()) it->second.status = status;
    }
  }
  if (joins.empty()) return done({});
  struct pending {
    std::atomic<size_t> left;
    std::mutex mu;
    std::optional<model::error> failed;
    std::function<void(model::status)> done;
  };
  auto p = std::make_shared<pending>();
  p->left = joins.size();
  p->done = std::move(done);
  for (const auto& ctx : joins) {
    store_.change_presence(storage::presence_change{ctx, agent, true, "", status},
                           [this, p, ctx, agent, status, conn](model::result<bool> r) {
                             if (r) {
                               std::lock_guard lock(mu_);
                               auto& e = contexts_[ctx][agent];
                               if (!e.joined_at_ns) e.joined_at_ns = clock_->now_ns();
                               e.status = status;
                               // A connection that ended before its join committed
                               // leaves after the grace.
                               const auto now = std::chrono::steady_clock::now();
                               if (conn) e.grace_deadline = now + opts_.grace;
                               else e.beat_deadline = now + opts_.ttl;
                               e.last_seen_ns = clock_->now_ns();
                             } else {
                               std::lock_guard lock(p->mu);
                               p->failed = r.error();
                             }
                             if (--p->left == 0) {
                               if (p->failed) p->done(std::unexpected(*p->failed));
                               else p->done({});
                             }
                           });
  }
}

void presence::leave(const std::string& agent, const std::string& context, std::function<void(model::result<bool>)> done) {
  {
    std::lock_guard lock(mu_);
    if (auto it = contexts_.find(context); it != contexts_.end()) it->second.erase(agent);
    holds_.erase({context, agent});  // its connections no longer keep it (their disconnects then find nothing)
  }
  store_.change_presence(storage::presence_change{context, agent, false, "left", ""}, std::move(done));
}

std::vector<present> presence::in_context(const std::string& context) const {
  std::vector<present> out;
  std::lock_guard lock(mu_);
  auto it = contexts_.find(context);
  if (it == contexts_.end()) return out;
  for (const auto& [agent, e] : it->second) out.push_back({agent, e.joined_at_ns, e.last_seen_ns, e.status});
  return out;
}

void presence::run() {
  const auto tick = std::max(std::chrono::milliseconds(10), std::min(opts_.ttl, opts_.grace) / 4);
  for (;;) {
    std::vector<std::pair<std::string, std::string>> expired;
    {
      std::unique_lock lock(mu_);
      if (cv_.wait_for(lock, tick, [&] { return stopping_; })) return;
      const auto now = std::chrono::steady_clock::now();
      for (auto& [ctx, agents] : contexts_)
        for (auto it = agents.begin(); it != agents.end();) {
          const auto leaves_at = std::max(it->second.beat_deadline, it->second.grace_deadline);
          if (leaves_at < now && !holds_.contains({ctx, it->first})) {
            expired.emplace_back(ctx, it->first);
            it = agents.erase(it);
          } else {
            ++it;
          }
        }
    }
    for (const auto& [ctx, agent] : expired)
      store_.change_presence(storage::presence_change{ctx, agent, false, "timeout", ""}, [ctx, agent](model::result<bool> r) {
        if (!r) spdlog::warn("presence: recording that {} left {} failed: {}", agent, ctx, r.error().message);
      });
  }
}

}  // namespace engram::engine
