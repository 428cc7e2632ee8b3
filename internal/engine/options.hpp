#pragma once
// Use-case limits, filled in by config.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>

namespace engram::engine {

struct stream_options {
  size_t queue_bytes = size_t(1) << 20;  // live queue bound per subscriber
  uint64_t max_lag = 100'000;            // events behind before the stream is closed
  size_t catch_up_batch = 256;           // events read from storage per context per poll
  size_t max_pattern_contexts = 10'000;  // contexts a prefix pattern may match at start
  // Fault injection for tests: runs after a catch-up read, before its result is
  // applied (the window in which a live event may arrive).
  std::function<void()> after_catch_up_read;
};

// Retention (README, Retention): the default for contexts without a policy of their
// own, and how often the sweeper looks. 0: no limit of that kind.
struct retention_options {
  std::chrono::seconds max_age{0};
  uint64_t max_events = 0;
  std::chrono::milliseconds interval{60'000};
};

// Agents' checkpoints (README, Checkpoints).
struct checkpoint_options {
  size_t max_bytes = 256 * 1024;  // of the state, as JSON
  size_t keep = 20;               // versions kept per agent and context
};

// Drafts (README "Drafts"): partial output shown live, never stored.
struct draft_options {
  std::chrono::milliseconds idle{30'000};     // a draft with no delta for this long expires
  size_t max_bytes = size_t(1) << 20;         // one draft's content so far
  size_t max_delta_bytes = 64 * 1024;         // one delta's content
  size_t max_total_bytes = size_t(64) << 20;  // every open draft together
  size_t max_per_owner = 16;                  // open drafts per WebSocket connection, or per agent over REST
  size_t max_drafts = 10'000;                 // open drafts in all
};

// Facts (README, Facts).
struct fact_options {
  size_t max_value_bytes = 64 * 1024;  // of a value, as JSON
  size_t max_sources = 256;            // seqs a fact may cite
};

// The memory packet (README, Memory packet): how much state one may consider.
struct packet_options {
  size_t max_fact_versions = 5000;  // fact versions read (active and ended); beyond: not considered
  size_t max_tasks = 1000;          // tasks of the context read for the board
};

struct options {
  size_t max_batch_units = 1000;  // POST /workunits
  checkpoint_options checkpoints;
  fact_options facts;
  packet_options packet;
  size_t default_page_limit = 100;
  size_t max_page_limit = 1000;
  size_t max_search_offset = 100'000;
  // Storage reads (unit fetches, pages, context reads, stream catch-up) run on this
  // many threads, never on an I/O thread. Beyond `max_queued_reads` waiting, REST
  // reads are refused with `unavailable` (stream catch-up always queues: each
  // stream has at most one read in flight).
  size_t read_threads = 4;
  size_t max_queued_reads = 10'000;
  // Rendered units of the contexts listed most recently (engine/tail_cache.hpp),
  // over all contexts; 0 turns the cache off.
  size_t tail_cache_bytes = size_t(64) << 20;
  stream_options stream;
  draft_options drafts;
};

}  // namespace engram::engine
