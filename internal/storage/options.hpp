#pragma once
// Storage options, filled in by config and handed to storage::store::open.

#include <chrono>
#include <cstddef>
#include <string>

namespace engram::storage {

enum class durability {
  sync,     // acknowledge after the WAL is fsynced (group commit shares the fsync)
  relaxed,  // acknowledge after the WAL write reaches the OS; fsync on an interval
};

struct options {
  std::string data_dir = "./data";
  // Where POST /admin/backup writes; empty: <data_dir>-backups beside the data.
  std::string backup_dir;
  durability mode = durability::sync;
  std::chrono::milliseconds relaxed_sync_interval{100};
  size_t block_cache_bytes = size_t(256) << 20;
  size_t write_buffer_bytes = size_t(64) << 20;
  // Most write requests one commit group takes (one WAL write + one fsync).
  size_t max_commit_group = 1024;
  // Write requests waiting for the committer beyond which new ones get 503.
  size_t commit_queue_limit = 16384;
  std::chrono::hours idempotency_ttl{24};
};

}  // namespace engram::storage
