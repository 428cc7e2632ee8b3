#pragma once
// A search request and its answer, as the search module sees them (the gateway
// parses JSON and query strings into these).

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace engram::search {

struct relationship_filter {
  std::string target_id;
  std::optional<int> type;  // nullopt: any relationship type
};

struct query {
  std::string text;        // Xapian query-parser syntax; blank: no text condition
  std::string context_id;  // exact id, or a prefix pattern ending in '*'; empty: all
  std::vector<std::string> agent_ids;  // any of
  std::vector<int> types;              // any of
  std::vector<std::pair<std::string, std::string>> meta;  // all of, exact key=value
  std::vector<relationship_filter> relationships;          // all of
  std::optional<int64_t> from_ns;  // inclusive
  std::optional<int64_t> to_ns;    // exclusive
  size_t limit = 100;
  size_t offset = 0;
  bool snippets = true;
};

struct hit {
  std::string id;
  std::string context_id;
  uint64_t seq = 0;
  int64_t ts_ns = 0;
  double score = 0;     // BM25 weight; 0 when ranked by time
  std::string snippet;  // plain text around the matches (not HTML)
};

struct results {
  std::vector<hit> hits;
  uint64_t total = 0;
  bool total_exact = true;
  size_t limit = 0;  // the page size applied
};

}  // namespace engram::search
