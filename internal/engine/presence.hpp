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
  // The agent leaves the context (agent_left, reason "left"); `done` gets whether
  // it was present.
  void leave(const std::string& agent, const std::string& context, std::function<void(model::result<bool>)> done);
  std::vector<present> in_context(const std::string& context) const;

 private:
  struct entry {
    int64_t joined_at_ns = 0;
    std::string status;
    std::chrono::steady_clock::time_point last_seen;
    int64_t last_seen_ns = 0;
  };
  void run();

  presence_options opts_;
  storage::store& store_;
  std::shared_ptr<const model::clock> clock_;
  mutable std::mutex mu_;
  std::map<std::string, std::map<std::string, entry>> contexts_;  // context → agent → entry
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace engram::engine
