#pragma once
// Search options, filled in by config.

#include <chrono>
#include <cstddef>
#include <string>

#include "search/embedder.hpp"
#include "search/vectors.hpp"

namespace engram::search {

struct options {
  bool enabled = true;
  // Where the Xapian index lives; empty: "<storage.data_dir>/search".
  std::string index_dir;
  // Snowball stemmer for text ("english", "german", …, or "none").
  std::string language = "english";
  // How words of a query combine when no operator is written: AND or OR.
  bool default_and = true;
  // Units indexed between two index commits at most; a round also ends when the
  // log has no more to give.
  size_t max_batch_units = 5'000;
  // fsync each index commit. Off (the default), commits are cheaper and the index
  // fresher; a process crash loses nothing (the OS has the writes), and after an OS
  // crash or power loss the index is rebuilt from the logs, which stay the source
  // of truth: the index records the boot it was written in without fsync and is
  // only trusted again in that boot or after a clean shutdown.
  bool fsync = false;
  // Where the kernel's boot id is read (a different value means the machine restarted).
  std::string boot_id_file = "/proc/sys/kernel/random/boot_id";
  // Units the active shard takes before it is sealed; merges compact sealed shards
  // into larger ones in the background. Frequent commits stay cheap because they
  // only touch the active shard.
  size_t recent_units = 50'000;
  // Least time between two index commits: bounds the fsync rate under load.
  std::chrono::milliseconds commit_interval{10};
  // The nice value of the indexing thread (0-19; merges run at 10, or this if
  // higher). Above 0 the kernel
  // gives the request threads the CPU first when both want it, and the index
  // catches up when they do not: more appends/s, far staler search on a busy
  // machine (bench/README.md has the trade-off).
  int indexer_nice = 0;
  // Writes first under overload. While more than yield_backlog events wait to be
  // indexed and they keep arriving at least as fast as the indexer takes them
  // (more load than it can index), the indexer works in short rounds and sleeps
  // between them, busy about yield_percent of the time, and the request threads
  // get the cores. Once arrivals fall behind, it runs flat out and catches up.
  // At a load it can keep up with, the backlog stays far below the default and
  // nothing changes. yield_backlog 0 (or yield_percent 100) turns it off: the
  // indexer then takes its full share of the CPU under overload (bench/README.md
  // has the trade-off).
  uint64_t yield_backlog = 10'000;
  unsigned yield_percent = 10;
  // Bytes of a payload indexed as text; the rest is ignored.
  size_t max_text_bytes = size_t(1) << 20;
  // Threads that run queries, and queries allowed to wait for one.
  size_t query_threads = 2;
  size_t max_queued_queries = 256;
  // Matches counted exactly (beyond what the page needs) so total_count is exact
  // for result sets up to this size.
  size_t exact_count_up_to = 10'000;
  // Most terms a `prefix*` query word may expand to; beyond it the query is refused.
  size_t max_wildcard_terms = 1'000;
  size_t snippet_bytes = 200;

  // ---- semantic and hybrid search ----
  vector_options vectors;
  bool vector_snapshots = true;  // false: vectors.snapshot_dir is cleared (no snapshots)
  embedder_options embeddings;  // url empty: no embedder
  // Matches of a filter that are ranked exactly (every matching vector compared);
  // broader filters search the graph and keep the neighbours that match.
  size_t exact_filter_limit = 20'000;
  // Candidates taken from each ranking before reciprocal rank fusion (at least the
  // page's end), and the fusion constant.
  size_t fusion_depth = 100;
  double rrf_k = 60;
  // Semantic and hybrid results page through this many at most.
  size_t max_vector_results = 10'000;
};

}  // namespace engram::search
