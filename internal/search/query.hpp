#pragma once
// A search request and its answer, as the search module sees them (the gateway
// parses JSON and query strings into these).

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace engram::search {

enum class search_mode {
  automatic,  // hybrid when the query can be embedded and the model has vectors, else keyword
  keyword,
  semantic,
  hybrid,     // keyword and vector rankings fused by reciprocal rank
};

struct relationship_filter {
  std::string target_id;
  std::optional<int> type;  // nullopt: any relationship type
};

struct query {
  std::string text;        // Xapian query-parser syntax; blank: no text condition
  std::string context_id;  // exact id, or a prefix pattern ending in '*'; empty: all
  // The caller's readable context patterns (auth): results come only from contexts
  // one of them matches. nullopt: unrestricted; empty: nothing is readable.
  std::optional<std::vector<std::string>> scope;
  std::vector<std::string> agent_ids;  // any of
  std::vector<int> types;              // any of
  std::vector<std::pair<std::string, std::string>> meta;  // all of, exact key=value
  std::vector<relationship_filter> relationships;          // all of
  std::optional<int64_t> from_ns;  // inclusive
  std::optional<int64_t> to_ns;    // exclusive
  size_t limit = 100;
  size_t offset = 0;
  bool snippets = true;
  search_mode mode = search_mode::automatic;
  // The query's vector; empty: `text` is embedded when an endpoint is configured.
  std::vector<float> vector;
  // Vector space; empty: the embedding endpoint's model, else "default".
  std::string model;
};

struct hit {
  std::string id;
  std::string context_id;
  uint64_t seq = 0;
  int64_t ts_ns = 0;
  std::string agent_id;
  int type = 0;  // api::WorkUnitType
  // keyword: BM25 weight (0 when ranked by time); semantic: cosine similarity;
  // hybrid: the reciprocal-rank-fusion score.
  double score = 0;
  std::string snippet;  // plain text around the matches (not HTML)
  // Per-signal ranks (1-based) and scores, for semantic and hybrid results.
  std::optional<size_t> keyword_rank, vector_rank;
  std::optional<double> keyword_score, vector_score;
};

struct results {
  std::vector<hit> hits;
  uint64_t total = 0;
  bool total_exact = true;
  size_t limit = 0;  // the page size applied
  search_mode mode = search_mode::keyword;  // what ran
  std::string degraded;  // why a vector search fell back to keyword results
};

std::string_view to_string(search_mode m);

}  // namespace engram::search
