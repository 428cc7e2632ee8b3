#pragma once
// Small helpers shared by the bench tools.

#include <algorithm>
#include <expected>
#include <string>
#include <vector>

#include "engram/http_connection.hpp"

namespace engram::bench {

// Empty when the request got `status`; otherwise what went wrong.
inline std::string expect(const std::expected<client::http_result, client::transport_error>& r, unsigned status) {
  if (!r) return r.error().message;
  if (r->status != status) return "status " + std::to_string(r->status) + ": " + r->body.substr(0, 200);
  return {};
}

// The p-quantile (0..1) of sorted samples; 0 when there are none.
template <class T>
double percentile(const std::vector<T>& sorted, double p) {
  if (sorted.empty()) return 0;
  return double(sorted[std::min(sorted.size() - 1, size_t(p * double(sorted.size())))]);
}

}  // namespace engram::bench
