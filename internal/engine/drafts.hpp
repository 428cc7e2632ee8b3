#pragma once
// Drafts (README "Drafts"): an agent's partial output — an LLM's answer while it is
// being generated — shown live to a context's subscribers before it becomes a work
// unit. A draft lives in memory only: each delta extends its buffer and goes to the
// router as a draft message (never stored, never replayed); a commit (the caller
// appended the final unit), an abort, or `idle` without a delta ends it, and the
// subscribers are told. A subscriber that joins mid-draft is first given the draft
// so far (snapshots()), then its later deltas.
//
// Thread-safe. Draft messages go to the router's sinks on the calling thread
// (router::publish_draft). Locks, outermost first: the draft's publish stripe (one
// publisher per draft at a time, so its messages arrive in order; drafts hashed
// to other stripes publish in parallel), then mu_ briefly, or a stream's mutex
// (deliver); separately, a stream's mutex, then mu_ (snapshots). mu_ is never held
// while publishing and no stripe is taken under a stream's mutex, so the orders
// cannot deadlock. A sweeper thread ends idle drafts.

#include <array>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "engine/options.hpp"
#include "model/clock.hpp"
#include "model/error.hpp"
#include "router/router.hpp"

namespace prometheus {
class Counter;
class Gauge;
class Registry;
}  // namespace prometheus

namespace engram::engine {

struct draft_delta {
  std::string context_id;
  std::string draft_id;
  std::string agent_id;
  // What counts toward max_per_owner: "ws:<connection>" or "agent:<id>".
  std::string owner;
  uint64_t index = 0;
  std::string data;     // UTF-8 text, or the decoded bytes of a base64 payload
  bool binary = false;  // came as `payload`; a draft is all text or all payload
};

struct draft_info {
  std::string context_id, draft_id, agent_id;
  uint64_t next_index = 0;  // the index its next delta must carry
  size_t bytes = 0;
  bool binary = false;
  int64_t started_ns = 0, updated_ns = 0;
};

enum class draft_end { committed, aborted, expired };

class drafts {
 public:
  drafts(draft_options opts, router::router& router, std::shared_ptr<const model::clock> clock,
         prometheus::Registry* metrics = nullptr);
  ~drafts();  // stops the sweeper
  drafts(const drafts&) = delete;
  drafts& operator=(const drafts&) = delete;

  // Applies a delta and publishes it. Index 0 opens the draft; each later one must
  // be the draft's next index. An index already applied is a retry: false, nothing
  // published. Errors: conflict (another agent's draft, an index out of order, text
  // into a payload draft or the reverse), payload_too_large (delta or draft size),
  // rate_limited (drafts per owner or in all, total bytes).
  model::result<bool> add(draft_delta d);

  // Ends an open draft and tells its subscribers `reason` (with the committed
  // unit's seq and id for a commit). False when no such draft is open. A non-empty
  // `agent` must be the draft's (conflict otherwise).
  model::result<bool> end(const std::string& context_id, const std::string& draft_id, const std::string& agent,
                          draft_end reason, uint64_t seq = 0, const std::string& unit_id = {});

  // The draft so far as a "draft" message (null when it is not open).
  router::event_ptr snapshot(const std::string& context_id, const std::string& draft_id) const;
  // Every open draft whose context `filter` matches, as "draft" messages.
  std::vector<router::event_ptr> snapshots(const router::topic_filter& filter) const;

  std::optional<draft_info> get(const std::string& context_id, const std::string& draft_id) const;
  std::vector<draft_info> in_context(const std::string& context_id) const;

  const draft_options& opts() const { return opts_; }

 private:
  struct draft {
    draft_info info;
    std::string owner;
    std::string content;
    std::chrono::steady_clock::time_point deadline;
  };
  using key = std::pair<std::string, std::string>;  // context, draft id

  router::event_ptr snapshot_of(const draft& d) const;
  // Removes the draft; mu_ held. Returns its draft_end message, to publish once mu_
  // is released.
  router::event_ptr finish(std::map<key, draft>::iterator it, draft_end reason, uint64_t seq,
                           const std::string& unit_id);
  void run();

  const draft_options opts_;
  router::router& router_;
  const std::shared_ptr<const model::clock> clock_;
  std::mutex& stripe(const std::string& context_id, const std::string& draft_id);
  std::array<std::mutex, 64> publish_stripes_;
  mutable std::mutex mu_;
  std::map<key, draft> open_;  // ordered: a context's drafts are adjacent
  std::unordered_map<std::string, size_t> per_owner_;
  size_t total_bytes_ = 0;
  prometheus::Gauge* open_gauge_ = nullptr;
  prometheus::Gauge* bytes_gauge_ = nullptr;
  prometheus::Counter* deltas_ = nullptr;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread sweeper_;
};

}  // namespace engram::engine
