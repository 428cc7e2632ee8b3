#pragma once
// The search index over all history (DESIGN.md §7): keyword search on Xapian, and
// semantic and hybrid search over the vector index and the embedder it owns.
// Owned by the engine; fed by the store's publisher (whoever commits); its own
// indexer, merge and query threads do the work (README.md). Thread-safe: every
// public method may be called from any thread.

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engram.pb.h"
#include "model/error.hpp"
#include "search/options.hpp"
#include "search/query.hpp"

namespace prometheus {
class Registry;
}
namespace engram::storage {
class store;
}

namespace engram::search {

enum class index_state {
  catching_up,  // indexing a backlog (after a restart or a rebuild)
  ready,        // following live writes
  failed,       // the index could not be written; searches answer `unavailable`
};
std::string_view to_string(index_state s);

struct index_status {
  index_state state = index_state::catching_up;
  uint64_t lag = 0;        // events committed to the logs but not yet searchable
  uint64_t documents = 0;  // units in the index
  size_t pending_merges = 0;  // shards in the merge that is running (0: the tiers are settled)
  std::string error;       // why it failed
  vector_status vectors;
  std::optional<embedder_status> embedder;  // nullopt: no embedding endpoint configured
};

class index {
 public:
  // Opens (or creates, or rebuilds) the index in `opts.index_dir` and starts the
  // indexer. The store must outlive the index. Fails only when the directory is
  // unusable (for instance locked by another process).
  static model::result<std::unique_ptr<index>> open(const options& opts, storage::store& store,
                                                    prometheus::Registry* metrics);
  ~index();  // close()s
  index(const index&) = delete;
  index& operator=(const index&) = delete;

  // Publisher hooks: events just committed to context logs, vectors committed up to
  // `last_vseq` (cheap; never block on indexing).
  void on_committed(const std::vector<std::shared_ptr<const api::Event>>& events);
  void on_vectors(uint64_t last_vseq);
  // Storage removed the context's events before `first_seq` and these units: their
  // documents and vectors leave the index soon after (the indexer and the vector
  // follower do it; a restart finishes what a crash interrupted).
  void on_removed(const std::string& context_id, uint64_t first_seq, const std::vector<std::string>& unit_ids);

  // Runs `q` on a query thread; `done` is called there. Overload answers
  // `unavailable` at once.
  void search(query q, std::function<void(model::result<results>)> done);
  // The same, on the calling thread.
  model::result<results> search_now(const query& q);

  index_status status() const;

  // Stops the indexer after committing what it has indexed; waits for running
  // queries. Idempotent.
  void close();

  struct impl;

 private:
  explicit index(std::unique_ptr<impl> p);
  std::unique_ptr<impl> impl_;
};

}  // namespace engram::search
