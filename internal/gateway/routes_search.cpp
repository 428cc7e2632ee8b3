// /search: keyword, semantic and hybrid search (GET query or POST body).
#include <nlohmann/json.hpp>

#include "gateway/routes.hpp"
#include "gateway/search_params.hpp"

namespace engram::gateway {

namespace {

using nlohmann::json;

// The v3 shape ({"results":[ids],"total_count","limit","offset"}) plus hits.
response search_response(const search::results& r, size_t offset) {
  json ids = json::array();
  json hits = json::array();
  const bool ranked = r.mode != search::search_mode::keyword;
  for (const auto& h : r.hits) {
    ids.push_back(h.id);
    json hit{{"id", h.id},
             {"context_id", h.context_id},
             {"seq", h.seq},
             {"agent_id", h.agent_id},
             {"type", h.type},
             {"score", h.score},
             {"ts", model::timestamp_json(h.ts_ns)},
             {"snippet", h.snippet}};
    if (ranked) {  // per-signal ranks: null where a signal did not find the unit
      hit["keyword_rank"] = h.keyword_rank ? json(*h.keyword_rank) : json(nullptr);
      hit["vector_rank"] = h.vector_rank ? json(*h.vector_rank) : json(nullptr);
      hit["keyword_score"] = h.keyword_score ? json(*h.keyword_score) : json(nullptr);
      hit["vector_score"] = h.vector_score ? json(*h.vector_score) : json(nullptr);
    }
    hits.push_back(std::move(hit));
  }
  json body{{"results", std::move(ids)},
            {"total_count", r.total},
            {"total_count_exact", r.total_exact},
            {"limit", r.limit},
            {"offset", offset},
            {"mode", search::to_string(r.mode)},
            {"hits", std::move(hits)}};
  if (!r.degraded.empty()) body["degraded"] = r.degraded;
  return json_response(200, body);
}

}  // namespace

void search(services& s, call& c, responder respond) {
  model::result<search_request> parsed = [&]() -> model::result<search_request> {
    if (c.req.method == "GET") return parse_search_params(c.query.items);
    auto body = parse_body(s, c.req, fields::search, "the search");
    if (!body) return std::unexpected(body.error());
    if (s.opts.reject_unknown_fields)
      if (auto rels = body->find("relationships"); rels != body->end() && rels->is_array())
        for (const auto& r : *rels)
          if (auto ok = check_fields(r, fields::search_relationship, "the search's relationships[]"); !ok)
            return std::unexpected(ok.error());
    return parse_search_body(*body);
  }();
  if (!parsed) return respond(error_response(parsed.error()));
  if (c.who.principal) {
    const auto& ctx = parsed->query.context_id;
    if (!ctx.empty() && !ctx.ends_with('*') && !c.who.can(auth::read, ctx)) return respond(forbidden(auth::read, ctx));
    parsed->query.scope = c.who.principal->scope(auth::read);
  }
  const size_t offset = parsed->query.offset;
  s.eng.search(std::move(parsed->query), parsed->limit,
               [respond = std::move(respond), offset](model::result<search::results> r) {
                 if (!r) return respond(error_response(r.error()));
                 respond(search_response(*r, offset));
               });
}

}  // namespace engram::gateway
