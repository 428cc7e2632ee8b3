#pragma once
// Presence (README "Presence"): which agents are in which contexts. Heartbeats mark
// an agent present; its first heartbeat in a context logs agent_joined, and an
// agent silent for `ttl` (or leaving explicitly) logs agent_left. Joins and leaves
// are durable (storage::store::change_presence); when each agent was last heard
// from is kept in memory only, so a restart gives every agent present a full ttl
// from the restart to send its next heartbeat. Owned by app; a sweeper thread
// expires silent agents. Thread-safe.

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "model/clock.hpp"
#include "model/error.hpp"

namespace engram::storage {
class store;
}

namespace engram::engine {

struct presence_options {
  std::chrono::milliseconds ttl{30'000};
  // A WebSocket subscriber present through its connection leaves this long after
  // the connection drops (unless it reconnects or heartbeats meanwhile).
  std::chrono::milliseconds grace{5'000};
};

struct present {
  std::string agent_id;
  int64_t joined_at_ns = 0;
  int64_t last_seen_ns = 0;
  std::string status;
};

class presence {
 public:
  presence(presence_options opts, storage::store& store, std::shared_ptr<const model::clock> clock);
  ~presence();  // stop()s
  presence(const presence&) = delete;
  presence& operator=(const presence&) = delete;

  // Resumes the agents storage says are present, then starts the sweeper.
  model::status start();
  void stop();

  // Marks the agent present in each context now; `done` runs once every join it
  // needed is committed (on a storage completion thread, or here).
  void heartbeat(const std::string& agent, const std::vector<std::string>& contexts, const std::string& status,
                 std::function<void(model::status)> done);
  // Connection `conn` (a WebSocket subscriber with presence; any id unique among
  // open connections) holds the agent present in these contexts until
  // disconnect(); it joins them like a heartbeat. An agent with two connections
  // stays while either is open.
  void connect(uint64_t conn, const std::string& agent, const std::vector<std::string>& contexts,
               std::function<void(model::status)> done);
  // Ends the connection's holds; the agent leaves `grace` later unless held, or
  // heard from by heartbeat within the ttl.
  void disconnect(uint64_t conn, const std::string& agent, const std::vector<std::string>& contexts);
  // The agent leaves the context (agent_left, reason "left"); `done` gets whether
  // it was present.
  void leave(const std::string& agent, const std::string& context, std::function<void(model::result<bool>)> done);
  std::vector<present> in_context(const std::string& context) const;

 private:
  using time_point = std::chrono::steady_clock::time_point;
  // Unless a connection holds it, the agent leaves at the later of its last
  // heartbeat + ttl and its last connection's end + grace.
  struct entry {
    int64_t joined_at_ns = 0;
    std::string status;
    time_point beat_deadline{};
    time_point grace_deadline{};
    int64_t last_seen_ns = 0;
  };
  // heartbeat() and connect(): marks the agent seen in each context, joining where
  // needed; a connection (`conn`) also takes its hold on each.
  void touch(const std::string& agent, const std::vector<std::string>& contexts, const std::string& status,
             std::optional<uint64_t> conn, std::function<void(model::status)> done);
  void run();

  presence_options opts_;
  storage::store& store_;
  std::shared_ptr<const model::clock> clock_;
  mutable std::mutex mu_;
  std::map<std::string, std::map<std::string, entry>> contexts_;  // context → agent → entry
  std::map<std::pair<std::string, std::string>, std::set<uint64_t>> holds_;  // (context, agent) → connections
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace engram::engine
