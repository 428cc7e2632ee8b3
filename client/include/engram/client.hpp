#pragma once
// engram::client::client — the C++ SDK's entry point: typed calls for every Engram
// route, appends that retry safely, resuming subscriptions and a lease helper.
//
// Threading: a client is thread-safe. Calls from many threads share a pool of
// keep-alive connections (one request per connection at a time). Calls block the
// calling thread; engram/async.hpp runs them from an Asio executor instead.
// A subscription and a lease renewer each run on a thread of their own.
//
//   auto c = engram::client::client::create({.url = "http://127.0.0.1:8080", .agent_id = "planner"});
//   auto unit = c->append({.context_id = "project-7", .payload = "hello"});
//   if (!unit) std::cerr << unit.error().describe() << "\n";

#include <atomic>
#include <chrono>
#include <concepts>
#include <cstdint>
#include <functional>
#include <iterator>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <stop_token>
#include <thread>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "engram/error.hpp"
#include "engram/types.hpp"

namespace engram::client {

// How transient failures are retried: connection refused/reset, timeouts, 503, and
// 409 "Idempotency-Key still in progress". Waits grow from `initial_backoff`,
// doubling up to `max_backoff`, with jitter; a server's Retry-After is honoured.
struct retry_policy {
  int max_attempts = 6;  // 1 disables retries
  std::chrono::milliseconds initial_backoff{100};
  std::chrono::milliseconds max_backoff{2'000};
  std::chrono::milliseconds max_elapsed{30'000};  // no new attempt starts after this
};

struct client_options {
  std::string url = "http://127.0.0.1:8080";  // http:// only; a path is a prefix for every route
  std::string agent_id;                        // sent as X-Agent-ID; fills agent_id in bodies
  // A JWT for servers with auth enabled, sent as "Authorization: Bearer <token>" on
  // every request and stream. The server takes the agent id from the token; leave
  // agent_id empty (or equal to the token's subject).
  std::string token;
  std::chrono::milliseconds timeout{30'000};   // per attempt: connect, send and receive
  retry_policy retry;
  size_t max_idle_connections = 8;
  std::vector<std::pair<std::string, std::string>> headers;  // sent on every request
  size_t async_threads = 2;  // threads that run engram/async.hpp calls (started on first use)
};

struct append_options {
  // One key per logical append; generated (random, 128 bits) when empty. Every retry
  // of that append sends the same key, so the server commits it at most once.
  std::string idempotency_key;
};

struct list_options {
  size_t limit = 100;  // page size (server max 1000)
  bool reverse = false;
  std::optional<uint64_t> after_seq;
  std::string cursor;  // next_cursor of a previous page
};

template <class T>
struct page {
  std::vector<T> items;
  std::string next_cursor;  // empty on the last page
};

// An input range over every item of a paged listing, fetching pages as it goes. It
// yields result<T>: a failed page fetch yields one error and ends the range.
//
//   for (const auto& u : c.units("project-7")) { if (!u) { report(u.error()); break; } use(*u); }
template <class T>
class pager {
 public:
  using fetch_fn = std::function<result<page<T>>(const std::string& cursor)>;

  explicit pager(fetch_fn fetch, std::string first_cursor = {})
      : fetch_(std::move(fetch)), cursor_(std::move(first_cursor)) {}

  class iterator {
   public:
    using value_type = result<T>;
    using difference_type = std::ptrdiff_t;
    iterator() = default;
    explicit iterator(pager* p) : p_(p) { p_->advance(); }
    const result<T>& operator*() const { return *p_->current_; }
    const result<T>* operator->() const { return &*p_->current_; }
    iterator& operator++() {
      p_->advance();
      return *this;
    }
    void operator++(int) { ++*this; }
    bool operator==(std::default_sentinel_t) const { return !p_ || !p_->current_; }

   private:
    pager* p_ = nullptr;
  };

  iterator begin() { return iterator(this); }
  std::default_sentinel_t end() { return {}; }

 private:
  void advance() {
    current_.reset();
    while (index_ == items_.size()) {
      if (done_) return;
      auto next = fetch_(cursor_);
      if (!next) {
        done_ = true;
        current_.emplace(std::unexpected(std::move(next.error())));
        return;
      }
      items_ = std::move(next->items);
      index_ = 0;
      cursor_ = std::move(next->next_cursor);
      done_ = cursor_.empty();
    }
    current_.emplace(std::move(items_[index_++]));
  }

  fetch_fn fetch_;
  std::string cursor_;
  std::vector<T> items_;
  size_t index_ = 0;
  bool done_ = false;
  std::optional<result<T>> current_;
};

// One context of a subscription, as the server acknowledged it (subscribe_ack).
struct stream_position {
  std::string context_id;
  uint64_t from_seq = 0;  // the first seq the subscription delivers
  uint64_t head_seq = 0;  // the context's last seq when the subscription was acknowledged
  bool exists = true;     // false: no such context yet (it is delivered once created)
};

struct subscribe_options {
  // Per-context resume points (the last seq you have); they override `since`.
  std::map<std::string, uint64_t> cursors;
  // Read history instead of following: deliver each context up to the head_seq of
  // the first subscribe_ack, then end (running() turns false, wait() returns no
  // error). Later events, and contexts a pattern matches only later, are not
  // delivered. Such a bounded read gives up on network failures as
  // client_options::retry says (attempts and max_elapsed, counted afresh after each
  // acknowledged reconnect), and wait() then returns the last one.
  bool until_head = false;
  std::chrono::milliseconds min_backoff{100};
  std::chrono::milliseconds max_backoff{5'000};
  std::chrono::milliseconds heartbeat{15'000};   // keeps the server's idle timer from firing
  std::chrono::milliseconds dead_after{30'000};  // reconnect when nothing arrived for this long
  // Called on the subscription's thread each time it is (re)subscribed, and each
  // time the connection is lost (with why). For status displays; may be empty.
  std::function<void()> on_connected;
  std::function<void(const error&)> on_disconnected;
};

class subscription_state;

// A live subscription started by client::subscribe. The handler runs on the
// subscription's own thread, one event at a time, each (context, seq) exactly once
// and in seq order per context, across reconnects and server restarts. Destroying
// it stops it.
class subscription {
 public:
  subscription() = default;
  explicit subscription(std::shared_ptr<subscription_state> s);
  subscription(subscription&&) noexcept;
  subscription& operator=(subscription&&) noexcept;
  ~subscription();

  // Stops and waits until the handler has returned for the last time (from inside
  // the handler it only asks, and the subscription ends after the handler returns).
  void stop();
  // Blocks until the subscription ends: stop(), or a refusal that reconnecting cannot
  // fix (400/403/404 on subscribe), which is returned.
  std::optional<error> wait();
  bool running() const;
  // Blocks until the server has acknowledged the subscription (it is live: every
  // event committed from now on will be delivered), for at most `timeout`. False on
  // timeout or when the subscription ended. subscribe() returns before that moment,
  // so a caller that appends and expects to see its own units live (with `since`
  // unset: live from now) waits for it first. Later reconnects resume from the
  // cursors and lose nothing either way; on_connected reports each of them.
  bool wait_live(std::chrono::milliseconds timeout = std::chrono::seconds(10));
  // The last seq delivered per context (with the starting points of quiet contexts).
  std::map<std::string, uint64_t> cursors() const;
  // Appends over this subscription's WebSocket instead of an HTTP request: the same
  // request as client::append (validation, auth, idempotency), answered once
  // committed. Thread-safe, and many may be in flight from several threads. An
  // append not answered when the connection drops is sent again after the
  // reconnect with the same idempotency key, so it is stored once. Waits at most
  // `timeout`. A refusal (append_error) is returned as client::append returns one,
  // without retrying even a 429 or 503: retry with the same idempotency_key.
  // kind::stopped once the subscription has ended.
  result<work_unit> append(const unit_input& u, const append_options& opts = {},
                           std::chrono::milliseconds timeout = std::chrono::seconds(30));
  // The contexts of the first subscribe_ack: where delivery started and each
  // context's head at that moment. Empty until then (wait_live() waits for it).
  std::vector<stream_position> positions() const;

 private:
  std::shared_ptr<subscription_state> state_;
};

class client;

// The lease with_lock() holds while its function runs. Thread-safe.
class lease {
 public:
  lease(client& c, lock granted, std::chrono::milliseconds ttl);
  ~lease();  // stops renewing and releases (unless lost)
  lease(const lease&) = delete;
  lease& operator=(const lease&) = delete;

  const lock& info() const { return granted_; }
  uint64_t fencing_token() const { return granted_.fencing_token; }
  engram::client::fence fence() const { return granted_.fence(); }
  // True once a renewal was refused or the lease ran out before one succeeded. Work
  // done after that is no longer protected: stop and do not write with this token.
  bool lost() const;
  // Requested when the lease is lost, for code that takes a std::stop_token.
  std::stop_token stop_token() const { return lost_.get_token(); }
  // Stops renewing and releases now; the first error, if any.
  std::optional<error> release();

 private:
  void renew_loop(std::stop_token stop);

  client& client_;
  lock granted_;
  std::chrono::milliseconds ttl_;
  std::stop_source lost_;
  std::jthread renewer_;
  std::atomic<bool> released_{false};
};

// The claim with_task() holds while its function runs. Thread-safe.
class task_run {
 public:
  // Heartbeats at a third of the TTL the server granted the claim.
  task_run(client& c, task_claim claim);
  ~task_run();  // stops the heartbeats
  task_run(const task_run&) = delete;
  task_run& operator=(const task_run&) = delete;

  const task& info() const { return claim_.claimed; }  // as claimed (with the last progress, if resumed)
  uint64_t fencing_token() const { return claim_.lease.fencing_token; }
  engram::client::fence fence() const { return claim_.lease.fence(); }
  // Progress (a JSON object text) sent with the next heartbeat and stored with the
  // task, so whoever claims it after a crash can resume.
  void progress(std::string json_object);
  // True once a heartbeat found the claim gone, or none succeeded before it ran out.
  bool lost() const { return lost_.stop_requested(); }
  std::stop_token stop_token() const { return lost_.get_token(); }
  // Stops the heartbeats (with_task calls it before completing or failing).
  void stop();

 private:
  void beat_loop(std::stop_token stop);

  client& client_;
  task_claim claim_;
  std::chrono::milliseconds ttl_;
  std::mutex mu_;
  std::optional<std::string> progress_;  // not yet sent
  std::stop_source lost_;
  std::jthread beater_;
};

struct with_lock_options {
  std::chrono::milliseconds wait{0};  // how long to wait for a held resource
  std::string context_id;             // log the lock's transitions in this context
};

class client {
 public:
  // Parses the URL (http://host[:port][/prefix]); a malformed one is an error.
  static result<client> create(client_options opts);

  client(client&&) noexcept;
  client& operator=(client&&) noexcept;
  ~client();

  const client_options& options() const;

  // Work units. append() retries transient failures with one Idempotency-Key.
  result<work_unit> append(const unit_input& u, const append_options& opts = {});
  // All or none, consecutive seqs; `fence` guards the whole batch.
  result<std::vector<work_unit>> append_batch(const std::string& context_id, std::span<const unit_input> units,
                                              const append_options& opts = {},
                                              const std::optional<engram::client::fence>& fence = std::nullopt);
  result<work_unit> get_unit(const std::string& id);
  result<page<work_unit>> list_units_page(const std::string& context_id, const list_options& opts = {});
  pager<work_unit> units(const std::string& context_id, list_options opts = {});

  // Contexts.
  result<context> get_context(const std::string& id);
  result<context> patch_context(const std::string& id, const context_patch& patch);
  result<page<context>> list_contexts_page(size_t limit = 100, const std::string& cursor = {});
  pager<context> contexts(size_t page_size = 100);

  // Leases. A 409 (held by another agent, or timed out waiting) is a server error.
  result<lock> acquire(const std::string& resource, std::chrono::milliseconds ttl,
                       std::chrono::milliseconds wait = {});
  result<std::vector<lock>> acquire(const lock_request& req);
  result<lock> renew(const lock& held, std::chrono::milliseconds ttl = {});
  result<void> release(const lock& held);
  result<lock> get_lock(const std::string& resource);
  result<std::vector<lock>> list_locks(const std::string& agent_id = {}, const std::string& prefix = {});

  // Runs fn(lease&) while holding `resource`: acquires (waiting up to opts.wait),
  // renews in the background at a third of the TTL, and releases when fn returns or
  // throws. lease.lost() / lease.stop_token() tell fn when the lease was lost.
  // Returns fn's result, or the acquire error.
  template <class Fn>
    requires std::invocable<Fn&, lease&>
  auto with_lock(const std::string& resource, std::chrono::milliseconds ttl, Fn&& fn,
                 const with_lock_options& opts = {}) -> result<std::invoke_result_t<Fn&, lease&>> {
    lock_request req;
    req.resources = {resource};
    req.ttl = ttl;
    req.wait = opts.wait;
    req.context_id = opts.context_id;
    auto granted = acquire(req);
    if (!granted) return std::unexpected(std::move(granted.error()));
    lease held(*this, std::move(granted->front()), ttl);
    if constexpr (std::is_void_v<std::invoke_result_t<Fn&, lease&>>) {
      fn(held);
      return {};
    } else {
      return fn(held);
    }
  }

  // Tasks (README, Tasks). Claims, completions and failures act as the client's
  // agent; a claim held by another agent, a dependency not done and a stale fencing
  // token are 409s.
  result<task> create_task(const task_input& t);
  result<task> get_task(const std::string& task_id);
  // The context's tasks in creation order (`status` empty: any), at most `limit`
  // (fetched in pages of up to 1000).
  result<std::vector<task>> list_tasks(const std::string& context_id, const std::string& status = {},
                                       size_t limit = SIZE_MAX);
  result<task_claim> claim_task(const std::string& task_id, std::chrono::milliseconds ttl = {});
  result<task> complete_task(const std::string& task_id, uint64_t fence, const std::string& result_json = {});
  result<task> fail_task(const std::string& task_id, uint64_t fence, const std::string& error);

  // Presence: marks the client's agent present in `contexts` and renews its task
  // claims (only `task_id`'s, when set), storing `progress_json` with them.
  result<std::vector<claim_renewal>> heartbeat(const std::vector<std::string>& contexts,
                                               const std::string& status = {},
                                               const std::string& progress_json = {},
                                               const std::string& task_id = {});
  result<bool> leave(const std::string& context_id);  // false: the agent was not present
  result<std::vector<present_agent>> presence(const std::string& context_id);

  // Runs fn(task_run&) while holding a claim on `task_id`: claims it, heartbeats at
  // a third of the TTL (with the progress fn reports), and when fn returns
  // completes the task with fn's result (a JSON object text; "" or void for none),
  // or when fn throws fails it with the exception's message and rethrows. If the
  // claim was lost meanwhile (run.lost(), run.stop_token()) nothing is ended and the
  // answer is a 409 error: someone else may hold the task now.
  template <class Fn>
    requires std::invocable<Fn&, task_run&>
  result<task> with_task(const std::string& task_id, std::chrono::milliseconds ttl, Fn&& fn) {
    auto claimed = claim_task(task_id, ttl);
    if (!claimed) return std::unexpected(std::move(claimed.error()));
    const uint64_t fence = claimed->lease.fencing_token;
    task_run run(*this, std::move(*claimed));
    std::string result_json;
    try {
      if constexpr (std::is_void_v<std::invoke_result_t<Fn&, task_run&>>) fn(run);
      else result_json = fn(run);
    } catch (const std::exception& e) {
      run.stop();
      if (!run.lost()) (void)fail_task(task_id, fence, e.what()[0] ? e.what() : "the work threw");
      throw;
    }
    run.stop();
    if (run.lost())
      return std::unexpected(error{error::kind::server, 409, "the claim on task '" + task_id + "' was lost", {}});
    return complete_task(task_id, fence, result_json);
  }

  // Saves the agent's checkpoint in a context as a new version. `replaces` is the
  // version this save replaces (0: the first save): a save from a stale copy of the
  // agent fails with status 412 (another version is the latest) or 428.
  result<checkpoint> save_checkpoint(const std::string& context_id, const std::string& agent_id, uint64_t cursor_seq,
                                     const std::string& state_json, uint64_t replaces);
  // The latest checkpoint, or a kept `version`; 404 when there is none.
  result<checkpoint> get_checkpoint(const std::string& context_id, const std::string& agent_id,
                                    std::optional<uint64_t> version = std::nullopt);

  // Facts (README, Facts). A set supersedes the key's active version; sent again
  // only when it surely did not reach the server (a second set is a new version).
  result<fact> set_fact(const std::string& context_id, const std::string& key, const fact_input& in);
  // Retracts the active version (404 when none); answers the version it ended.
  result<fact> retract_fact(const std::string& context_id, const std::string& key);
  result<facts_read> facts(const std::string& context_id, const fact_query& q = {});
  // Every version of one key (include_superseded), or its active one only.
  result<facts_read> fact_versions(const std::string& context_id, const std::string& key, const fact_query& q = {});

  // The memory packet (README, Memory packet): what `r.agent_id` should be shown of
  // the context under a token budget, each item with why. Safe to retry.
  result<memory_packet> packet(const std::string& context_id, const packet_request& r = {});

  // Sends one MCP JSON-RPC message (README, MCP) to the server's /mcp and returns
  // the answer's body: a JSON-RPC response, or empty for a notification (202). What
  // `engramctl mcp` forwards stdio through. Not retried (a tool call may write).
  result<std::string> mcp(const std::string& message);

  // A tool call of a context's ledger and its result (README, Tool calls); a call
  // the context does not have is an error (404).
  result<tool_call> get_tool_call(const std::string& context_id, const std::string& call_id);

  // Search (keyword, semantic, hybrid; see search_request).
  result<search_result> search(const search_request& req);

  result<health_status> health();

  // Every kind of event of one context (units, context updates, lease events) with
  // seq > after_seq, at most `limit`; a missing context is an error (404).
  result<events_page> list_events(const std::string& context_id, uint64_t after_seq, size_t limit = 1000);

  // Appends events exported from another server (list_events' texts, or the lines of
  // `engramctl export`) to `context_id` with their seqs, ids and times; they must be
  // consecutive and continue the context's log (a context that does not exist starts
  // at the first one's seq). Needs the "admin" capability on the context when auth
  // is on. Returns the context's head_seq afterwards. Not retried: after a lost
  // answer, read the context's head_seq and send what follows it.
  result<uint64_t> import_events(const std::string& context_id, const std::vector<std::string>& events);

  // A consistent backup of the whole server while it serves, written by the server
  // into `dir` inside its storage.backup_dir (a new directory). Needs the "admin"
  // capability on "*" when auth is on. Not retried: a retry would find `dir` taken.
  result<backup_info> backup(const std::string& dir);

  // Follows contexts (ids and prefix patterns like "project-7/*") over WebSocket,
  // from `since` (the last seq you have; nullopt: from now on), reconnecting with
  // backoff and resuming from the last delivered seq.
  subscription subscribe(std::vector<std::string> contexts, std::optional<uint64_t> since,
                         std::function<void(const event&)> handler, subscribe_options opts = {});

  // Runs `job` on the client's async threads (engram/async.hpp builds on this).
  void post_blocking(std::move_only_function<void()> job);

  struct impl;

 private:
  explicit client(std::shared_ptr<impl> p);
  std::shared_ptr<impl> impl_;
};

}  // namespace engram::client
