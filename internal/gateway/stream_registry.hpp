#pragma once
// The open streams, as operators see them: who is subscribed to a context, how far
// behind each subscriber is (GET /contexts/{id}/subscribers), per-context subscriber
// and lag gauges (refreshed when /metrics is scraped), and the access-log line a
// stream writes when it ends. Sessions register on open and deregister on close;
// everything here is thread-safe. Beast-free.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace prometheus {
class Registry;
template <class T>
class Family;
class Gauge;
}  // namespace prometheus

namespace engram::engine {
class stream;
}

namespace engram::gateway {

class stream_registry {
 public:
  // One open stream. Its fixed fields are set before register_stream; counters and
  // the subscription may change while it runs.
  struct entry {
    uint64_t id = 0;             // assigned by register_stream
    std::string transport;       // "websocket" or "sse"
    std::string agent;           // the token's subject; empty without auth
    std::string ip;
    std::string request_id;
    std::chrono::system_clock::time_point opened = std::chrono::system_clock::now();
    std::chrono::steady_clock::time_point opened_steady = std::chrono::steady_clock::now();
    std::atomic<uint64_t> events{0};  // written to the client
    std::atomic<uint64_t> bytes{0};
    // Streams a client may end by a later request (MCP resources/unsubscribe): the
    // key they share, and how to end one (from any thread). Set before registering.
    std::string owner_key;
    std::function<void()> stop;

    // A WebSocket subscribe message replaces the subscription.
    void subscribe(std::shared_ptr<engine::stream> s, std::vector<std::string> contexts,
                   std::vector<std::string> prefixes);
    void unsubscribe();

   private:
    friend class stream_registry;
    mutable std::mutex mu;
    std::shared_ptr<engine::stream> stream;
    std::vector<std::string> contexts, prefixes;  // what was asked for ("p/" for "p/*")
  };

  // One subscriber of one context, for GET /contexts/{id}/subscribers.
  struct subscriber {
    uint64_t id;
    std::string transport, agent, ip, request_id;
    std::chrono::system_clock::time_point opened;
    std::string subscribed_as;  // the exact id or the pattern ("p/*") that matched
    uint64_t delivered = 0;     // last seq of the context handed to the transport
    uint64_t head = 0;          // highest seq of the context seen published
    uint64_t lag = 0;           // head - delivered
    bool catching_up = false;   // reading from storage rather than live
    uint64_t events = 0, bytes = 0;  // over the whole stream
  };

  // `metrics` may be null (no gauges).
  explicit stream_registry(prometheus::Registry* metrics);
  ~stream_registry();
  stream_registry(const stream_registry&) = delete;
  stream_registry& operator=(const stream_registry&) = delete;

  void register_stream(const std::shared_ptr<entry>& e);
  // Deregisters and writes the stream's access-log line (when `access_log`).
  void close_stream(const std::shared_ptr<entry>& e, unsigned status, std::string_view ended_by, bool access_log);

  std::vector<subscriber> subscribers_of(std::string_view context_id) const;
  // Ends every open stream registered with this owner_key; how many.
  size_t stop_streams(std::string_view owner_key);
  size_t open_streams() const;

  // Sets engram_stream_context_subscribers{context} and
  // engram_stream_context_max_lag_events{context} from the open streams (at most
  // max_labelled_contexts contexts, the busiest first; the rest are summed under
  // context="_other").
  void refresh_metrics();
  static constexpr size_t max_labelled_contexts = 500;

 private:
  // The open streams, taken under mu_ and then read without it.
  std::vector<std::shared_ptr<entry>> live_entries() const;

  mutable std::mutex mu_;
  uint64_t next_id_ = 0;
  std::map<uint64_t, std::weak_ptr<entry>> open_;
  prometheus::Family<prometheus::Gauge>* subscribers_ = nullptr;
  prometheus::Family<prometheus::Gauge>* max_lag_ = nullptr;
  std::map<std::string, std::pair<prometheus::Gauge*, prometheus::Gauge*>> labelled_;  // guarded by mu_
};

}  // namespace engram::gateway
