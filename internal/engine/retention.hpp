#pragma once
// Retention: removes the oldest events of contexts past their age or count limit
// (the context's own `retention`, else the server default), through
// storage::store::trim. A thread sweeps every context once per interval; trims run
// one at a time, so a sweep never floods the committer. Owned by app, started once
// the store is open and stopped before it closes.

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>

#include "engine/options.hpp"
#include "model/clock.hpp"
#include "model/error.hpp"

namespace prometheus {
class Counter;
class Registry;
}  // namespace prometheus
namespace engram::storage {
class store;
}

namespace engram::engine {

class retention {
 public:
  retention(retention_options opts, storage::store& store, std::shared_ptr<const model::clock> clock,
            prometheus::Registry* metrics);
  ~retention();  // stop()s
  retention(const retention&) = delete;
  retention& operator=(const retention&) = delete;

  // Starts the sweeping thread.
  void start();
  // Stops it after the trim in progress (if any) finishes. Idempotent.
  void stop();

  // One pass over every context on the calling thread; the number of events removed.
  model::result<uint64_t> sweep();

 private:
  // The first seq to keep in a context under these limits (0: nothing to remove).
  model::result<uint64_t> cut(const std::string& id, uint64_t first, uint64_t head, int64_t max_age_s,
                              uint64_t max_events) const;
  void run();

  retention_options opts_;
  storage::store& store_;
  std::shared_ptr<const model::clock> clock_;
  prometheus::Counter* removed_ = nullptr;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace engram::engine
