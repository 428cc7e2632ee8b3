// client::subscribe: a WebSocket subscriber that reconnects with backoff and resumes
// from the last seq it delivered per context, so its handler sees every event once,
// in seq order per context.
//
// Protocol per connection (api/openapi.yaml /stream):
//   connect /stream?context=<first>   a placeholder subscription, live from the head
//   ← connected, subscribe_ack #1     (and maybe live events of the placeholder: ignored)
//   → {"type":"subscribe","contexts":[…],"since":…,"cursors":{ctx: last seq}}
//   ← subscribe_ack #2                 our subscription: every event after it counts
// On reconnect, `cursors` holds every context seen (the ack lists all that matched),
// and since 0 covers contexts a pattern matches that were created while away.
// With until_head, the first ack's head_seq per context is where it ends.
//
// Appends over the same connection (subscription::append): the caller queues
// {"type":"append","request_id",…} and interrupts the read; this thread sends it
// and hands the append_ack / append_error back by request_id. An append not
// answered when the connection drops is sent again on the next one with its
// idempotency key, so it is stored once.
#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "client_impl.hpp"
#include "codec.hpp"
#include "engram/stream_connections.hpp"

namespace engram::client {

using codec::json;
using steady = std::chrono::steady_clock;

class subscription_state : public std::enable_shared_from_this<subscription_state> {
 public:
  subscription_state(std::shared_ptr<client::impl> c, std::vector<std::string> contexts,
                     std::optional<uint64_t> since, std::function<void(const event&)> handler,
                     subscribe_options opts)
      : client_(std::move(c)), contexts_(std::move(contexts)), since_(since), handler_(std::move(handler)),
        opts_(std::move(opts)), cursors_(opts_.cursors) {}

  void start() {
    thread_ = std::thread([self = shared_from_this()] { self->run(); });
  }

  void stop() {
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) {
      if (std::this_thread::get_id() == thread_.get_id()) return;  // from the handler
      thread_.join();
    }
  }

  std::optional<error> wait() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return finished_; });
    return final_;
  }

  bool running() const {
    std::lock_guard lock(mu_);
    return !finished_;
  }

  bool wait_live(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, timeout, [&] { return acked_once_ || finished_; });
    return acked_once_ && !finished_;
  }

  std::map<std::string, uint64_t> cursors() const {
    std::lock_guard lock(mu_);
    return cursors_;
  }

  std::vector<stream_position> positions() const {
    std::lock_guard lock(mu_);
    return positions_;
  }

  result<work_unit> append(const unit_input& u, const append_options& opts, std::chrono::milliseconds timeout) {
    json unit = codec::unit_input_json(u, true);
    if (u.agent_id.empty() && !client_->opts.agent_id.empty()) unit["agent_id"] = client_->opts.agent_id;
    auto p = std::make_shared<pending_append>();
    std::unique_lock lock(mu_);
    if (finished_ || stopping_) return std::unexpected(error{error::kind::stopped, 0, "the subscription has ended", {}});
    const std::string id = "sdk-" + std::to_string(++next_request_);
    p->message = json{{"type", "append"},
                      {"request_id", id},
                      {"idempotency_key", opts.idempotency_key.empty() ? codec::random_key() : opts.idempotency_key},
                      {"work_unit", std::move(unit)}}
                     .dump();
    appends_[id] = p;
    outbox_.push_back(id);
    if (current_ws_) current_ws_->interrupt();
    const bool answered = cv_.wait_for(lock, timeout, [&] { return p->answer.has_value(); });
    appends_.erase(id);
    std::erase(outbox_, id);
    if (!answered)
      return std::unexpected(error{error::kind::network, 0, "no append_ack within " + std::to_string(timeout.count()) +
                                                                " ms (the append may still be stored; to retry "
                                                                "safely, set append_options::idempotency_key and "
                                                                "send it again with the same key)", {}});
    return std::move(*p->answer);
  }

  ~subscription_state() {
    if (thread_.joinable()) thread_.detach();  // only reached from the thread itself
  }

 private:
  enum class outcome { reconnect, finish };

  bool stopping() const {
    std::lock_guard lock(mu_);
    return stopping_;
  }

  void finish(std::optional<error> why) {
    {
      std::lock_guard lock(mu_);
      finished_ = true;
      final_ = std::move(why);
      for (auto& [id, p] : appends_)
        if (!p->answer) p->answer = std::unexpected(error{error::kind::stopped, 0, "the subscription has ended", {}});
    }
    cv_.notify_all();
  }

  // Sleeps before the next attempt; false when stopped meanwhile.
  bool back_off() {
    std::unique_lock lock(mu_);
    retry_policy policy;
    policy.initial_backoff = opts_.min_backoff;
    policy.max_backoff = opts_.max_backoff;
    cv_.wait_for(lock, backoff_delay(policy, failures_), [&] { return stopping_; });
    ++failures_;
    return !stopping_;
  }

  void run() {
    {
      std::lock_guard lock(mu_);
      acked_at_ = steady::now();
    }
    while (!stopping()) {
      error why;
      if (auto done = connect_and_follow(why); done == outcome::finish) return;
      if (opts_.on_disconnected) opts_.on_disconnected(why);
      // A bounded read ends like any other call once the retry policy is spent;
      // following (the default) never gives up.
      if (opts_.until_head && retries_spent()) {
        finish(std::move(why));
        return;
      }
      if (!back_off()) break;
    }
    finish(std::nullopt);
  }

  // client_options::retry, counted from the start or the last acknowledged
  // (re)subscription: a read that makes progress keeps going.
  bool retries_spent() const {
    std::lock_guard lock(mu_);
    const auto& retry = client_->opts.retry;
    return failures_ + 1 >= retry.max_attempts || steady::now() - acked_at_ >= retry.max_elapsed;
  }

  // until_head: true once every context of the first ack has delivered its head.
  bool reached_heads() const {
    std::lock_guard lock(mu_);
    return std::all_of(stop_at_.begin(), stop_at_.end(), [&](const auto& ctx_head) {
      const auto it = cursors_.find(ctx_head.first);
      return it != cursors_.end() && it->second >= ctx_head.second;
    });
  }

  // until_head: an event after its context's head (or of a context matched later).
  bool beyond_heads(const event& ev) const {
    std::lock_guard lock(mu_);
    const auto it = stop_at_.find(ev.context_id);
    return it == stop_at_.end() || ev.seq > it->second;
  }

  outcome end_at_heads(ws_connection& ws) {
    ws.close();
    finish(std::nullopt);
    return outcome::finish;
  }

  json subscribe_message() {
    json msg{{"type", "subscribe"}, {"contexts", contexts_}};
    std::lock_guard lock(mu_);
    if (acked_once_) msg["since"] = 0;  // contexts unseen so far are new: replay them whole
    else if (since_) msg["since"] = *since_;
    if (!cursors_.empty()) msg["cursors"] = cursors_;
    return msg;
  }

  outcome connect_and_follow(error& why) {
    const auto& c = *client_;
    ws_connection ws;
    const std::string target = c.prefix + "/stream?context=" + encode_component(contexts_.front());
    if (auto ok = ws.connect(c.host, c.port, target, c.headers, c.opts.timeout); !ok) {
      const auto& e = ok.error();
      if (e.status >= 400 && e.status < 500 && e.status != 408 && e.status != 429) {
        auto j = json::parse(e.body, nullptr, false);
        std::string msg = j.is_object() && j.contains("error") && j["error"].is_string() ? j["error"].get<std::string>() : e.body;
        finish(error{error::kind::server, e.status, std::move(msg), {}});
        return outcome::finish;
      }
      why = e.status ? error{error::kind::server, e.status, e.body, {}} : error{error::kind::network, 0, e.message, {}};
      return outcome::reconnect;
    }
    if (auto ok = ws.send(subscribe_message().dump()); !ok) {
      why = error{error::kind::network, 0, ok.error().message, {}};
      return outcome::reconnect;
    }
    // Appends may interrupt this connection's reads until it is gone; every one not
    // answered yet goes (again) on this connection.
    {
      std::lock_guard lock(mu_);
      current_ws_ = &ws;
      outbox_.clear();
      for (const auto& [id, p] : appends_)
        if (!p->answer) outbox_.push_back(id);
    }
    struct forget_ws {
      subscription_state& self;
      ~forget_ws() {
        std::lock_guard lock(self.mu_);
        self.current_ws_ = nullptr;
      }
    } forget{*this};
    int acks = 0;
    auto last_rx = steady::now(), last_tx = steady::now();
    while (true) {
      if (stopping()) {
        ws.close();
        finish(std::nullopt);
        return outcome::finish;
      }
      if (auto failed = send_appends(ws)) {
        why = std::move(*failed);
        return outcome::reconnect;
      }
      auto m = ws.read(std::chrono::milliseconds(100));
      const auto now = steady::now();
      if (!m) {
        why = error{error::kind::network, 0, m.error().message, {}};
        return outcome::reconnect;
      }
      if (!*m) {
        if (const auto& closed = ws.closed()) {
          why = error{error::kind::network, 0,
                      "stream closed (" + std::to_string(closed->code) + " " + closed->reason + ")", {}};
          return outcome::reconnect;
        }
        if (now - last_rx > opts_.dead_after) {
          ws.abort();
          why = error{error::kind::network, 0, "no message from the server for " +
                                                   std::to_string(opts_.dead_after.count()) + " ms", {}};
          return outcome::reconnect;
        }
        if (now - last_tx > opts_.heartbeat) {
          if (auto ok = ws.send(R"({"type":"heartbeat"})"); !ok) {
            why = error{error::kind::network, 0, ok.error().message, {}};
            return outcome::reconnect;
          }
          last_tx = now;
        }
        continue;
      }
      last_rx = now;
      json j = json::parse(**m, nullptr, false);
      if (j.is_discarded() || !j.is_object()) {
        why = error{error::kind::protocol, 0, "stream message is not a JSON object", {}};
        return outcome::reconnect;
      }
      const auto type = j.find("type");
      const bool control = type != j.end() && type->is_string();
      if (control) {
        const auto& t = type->get_ref<const std::string&>();
        if (t == "subscribe_ack") {
          if (++acks == 2) {
            on_ack(j);
            if (opts_.until_head && reached_heads()) return end_at_heads(ws);
          }
          continue;
        }
        if (t == "append_ack" || t == "append_error") {
          answer_append(j);
          continue;
        }
        if (t == "delta" || t == "draft" || t == "draft_end") continue;  // drafts are not log events
        if (t == "error" && acks < 2) {  // our subscribe message was refused
          finish(error{error::kind::server, 400, j.value("error", std::string("subscribe refused")), {}});
          return outcome::finish;
        }
      }
      if (acks < 2 || j.find("seq") == j.end()) continue;  // the placeholder's, or not an event
      auto ev = codec::event_from(j, std::move(**m));
      if (!ev) {
        why = ev.error();
        return outcome::reconnect;
      }
      if (opts_.until_head && beyond_heads(*ev)) continue;
      if (auto verdict = admit(*ev); verdict == admission::duplicate) {
        continue;
      } else if (verdict == admission::gap) {
        why = error{error::kind::protocol, 0, "gap before seq " + std::to_string(ev->seq) + " of " + ev->context_id +
                                                  "; resubscribing", {}};
        return outcome::reconnect;
      }
      try {
        handler_(*ev);
      } catch (const std::exception& e) {
        finish(error{error::kind::stopped, 0, std::string("the handler threw: ") + e.what(), {}});
        return outcome::finish;
      }
      {
        std::lock_guard lock(mu_);
        cursors_[ev->context_id] = ev->seq;
      }
      if (opts_.until_head && reached_heads()) return end_at_heads(ws);
    }
  }

  void on_ack(const json& ack) {
    {
      std::lock_guard lock(mu_);
      const bool first = !acked_once_;
      acked_once_ = true;
      failures_ = 0;
      acked_at_ = steady::now();
      if (auto list = ack.find("contexts"); list != ack.end() && list->is_array())
        for (const auto& p : *list) {
          if (!p.is_object() || !p.contains("context_id") || !p["context_id"].is_string() ||
              !p.contains("from_seq") || !p["from_seq"].is_number_unsigned())
            continue;
          stream_position pos;
          pos.context_id = p["context_id"].get<std::string>();
          pos.from_seq = p["from_seq"].get<uint64_t>();
          if (auto head = p.find("head_seq"); head != p.end() && head->is_number_unsigned())
            pos.head_seq = head->get<uint64_t>();
          if (auto exists = p.find("exists"); exists != p.end() && exists->is_boolean()) pos.exists = exists->get<bool>();
          cursors_.try_emplace(pos.context_id, pos.from_seq > 0 ? pos.from_seq - 1 : 0);
          if (!first) continue;
          if (opts_.until_head) stop_at_[pos.context_id] = pos.head_seq;
          positions_.push_back(std::move(pos));
        }
    }
    cv_.notify_all();  // wait_live
    if (opts_.on_connected) opts_.on_connected();
  }

  // Sends the queued appends; the error when the connection failed.
  std::optional<error> send_appends(ws_connection& ws) {
    std::vector<std::string> messages;
    {
      std::lock_guard lock(mu_);
      for (const auto& id : outbox_)
        if (auto it = appends_.find(id); it != appends_.end()) messages.push_back(it->second->message);
      outbox_.clear();
    }
    for (const auto& m : messages)
      if (auto ok = ws.send(m); !ok) return error{error::kind::network, 0, ok.error().message, {}};
    return std::nullopt;
  }

  void answer_append(const json& j) {
    const auto id = j.find("request_id");
    if (id == j.end() || !id->is_string()) return;
    std::lock_guard lock(mu_);
    auto it = appends_.find(id->get<std::string>());
    if (it == appends_.end() || it->second->answer) return;  // given up on, or answered on a previous connection
    if (j["type"] == "append_ack") {
      auto unit = j.find("work_unit");
      if (unit == j.end()) it->second->answer = std::unexpected(error{error::kind::protocol, 0, "append_ack without work_unit", {}});
      else it->second->answer = codec::unit_from(*unit);
    } else {
      const unsigned status = j.value("status", 0u);
      it->second->answer = std::unexpected(error{error::kind::server, status, j.value("error", std::string("append refused")), {}});
    }
    cv_.notify_all();
  }

  enum class admission { deliver, duplicate, gap };

  admission admit(const event& ev) const {
    std::lock_guard lock(mu_);
    auto it = cursors_.find(ev.context_id);
    const uint64_t last = it == cursors_.end() ? 0 : it->second;
    if (ev.seq <= last) return admission::duplicate;
    return ev.seq == last + 1 ? admission::deliver : admission::gap;
  }

  std::shared_ptr<client::impl> client_;
  std::vector<std::string> contexts_;
  std::optional<uint64_t> since_;
  std::function<void(const event&)> handler_;
  subscribe_options opts_;
  std::thread thread_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  bool finished_ = false;
  bool acked_once_ = false;
  int failures_ = 0;
  steady::time_point acked_at_;  // start, then the latest subscribe_ack
  std::optional<error> final_;
  std::map<std::string, uint64_t> cursors_;  // last delivered seq per context
  std::vector<stream_position> positions_;   // the first ack's
  std::map<std::string, uint64_t> stop_at_;  // until_head: the first ack's head per context
  struct pending_append {
    std::string message;                        // the append message, sent as is on every connection
    std::optional<result<work_unit>> answer;
  };
  std::map<std::string, std::shared_ptr<pending_append>> appends_;  // by request_id, until answered or given up
  std::vector<std::string> outbox_;  // request ids to send on the current connection
  uint64_t next_request_ = 0;
  ws_connection* current_ws_ = nullptr;  // while connected: only interrupt() is used from other threads
};

subscription::subscription(std::shared_ptr<subscription_state> s) : state_(std::move(s)) {}
subscription::subscription(subscription&&) noexcept = default;
subscription& subscription::operator=(subscription&& other) noexcept {
  if (this != &other) {
    stop();
    state_ = std::move(other.state_);
  }
  return *this;
}
subscription::~subscription() { stop(); }

void subscription::stop() {
  if (state_) state_->stop();
}
std::optional<error> subscription::wait() {
  return state_ ? state_->wait() : std::optional<error>();
}
bool subscription::running() const { return state_ && state_->running(); }
bool subscription::wait_live(std::chrono::milliseconds timeout) {
  return state_ && state_->wait_live(timeout);
}
std::map<std::string, uint64_t> subscription::cursors() const {
  return state_ ? state_->cursors() : std::map<std::string, uint64_t>();
}
result<work_unit> subscription::append(const unit_input& u, const append_options& opts,
                                       std::chrono::milliseconds timeout) {
  if (!state_) return std::unexpected(error{error::kind::stopped, 0, "no subscription", {}});
  return state_->append(u, opts, timeout);
}
std::vector<stream_position> subscription::positions() const {
  return state_ ? state_->positions() : std::vector<stream_position>();
}

subscription client::subscribe(std::vector<std::string> contexts, std::optional<uint64_t> since,
                               std::function<void(const event&)> handler, subscribe_options opts) {
  if (contexts.empty()) contexts.push_back("");  // the server refuses it: wait() says why
  auto state = std::make_shared<subscription_state>(impl_, std::move(contexts), since, std::move(handler),
                                                    std::move(opts));
  state->start();
  return subscription(std::move(state));
}

}  // namespace engram::client
