#pragma once
// Lock manager options, filled in by config.

#include <chrono>
#include <cstddef>

namespace engram::locks {

struct options {
  std::chrono::milliseconds default_ttl{60'000};
  std::chrono::milliseconds max_ttl{3'600'000};
  std::chrono::milliseconds max_wait{30'000};
  size_t max_locks_per_agent = 1'000;
  size_t max_resource_bytes = 1'024;
  size_t max_resources_per_request = 64;
};

}  // namespace engram::locks
