#pragma once
// Parsing of search requests: the JSON body of POST /search and the query string
// of GET /search. No I/O; tested directly. Errors are 400s naming the field.
//
// POST /search  {"query":"…","context_id":"c1" | "project-7/*","agent_ids":[…],
//                "types":[1,"SYSTEM"],"meta_filters":{"k":"v"},
//                "relationships":[{"target_id":"…","type":"RESPONDS_TO"}],
//                "from":<time>,"to":<time>,"limit":N,"offset":N,"snippets":true,
//                "mode":"keyword"|"semantic"|"hybrid","vector":[…],"embedding_model":"…"}
// GET  /search?q=…&context=…&agent=…&type=…&meta=k=v&rel=[TYPE:]target
//              &from=…&to=…&limit=N&offset=N&snippets=false
//              &mode=…&vector=0.1,0.2,…&model=…               (lists repeat the key)
//
// <time> is {"seconds":S,"nanos":N} or RFC 3339; in a query string RFC 3339 or
// whole seconds since the epoch. `from` is inclusive, `to` exclusive.

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "model/codec.hpp"
#include "model/error.hpp"
#include "search/query.hpp"

namespace engram::gateway {

struct search_request {
  search::query query;
  std::optional<size_t> limit;  // nullopt: the server's default
};

inline constexpr size_t max_query_bytes = 16 * 1024;
inline constexpr size_t max_filter_values = 100;  // per list filter

model::result<search_request> parse_search_body(const model::json& body);
model::result<search_request> parse_search_params(const std::vector<std::pair<std::string, std::string>>& params);

}  // namespace engram::gateway
