// /locks: leases with fencing tokens (DESIGN.md §6), through the engine. Locks
// are authorized by the `lock` grant on the resource path (the same pattern
// language as contexts); a lock's context_id also needs `write` there.
#include <nlohmann/json.hpp>

#include "gateway/lock_params.hpp"
#include "gateway/routes.hpp"
#include "model/codec.hpp"
#include "model/text.hpp"

namespace engram::gateway {

using nlohmann::json;

void list_locks(services& s, call& c, responder respond) {
  const auto* agent = c.query.get("agent_id");
  const auto* prefix = c.query.get("prefix");
  auto held = s.eng.list_locks(agent ? *agent : "", prefix ? *prefix : "");
  if (!held) return respond(error_response(held.error()));
  json list = json::array();
  for (const auto& l : *held)
    if (c.who.can(auth::lock, l.resource_path()) || c.who.can(auth::admin, l.resource_path()))
      list.push_back(model::to_json(l));
  respond(json_response(200, json{{"locks", std::move(list)}}));
}

void acquire_locks(services& s, call& c, responder respond) {
  auto body = parse_body(s, c.req, fields::acquire, "the lock request");
  if (!body) return respond(error_response(body.error()));
  auto parsed = parse_acquire_body(*body, c.req.header("x-agent-id"));
  if (!parsed) return respond(error_response(parsed.error()));
  auto& ar = parsed->request;
  const bool multi = parsed->multi;
  if (auto ok = acting_as(c.who, ar.agent); !ok) return respond(error_response(ok.error()));
  for (const auto& r : ar.resources) {
    if (!c.who.can(auth::lock, r)) return respond(forbidden(auth::lock, r));
    // A task's lease is its claim: taken only through the task (grants, checks, events).
    if (r.starts_with("task:"))
      return respond(bad_request("'" + r + "' is a task's claim: use POST /tasks/" + r.substr(5) + "/claim"));
  }
  if (!ar.context_id.empty() && !c.who.can(auth::write, ar.context_id))
    return respond(forbidden(auth::write, ar.context_id));
  s.eng.acquire_locks(std::move(ar), [respond = std::move(respond), multi](auto r) {
    if (!r) return respond(error_response(r.error()));
    if (!multi) return respond(json_response(200, json{{"lock", model::to_json(r->front())}}));
    json list = json::array();
    for (const auto& l : *r) list.push_back(model::to_json(l));
    respond(json_response(200, json{{"locks", std::move(list)}}));
  });
}

void get_lock(services& s, call& c, responder respond) {
  auto l = s.eng.get_lock(c.subject);
  if (!l) return respond(error_response(l.error()));
  respond(json_response(200, json{{"lock", model::to_json(*l)}}));
}

void release_lock(services& s, call& c, responder respond) {
  const auto* agent = c.query.get("agent_id");
  const auto* lock_id = c.query.get("lock_id");
  std::string holder = agent ? *agent : std::string(c.req.header("x-agent-id"));
  if (holder.empty() && c.who.principal) holder = c.who.principal->agent;
  if (holder.empty()) return respond(bad_request("agent_id is required (query or X-Agent-ID)"));
  // The holder releases its own lease (with `lock` on the resource); a token with
  // `admin` on it may release anyone's (an operator freeing a stuck lease).
  if (!c.who.can(auth::admin, c.subject)) {
    if (!c.who.can(auth::lock, c.subject)) return respond(forbidden(auth::lock, c.subject));
    if (auto ok = acting_as(c.who, holder); !ok) return respond(error_response(ok.error()));
  }
  if (!lock_id || lock_id->empty()) return respond(bad_request("lock_id is required"));
  // Who released it, for the event: the token's subject, else X-Agent-ID (with auth
  // off, an operator names itself there while agent_id names the holder).
  std::string by;
  if (c.who.principal) {
    by = c.who.principal->agent;
  } else if (by = c.req.header("x-agent-id"); !by.empty()) {
    if (auto bad = model::check_identifier("X-Agent-ID", by, model::max_id_bytes)) return respond(bad_request(*bad));
  }
  s.eng.release_lock(std::move(c.subject), std::move(holder), *lock_id, std::move(by),
                     [respond = std::move(respond)](model::status ok) {
                       if (!ok) return respond(error_response(ok.error()));
                       respond(json_response(200, json{{"released", true}}));
                     });
}

void renew_lock(services& s, call& c, responder respond) {
  json body = json::object();
  if (!c.req.body.empty()) {
    auto parsed = parse_body(s, c.req, fields::renew, "the renewal");
    if (!parsed) return respond(error_response(parsed.error()));
    body = std::move(*parsed);
  }
  auto renew = parse_renew_body(body, c.req.header("x-agent-id"));
  if (!renew) return respond(error_response(renew.error()));
  if (auto ok = acting_as(c.who, renew->agent); !ok) return respond(error_response(ok.error()));
  s.eng.renew_lock(std::move(c.subject), std::move(renew->agent), std::move(renew->lock_id), renew->ttl,
                   [respond = std::move(respond)](auto r) {
                     if (!r) return respond(error_response(r.error()));
                     respond(json_response(200, json{{"lock", model::to_json(*r)}}));
                   });
}

}  // namespace engram::gateway
