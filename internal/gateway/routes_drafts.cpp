// /contexts/{id}/drafts: partial output (README "Drafts") for clients without a
// WebSocket: deltas, commit (the final unit, appended as POST /workunit is), abort,
// and what is open now. The WebSocket messages of the same names use these rules.
#include <nlohmann/json.hpp>

#include "engine/drafts.hpp"
#include "gateway/routes.hpp"
#include "model/codec.hpp"
#include "model/text.hpp"

namespace engram::gateway {

using model::errc;
using model::json;

model::status check_draft_id(std::string_view id) {
  if (auto bad = model::check_identifier("draft_id", id, max_draft_id_bytes)) return model::fail(errc::invalid_argument, *bad);
  return {};
}

model::result<engine::draft_delta> draft_delta_from(const json& body, std::string context_id, std::string draft_id,
                                                    std::string agent) {
  engine::draft_delta d;
  const auto index = body.find("index");
  if (index == body.end() || !index->is_number_unsigned())
    return model::fail(errc::invalid_argument, "index is required: the delta's position in its draft (0, 1, 2, …)");
  d.index = index->get<uint64_t>();
  const auto text = body.find("text");
  const auto payload = body.find("payload");
  const bool has_text = text != body.end() && !text->is_null();
  const bool has_payload = payload != body.end() && !payload->is_null();
  if (has_text == has_payload)
    return model::fail(errc::invalid_argument, "a delta carries \"text\" (a string) or base64 \"payload\", one of them");
  if (has_text) {
    if (!text->is_string()) return model::fail(errc::invalid_argument, "text must be a string");
    d.data = text->get<std::string>();
  } else {
    if (!payload->is_string()) return model::fail(errc::invalid_argument, "payload must be a base64 string");
    auto bytes = model::base64_decode(payload->get_ref<const std::string&>());
    if (!bytes) return model::fail(errc::invalid_argument, "payload is not valid base64");
    d.data = std::move(*bytes);
    d.binary = true;
  }
  d.context_id = std::move(context_id);
  d.draft_id = std::move(draft_id);
  d.agent_id = std::move(agent);
  return d;
}

json draft_info_json(const engine::draft_info& d) {
  return json{{"context_id", d.context_id},
              {"draft_id", d.draft_id},
              {"agent_id", d.agent_id},
              {"next_index", d.next_index},
              {"bytes", d.bytes},
              {"encoding", d.binary ? "payload" : "text"},
              {"started_at", model::timestamp_json(d.started_ns)},
              {"updated_at", model::timestamp_json(d.updated_ns)}};
}

namespace {

// The route's draft id, checked.
model::result<std::string> route_draft(const call& c) {
  const std::string& id = *c.param("draft_id");
  if (auto ok = check_draft_id(id); !ok) return std::unexpected(ok.error());
  return id;
}

}  // namespace

void add_draft_delta(services& s, call& c, responder respond) {
  auto id = route_draft(c);
  if (!id) return respond(error_response(id.error()));
  auto body = parse_body(s, c.req, fields::draft_delta, "the delta");
  if (!body) return respond(error_response(body.error()));
  auto agent = acting_agent(c, *body);
  if (!agent) return respond(error_response(agent.error()));
  auto registry = s.eng.draft_registry();
  if (!registry) return respond(error_response(registry.error()));
  auto d = draft_delta_from(*body, c.subject, *id, *agent);
  if (!d) return respond(error_response(d.error()));
  d->owner = "agent:" + *agent;
  const uint64_t index = d->index;
  auto applied = (*registry)->add(std::move(*d));
  if (!applied) return respond(error_response(applied.error()));
  respond(json_response(200, json{{"context_id", c.subject}, {"draft_id", *id}, {"index", index}, {"duplicate", !*applied}}));
}

// The final unit: POST /workunit's body (its context_id may be left out), appended
// with meta.draft_id set; then the draft ends as committed.
void commit_draft(services& s, call& c, responder respond) {
  auto id = route_draft(c);
  if (!id) return respond(error_response(id.error()));
  auto body = parse_body(c.req);
  if (!body) return respond(error_response(body.error()));
  if (auto ctx = body->find("context_id"); ctx == body->end() || ctx->is_null()) (*body)["context_id"] = c.subject;
  else if (!ctx->is_string() || ctx->get_ref<const std::string&>() != c.subject)
    return respond(bad_request("the unit's context_id must be the draft's context '" + c.subject + "'"));
  auto& meta = (*body)["meta"];
  if (meta.is_null()) meta = json::object();
  if (!meta.is_object()) return respond(bad_request("meta must be an object of strings"));
  if (auto m = meta.find("draft_id"); m != meta.end() && *m != *id)
    return respond(bad_request("meta.draft_id must be the draft's id '" + *id + "' (or left out)"));
  meta["draft_id"] = *id;
  auto registry = s.eng.draft_registry();
  if (!registry) return respond(error_response(registry.error()));
  auto agent = acting_agent(c, *body);
  if (!agent) return respond(error_response(agent.error()));
  if (auto open = (*registry)->get(c.subject, *id); open && open->agent_id != *agent)
    return respond(error_response({errc::conflict, "draft '" + *id + "' belongs to agent '" + open->agent_id + "'"}));
  c.req.body = model::dump(*body);
  append_unit(s, c, [respond = std::move(respond), registry = *registry, ctx = c.subject, id = *id,
                     agent = *agent](response r) {
    if (r.status != 201 || r.body.empty() || r.body.back() != '}') return respond(std::move(r));
    auto answer = model::parse_json(r.body);
    if (!answer || !answer->contains("work_unit")) return respond(std::move(r));
    const auto& unit = (*answer)["work_unit"];
    auto ended = registry->end(ctx, id, agent, engine::draft_end::committed, unit.value("seq", uint64_t(0)),
                               unit.value("id", std::string()));
    // Into the route's own bytes, so the unit reads exactly as POST /workunit's.
    // false: the draft had expired or was aborted; the unit is stored all the same.
    r.body.insert(r.body.size() - 1, ended && *ended ? ",\"draft_ended\":true" : ",\"draft_ended\":false");
    respond(std::move(r));
  });
}

void abort_draft(services& s, call& c, responder respond) {
  auto id = route_draft(c);
  if (!id) return respond(error_response(id.error()));
  auto registry = s.eng.draft_registry();
  if (!registry) return respond(error_response(registry.error()));
  // The draft's own agent (X-Agent-ID, which the handler sets to the token's
  // subject), or anyone with write access when neither names one.
  const std::string agent(c.req.header("x-agent-id"));
  auto ended = (*registry)->end(c.subject, *id, agent, engine::draft_end::aborted);
  if (!ended) return respond(error_response(ended.error()));
  if (!*ended) return respond(error_response({errc::not_found, "no open draft '" + *id + "' in context '" + c.subject + "'"}));
  respond(json_response(200, json{{"context_id", c.subject}, {"draft_id", *id}, {"aborted", true}}));
}

void list_drafts(services& s, call& c, responder respond) {
  auto registry = s.eng.draft_registry();
  if (!registry) return respond(error_response(registry.error()));
  json list = json::array();
  for (const auto& d : (*registry)->in_context(c.subject)) list.push_back(draft_info_json(d));
  respond(json_response(200, json{{"drafts", std::move(list)}}));
}

// The draft so far, as the "draft" message a late subscriber gets.
void get_draft(services& s, call& c, responder respond) {
  auto id = route_draft(c);
  if (!id) return respond(error_response(id.error()));
  auto registry = s.eng.draft_registry();
  if (!registry) return respond(error_response(registry.error()));
  auto snap = (*registry)->snapshot(c.subject, *id);
  if (!snap) return respond(error_response({errc::not_found, "no open draft '" + *id + "' in context '" + c.subject + "'"}));
  response r;
  r.status = 200;
  r.body = snap->json;
  respond(std::move(r));
}

}  // namespace engram::gateway
