#pragma once
// The vector index (DESIGN.md §7, semantic search): one HNSW graph (hnswlib) per
// embedding model, over cosine similarity, rebuilt from storage's `vectors` column
// family at start-up and then following it. Owned by search::index; a follower
// thread inserts, searches run on the callers' threads (README.md). Thread-safe:
// every public method may be called from any thread.

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "model/error.hpp"

namespace prometheus {
class Registry;
}
namespace engram::storage {
class store;
}

namespace engram::search {

struct vector_options {
  // Defaults reach recall@10 >= 0.95 even on random 384-d vectors (the hard case;
  // real embeddings have far lower intrinsic dimension): bench/README.md.
  size_t m = 32;                 // graph degree (hnswlib M)
  size_t ef_construction = 200;  // candidate list while inserting
  size_t ef_search = 640;        // candidate list while searching (at least k)
  // Threads that insert while catching up. 1 by default: hnswlib's parallel insert
  // races on its level generator and takes node locks in inconsistent order (TSan:
  // a data race and a lock-order inversion inside hnswlib), so more is opt-in.
  size_t insert_threads = 1;
  // Snapshots of the graphs (README "Semantic search"): a restart loads the newest and
  // inserts only the vectors stored after it, instead of every vector again. Empty
  // dir: no snapshots. One is written when at least `snapshot_min_vectors` vectors
  // were inserted since the last and `snapshot_interval` has passed, when loading
  // finishes, and at close().
  std::string snapshot_dir;
  std::chrono::milliseconds snapshot_interval{std::chrono::minutes(5)};
  uint64_t snapshot_min_vectors = 10'000;
};

struct neighbour {
  std::string unit_id;
  float similarity = 0;  // cosine similarity, -1..1
};

struct vector_status {
  uint64_t vectors = 0;  // in the graphs
  uint64_t lag = 0;      // committed to storage but not yet searchable
  bool catching_up = true;
};

class vector_index {
 public:
  // Starts the follower, which loads every stored vector. The store must outlive
  // the index.
  static model::result<std::unique_ptr<vector_index>> open(const vector_options& opts, storage::store& store,
                                                           prometheus::Registry* metrics);
  ~vector_index();  // close()s
  vector_index(const vector_index&) = delete;
  vector_index& operator=(const vector_index&) = delete;

  // Publisher hook: vectors up to `last_vseq` are committed (cheap).
  void on_committed(uint64_t last_vseq);
  // Publisher hook: storage removed these units' vectors (cheap; the follower
  // takes them out of the graphs).
  void on_removed(const std::vector<std::string>& unit_ids);

  // The model's dimension; nullopt while it has no vector in the index.
  std::optional<uint32_t> dimension(const std::string& model) const;
  size_t size(const std::string& model) const;

  // The k approximately nearest units, most similar first. invalid_argument when
  // the query's dimension is not the model's; empty for an unknown model.
  model::result<std::vector<neighbour>> nearest(const std::string& model, std::span<const float> query,
                                                size_t k) const;
  // Exact similarity of each listed unit that has a vector in the model; the k
  // most similar, most similar first. What selective filters use.
  model::result<std::vector<neighbour>> rank_exact(const std::string& model, std::span<const float> query,
                                                   const std::vector<std::string>& unit_ids, size_t k) const;

  vector_status status() const;

  // Stops the follower. Idempotent.
  void close();

  struct impl;

 private:
  explicit vector_index(std::unique_ptr<impl> p);
  std::unique_ptr<impl> impl_;
};

// Scales v to unit length (cosine similarity becomes a dot product); false when v
// is all zeros.
bool normalize(std::span<float> v);

}  // namespace engram::search
