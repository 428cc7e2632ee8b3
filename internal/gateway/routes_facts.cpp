// /contexts/{id}/facts: what the team currently believes (README "Facts"). A set
// supersedes the key's active version, a delete retracts it; both are events of the
// context's log. Reads see the facts as the log stood at a seq and as valid at a time.
#include <nlohmann/json.hpp>

#include "gateway/routes.hpp"
#include "model/codec.hpp"
#include "model/text.hpp"

namespace engram::gateway {

using model::errc;
using model::json;

namespace {

model::result<std::string> route_key(const call& c) {
  const std::string& key = *c.param("key");
  if (auto bad = model::check_fact_key("the fact key", key)) return model::fail(errc::invalid_argument, *bad);
  return key;
}

response fact_event_response(const api::Event& ev) {
  return json_response(200, json{{"context_id", ev.context_id()},
                                 {"seq", ev.seq()},
                                 {"kind", ev.fact_event().kind()},
                                 {"fact", model::to_json(ev.fact_event().fact())}});
}

// valid_from / valid_to: a timestamp ({"seconds","nanos"} or RFC 3339), or null.
model::result<int64_t> optional_time(const json& body, const char* field) {
  auto it = body.find(field);
  if (it == body.end() || it->is_null()) return int64_t(0);
  return model::timestamp_from_json(*it, field);
}

}  // namespace

// PUT {"value":<json>, "valid_from"?, "valid_to"?, "sources"?:[seq…], "confidence"?,
// "status"?:"active"|"disputed", "agent_id"?}.
void set_fact(services& s, call& c, responder respond) {
  auto key = route_key(c);
  if (!key) return respond(error_response(key.error()));
  auto body = parse_body(s, c.req, fields::fact, "the fact");
  if (!body) return respond(error_response(body.error()));
  auto agent = acting_agent(c, *body);
  if (!agent) return respond(error_response(agent.error()));
  storage::fact_change change;
  change.context_id = c.subject;
  auto& f = change.fact;
  f.set_key(*key);
  f.set_agent_id(*agent);
  const auto value = body->find("value");
  if (value == body->end()) return respond(bad_request("value is required: any JSON value (null included)"));
  f.set_value_json(model::dump(*value));
  const auto& limits = s.eng.opts().facts;
  if (f.value_json().size() > limits.max_value_bytes)
    return respond(error_response({errc::payload_too_large, "value is " + std::to_string(f.value_json().size()) +
                                                                " bytes as JSON; facts.max_value_bytes is " +
                                                                std::to_string(limits.max_value_bytes)}));
  auto from = optional_time(*body, "valid_from");
  if (!from) return respond(error_response(from.error()));
  auto to = optional_time(*body, "valid_to");
  if (!to) return respond(error_response(to.error()));
  if (*to && *to <= *from) return respond(bad_request("valid_to must be after valid_from"));
  f.set_valid_from_ns(*from);
  f.set_valid_to_ns(*to);
  if (auto src = body->find("sources"); src != body->end() && !src->is_null()) {
    if (!src->is_array() || src->size() > limits.max_sources)
      return respond(bad_request("sources must be an array of at most " + std::to_string(limits.max_sources) +
                                 " seqs of the context's units"));
    for (const auto& v : *src) {
      if (!v.is_number_unsigned()) return respond(bad_request("sources must be an array of seqs (positive integers)"));
      f.add_sources(v.get<uint64_t>());
    }
  }
  if (auto conf = body->find("confidence"); conf != body->end() && !conf->is_null()) {
    if (!conf->is_number() || conf->get<double>() < 0 || conf->get<double>() > 1)
      return respond(bad_request("confidence must be a number from 0 to 1"));
    f.set_confidence(conf->get<double>());
  }
  f.set_status("active");
  if (auto st = body->find("status"); st != body->end() && !st->is_null()) {
    if (!st->is_string() || (*st != "active" && *st != "disputed"))
      return respond(bad_request("status must be \"active\" or \"disputed\""));
    f.set_status(st->get<std::string>());
  }
  s.eng.change_fact(std::move(change), [respond = std::move(respond)](model::result<api::Event> r) {
    if (!r) return respond(error_response(r.error()));
    respond(fact_event_response(*r));
  });
}

void retract_fact(services& s, call& c, responder respond) {
  auto key = route_key(c);
  if (!key) return respond(error_response(key.error()));
  storage::fact_change change;
  change.context_id = c.subject;
  change.fact.set_key(*key);
  change.retract = true;
  // Who retracts: X-Agent-ID, which the handler sets to the token's subject
  // (recorded, not required).
  change.retracted_by = c.req.header("x-agent-id");
  if (auto bad = change.retracted_by.empty() ? std::nullopt : model::check_identifier("X-Agent-ID", change.retracted_by))
    return respond(bad_request(*bad));
  s.eng.change_fact(std::move(change), [respond = std::move(respond)](model::result<api::Event> r) {
    if (!r) return respond(error_response(r.error()));
    respond(fact_event_response(*r));
  });
}

namespace {

// ?as_of_seq=&valid_at=&include_superseded= into a query.
model::result<storage::fact_query> fact_query_of(const call& c) {
  storage::fact_query q;
  auto as_of = uint_param(c.query, "as_of_seq");
  if (!as_of) return std::unexpected(as_of.error());
  q.as_of_seq = *as_of;
  if (const auto* at = c.query.get("valid_at"); at && !at->empty()) {
    auto ns = model::parse_rfc3339(*at);
    if (!ns) return model::fail(errc::invalid_argument, "valid_at must be an RFC 3339 time (2026-11-30T12:00:00Z)");
    q.valid_at_ns = *ns;
  }
  auto all = bool_param(c.query, "include_superseded");
  if (!all) return std::unexpected(all.error());
  q.include_superseded = *all;
  return q;
}

// `{"as_of_seq":N,"context_id":"…","<member>":` — the rest is the caller's. Fact
// lists run to 10,000 versions: written directly, not through json values.
response facts_response(std::string_view ctx, uint64_t as_of_seq, std::string_view member) {
  response out;
  out.body = "{\"as_of_seq\":" + std::to_string(as_of_seq) + ",\"context_id\":";
  model::append_json_string(out.body, ctx);
  out.body += ",\"";
  out.body += member;
  out.body += "\":";
  return out;
}

void append_facts(std::string& out, const std::vector<api::Fact>& facts, size_t n) {
  out += '[';
  for (size_t i = 0; i < n; ++i) {
    if (i) out += ',';
    model::append_fact_json(out, facts[i]);
  }
  out += ']';
}

}  // namespace

// GET ?prefix=&as_of_seq=&valid_at=&include_superseded=&limit=
void list_facts(services& s, call& c, responder respond) {
  auto q = fact_query_of(c);
  if (!q) return respond(error_response(q.error()));
  if (const auto* prefix = c.query.get("prefix")) {
    if (prefix->size() > 256) return respond(bad_request("prefix must be at most 256 bytes"));
    q->prefix = *prefix;
  }
  auto limit = uint_param(c.query, "limit");
  if (!limit) return respond(error_response(limit.error()));
  q->limit = limit->value_or(1000);
  if (q->limit == 0 || q->limit > 10'000) return respond(bad_request("limit must be 1-10000"));
  s.eng.read_facts(c.subject, *q, [respond = std::move(respond), ctx = c.subject, limit = q->limit](auto r) {
    if (!r) return respond(error_response(r.error()));
    const bool more = r->facts.size() > limit;
    response out = facts_response(ctx, r->as_of_seq, "facts");
    append_facts(out.body, r->facts, std::min(limit, r->facts.size()));
    out.body += more ? ",\"more\":true}" : ",\"more\":false}";
    respond(std::move(out));
  });
}

// One key: its active version (as of / valid at, as for the list), 404 when none;
// with include_superseded, every version.
void get_fact(services& s, call& c, responder respond) {
  auto key = route_key(c);
  if (!key) return respond(error_response(key.error()));
  auto q = fact_query_of(c);
  if (!q) return respond(error_response(q.error()));
  q->key = *key;
  q->limit = 100'000;  // every version of one key, as far as a reply should go
  const bool all = q->include_superseded;
  s.eng.read_facts(c.subject, *q, [respond = std::move(respond), key = *key, ctx = c.subject, all](auto r) {
    if (!r) return respond(error_response(r.error()));
    if (!all && r->facts.empty())
      return respond(error_response({errc::not_found, "no active fact '" + key + "' in context '" + ctx + "'"}));
    response out = facts_response(ctx, r->as_of_seq, all ? "versions" : "fact");
    if (all) append_facts(out.body, r->facts, r->facts.size());
    else model::append_fact_json(out.body, r->facts.back());
    out.body += '}';
    respond(std::move(out));
  });
}

}  // namespace engram::gateway
