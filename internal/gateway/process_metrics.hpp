#pragma once
// The standard Prometheus process metrics (the names client libraries export), read
// from /proc/self on each scrape: memory, CPU, file descriptors, threads, start time.
// prometheus-cpp has no process collector, and these are what an operator (and the
// soak test) watches for leaks.

#include <prometheus/metric_family.h>

#include <vector>

namespace engram::gateway {

// Empty where /proc is unavailable.
std::vector<prometheus::MetricFamily> process_metric_families();

}  // namespace engram::gateway
