#pragma once
// Lock manager options, filled in by config.

#include <chrono>
#include <cstddef>
#include <string>

namespace engram::locks {

struct options {
  std::chrono::milliseconds default_ttl{60'000};
  std::chrono::milliseconds max_ttl{3'600'000};
  std::chrono::milliseconds max_wait{30'000};
  size_t max_locks_per_agent = 1'000;
  size_t max_resource_bytes = 1'024;
  size_t max_resources_per_request = 64;
  // Context whose log records the transitions of leases that name no context_id,
  // so that every transition is durable and visible to `*` subscribers.
  std::string events_context = "_locks";
};

}  // namespace engram::locks
