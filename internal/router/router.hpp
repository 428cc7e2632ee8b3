#pragma once
// In-memory fan-out of committed events to subscribers (DESIGN.md §4). Owned by app;
// publish() comes from whichever thread commits (the committer, or an I/O thread
// committing a relaxed append inline), delivery runs on the router's own dispatch
// thread, or for a batch with few subscribers on the publishing thread. Ordering,
// matching and lifetime rules: README.md.

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "engram.pb.h"

namespace prometheus {
class Registry;
}

namespace engram::router {

// One committed event in wire form, shared by every subscriber.
struct wire_event {
  std::string context_id;
  uint64_t seq = 0;
  // SSE event name: empty for work units (the default "message" event, so
  // EventSource.onmessage gets them), otherwise e.g. "context_updated".
  std::string sse_event;
  // The WebSocket message and SSE data: the bare unit object for work units,
  // {"type":"context_updated",…} and so on for other kinds.
  std::string json;
  std::chrono::steady_clock::time_point published;  // when the router received it

  // Set on draft messages (partial output that is not in the log: README, Drafts).
  // They have no seq and are never stored or replayed.
  struct draft_tag {
    enum kind_t { delta, snapshot, end } kind = delta;
    std::string id;      // the draft's id (unique within its context)
    uint64_t index = 0;  // delta: its index; snapshot: the last index it covers
  };
  std::optional<draft_tag> draft;
};
using event_ptr = std::shared_ptr<const wire_event>;

// Serialises one log event into wire form (also used for replays from storage).
event_ptr to_wire(const api::Event& ev);

// Which contexts a subscription wants: exact ids and id prefixes ("p/*" → "p/").
struct topic_filter {
  std::vector<std::string> exact;
  std::vector<std::string> prefixes;
  // When set, a context must also satisfy it (authorization of pattern streams).
  std::function<bool(std::string_view)> permit;
  bool matches(std::string_view context_id) const;
};

class sink {
 public:
  virtual ~sink() = default;
  // Called on the router's dispatch thread, or on a thread that publishes (see
  // router::publish and publish_draft). Must not block.
  virtual void deliver(const event_ptr& ev) = 0;
};

class router {
 public:
  explicit router(prometheus::Registry* metrics = nullptr);
  ~router();  // stops the dispatch thread
  router(const router&) = delete;
  router& operator=(const router&) = delete;

  // Called by the thread that committed, after each commit, in commit order (the
  // store serialises the calls). Never blocks on a subscriber. When nothing is
  // queued or being dispatched and the batch counts at most inline_max_sinks
  // sinks (per event: the subscriptions naming its context plus every pattern
  // subscription), it is offered on the calling thread before it returns;
  // otherwise the dispatch thread offers it.
  void publish(const std::vector<std::shared_ptr<const api::Event>>& events);
  static constexpr size_t inline_max_sinks = 8;
  // A draft message (ev->draft set), offered to the sinks of its context now, on
  // the calling thread: draft messages are not part of the log's order, so they
  // skip the dispatch queue and its thread hop. Callers serialise the calls that
  // must arrive in order.
  void publish_draft(const event_ptr& ev);

  using subscription_id = uint64_t;
  subscription_id subscribe(std::weak_ptr<sink> s, topic_filter filter);
  void unsubscribe(subscription_id id);

  // Waits until every event published so far has been offered to sinks (tests).
  void flush();

 private:
  struct entry {
    subscription_id id;
    std::weak_ptr<sink> target;
    std::shared_ptr<const topic_filter> filter;
  };
  void run();
  void dispatch(const std::vector<std::shared_ptr<const api::Event>>& batch);
  // The sinks the batch's events match, each counted once per event (an upper bound).
  size_t sinks_for(const std::vector<std::shared_ptr<const api::Event>>& events);
  // The sinks whose subscriptions match `context_id`, each once, into `targets`.
  void collect(const std::string& context_id, std::vector<std::shared_ptr<sink>>& targets);

  std::mutex queue_mu_;
  std::condition_variable queue_cv_, idle_cv_;
  std::deque<std::vector<std::shared_ptr<const api::Event>>> queue_;
  bool stopping_ = false;
  bool busy_ = false;

  std::mutex subs_mu_;
  subscription_id next_id_ = 1;
  std::unordered_map<std::string, std::vector<entry>> by_context_;
  std::vector<entry> by_prefix_;

  struct metrics;
  std::unique_ptr<metrics> metrics_;
  std::thread thread_;
};

}  // namespace engram::router
