#pragma once
// When the indexer leaves the CPU to writes it cannot keep up with
// (options::yield_backlog). A pure function, so that the policy is tested apart
// from the timing of a real load.

#include <chrono>
#include <cstdint>

#include "search/options.hpp"

namespace engram::search {

// The longest pause after one round.
inline constexpr std::chrono::milliseconds max_yield{1000};

// Whether the yield is on and more than yield_backlog events wait: then rounds
// stay short, so that the pauses pace them finely.
bool over_yield_backlog(const options& opts, uint64_t backlog);

// The pause after an indexing round that took `taken` events in `worked`, while
// `arrived` more were committed to the logs and `backlog` wait to be indexed.
// Zero unless the backlog is over yield_backlog and still growing (arrivals at
// least what the round took); then long enough that the indexer is busy about
// yield_percent of the time, at most max_yield.
std::chrono::nanoseconds yield_pause(const options& opts, std::chrono::nanoseconds worked, uint64_t arrived,
                                     uint64_t taken, uint64_t backlog);

}  // namespace engram::search
